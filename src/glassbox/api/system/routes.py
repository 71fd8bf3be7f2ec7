"""/health and /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from glassbox.api.deps import (
    EmbeddingsDep,
    FeaturesDep,
    GenerationDep,
    MetricsDep,
    RegistryDep,
)
from glassbox.api.system.schemas import FeaturesReadiness, Health

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health)
async def health(
    request: Request,
    gen: GenerationDep,
    models: RegistryDep,
    features: FeaturesDep,
    embeddings: EmbeddingsDep,
) -> Health:
    """200 while the engine thread serves; 503 once it has died, so a supervisor restarts us.
    `features` says whether the feature dictionaries and search index are built yet;
    `components` how the parts beside the engine are (a failed one is reported, not a 503:
    the engine still serves)."""
    gen.ensure_alive()
    readiness = FeaturesReadiness(ready=features.is_ready, stage=features.stage)
    state = request.app.state
    components: dict[str, Any] = {
        "database": await _probe(asyncio.to_thread(state.db.ping)),
        "embeddings": embeddings.health(),
    }
    redis = getattr(state, "redis", None)
    if redis is not None:
        components["redis"] = await _probe(redis.ping())
    jobs = getattr(state, "jobs", None)
    if jobs is not None:
        components["jobs"] = jobs.health()
    return Health(
        model=models.served_name, features=readiness, components=components, **gen.stats()
    )


async def _probe(check: Awaitable[Any]) -> dict[str, Any]:
    """{ok: true}, or {ok: false, error} when `check` fails or takes over 2 s."""
    try:
        await asyncio.wait_for(check, timeout=2.0)
    except Exception as exc:  # reported, not raised: health answers whatever failed
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True}


@router.get("/metrics")
async def prometheus_metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
