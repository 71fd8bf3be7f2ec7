"""Turns scheduled sequences into tensors, runs the forward pass over the paged KV pool and
returns the next-token logits of each sequence."""

from __future__ import annotations

import torch

from glassbox.engine.sequence import Sequence
from glassbox.models.llama import AttentionMetadata, LayerHook, LlamaModel


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int):
        self.model = model
        self.block_size = block_size
        c = model.config
        # Per layer: [block, offset in block, keys then values of each KV head, head_dim].
        shape = (num_blocks, block_size, 2 * c.num_kv_heads, c.head_dim)
        self.kv_cache = [torch.zeros(shape) for _ in range(c.num_layers)]

    @staticmethod
    def kv_bytes_per_block(model: LlamaModel, block_size: int) -> int:
        return model.config.kv_bytes_per_token() * block_size

    def _slots(self, block_table: list[int], start: int, end: int) -> torch.Tensor:
        pos = torch.arange(start, end)
        table = torch.tensor(block_table, dtype=torch.long)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    @torch.inference_mode()
    def run(
        self, seqs: list[Sequence], is_prefill: bool, hook: LayerHook | None = None
    ) -> torch.Tensor:
        if is_prefill:
            input_ids, positions, attn, last = self._prepare_prefill(seqs)
        else:
            input_ids, positions, attn = self._prepare_decode(seqs)
            last = None
        hidden = self.model.forward(input_ids, positions, attn, self.kv_cache, hook)
        if last is not None:
            hidden = hidden[last]
        return self.model.logits(hidden)

    def _prepare_prefill(self, seqs: list[Sequence]):
        ids: list[int] = []
        positions: list[torch.Tensor] = []
        slot_mapping: list[torch.Tensor] = []
        spans = []
        last: list[int] = []
        for seq in seqs:
            start, end = seq.num_computed_tokens, len(seq)
            q_start = len(ids)
            ids.extend(seq.token_ids[start:end])
            positions.append(torch.arange(start, end))
            slot_mapping.append(self._slots(seq.block_table, start, end))
            blocks = torch.tensor(seq.block_table, dtype=torch.long)
            spans.append((q_start, len(ids), blocks, end, start))
            last.append(len(ids) - 1)
        attn = AttentionMetadata(slot_mapping=torch.cat(slot_mapping), prefill_spans=spans)
        return (
            torch.tensor(ids, dtype=torch.long),
            torch.cat(positions),
            attn,
            torch.tensor(last, dtype=torch.long),
        )

    def _prepare_decode(self, seqs: list[Sequence]):
        bs = self.block_size
        lens = [len(s) for s in seqs]
        width = max(len(s.block_table) for s in seqs)
        table = torch.tensor([s.block_table + [0] * (width - len(s.block_table)) for s in seqs])
        positions = torch.tensor(lens, dtype=torch.long) - 1
        slot_mapping = torch.tensor(
            [
                s.block_table[(n - 1) // bs] * bs + (n - 1) % bs
                for s, n in zip(seqs, lens, strict=True)
            ]
        )
        kv_mask = torch.arange(width * bs)[None, :] <= positions[:, None]
        attn = AttentionMetadata(
            slot_mapping=slot_mapping, block_table=table, kv_mask=kv_mask[:, None, None, :]
        )
        input_ids = torch.tensor([s.token_ids[-1] for s in seqs], dtype=torch.long)
        return input_ids, positions, attn
