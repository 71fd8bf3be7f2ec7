"""/analysis: look inside a KV state (token logprobs, attention, the cache itself).

Token and attention analysis recompute from the state's tokens on the engine thread, so
they work wherever the state's KV is (pool, disk); the cache summary reads the KV itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, Query, Response

from glassbox.api.deps import StatesDep
from glassbox.api.states.analysis_schemas import (
    AttentionEntry,
    AttentionRequest,
    AttentionResponse,
    CacheRequest,
    CacheResponse,
    TokenAnalysisResponse,
)
from glassbox.engine.llm_engine import LLMEngine
from glassbox.errors import InvalidRequest
from glassbox.models.llama import ModelConfig
from glassbox.states.analysis import attention, attention_png, cache_summary, token_analysis
from glassbox.states.service import StateService

router = APIRouter(prefix="/analysis", tags=["analysis"])
T = TypeVar("T")


def _config(states: StateService) -> ModelConfig:
    return states.engine.engine.model.config


async def _run(states: StateService, fn: Callable[[LLMEngine], T]) -> T:
    """`fn` on the engine thread; what the engine rejects (no room for the forward pass
    now) is the client's 4xx, not a 500."""
    try:
        return await states.engine.call(fn)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


@router.get("/tokens/{state_id}", response_model=TokenAnalysisResponse)
async def analyze_tokens(
    state_id: str, states: StatesDep, top_k: int = Query(5, ge=0, le=20)
) -> TokenAnalysisResponse:
    ids = states.get(state_id).token_ids
    result = await _run(states, lambda e: token_analysis(e, ids, top_k))
    return TokenAnalysisResponse(
        state_id=state_id,
        num_tokens=len(ids),
        tokens=result.tokens,
        mean_logprob=result.mean_logprob,
        perplexity=result.perplexity,
    )


@router.post(
    "/attention/{state_id}",
    response_model=AttentionResponse,
    responses={200: {"content": {"image/png": {}}}},
)
async def analyze_attention(
    state_id: str, req: AttentionRequest, states: StatesDep
) -> AttentionResponse | Response:
    """format "png": the weights as a heatmap (white 0, dark blue the largest value)."""
    ids = states.get(state_id).token_ids
    c = _config(states)
    if req.layer >= c.num_layers:
        raise InvalidRequest(
            f"'layer' is {req.layer}; this model has layers 0 to {c.num_layers - 1}", param="layer"
        )
    if req.head is not None and req.head >= c.num_heads:
        raise InvalidRequest(
            f"'head' is {req.head}; this model has heads 0 to {c.num_heads - 1} "
            "(omit it for the mean over heads)",
            param="head",
        )
    result = await _run(
        states, lambda e: attention(e, ids, req.layer, req.head, req.threshold, req.normalized)
    )
    if req.format == "png":
        return Response(attention_png(result.weights), media_type="image/png")
    token_str = states.engine.tokenizer.token_str
    return AttentionResponse(
        state_id=state_id,
        layer=req.layer,
        head=req.head,
        threshold=req.threshold,
        normalized=req.normalized,
        tokens=[token_str(t) for t in ids],
        weights=result.weights.tolist(),
        entries=[AttentionEntry(query=q, key=k, weight=w) for q, k, w in result.entries],
    )


@router.post("/cache/{state_id}", response_model=CacheResponse)
async def analyze_cache(
    state_id: str, states: StatesDep, req: CacheRequest | None = None
) -> CacheResponse:
    states.get(state_id)
    layers = _config(states).num_layers
    start, end = req.layer_range if req and req.layer_range else (0, layers)
    if not 0 <= start < end <= layers:
        raise InvalidRequest(
            f"'layer_range' [{start}, {end}) is not a non-empty range of layers: give "
            f"[start, end) with 0 <= start < end <= {layers}",
            param="layer_range",
        )
    handle = await states.lease(state_id)
    try:
        summary = await states.engine.call(lambda e: cache_summary(e.read_kv(handle), (start, end)))
    finally:
        await states.release(handle)
    return CacheResponse(
        state_id=state_id,
        layer_range=(start, end),
        num_tokens=summary.num_tokens,
        layers=summary.layers,
        total_bytes=summary.total_bytes,
    )
