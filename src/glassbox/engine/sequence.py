"""One request's tokens, sampling parameters and status."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING

import torch

from glassbox.engine.grammar import Grammar
from glassbox.engine.readout import Readout
from glassbox.steering.plan import SteeringPlan

if TYPE_CHECKING:
    from glassbox.engine.block_manager import KVHandle


# finish_reason of a sequence stopped by a variant's abort_when scope.
STEERING_ABORT = "steering_abort"
# The smallest temperature that samples (vLLM's _SAMPLING_EPS); below it, the argmax.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence samples. Frozen: a request's parameters are not changed after they
    are built (glassbox.requests builds them)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None  # None: no logprobs; k >= 0: chosen token + top k
    skip_special_tokens: bool = True
    steering: SteeringPlan | None = None  # this row's variant, resolved against dictionaries
    keep_kv: bool = False  # on finishing, hand the sequence's KV back as a KVHandle
    grammar: Grammar | None = None  # constrains every generated token (see grammar.py)
    timeout: float | None = None  # seconds from submission; then aborted (GenerationTimeout)
    readout: Readout | None = None  # each generated token's top features (see readout.py)

    @property
    def greedy(self) -> bool:
        """Temperatures below GREEDY_BELOW sample greedily: dividing logits by them would
        overflow to inf and the probabilities to NaN."""
        return self.temperature < GREEDY_BELOW

    @property
    def needs_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


class Sequence:
    _ids = itertools.count()

    def __init__(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        block_size: int,
        prefix: KVHandle | None = None,
    ):
        self.seq_id = next(Sequence._ids)
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.block_size = block_size
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_cached_tokens = 0  # prompt tokens whose KV came from the prefix cache
        self.num_computed_tokens = 0  # tokens whose KV is in the pool
        # The prefill chunk the scheduler gave it for this step; None (every caller outside
        # the scheduler, and decode steps): all its tokens not computed yet.
        self.num_scheduled_tokens: int | None = None
        self.finish_reason: str | None = None
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)
        # Penalty state: counts of generated tokens, and the set of prompt tokens.
        self.output_counts: dict[int, int] = {}
        self.abort_scope: int | None = None  # which of its plan's abort scopes ended it
        # KV already computed for the start of the prompt (a state this continues): the
        # sequence owns this handle and releases it when it finishes.
        self.prefix = prefix
        self.matcher = params.grammar.matcher() if params.grammar is not None else None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_blocks(self) -> int:
        return (len(self.token_ids) + self.block_size - 1) // self.block_size

    @property
    def chunk_end(self) -> int:
        """Where this step's computation of its tokens stops: the end of its scheduled
        chunk, or the end of its tokens."""
        if self.num_scheduled_tokens is None:
            return len(self.token_ids)
        return self.num_computed_tokens + self.num_scheduled_tokens

    def block_tokens(self, i: int) -> list[int]:
        return self.token_ids[i * self.block_size : (i + 1) * self.block_size]

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.output_counts[token_id] = self.output_counts.get(token_id, 0) + 1

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED
