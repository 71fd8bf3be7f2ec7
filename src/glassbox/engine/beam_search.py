"""Beam search from a KV state, advanced one decode step per `step()` call.

The server runs a search as a sequence of `AsyncLLMEngine.call(lambda e: search.step())`
calls, so normal requests keep stepping between two of its steps. Every live beam is a
`Sequence` whose block table shares the blocks of its ancestors through the block manager's
reference counts: a beam continued by one child hands its blocks over; a beam continued by
several shares its full blocks with the others and each of them copies the partial last
block (copy-on-write). All live beams of a step run as one decode batch.

Semantics follow Hugging Face transformers' `generate(num_beams=...)` (checked against it
in tests/unit/test_beam_search.py):

- at each step a group keeps the best `max(2, 1 + #eos) * group_size` continuations; those
  ranked in the top `group_size` that end (an eos token, or the length limit) are offered
  to the group's finished hypotheses, the best `group_size` unfinished ones run on;
- a hypothesis scores sum(logprobs of its new tokens, eos included) / len ** length_penalty;
- `early_stopping`: True stops a group once it has `group_size` hypotheses; False stops it
  when the best running beam at its current length cannot beat the worst hypothesis;
  "never" does the same with the longest possible length when length_penalty > 0;
- `no_repeat_ngram_size` bans n-grams already in the tokens, the state's tokens included;
- groups (`num_beam_groups`, `diversity_penalty`) are HF's diverse beam search with
  Hamming diversity: each group is a beam search of `num_beams // num_beam_groups` beams;
  group g's log-probs are lowered by `diversity_penalty` times the number of running beams
  of groups < g that chose the same token at this step, and that penalty stays in its
  scores. Unlike HF's version, a group that is done no longer runs, so it no longer
  penalizes the groups after it (HF kept feeding its padding token to them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from glassbox.engine.block_manager import KVHandle
from glassbox.engine.errors import OutOfBlocks, PromptTooLong, RequestRejected
from glassbox.engine.sequence import STEERING_ABORT, SamplingParams, Sequence
from glassbox.steering.plan import SteeringPlan

if TYPE_CHECKING:
    from glassbox.engine.llm_engine import LLMEngine


@dataclass
class BeamSearchParams:
    num_beams: int = 4
    max_new_tokens: int = 16  # new tokens after the state's (the API's `max_length`)
    length_penalty: float = 1.0
    num_beam_groups: int = 1
    diversity_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    early_stopping: bool | Literal["never"] = False
    num_return_sequences: int = 1
    steering: SteeringPlan | None = None  # every beam runs under this plan
    keep_kv: bool = False  # keep the best hypothesis's KV (see `BeamSearch.take_kv`)

    def __post_init__(self) -> None:
        checks = [
            (self.num_beams >= 1, "num_beams", "num_beams must be at least 1"),
            (self.max_new_tokens >= 1, "max_new_tokens", "max_new_tokens must be at least 1"),
            (
                math.isfinite(self.length_penalty),
                "length_penalty",
                "length_penalty must be a finite number",
            ),
            (
                self.num_beam_groups >= 1 and self.num_beams % self.num_beam_groups == 0,
                "num_beam_groups",
                f"num_beam_groups must divide num_beams ({self.num_beams}) into equal groups",
            ),
            (
                math.isfinite(self.diversity_penalty) and self.diversity_penalty >= 0,
                "diversity_penalty",
                "diversity_penalty must be a number >= 0",
            ),
            (
                not self.diversity_penalty or self.num_beam_groups > 1,
                "diversity_penalty",
                "diversity_penalty acts between groups: set num_beam_groups > 1",
            ),
            (
                self.no_repeat_ngram_size >= 0,
                "no_repeat_ngram_size",
                "no_repeat_ngram_size must be >= 0 (0 turns it off)",
            ),
            (
                self.early_stopping in (True, False, "never"),
                "early_stopping",
                'early_stopping must be true, false or "never"',
            ),
            (
                1 <= self.num_return_sequences <= self.num_beams,
                "num_return_sequences",
                f"num_return_sequences must be between 1 and num_beams ({self.num_beams})",
            ),
        ]
        for ok, param, message in checks:
            if not ok:
                raise RequestRejected(message, param=param)

    @property
    def group_size(self) -> int:
        return self.num_beams // self.num_beam_groups


@dataclass
class Hypothesis:
    token_ids: list[int]  # the new tokens; the eos token included when one ended the beam
    text: str
    score: float  # sum of the new tokens' logprobs / len(token_ids) ** length_penalty
    finish_reason: str  # stop | length | steering_abort
    group: int


@dataclass
class _Beam:
    seq: Sequence
    score: float  # sum of the new tokens' logprobs (diversity penalties included)


@dataclass
class _Finished:
    score: float
    token_ids: tuple[int, ...]  # the state's tokens and the new ones
    reason: str
    kv: KVHandle | None


@dataclass
class _Group:
    index: int
    beams: list[_Beam] = field(default_factory=list)
    finished: list[_Finished] = field(default_factory=list)  # best first
    done: bool = False


class BeamSearch:
    """Beam search from `handle`, which it takes over; everything it holds is released when
    it finishes or on `close()`. Call `step()` and `close()` on the engine thread only."""

    def __init__(self, engine: LLMEngine, handle: KVHandle, params: BeamSearchParams):
        self.engine = engine
        self.params = params
        self.done = False
        self.hypotheses: list[Hypothesis] = []  # best first, once done
        self._bm = engine.block_manager
        self._handle: KVHandle | None = handle
        self._prompt_len = len(handle.token_ids)
        self._limit = min(params.max_new_tokens, engine.config.max_model_len - self._prompt_len)
        self._num_new = 0  # tokens every running beam has generated so far
        self._sampling = SamplingParams(
            max_tokens=params.max_new_tokens, temperature=0.0, steering=params.steering
        )
        self._groups = [_Group(g) for g in range(params.num_beam_groups)]
        self._live: list[Sequence] = []  # every sequence that may hold blocks
        self._kv: KVHandle | None = None

    def step(self) -> bool:
        """Run one step of every live beam; True once the search is done."""
        if self.done:
            return True
        try:
            if self._handle is not None:
                self._start()
            batch = list({id(b.seq): b.seq for g in self._groups for b in g.beams}.values())
            # Decode steps only: the first one computes the state's last token, as the
            # engine does for any continued state (the same kernels, the same numbers).
            logits, aborted = self.engine.runner.run(batch, False)
            for seq in batch:
                seq.num_computed_tokens = len(seq)
            self.engine.stats.generation_tokens += len(batch)  # every beam's next token
            rows = {seq.seq_id: i for i, seq in enumerate(batch)}
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            chosen: list[int] = []  # tokens the running beams of earlier groups chose now
            picks: list[tuple[_Group, Sequence, int, float]] = []
            for group in self._groups:
                if not group.done:
                    self._advance(group, logprobs, rows, aborted, chosen, picks)
            self._num_new += 1
            self._fork(batch, picks)
            if all(g.done for g in self._groups):
                self._finish()
        except BaseException:
            self.close()
            raise
        return self.done

    def take_kv(self) -> KVHandle | None:
        """The best hypothesis's KV (with `keep_kv`), once done; the caller owns it then."""
        kv, self._kv = self._kv, None
        return kv

    def close(self) -> None:
        """Release every block the search still holds (idempotent)."""
        bm = self._bm
        if self._handle is not None:
            bm.release(self._handle)
            self._handle = None
        for seq in self._live:
            bm.free_sequence(seq)
        self._live = []
        for group in self._groups:
            group.beams = []
            for f in group.finished:
                if f.kv is not None:
                    bm.release(f.kv)
            group.finished = []
        if self._kv is not None:
            bm.release(self._kv)
            self._kv = None
        self.done = True

    # --- steps ---------------------------------------------------------------------------

    def _start(self) -> None:
        """The first step's single beam: the state's tokens, only the last one computed (its
        full blocks shared with the state, the partial last one copied)."""
        handle, self._handle = self._handle, None
        if self._limit < 1:
            self._bm.release(handle)
            raise PromptTooLong(
                f"the state has {self._prompt_len} tokens; this model's context is "
                f"{self.engine.config.max_model_len} tokens: no room for new ones"
            )
        seq = Sequence(list(handle.token_ids), self._sampling, self._bm.block_size, handle)
        if not self._bm.can_allocate(seq):
            self._bm.release(handle)
            raise OutOfBlocks("not enough free KV blocks to start the beam search now")
        self._bm.allocate(seq)
        self._bm.release(handle)
        seq.prefix = None
        self.engine.stats.prompt_tokens += len(seq)
        self.engine.stats.prefix_cached_tokens += seq.num_cached_tokens
        self._live = [seq]
        for group in self._groups:
            group.beams = [_Beam(seq, 0.0)]

    def _advance(
        self,
        group: _Group,
        logprobs: torch.Tensor,
        rows: dict[int, int],
        aborted: dict[int, int],
        chosen: list[int],
        picks: list[tuple[_Group, Sequence, int, float]],
    ) -> None:
        """Choose the group's continuations and finished hypotheses for this step."""
        p = self.params
        size = p.group_size
        beams = []
        for beam in group.beams:
            if rows[beam.seq.seq_id] not in aborted:
                beams.append(beam)
            elif self._num_new:  # a steering scope ended this beam: keep what it made
                length = self._num_new
                self._offer(group, beam.seq, None, beam.score, length, STEERING_ABORT)
        group.beams = []
        if not beams:
            group.done = True
            return
        scores = logprobs[[rows[b.seq.seq_id] for b in beams]]
        if p.no_repeat_ngram_size:
            for i, beam in enumerate(beams):
                banned = _repeated_ngram_ends(beam.seq.token_ids, p.no_repeat_ngram_size)
                scores[i, banned] = float("-inf")
        if p.diversity_penalty and chosen:
            counts = torch.bincount(torch.tensor(chosen), minlength=scores.shape[1])
            scores -= p.diversity_penalty * counts.to(scores.dtype)
        scores += torch.tensor([b.score for b in beams], dtype=scores.dtype)[:, None]
        vocab = scores.shape[1]
        eos = self.engine.eos_token_ids
        k = min(max(2, 1 + len(eos)) * size, scores.numel())
        top, flat = torch.topk(scores.flatten(), k)
        length = self._num_new + 1
        at_limit = length >= self._limit
        running: list[tuple[Sequence, int, float]] = []
        for rank, (score, index) in enumerate(zip(top.tolist(), flat.tolist(), strict=True)):
            if score == float("-inf"):
                break
            parent, token = beams[index // vocab].seq, index % vocab
            if token in eos or at_limit:
                if rank < size:
                    reason = "stop" if token in eos else "length"
                    self._offer(group, parent, token, score, length, reason)
            elif len(running) < size:
                running.append((parent, token, score))
        chosen.extend(token for _, token, _ in running)
        group.done = not running or at_limit or self._cannot_improve(group, running[0][2])
        if not group.done:
            picks.extend((group, parent, token, score) for parent, token, score in running)

    def _cannot_improve(self, group: _Group, best_running: float) -> bool:
        """HF's stopping rule, once the group has as many hypotheses as beams."""
        p = self.params
        if len(group.finished) < p.group_size:
            return False
        if p.early_stopping is True:
            return True
        length = self._num_new + 1
        if p.early_stopping == "never" and p.length_penalty > 0:
            length = self._limit
        return best_running / length**p.length_penalty <= group.finished[-1].score

    def _offer(
        self,
        group: _Group,
        parent: Sequence,
        token: int | None,
        score: float,
        length: int,
        reason: str,
    ) -> None:
        """Keep `parent` + `token` among the group's best `group_size` hypotheses if it is
        one of them (with its KV: the parent's blocks, when the search keeps KV)."""
        size = self.params.group_size
        score /= length**self.params.length_penalty
        if len(group.finished) == size and score <= group.finished[-1].score:
            return
        tokens = tuple(parent.token_ids) + (() if token is None else (token,))
        kv = self._bm.hold(tokens, parent.block_table) if self.params.keep_kv else None
        group.finished.append(_Finished(score, tokens, reason, kv))
        group.finished.sort(key=lambda f: f.score, reverse=True)
        for dropped in group.finished[size:]:
            if dropped.kv is not None:
                self._bm.release(dropped.kv)
        del group.finished[size:]

    def _fork(self, batch: list[Sequence], picks: list[tuple[_Group, Sequence, int, float]]):
        """Turn this step's picks into the next step's beams. A parent's last child takes its
        blocks over; its other children share the full blocks and copy the partial one."""
        bm = self._bm
        children: dict[int, list[tuple[_Group, int, float]]] = {}
        for group, parent, token, score in picks:
            children.setdefault(parent.seq_id, []).append((group, token, score))
        for seq in batch:
            if seq.seq_id not in children:
                bm.free_sequence(seq)
        needed = sum(len(kids) - 1 for kids in children.values())
        needed += sum(1 for s in batch if s.seq_id in children and len(s) % bm.block_size == 0)
        if needed > bm.num_free:
            raise OutOfBlocks("the KV pool ran out of free blocks during the beam search")
        for seq in batch:
            kids = children.get(seq.seq_id)
            if kids is None:
                continue
            for group, token, score in kids[:-1]:
                tokens = seq.token_ids + [token]
                lease = bm.hold(tokens, seq.block_table)
                child = Sequence(tokens, self._sampling, bm.block_size, lease)
                self._live.append(child)
                bm.allocate(child)
                bm.release(lease)
                child.prefix = None
                group.beams.append(_Beam(child, score))
            group, token, score = kids[-1]
            seq.append(token)
            bm.may_append(seq)
            group.beams.append(_Beam(seq, score))
        self._live = [b.seq for g in self._groups for b in g.beams]

    def _finish(self) -> None:
        """Rank every group's hypotheses; keep the best one's KV if asked; release the rest."""
        ranked = sorted(
            ((f, g.index) for g in self._groups for f in g.finished),
            key=lambda item: item[0].score,
            reverse=True,
        )[: self.params.num_return_sequences]
        best_kv = None
        if ranked:
            best_kv, ranked[0][0].kv = ranked[0][0].kv, None
        tokenizer = self.engine.tokenizer
        for f, group in ranked:
            new = list(f.token_ids[self._prompt_len :])
            text = tokenizer.decode(new[:-1] if f.reason == "stop" else new)
            self.hypotheses.append(Hypothesis(new, text, f.score, f.reason, group))
        self.close()
        self._kv = best_kv


def _repeated_ngram_ends(tokens: list[int], n: int) -> list[int]:
    """The tokens that would complete an n-gram already in `tokens` (HF's
    NoRepeatNGramLogitsProcessor: the n-gram's first n - 1 tokens are the last n - 1)."""
    if len(tokens) + 1 < n:
        return []
    head = tokens[len(tokens) - n + 1 :]
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i : i + n - 1] == head]
