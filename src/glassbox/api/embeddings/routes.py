"""`POST /v1/embeddings` (also `/api/v1/embeddings`, the reference's path), and the
embedding cache's stats and clearing.

The cache is shared by every tenant (keyed by model and text), so its routes are for admin keys
only: a user key that could read the counters could tell whether another tenant had embedded a
given text (embed it, and see `hits` move), and one that could clear it would change every
tenant's cache."""

from __future__ import annotations

import base64
import json

from fastapi import APIRouter, Depends, Response

from glassbox.api.deps import EmbeddingsDep, PrincipalDep, require_admin
from glassbox.api.embeddings.schemas import CacheStats, EmbeddingRequest, EmbeddingResponse

router = APIRouter(tags=["embeddings"])
PREFIXES = ("/v1", "/api/v1")
ADMIN_ONLY = [Depends(require_admin)]


async def create_embeddings(
    req: EmbeddingRequest, service: EmbeddingsDep, principal: PrincipalDep
) -> Response:
    texts = req.input
    if isinstance(texts, str):
        texts = [texts]
    elif texts and all(isinstance(i, int) for i in texts):
        texts = await service.decode(principal, [texts], req.model)
    elif texts and all(isinstance(i, list) for i in texts):
        texts = await service.decode(principal, texts, req.model)
    result = await service.embed(principal, texts, req.model, req.dimensions, req.dimension_policy)
    if req.encoding_format == "base64":
        rows = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in result.vectors]
    else:
        rows = result.vectors.tolist()
    # Written out rather than through the response model: validating a thousand vectors of
    # 384 floats costs more than embedding them.
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)],
        "model": result.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


async def cache_stats(service: EmbeddingsDep) -> CacheStats:
    stats = dict(service.cache.stats())
    main = {k: stats.pop(k) for k in ("hits", "misses", "size", "evictions", "max_entries")}
    return CacheStats(**main, extra=stats)


async def clear_cache(service: EmbeddingsDep) -> CacheStats:
    await service.cache.clear()
    return await cache_stats(service)


for prefix in PREFIXES:
    router.add_api_route(
        f"{prefix}/embeddings", create_embeddings, methods=["POST"],
        response_model=EmbeddingResponse, include_in_schema=prefix == "/v1",
    )  # fmt: skip
    router.add_api_route(
        f"{prefix}/embeddings/cache", cache_stats, methods=["GET"], response_model=CacheStats,
        include_in_schema=prefix == "/v1", dependencies=ADMIN_ONLY,
    )  # fmt: skip
    router.add_api_route(
        f"{prefix}/embeddings/cache", clear_cache, methods=["DELETE"],
        response_model=CacheStats, include_in_schema=prefix == "/v1", dependencies=ADMIN_ONLY,
    )  # fmt: skip
