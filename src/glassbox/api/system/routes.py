"""/health (liveness), /health/ready (readiness) and /metrics."""

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
from glassbox.api.system.schemas import Check, FeaturesReadiness, Health, Readiness
from glassbox.errors import GlassboxError
from glassbox.features.service import FeatureService
from glassbox.requests.generation import GenerationService

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


@router.get(
    "/health/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A part is not ready: see `checks`"}},
)
async def ready(
    request: Request, response: Response, gen: GenerationDep, features: FeaturesDep
) -> Readiness:
    """Readiness, apart from liveness (/health): a load balancer sends traffic only on 200, and
    a 503 says which part is not ready without the server being restarted for it."""
    state = request.app.state
    checks = {
        "model": _engine_check(gen),
        "features": _features_check(features, state.settings.warm_features),
        "database": Check(**await _probe(asyncio.to_thread(state.db.ping))),
    }
    redis = getattr(state, "redis", None)
    if redis is not None:
        checks["redis"] = Check(**await _probe(redis.ping()))
    readiness = Readiness(ready=all(c.ok for c in checks.values()), checks=checks)
    if not readiness.ready:
        response.status_code = 503
    return readiness


def _engine_check(gen: GenerationService) -> Check:
    try:
        gen.ensure_alive()
    except GlassboxError as exc:
        return Check(ok=False, error=str(exc))
    return Check(ok=True)


def _features_check(features: FeatureService, warm: bool) -> Check:
    """Ready once built. Not warmed at start-up (warm_features=false), they are built by the
    first request that needs them: waiting for them here would keep the server out of rotation
    for good, so they count as ready (that request pays for the build)."""
    if features.is_ready or not warm:
        return Check(ok=True)
    return Check(ok=False, error=f"feature dictionaries and index: {features.stage}")


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
