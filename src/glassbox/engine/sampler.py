"""Per-row sampling: every sequence in the batch brings its own parameters and generator.

Logprobs are those of the model's own distribution (log-softmax of the raw logits, as vLLM
reports them), not of the distribution after penalties, temperature and grammar masks.

Order of the adjustments of a row: penalties, logit_bias, then the grammar's mask (nothing
re-allows a token the grammar forbids), then temperature and top-k/top-p/min-p.
"""

from __future__ import annotations

import torch

from glassbox.engine.grammar import RowMask, apply_masks
from glassbox.engine.sequence import Sequence, TokenLogprob


def apply_penalties(logits: torch.Tensor, seq: Sequence) -> torch.Tensor:
    """OpenAI presence/frequency penalties on generated tokens; HF-style repetition penalty
    on prompt and generated tokens alike."""
    p = seq.params
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long)
        vals = logits[seen]
        logits[seen] = torch.where(
            vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty
        )
    if seq.output_counts and (p.presence_penalty or p.frequency_penalty):
        ids = torch.tensor(list(seq.output_counts.keys()), dtype=torch.long)
        counts = torch.tensor(list(seq.output_counts.values()), dtype=logits.dtype)
        logits[ids] -= counts * p.frequency_penalty + p.presence_penalty
    return logits


TOP_P_CANDIDATES = 1024


def _filter(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Mask tokens outside top_k / top_p / min_p (one row, temperature already applied)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.max(), float("-inf"))
    if top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p (the first
        # token always stays). That set lies within the TOP_P_CANDIDATES most likely tokens
        # whenever their mass reaches top_p (nearly always): a top-k of those costs a tenth
        # of sorting the whole vocabulary. Otherwise the whole vocabulary is sorted.
        probs = torch.softmax(logits, dim=-1)
        k = min(TOP_P_CANDIDATES, probs.shape[-1])
        mass, order = torch.topk(probs, k)
        if k < probs.shape[-1] and float(mass.sum()) < top_p:
            mass, order = torch.sort(probs, descending=True)
        keep = (mass.cumsum(-1) - mass) < top_p
        kept = torch.zeros_like(logits, dtype=torch.bool).index_fill_(0, order[keep], True)
        logits = logits.masked_fill(~kept, float("-inf"))
    return logits


class Sampler:
    def __call__(
        self,
        logits: torch.Tensor,
        seqs: list[Sequence],
        masks: list[RowMask] | None = None,
        masked_rows: list[int] | None = None,
    ) -> tuple[list[int], list[TokenLogprob | None]]:
        """One token per row; `masks[k]` (grammar.py) constrains row `masked_rows[k]`."""
        raw_logprobs = None
        if any(s.params.logprobs is not None for s in seqs):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        tokens = self._sample(logits, seqs, masks or [], masked_rows or [])
        infos: list[TokenLogprob | None] = []
        for i, seq in enumerate(seqs):
            k = seq.params.logprobs
            if k is None:
                infos.append(None)
                continue
            row = raw_logprobs[i]
            top: list[tuple[int, float]] = []
            if k > 0:
                vals, ids = torch.topk(row, k)
                top = list(zip(ids.tolist(), vals.tolist(), strict=True))
            infos.append(TokenLogprob(tokens[i], float(row[tokens[i]]), top))
        return tokens, infos

    def _sample(
        self,
        logits: torch.Tensor,
        seqs: list[Sequence],
        masks: list[RowMask],
        masked_rows: list[int],
    ) -> list[int]:
        """One token per row. Rows are processed together where they can be (one argmax for
        the greedy rows, one softmax and cumsum for the sampled ones: per-row calls cost
        ~0.15 ms each over a 50k vocabulary), and every op works row by row, so a row's token
        does not depend on the other rows."""
        adjusted = {i: self._adjusted(logits[i], s) for i, s in enumerate(seqs) if _adjusts(s)}
        if adjusted or masked_rows:
            logits = logits.clone()
            for i, row in adjusted.items():
                logits[i] = row
        if masked_rows:
            apply_masks(logits, masks, masked_rows)
        tokens = [0] * len(seqs)
        greedy = [i for i, s in enumerate(seqs) if s.params.greedy]
        if greedy:
            picked = logits[greedy].argmax(dim=-1).tolist()
            for i, token in zip(greedy, picked, strict=True):
                tokens[i] = token
        sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
        if sampled:
            params = [seqs[i].params for i in sampled]
            temperatures = torch.tensor([p.temperature for p in params], dtype=logits.dtype)
            scaled = logits[sampled] / temperatures[:, None]
            for j, p in enumerate(params):
                if p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0:
                    scaled[j] = _filter(scaled[j], p.top_k, p.top_p, p.min_p)
            # Inverse CDF with one uniform draw per row from the row's own generator:
            # torch.multinomial and the exponential race each cost ~2 ms over a 50k
            # vocabulary on CPU; this costs a cumsum.
            cdf = torch.softmax(scaled, dim=-1).cumsum(-1)
            draws = torch.cat([torch.rand(1, generator=seqs[i].generator) for i in sampled])
            u = (draws * cdf[:, -1]).unsqueeze(-1)
            picked = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
            for i, token in zip(sampled, picked.view(-1).tolist(), strict=True):
                tokens[i] = token
        return tokens

    @staticmethod
    def _adjusted(row: torch.Tensor, seq: Sequence) -> torch.Tensor:
        """A copy of the row after the sequence's penalties and logit_bias."""
        p = seq.params
        row = row.clone()
        if p.needs_penalties:
            row = apply_penalties(row, seq)
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias.keys()), dtype=torch.long)
            row[ids] += torch.tensor(list(p.logit_bias.values()), dtype=row.dtype)
        return row


def _adjusts(seq: Sequence) -> bool:
    return seq.params.needs_penalties or bool(seq.params.logit_bias)
