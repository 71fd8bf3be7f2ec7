"""Per-row sampling: every sequence in the batch brings its own parameters and generator.

Logprobs are those of the model's own distribution (log-softmax of the raw logits, as vLLM
reports them), not of the distribution after penalties and temperature.
"""

from __future__ import annotations

import torch

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


def _filter(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Mask tokens outside top_k / top_p / min_p (one row, temperature already applied)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.max(), float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Keep the smallest set whose mass reaches top_p (the first token always stays).
        drop = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        sorted_logits[drop] = float("-inf")
        logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
    return logits


class Sampler:
    def __call__(
        self, logits: torch.Tensor, seqs: list[Sequence]
    ) -> tuple[list[int], list[TokenLogprob | None]]:
        raw_logprobs = None
        if any(s.params.logprobs is not None for s in seqs):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        tokens: list[int] = []
        for i, seq in enumerate(seqs):
            tokens.append(self._sample_row(logits[i], seq))
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

    def _sample_row(self, row: torch.Tensor, seq: Sequence) -> int:
        p = seq.params
        if p.needs_penalties or p.logit_bias:
            row = row.clone()
            if p.needs_penalties:
                row = apply_penalties(row, seq)
            if p.logit_bias:
                ids = torch.tensor(list(p.logit_bias.keys()), dtype=torch.long)
                row[ids] += torch.tensor(list(p.logit_bias.values()), dtype=row.dtype)
        if p.greedy:
            return int(torch.argmax(row))
        row = _filter(row / p.temperature, p.top_k, p.top_p, p.min_p)
        # Inverse CDF with one uniform draw per token: torch.multinomial and the exponential
        # race each cost ~2 ms over a 50k vocabulary on CPU; this costs a cumsum.
        cdf = torch.softmax(row, dim=-1).cumsum(0)
        u = torch.rand(1, generator=seq.generator) * cdf[-1]
        return min(int(torch.searchsorted(cdf, u, right=True)), cdf.shape[0] - 1)
