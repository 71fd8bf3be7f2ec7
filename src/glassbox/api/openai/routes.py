"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request

from glassbox.api.deps import OpenAIDep, PrincipalDep, RegistryDep
from glassbox.api.openai.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from glassbox.api.streaming import sse_response, until_disconnected
from glassbox.requests.registry import ModelRegistry

router = APIRouter(prefix="/v1", tags=["openai"])
_SSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream"}}


@router.post("/chat/completions", response_model=ChatCompletion, responses=_SSE)
async def chat_completions(
    req: ChatCompletionRequest,
    request: Request,
    service: OpenAIDep,
    models: RegistryDep,
    principal: PrincipalDep,
):
    model = models.resolve(req.model)
    if req.stream:
        return sse_response(await service.chat_stream(principal, req, model))
    return await until_disconnected(request, service.chat(principal, req, model))


@router.post("/completions", response_model=Completion, responses=_SSE)
async def completions(
    req: CompletionRequest,
    request: Request,
    service: OpenAIDep,
    models: RegistryDep,
    principal: PrincipalDep,
):
    model = models.resolve(req.model)
    if req.stream:
        return sse_response(await service.completion_stream(principal, req, model))
    return await until_disconnected(request, service.completion(principal, req, model))


@router.get("/models", response_model=ModelList)
async def list_models(models: RegistryDep) -> ModelList:
    return ModelList(data=[model_card(models, n) for n in models.names()])


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, models: RegistryDep) -> ModelCard:
    models.resolve(model_id)
    return model_card(models, model_id)


def model_card(models: ModelRegistry, name: str) -> ModelCard:
    return ModelCard(
        id=name, created=models.created, root=models.served_name, max_model_len=models.max_model_len
    )
