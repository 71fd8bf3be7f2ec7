"""/health and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from glassbox.api.deps import FeaturesDep, GenerationDep, MetricsDep, RegistryDep
from glassbox.api.system.schemas import FeaturesReadiness, Health

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health)
async def health(
    gen: GenerationDep,
    models: RegistryDep,
    features: FeaturesDep,
) -> Health:
    """200 while the engine thread serves; 503 once it has died, so a supervisor restarts us.
    `features` says whether the feature dictionaries and search index are built yet."""
    gen.ensure_alive()
    readiness = FeaturesReadiness(ready=features.is_ready, stage=features.stage)
    return Health(model=models.served_name, features=readiness, **gen.stats())


@router.get("/metrics")
async def prometheus_metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
