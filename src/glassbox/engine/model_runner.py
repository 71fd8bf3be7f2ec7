"""Turns scheduled sequences into tensors, runs the forward pass over the paged KV pool and
returns the next-token logits of each sequence."""

from __future__ import annotations

import torch

from glassbox.engine.readout import ReadoutHook
from glassbox.engine.sequence import Sequence
from glassbox.models.llama import AttentionMetadata, LayerHook, LlamaModel
from glassbox.steering.plan import BatchSteering


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int):
        self.model = model
        self.block_size = block_size
        c = model.config
        # Per layer: [block, offset in block, keys then values of each KV head, head_dim].
        shape = (num_blocks, block_size, 2 * c.num_kv_heads, c.head_dim)
        self.kv_cache = [torch.zeros(shape) for _ in range(c.num_layers)]
        self._decode_steering: tuple[tuple[int, ...], BatchSteering] | None = None

    @staticmethod
    def kv_bytes_per_block(model: LlamaModel, block_size: int) -> int:
        return model.config.kv_bytes_per_token() * block_size

    def copy_block(self, src: int, dst: int) -> None:
        for layer in self.kv_cache:
            layer[dst] = layer[src]

    def kv_shape(self, num_tokens: int) -> tuple[int, ...]:
        first = self.kv_cache[0]
        return (len(self.kv_cache), num_tokens, *first.shape[2:])

    def read_kv(self, block_ids: list[int], num_tokens: int) -> torch.Tensor:
        """[layers, num_tokens, 2 * kv_heads, head_dim]: the KV of the first num_tokens
        slots of these blocks, copied out of the pool."""
        index = torch.tensor(block_ids, dtype=torch.long)
        out = torch.empty(self.kv_shape(num_tokens), dtype=self.kv_cache[0].dtype)
        for i, layer in enumerate(self.kv_cache):
            out[i] = layer.index_select(0, index).flatten(0, 1)[:num_tokens]
        return out

    def write_kv(self, block_ids: list[int], kv: torch.Tensor) -> None:
        for i, layer in enumerate(self.kv_cache):
            for j, block_id in enumerate(block_ids):
                part = kv[i, j * self.block_size : (j + 1) * self.block_size]
                layer[block_id, : part.shape[0]] = part

    def _slots(self, block_table: list[int], start: int, end: int) -> torch.Tensor:
        pos = torch.arange(start, end)
        table = torch.tensor(block_table, dtype=torch.long)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    @torch.inference_mode()
    def run(
        self,
        seqs: list[Sequence],
        is_prefill: bool,
        hook: LayerHook | None = None,
        readout: ReadoutHook | None = None,
    ) -> tuple[torch.Tensor, dict[int, int]]:
        """Next-token logits and the rows a steering abort scope stopped (row -> the index of
        that scope in the row's plan).

        A prefill row computes its tokens from `num_computed_tokens` to `chunk_end`; the
        logits [B', vocab] are those of the rows whose tokens are then all computed, in
        order (every row, [B, vocab], unless some prefill only a chunk of their prompt).
        `hook` (e.g. activation capture) sees the residual stream after the rows' steering;
        so does `readout`, whose rows are those of the logits."""
        if is_prefill:
            input_ids, positions, attn, token_rows, last = self._prepare_prefill(seqs)
        else:
            input_ids, positions, attn = self._prepare_decode(seqs)
            token_rows = last = None
        steering = self._steering(seqs, token_rows)
        layer_hook = steering
        for extra in (hook, readout):
            if extra is not None:
                layer_hook = extra if layer_hook is None else _compose(layer_hook, extra)
        if readout is not None:
            readout.bind(last)
        hidden = self.model.forward(input_ids, positions, attn, self.kv_cache, layer_hook)
        aborted = steering.aborted if steering else {}
        if last is not None:
            if not len(last):  # chunks only: no row has its next token yet
                return torch.empty(0, self.model.config.vocab_size), aborted
            hidden = hidden[last]
        # The LM head keeps its quantized kernel even in prefill: it sees one row per
        # sequence there, and that kernel's rows do not depend on the batch.
        return self.model.logits(hidden), aborted

    def _steering(
        self, seqs: list[Sequence], token_rows: torch.Tensor | None
    ) -> BatchSteering | None:
        """The batch's steering hook, or None when no row is steered. `token_rows`: each
        prefill token's row (None in decode steps, one token per row). Decode steps over the
        same rows reuse the previous step's (it holds only the plans' tensors)."""
        plans = [s.params.steering for s in seqs]
        if all(p is None or p.is_empty for p in plans):
            return None
        if token_rows is None:
            key = tuple(s.seq_id for s in seqs)
            if self._decode_steering is not None and self._decode_steering[0] == key:
                steering = self._decode_steering[1]
                steering.aborted = {}
                return steering
            steering = BatchSteering(plans, torch.arange(len(seqs)))
            self._decode_steering = (key, steering)
            return steering
        return BatchSteering(plans, token_rows)

    def _prepare_prefill(self, seqs: list[Sequence]):
        ids: list[int] = []
        positions: list[torch.Tensor] = []
        slot_mapping: list[torch.Tensor] = []
        spans = []
        counts: list[int] = []
        last: list[int] = []  # the last token of each row that needs logits
        for seq in seqs:
            start, end = seq.num_computed_tokens, seq.chunk_end
            q_start = len(ids)
            ids.extend(seq.token_ids[start:end])
            positions.append(torch.arange(start, end))
            slot_mapping.append(self._slots(seq.block_table, start, end))
            # The blocks its keys so far live in: a chunk reads none of its later ones.
            num_blocks = (end + self.block_size - 1) // self.block_size
            blocks = torch.tensor(seq.block_table[:num_blocks], dtype=torch.long)
            spans.append((q_start, len(ids), blocks, end, start))
            counts.append(end - start)
            if end == len(seq):
                last.append(len(ids) - 1)
        attn = AttentionMetadata(slot_mapping=torch.cat(slot_mapping), prefill_spans=spans)
        token_rows = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor(counts))
        return (
            torch.tensor(ids, dtype=torch.long),
            torch.cat(positions),
            attn,
            token_rows,
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
        # Additive (0 / -inf), made once per step: a boolean mask is converted to this by
        # every layer's attention call.
        padding = torch.arange(width * bs)[None, :] > positions[:, None]
        kv_mask = torch.zeros(padding.shape).masked_fill_(padding, float("-inf"))
        blocks = seqs[0].block_table
        consecutive = len(seqs) == 1 and blocks == list(range(blocks[0], blocks[0] + len(blocks)))
        attn = AttentionMetadata(
            slot_mapping=slot_mapping,
            block_table=table,
            kv_mask=kv_mask[:, None, None, :],
            first_block=blocks[0] if consecutive else None,
        )
        input_ids = torch.tensor([s.token_ids[-1] for s in seqs], dtype=torch.long)
        return input_ids, positions, attn


def _compose(first: LayerHook, then: LayerHook) -> LayerHook:
    return lambda layer, h: then(layer, first(layer, h))
