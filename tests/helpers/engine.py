"""Drive the model over the paged KV pool the way the engine does, minus sampling.

Only the engine's public pieces are used (Sequence, BlockManager, ModelRunner.run), so the
tests keep working while the internals of the forward pass and its metadata change.
"""

from __future__ import annotations

import torch

from glassbox.engine.block_manager import BlockManager
from glassbox.engine.model_runner import ModelRunner
from glassbox.engine.sequence import SamplingParams, Sequence
from glassbox.models.llama import LayerHook, LlamaModel


class Driver:
    def __init__(self, model: LlamaModel, num_blocks: int = 64, block_size: int = 4):
        self.block_manager = BlockManager(num_blocks, block_size)
        self.runner = ModelRunner(model, num_blocks, block_size)
        self.block_size = block_size

    def prefill(
        self,
        prompts: list[list[int]],
        hook: LayerHook | None = None,
        params: list[SamplingParams] | None = None,
    ):
        """Allocate and prefill sequences together; next-token logits [B, V] per sequence."""
        params = params or [SamplingParams() for _ in prompts]
        seqs = [Sequence(p, sp, self.block_size) for p, sp in zip(prompts, params, strict=True)]
        for seq in seqs:
            self.block_manager.allocate(seq)
        logits, self.aborted = self.runner.run(seqs, True, hook)
        for seq in seqs:
            seq.num_computed_tokens = len(seq)
        return seqs, logits

    def decode(self, seqs: list[Sequence], tokens: list[int], hook: LayerHook | None = None):
        """Append one token to each sequence and run a decode step over all of them."""
        for seq, tok in zip(seqs, tokens, strict=True):
            seq.append(tok)
            self.block_manager.may_append(seq)
        logits, self.aborted = self.runner.run(seqs, False, hook)
        for seq in seqs:
            seq.num_computed_tokens = len(seq)
        return logits

    def teacher_forced(self, ids: list[int], prompt_len: int = 1) -> torch.Tensor:
        """Logits at every position from `prompt_len - 1` on: prefill then one decode step
        per remaining token of `ids`. Shape [len(ids) - prompt_len + 1, V]."""
        seqs, logits = self.prefill([ids[:prompt_len]])
        rows = [logits[0]]
        for tok in ids[prompt_len:]:
            rows.append(self.decode(seqs, [tok])[0])
        return torch.stack(rows)


@torch.inference_mode()
def hf_logits(hf_model, ids: list[int]) -> torch.Tensor:
    """transformers' logits at every position of `ids`, [T, V] float32."""
    return hf_model(torch.tensor([ids])).logits[0].float()
