"""FastAPI dependencies: the caller's principal, and the services create_app put on
app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from glassbox.api.openai.adapter import OpenAIService
from glassbox.api.openai.relay import RelayService
from glassbox.embeddings.service import EmbeddingService
from glassbox.embeddings.vector_stores import VectorStoreService
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


def current_principal(request: Request) -> Principal:
    """Who is calling. Every caller is the local anonymous principal until API keys exist;
    authentication only has to replace this function's body."""
    return LOCAL


PrincipalDep = Annotated[Principal, Depends(current_principal)]


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
