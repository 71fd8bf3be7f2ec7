"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from glassbox.api.deps import EmbeddingsDep, OpenAIDep, PrincipalDep, RegistryDep, RelayDep
from glassbox.api.openai.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from glassbox.api.streaming import sse_response, until_disconnected
from glassbox.embeddings.service import EmbeddingService
from glassbox.requests.registry import ModelRegistry

router = APIRouter(prefix="/v1", tags=["openai"])
_SSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream"}}


@router.post("/chat/completions", response_model=ChatCompletion, responses=_SSE)
async def chat_completions(
    req: ChatCompletionRequest,
    request: Request,
    service: OpenAIDep,
    relay: RelayDep,
    models: RegistryDep,
    principal: PrincipalDep,
):
    model = models.resolve(req.model)
    served = models.served(req.model)
    if not served.local:  # another backend: relayed (api/openai/relay.py)
        if req.stream:
            return sse_response(await relay.chat_stream(req, served, model))
        return _relayed(await until_disconnected(request, relay.chat(req, served, model)))
    if req.stream:
        return sse_response(await service.chat_stream(principal, req, model))
    return await until_disconnected(request, service.chat(principal, req, model))


@router.post("/completions", response_model=Completion, responses=_SSE)
async def completions(
    req: CompletionRequest,
    request: Request,
    service: OpenAIDep,
    relay: RelayDep,
    models: RegistryDep,
    principal: PrincipalDep,
):
    model = models.resolve(req.model)
    served = models.served(req.model)
    if not served.local:
        if req.stream:
            return sse_response(await relay.completion_stream(req, served, model))
        return _relayed(await until_disconnected(request, relay.completion(req, served, model)))
    if req.stream:
        return sse_response(await service.completion_stream(principal, req, model))
    return await until_disconnected(request, service.completion(principal, req, model))


def _relayed(answer: dict | Response) -> Response:
    """The backend's answer as it gave it (its fields may go beyond glassbox's schema)."""
    return answer if isinstance(answer, Response) else JSONResponse(answer)


@router.get("/models", response_model=ModelList)
async def list_models(models: RegistryDep, embeddings: EmbeddingsDep) -> ModelList:
    cards = [model_card(models, n) for n in models.names()]
    cards += [embedding_card(models, embeddings, n) for n in embeddings.models()]
    return ModelList(data=cards)


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, models: RegistryDep, embeddings: EmbeddingsDep) -> ModelCard:
    if model_id in embeddings.models():
        return embedding_card(models, embeddings, model_id)
    models.resolve(model_id)
    return model_card(models, model_id)


def embedding_card(models: ModelRegistry, embeddings: EmbeddingService, name: str) -> ModelCard:
    local = embeddings.local.serves(name)
    return ModelCard(
        id=name,
        created=models.created,
        root=embeddings.default_model if local else name,
        max_model_len=embeddings.local.max_tokens if local and embeddings.local.loaded else None,
        backend="local" if local else "embedding-provider",
        capabilities=["embeddings"],
    )


def model_card(models: ModelRegistry, name: str) -> ModelCard:
    served = models.served(name)
    return ModelCard(
        id=name,
        created=models.created,
        root=served.name,
        max_model_len=served.max_model_len,
        backend=served.backend,
        capabilities=sorted(served.capabilities),
    )
