"""FastAPI dependencies: the caller's principal (from its API key when keys are required), and
the services create_app put on app.state."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import Depends, Request

from glassbox.api.openai.adapter import OpenAIService
from glassbox.api.openai.relay import RelayService
from glassbox.auth.keys import ADMIN, WRITE_SCOPES, KeyService
from glassbox.config import Settings
from glassbox.embeddings.service import EmbeddingService
from glassbox.embeddings.vector_stores import VectorStoreService
from glassbox.errors import Forbidden, InvalidRequest, Unauthenticated
from glassbox.features.service import FeatureService
from glassbox.features.steering import SteeringService
from glassbox.features.variants import VariantService
from glassbox.metrics import Metrics
from glassbox.principal import LOCAL, Principal
from glassbox.requests.generation import GenerationService
from glassbox.requests.registry import ModelRegistry
from glassbox.sessions.service import SessionService
from glassbox.states.analysis import StateAnalysis
from glassbox.states.service import StateService
from glassbox.structured.tasks import TaskService


def _bearer(request: Request) -> str | None:
    """The key of 'Authorization: Bearer <key>' (what the openai and goodfire SDKs send)."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return (key.strip() or None) if scheme.lower() == "bearer" else None


TENANT_HEADER = "X-Glassbox-Tenant"


async def current_principal(request: Request) -> Principal:
    """Who is calling: the local principal when API keys are off; otherwise the tenant and
    scopes of the request's key (401 without a valid one; 403 when a read-only key asks for
    anything but GET or HEAD). An admin acts for another tenant with the X-Glassbox-Tenant
    header: it reads, lists and changes that tenant's objects (that is how an admin sees
    all). Made once per request: `require_key` and the route both ask."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        return principal
    settings: Settings = request.app.state.settings
    failures = request.app.state.metrics.auth_failures
    if settings.api_keys == "off":
        principal = LOCAL
    else:
        keys: KeyService = request.app.state.keys
        key = _bearer(request)
        try:
            principal = await keys.authenticate(key)
        except Unauthenticated:
            failures.labels(reason="invalid" if key else "missing").inc()
            raise
        if request.method not in ("GET", "HEAD") and not principal.scopes & WRITE_SCOPES:
            failures.labels(reason="forbidden").inc()
            raise Forbidden(f"this API key is read-only: it may GET and HEAD, not {request.method}")
    tenant = request.headers.get(TENANT_HEADER)
    if tenant is not None and tenant != principal.tenant:
        if ADMIN not in principal.scopes:
            failures.labels(reason="forbidden").inc()
            raise Forbidden(
                f"only a key with the 'admin' scope may act for another tenant ({TENANT_HEADER})",
                param=TENANT_HEADER,
            )
        try:
            principal = principal.acting_as(tenant)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param=TENANT_HEADER) from None
    request.state.principal = principal
    # every later log line of the request names its tenant (never its key)
    structlog.contextvars.bind_contextvars(tenant=principal.tenant)
    return principal


def _open_path(path: str, settings: Settings) -> bool:
    if path == "/health" or path.startswith("/health/"):
        return settings.open_health
    return path == "/metrics" and settings.open_metrics


async def require_key(request: Request) -> None:
    """The app-wide dependency: with API keys required, every route needs a valid key (routes
    that take no principal too), except /health and /metrics where the settings open them.
    /docs and /openapi.json are not API routes and stay open."""
    if not _open_path(request.url.path, request.app.state.settings):
        await current_principal(request)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def require_admin(request: Request, principal: PrincipalDep) -> Principal:
    if ADMIN not in principal.scopes:
        request.app.state.metrics.auth_failures.labels(reason="forbidden").inc()
        raise Forbidden("this route needs an API key with the 'admin' scope")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


def openai_service(request: Request) -> OpenAIService:
    return request.app.state.openai


def relay_service(request: Request) -> RelayService:
    return request.app.state.relay


def generation_service(request: Request) -> GenerationService:
    return request.app.state.generation


def model_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def variant_service(request: Request) -> VariantService:
    return request.app.state.variants


def steering_service(request: Request) -> SteeringService:
    return request.app.state.steering


def feature_service(request: Request) -> FeatureService:
    return request.app.state.features


OpenAIDep = Annotated[OpenAIService, Depends(openai_service)]
RelayDep = Annotated[RelayService, Depends(relay_service)]
GenerationDep = Annotated[GenerationService, Depends(generation_service)]
RegistryDep = Annotated[ModelRegistry, Depends(model_registry)]
MetricsDep = Annotated[Metrics, Depends(metrics)]
VariantsDep = Annotated[VariantService, Depends(variant_service)]


def state_service(request: Request) -> StateService:
    return request.app.state.states


StatesDep = Annotated[StateService, Depends(state_service)]
SteeringDep = Annotated[SteeringService, Depends(steering_service)]
FeaturesDep = Annotated[FeatureService, Depends(feature_service)]


def state_analysis(request: Request) -> StateAnalysis:
    return request.app.state.analysis


AnalysisDep = Annotated[StateAnalysis, Depends(state_analysis)]


def task_service(request: Request) -> TaskService:
    return request.app.state.tasks


TasksDep = Annotated[TaskService, Depends(task_service)]


def session_service(request: Request) -> SessionService:
    return request.app.state.sessions


SessionsDep = Annotated[SessionService, Depends(session_service)]


def embedding_service(request: Request) -> EmbeddingService:
    return request.app.state.embeddings


EmbeddingsDep = Annotated[EmbeddingService, Depends(embedding_service)]


def vector_store_service(request: Request) -> VectorStoreService:
    return request.app.state.vector_stores


VectorStoresDep = Annotated[VectorStoreService, Depends(vector_store_service)]


def key_service(request: Request) -> KeyService:
    return request.app.state.keys


KeysDep = Annotated[KeyService, Depends(key_service)]
