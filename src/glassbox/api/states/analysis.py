"""/analysis: look inside a KV state (token logprobs, attention, the cache itself).

Token and attention analysis recompute from the state's tokens on the engine thread, so
they work wherever the state's KV is (pool, disk); the cache summary reads the KV itself.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from glassbox.api.deps import AnalysisDep, PrincipalDep, StatesDep
from glassbox.api.states.analysis_schemas import (
    AttentionEntry,
    AttentionRequest,
    AttentionResponse,
    CacheRequest,
    CacheResponse,
    TokenAnalysisResponse,
)
from glassbox.states.analysis import attention_png

router = APIRouter(prefix="/analysis", tags=["analysis"])


@router.get("/tokens/{state_id}", response_model=TokenAnalysisResponse)
async def analyze_tokens(
    state_id: str,
    analysis: AnalysisDep,
    principal: PrincipalDep,
    top_k: int = Query(5, ge=0, le=20),
) -> TokenAnalysisResponse:
    ids, result = await analysis.tokens(principal, state_id, top_k)
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
    state_id: str,
    req: AttentionRequest,
    analysis: AnalysisDep,
    principal: PrincipalDep,
    states: StatesDep,
) -> AttentionResponse | Response:
    """format "png": the weights as a heatmap (white 0, dark blue the largest value)."""
    ids, result = await analysis.attention(
        principal, state_id, req.layer, req.head, req.threshold, req.normalized
    )
    if req.format == "png":
        return Response(attention_png(result.weights), media_type="image/png")
    return AttentionResponse(
        state_id=state_id,
        layer=req.layer,
        head=req.head,
        threshold=req.threshold,
        normalized=req.normalized,
        tokens=[states.token_text(t) for t in ids],
        weights=result.weights.tolist(),
        entries=[AttentionEntry(query=q, key=k, weight=w) for q, k, w in result.entries],
    )


@router.post("/cache/{state_id}", response_model=CacheResponse)
async def analyze_cache(
    state_id: str, analysis: AnalysisDep, principal: PrincipalDep, req: CacheRequest | None = None
) -> CacheResponse:
    layer_range, summary = await analysis.cache(
        principal, state_id, req.layer_range if req else None
    )
    return CacheResponse(
        state_id=state_id,
        layer_range=layer_range,
        num_tokens=summary.num_tokens,
        layers=summary.layers,
        total_bytes=summary.total_bytes,
    )
