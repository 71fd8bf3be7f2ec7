"""The engine loop: schedule -> run -> sample -> postprocess, one step at a time.

`LLMEngine` is synchronous and single-threaded (tests and benchmarks drive it directly);
`AsyncLLMEngine` in async_engine.py runs it on its own thread for the server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from glassbox.engine.block_manager import BlockManager, KVHandle
from glassbox.engine.detokenizer import IncrementalDetokenizer
from glassbox.engine.errors import OutOfBlocks, PromptTooLong, RequestRejected
from glassbox.engine.grammar import GRAMMAR_FAILED, MaskFiller
from glassbox.engine.model_runner import ModelRunner
from glassbox.engine.readout import ReadoutHook, TokenFeatures
from glassbox.engine.sampler import Sampler
from glassbox.engine.scheduler import Scheduler
from glassbox.engine.sequence import STEERING_ABORT, SamplingParams, Sequence, TokenLogprob
from glassbox.models.layers import PrefillWeights, WeightFormat
from glassbox.models.llama import LlamaModel
from glassbox.models.tokenizer import Tokenizer
from glassbox.steering.plan import SteeringPlan

log = logging.getLogger(__name__)

# The prompt tokens of a prefill step while other sequences decode (a chunk). Smaller chunks
# shorten the stall of every running stream but cost the long prompt no more time on CPU:
# the dense bf16 matmuls of a prefill run at full speed from ~64 rows, and a 4,000-token
# prompt alone took 12.95 s in one step, 14.5 s in chunks of 512, 14.2 s in chunks of 256
# (SmolLM2-135M, one thread of an AMD EPYC with AVX512-BF16). There, with 4 streams decoding
# (~24 ms a step), chunks of 256 cut their worst wait during that prompt's arrival from
# 13.1 s to 1.4 s (0.9 s median: a chunk late in a long prompt attends to more keys), and
# the prompt's first token came 1.08x later than in one step. benchmarks/chunked_prefill.py
# measures both.
PREFILL_CHUNK_TOKENS = 256


@dataclass
class EngineConfig:
    block_size: int = 16
    num_blocks: int = 1024
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 4096
    max_model_len: int = 2048
    # Most prompt tokens in a prefill step while other sequences decode: each running stream
    # waits up to one such step between two of its tokens (see Scheduler).
    prefill_chunk_tokens: int = PREFILL_CHUNK_TOKENS


@dataclass
class StepOutput:
    """What one sequence produced in one step."""

    seq_id: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    kv: KVHandle | None = None  # the finished sequence's KV when its params asked to keep it
    abort_scope: int | None = None  # with STEERING_ABORT: the index of the scope in the plan
    # With params.readout: per token of token_ids, its top features (beside logprobs)
    features: list[TokenFeatures] = field(default_factory=list)


@dataclass
class EngineStats:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_cached_tokens: int = 0
    steps: int = 0
    finished: dict[str, int] = field(default_factory=dict)


class LLMEngine:
    def __init__(self, model: LlamaModel, tokenizer: Tokenizer, config: EngineConfig):
        self.model = model
        self.tokenizer = tokenizer
        pool_tokens = config.num_blocks * config.block_size
        if config.max_model_len > pool_tokens:
            # A sequence longer than the pool could never be scheduled: it would wait forever.
            log.warning("KV pool holds %d tokens: max_model_len lowered from %d",
                        pool_tokens, config.max_model_len)  # fmt: skip
            config = replace(config, max_model_len=pool_tokens)
        self.config = config
        self.runner = ModelRunner(model, config.num_blocks, config.block_size)
        self.block_manager = BlockManager(
            config.num_blocks, config.block_size, self.runner.copy_block
        )
        self.scheduler = Scheduler(
            self.block_manager,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            config.prefill_chunk_tokens,
        )
        self.sampler = Sampler()
        self.masks = MaskFiller(model.config.vocab_size)
        self.eos_token_ids = set(model.config.eos_token_ids)
        if tokenizer.hf.eos_token_id is not None:
            self.eos_token_ids.add(tokenizer.hf.eos_token_id)
        self.seqs: dict[int, Sequence] = {}
        self.detokenizers: dict[int, IncrementalDetokenizer] = {}
        self.stats = EngineStats()

    @classmethod
    def load(
        cls,
        directory: Path,
        weight_format: WeightFormat,
        *,
        prefill_weights: PrefillWeights = "bfloat16",
        block_size: int = 16,
        kv_cache_bytes: int = 512 * 1024 * 1024,
        max_num_seqs: int = 32,
        max_num_batched_tokens: int = 4096,
        prefill_chunk_tokens: int = PREFILL_CHUNK_TOKENS,
        max_model_len: int | None = None,
    ) -> LLMEngine:
        """Load the model in `directory` (an HF-layout directory) and size the KV pool to
        `kv_cache_bytes`; `max_model_len` defaults to the model's own context."""
        model = LlamaModel.load(directory, weight_format, prefill_weights)
        tokenizer = Tokenizer(directory)
        block_bytes = ModelRunner.kv_bytes_per_block(model, block_size)
        config = EngineConfig(
            block_size=block_size,
            num_blocks=max(kv_cache_bytes // block_bytes, 1),
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            prefill_chunk_tokens=prefill_chunk_tokens,
            max_model_len=max_model_len or model.config.max_position_embeddings,
        )
        return cls(model, tokenizer, config)

    def warm_up(self) -> None:
        """One short generation, so that the first request does not pay for the kernels'
        first-call set-up."""
        ids = list(range(min(8, self.model.config.vocab_size)))
        self.generate([ids], SamplingParams(max_tokens=2, ignore_eos=True))

    def add_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        prefix: KVHandle | None = None,
    ) -> Sequence:
        """Queue a sequence. With `prefix` (a handle the sequence takes over and releases
        when it ends), the prompt starts with the prefix's tokens and only the rest of it is
        computed."""
        try:
            self._validate(prompt_token_ids, params)
            ids = prompt_token_ids
            if prefix is not None and (len(prefix.token_ids) > len(ids) or not _agree(ids, prefix)):
                raise RequestRejected(
                    "the prompt does not start with the prefix's tokens", param="prompt"
                )
        except RequestRejected:
            if prefix is not None:
                self.block_manager.release(prefix)
            raise
        seq = Sequence(prompt_token_ids, params, self.config.block_size, prefix)
        self.seqs[seq.seq_id] = seq
        self.detokenizers[seq.seq_id] = IncrementalDetokenizer(
            self.tokenizer, prompt_token_ids, params.stop, params.skip_special_tokens
        )
        self.scheduler.add(seq)
        return seq

    def _validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Reject what would fail inside a step, where it would take the batch down with it."""
        vocab = self.model.config.vocab_size
        if not prompt_token_ids:
            raise RequestRejected("the prompt is empty", param="prompt")
        if len(prompt_token_ids) >= self.config.max_model_len:
            raise PromptTooLong(
                f"the prompt has {len(prompt_token_ids)} tokens; this model's context is "
                f"{self.config.max_model_len} tokens",
                param="prompt",
            )
        for what, param, ids in (
            ("prompt token id", "prompt", prompt_token_ids),
            ("logit_bias token id", "logit_bias", params.logit_bias.keys()),
            ("stop_token_ids entry", "stop_token_ids", params.stop_token_ids),
        ):
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise RequestRejected(
                    f"{what} {bad[0]} is outside the vocabulary [0, {vocab})", param=param
                )
        if params.max_tokens < 1:
            raise RequestRejected("max_tokens must be at least 1", param="max_tokens")
        if params.temperature < 0:
            raise RequestRejected("temperature must be >= 0", param="temperature")

    def abort(self, seq_id: int) -> StepOutput | None:
        seq = self.seqs.get(seq_id)
        if seq is None:
            return None
        return self._finish(seq, "abort", [], [])

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list[StepOutput]:
        """One step; an output for every sequence that got a token or finished. A sequence
        that only prefilled a chunk of its prompt gets neither, and no output."""
        seqs, is_prefill = self.scheduler.schedule()
        if not seqs:
            return []
        ready = [s for s in seqs if s.chunk_end == len(s)]  # the rows `logits` will have
        masked_rows = [i for i, s in enumerate(ready) if s.matcher is not None]
        pending = self.masks.start([ready[i].matcher for i in masked_rows])
        readout = ReadoutHook.of([s.params.readout for s in ready])
        logits, aborted = self.runner.run(seqs, is_prefill, readout=readout)
        masks = self.masks.result(pending) if pending is not None else None
        tokens, infos = self.sampler(logits, ready, masks, masked_rows)
        read = readout.results() if readout is not None else {}
        sampled = {
            s.seq_id: (t, i, read.get(row))
            for row, (s, t, i) in enumerate(zip(ready, tokens, infos, strict=True))
        }
        self.stats.steps += 1
        outputs = []
        for row, seq in enumerate(seqs):
            seq.num_computed_tokens = seq.chunk_end
            seq.num_scheduled_tokens = None
            if seq.num_output_tokens == 0 and (seq.seq_id in sampled or row in aborted):
                # its prompt ran (a prefill, or a state's last token)
                self.stats.prompt_tokens += seq.num_prompt_tokens
                self.stats.prefix_cached_tokens += seq.num_cached_tokens
            if row in aborted:
                # A steering scope's abort condition held (mid-prompt too): end it without a
                # new token.
                seq.abort_scope = aborted[row]
                outputs.append(self._finish(seq, STEERING_ABORT, [], []))
            elif seq.seq_id in sampled:
                outputs.append(self._postprocess(seq, *sampled[seq.seq_id]))
        return outputs

    def _postprocess(
        self,
        seq: Sequence,
        token: int,
        info: TokenLogprob | None,
        features: TokenFeatures | None,
    ) -> StepOutput:
        p = seq.params
        seq.append(token)
        self.stats.generation_tokens += 1
        infos = [info] if info is not None else []
        read = [features] if features is not None else []
        detok = self.detokenizers[seq.seq_id]
        reason = None
        if (not p.ignore_eos and token in self.eos_token_ids) or token in p.stop_token_ids:
            reason = "stop"
        elif seq.matcher is not None and not seq.matcher.consume(token):
            log.warning("grammar matcher failed")  # its error may quote generated text:
            log.debug("grammar matcher error: %s", seq.matcher.error())
            reason = GRAMMAR_FAILED
        else:
            detok.add(token)
            if detok.stopped or (seq.matcher is not None and seq.matcher.is_stopped()):
                reason = "stop"
        if reason is None and (
            seq.num_output_tokens >= p.max_tokens or len(seq) >= self.config.max_model_len
        ):
            reason = "length"
        if reason is not None:
            return self._finish(seq, reason, [token], infos, read)
        return StepOutput(
            seq.seq_id, detok.take(), [token], infos, None,
            seq.num_prompt_tokens, seq.num_output_tokens, seq.num_cached_tokens, features=read,
        )  # fmt: skip

    def _finish(
        self,
        seq: Sequence,
        reason: str,
        tokens: list[int],
        infos: list[TokenLogprob],
        features: list[TokenFeatures] | None = None,
    ) -> StepOutput:
        kv = None
        keep = seq.params.keep_kv and reason != "abort" and seq.block_table
        if keep and seq.num_computed_tokens >= len(seq) - 1:
            kv = self.block_manager.hold(seq.token_ids, seq.block_table)
        cached = seq.num_cached_tokens  # finishing frees the blocks and clears it
        self.scheduler.finish(seq, reason)
        detok = self.detokenizers.pop(seq.seq_id)
        del self.seqs[seq.seq_id]
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        return StepOutput(
            seq.seq_id, detok.take(final=True), tokens, infos, reason,
            seq.num_prompt_tokens, seq.num_output_tokens, cached, kv, seq.abort_scope,
            features or [],
        )  # fmt: skip

    # --- KV states: handles on computed KV (engine thread only) ---------------------------

    def prefill_kv(self, token_ids: list[int], prefix: KVHandle | None = None) -> KVHandle:
        """Compute the KV of `token_ids[:-1]` now (the last token is left for whoever
        continues) and return a handle on it. Full blocks already in the prefix cache, or
        in `prefix` (borrowed, not taken over), are shared instead of computed."""
        self._validate(token_ids, SamplingParams())
        bm = self.block_manager
        if prefix is not None and not _agree(token_ids, prefix):
            raise RequestRejected("the tokens differ from the prefix's tokens where they overlap")
        if prefix is not None and len(prefix.token_ids) >= len(token_ids):
            return bm.share(prefix, len(token_ids))
        if len(token_ids) == 1:
            return KVHandle(tuple(token_ids), ())
        lease = bm.share(prefix) if prefix is not None else None
        seq = Sequence(token_ids[:-1], SamplingParams(), self.config.block_size, lease)
        try:
            if not bm.can_allocate(seq):
                raise OutOfBlocks("not enough free KV blocks for this prompt now")
            bm.allocate(seq)
            if seq.num_computed_tokens < len(seq):
                self.runner.run([seq], True)
            self.stats.prompt_tokens += len(seq) - seq.num_computed_tokens
            return bm.hold(token_ids, seq.block_table)
        finally:
            bm.free_sequence(seq)
            if lease is not None:
                bm.release(lease)

    def read_kv(self, handle: KVHandle) -> torch.Tensor:
        """A copy of the handle's KV: [layers, num_kv, 2 * kv_heads, head_dim]."""
        return self.runner.read_kv(list(handle.block_ids), handle.num_kv)

    def load_kv(self, token_ids: list[int], kv: torch.Tensor) -> KVHandle:
        """Put KV read by `read_kv` (or from a file) back into fresh blocks of the pool."""
        self._validate(token_ids, SamplingParams())
        expected = self.runner.kv_shape(len(token_ids) - 1)
        if tuple(kv.shape) != expected:
            raise RequestRejected(
                f"KV of shape {tuple(kv.shape)} does not fit: expected {expected}"
            )
        n = (len(token_ids) - 1 + self.config.block_size - 1) // self.config.block_size
        block_ids = self.block_manager.take_blocks(n)
        self.runner.write_kv(block_ids, kv)
        return KVHandle(tuple(token_ids), tuple(block_ids))

    def capture(
        self,
        prompts: list[list[int]],
        layers: set[int],
        steering: SteeringPlan | None = None,
    ) -> tuple[list[dict[int, torch.Tensor]], torch.Tensor]:
        """Run prompts once (no generation) and return, per prompt, the residual stream after
        each of `layers` at every position ({layer: [T, hidden]}), and the next-token logits
        [B, vocab] of each prompt. With `steering`, every prompt runs under that plan.

        Not thread-safe against `step()`: in the server it runs on the engine thread
        (AsyncLLMEngine.call)."""
        for ids in prompts:
            self._validate(ids, SamplingParams())
        params = SamplingParams(steering=steering)
        seqs = [Sequence(ids, params, self.config.block_size) for ids in prompts]
        if sum(s.num_blocks for s in seqs) > self.block_manager.num_free:
            raise OutOfBlocks("not enough free KV blocks to capture these prompts now")
        captured: dict[int, torch.Tensor] = {}

        def hook(layer: int, h: torch.Tensor) -> torch.Tensor:
            if layer in layers:
                captured[layer] = h.clone()
            return h

        try:
            for seq in seqs:
                self.block_manager.allocate(seq, use_cache=False)
            logits, _ = self.runner.run(seqs, True, hook)
        finally:
            for seq in seqs:
                self.block_manager.free_sequence(seq)
        sizes = [len(s) for s in seqs]
        per_layer = {layer: h.split(sizes) for layer, h in captured.items()}
        per_prompt = [
            {layer: parts[i] for layer, parts in per_layer.items()} for i in range(len(seqs))
        ]
        return per_prompt, logits

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[dict]:
        """Run prompts to completion; returns text and token ids per prompt, in order."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        order = [self.add_request(p, sp).seq_id for p, sp in zip(prompts, params, strict=True)]
        results: dict[int, dict] = {i: {"text": "", "token_ids": []} for i in order}
        while self.has_work():
            for out in self.step():
                r = results[out.seq_id]
                r["text"] += out.text
                r["token_ids"] += out.token_ids
                if out.finish_reason:
                    r["finish_reason"] = out.finish_reason
        return [results[i] for i in order]

    def kv_usage(self) -> tuple[int, int]:
        return self.block_manager.num_used, self.block_manager.num_blocks


def _agree(token_ids: list[int], prefix: KVHandle) -> bool:
    """Whether the tokens and the prefix's tokens are the same as far as both go."""
    n = min(len(token_ids), len(prefix.token_ids))
    return tuple(token_ids[:n]) == prefix.token_ids[:n]
