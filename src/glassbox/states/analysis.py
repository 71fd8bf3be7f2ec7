"""Looking inside a KV state: how likely each token was, where a layer attends, what the
cache holds.

`token_analysis` and `attention` recompute from the tokens alone (one forward pass with an
activation capture) and run on the engine thread (`AsyncLLMEngine.call`); `cache_summary`
works on KV already read out of the pool (`LLMEngine.read_kv`); `attention_png` renders a
matrix and needs no engine. `StateAnalysis` runs them for stored states.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from glassbox.engine.llm_engine import LLMEngine
from glassbox.errors import InvalidRequest
from glassbox.principal import Principal
from glassbox.requests.builder import about
from glassbox.states.service import StateService


@dataclass
class Alternative:
    token_id: int
    text: str
    logprob: float


@dataclass
class TokenScore:
    """How the model scored the token at `position` given the tokens before it."""

    position: int
    token_id: int
    text: str
    logprob: float
    rank: int  # 1 = the model's top choice
    entropy: float  # of the model's distribution at this position, in nats
    top: list[Alternative]


@dataclass
class TokenAnalysis:
    tokens: list[TokenScore]  # from the second token on: the first has no prediction
    mean_logprob: float | None  # None for a single token
    perplexity: float | None  # exp(-mean_logprob)


@torch.inference_mode()
def token_analysis(engine: LLMEngine, token_ids: list[int], top_k: int) -> TokenAnalysis:
    last = engine.model.config.num_layers - 1
    captured, _ = engine.capture([token_ids], {last})
    logits = engine.model.logits_from_residual(captured[0][last][:-1])
    logprobs = F.log_softmax(logits, dim=-1)  # row i predicts token i + 1
    actual = torch.tensor(token_ids[1:])
    chosen = logprobs.gather(1, actual[:, None])[:, 0]
    ranks = (logprobs > chosen[:, None]).sum(dim=1) + 1
    entropy = -(logprobs.exp() * logprobs).sum(dim=1)
    top_lp, top_ids = logprobs.topk(min(top_k, logprobs.shape[1]), dim=1)
    text = engine.tokenizer.token_str
    tokens = [
        TokenScore(
            position=i + 1,
            token_id=token_ids[i + 1],
            text=text(token_ids[i + 1]),
            logprob=float(chosen[i]),
            rank=int(ranks[i]),
            entropy=float(entropy[i]),
            top=[
                Alternative(int(t), text(int(t)), float(lp))
                for t, lp in zip(top_ids[i], top_lp[i], strict=True)
            ],
        )
        for i in range(len(actual))
    ]
    if not tokens:
        return TokenAnalysis(tokens, None, None)
    mean = float(chosen.mean())
    return TokenAnalysis(tokens, mean, math.exp(-mean))


@dataclass
class AttentionMap:
    """Attention of one layer: `weights[q, k]` is how much query position q attends to key
    position k (0 above the diagonal: attention is causal). `entries` lists the kept
    (q, k, weight) of the lower triangle, row by row."""

    layer: int
    head: int | None  # None: the mean over all query heads
    weights: torch.Tensor  # [T, T]
    entries: list[tuple[int, int, float]]


@torch.inference_mode()
def attention(
    engine: LLMEngine,
    token_ids: list[int],
    layer: int,
    head: int | None = None,
    threshold: float = 0.0,
    normalized: bool = False,
) -> AttentionMap:
    """softmax(QK^T / sqrt(d)) with the causal mask, as the model's attention computes it;
    query head h reads KV head h // (heads / kv_heads) (GQA).

    Q and K are recomputed from the residual stream entering `layer` (the token embeddings
    for layer 0), so this needs only the tokens. `normalized` divides each row by its
    maximum, so the strongest key of every query is 1 (rows of a long context are otherwise
    too flat to compare with those of a short one). `threshold` then zeroes every reported
    value below it: it applies to what is reported, after normalization when that is on.
    """
    model = engine.model
    if layer == 0:
        h = F.embedding(torch.tensor(token_ids), model.embed)
    else:
        captured, _ = engine.capture([token_ids], {layer - 1})
        h = captured[0][layer - 1]
    q, k = model.queries_keys(layer, h)
    c = model.config
    if head is not None:
        q = q[:, head : head + 1]
        k = k[:, head // (c.num_heads // c.num_kv_heads)][:, None]
    else:
        k = k.repeat_interleave(c.num_heads // c.num_kv_heads, dim=1)
    t = len(token_ids)
    scores = q.transpose(0, 1) @ k.permute(1, 2, 0) / math.sqrt(c.head_dim)  # [H, T, T]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    weights = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1).mean(dim=0)
    if normalized:
        weights = weights / weights.amax(dim=1, keepdim=True)
    weights = weights.masked_fill(weights < threshold, 0.0)
    kept = (weights > 0).nonzero().tolist()  # above the diagonal is exactly 0
    entries = [(qi, ki, float(weights[qi, ki])) for qi, ki in kept]
    return AttentionMap(layer, head, weights, entries)


def attention_png(weights: torch.Tensor, cell: int | None = None) -> bytes:
    """A [T, T] matrix as a PNG heatmap: row q, column k is a `cell` x `cell` square (by
    default as large as keeps the image within 512 pixels), white at 0 and dark blue at
    the matrix's largest value (so the image uses its whole range whatever the scale)."""
    t = weights.shape[0]
    cell = cell or max(1, 512 // t)
    peak = float(weights.max())
    level = (weights / peak if peak > 0 else weights).clamp(0, 1)[..., None]
    white, blue = torch.tensor([255.0, 255.0, 255.0]), torch.tensor([8.0, 48.0, 107.0])
    rgb = (white + level * (blue - white)).round().to(torch.uint8)
    image = Image.frombytes("RGB", (t, t), rgb.contiguous().numpy().tobytes())
    image = image.resize((t * cell, t * cell), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass
class HeadNorms:
    """L2 norms of each token's vector, per KV head: mean and max over the tokens."""

    mean: list[float]
    max: list[float]


@dataclass
class LayerCache:
    layer: int
    k_shape: list[int]  # [tokens, kv_heads, head_dim]
    v_shape: list[int]
    k_bytes: int
    v_bytes: int
    k_norms: HeadNorms | None  # None when the state holds no KV (a single token)
    v_norms: HeadNorms | None


@dataclass
class CacheSummary:
    num_tokens: int
    layers: list[LayerCache]
    total_bytes: int  # of the layers summarized


def cache_summary(kv: torch.Tensor, layer_range: tuple[int, int]) -> CacheSummary:
    """Summary of layers `start <= layer < end` of KV as `LLMEngine.read_kv` returns it,
    [layers, tokens, 2 * kv_heads, head_dim] (each token's keys, then its values)."""
    start, end = layer_range
    num_tokens, kv_heads = kv.shape[1], kv.shape[2] // 2
    layers = []
    for i in range(start, end):
        k, v = kv[i, :, :kv_heads], kv[i, :, kv_heads:]
        layers.append(
            LayerCache(
                layer=i,
                k_shape=list(k.shape),
                v_shape=list(v.shape),
                k_bytes=k.numel() * k.element_size(),
                v_bytes=v.numel() * v.element_size(),
                k_norms=_head_norms(k),
                v_norms=_head_norms(v),
            )
        )
    total = sum(c.k_bytes + c.v_bytes for c in layers)
    return CacheSummary(num_tokens, layers, total)


def _head_norms(x: torch.Tensor) -> HeadNorms | None:
    if x.shape[0] == 0:
        return None
    norms = x.float().norm(dim=-1)  # [tokens, kv_heads]
    return HeadNorms(norms.mean(dim=0).tolist(), norms.amax(dim=0).tolist())


class StateAnalysis:
    """The analysis of stored states: each call recomputes on the engine thread (or reads
    the state's KV through a lease), whatever the state's location."""

    def __init__(self, states: StateService):
        self.states = states
        self.engine = states.engine

    async def tokens(
        self, owner: Principal, state_id: str, top_k: int
    ) -> tuple[list[int], TokenAnalysis]:
        ids = self.states.get(owner, state_id).token_ids
        with about("state_id"):
            return ids, await self.engine.call(lambda e: token_analysis(e, ids, top_k))

    async def attention(
        self,
        owner: Principal,
        state_id: str,
        layer: int,
        head: int | None,
        threshold: float,
        normalized: bool,
    ) -> tuple[list[int], AttentionMap]:
        ids = self.states.get(owner, state_id).token_ids
        c = self.engine.model_config
        if layer >= c.num_layers:
            raise InvalidRequest(
                f"'layer' is {layer}; this model has layers 0 to {c.num_layers - 1}",
                param="layer",
            )
        if head is not None and head >= c.num_heads:
            raise InvalidRequest(
                f"'head' is {head}; this model has heads 0 to {c.num_heads - 1} "
                "(omit it for the mean over heads)",
                param="head",
            )
        with about("state_id"):
            result = await self.engine.call(
                lambda e: attention(e, ids, layer, head, threshold, normalized)
            )
        return ids, result

    async def cache(
        self, owner: Principal, state_id: str, layer_range: tuple[int, int] | None
    ) -> tuple[tuple[int, int], CacheSummary]:
        self.states.get(owner, state_id)
        layers = self.engine.model_config.num_layers
        start, end = layer_range or (0, layers)
        if not 0 <= start < end <= layers:
            raise InvalidRequest(
                f"'layer_range' [{start}, {end}) is not a non-empty range of layers: give "
                f"[start, end) with 0 <= start < end <= {layers}",
                param="layer_range",
            )
        handle = await self.states.lease(owner, state_id)
        try:
            summary = await self.engine.call(
                lambda e: cache_summary(e.read_kv(handle), (start, end))
            )
        finally:
            await self.states.release(handle)
        return (start, end), summary
