"""Goodfire Ember's REST surface under /api/inference/v1, for the `goodfire` 0.3.5 SDK
(`goodfire.Client(api_key, base_url="http://host:port")`). docs/ember_api.md is the spec.

The SDK sends `Authorization: Bearer <key>` on every call; any key is accepted here (the API
key checks of the rest of the server apply when they exist). Paths are exact, `/features/`
included with its trailing slash: the SDK does not follow redirects.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from glassbox.api.ember.adapter import EmberService
from glassbox.api.ember.schemas import (
    EmberAutoEditsRequest,
    EmberAutoEditsResponse,
    EmberChatCompletion,
    EmberChatRequest,
    EmberContrastRequest,
    EmberContrastResponse,
    EmberFeaturesResponse,
    EmberInspectRequest,
    EmberInspectResponse,
    EmberLogitsRequest,
    EmberLogitsResponse,
    EmberLookupRequest,
    EmberNeighborsRequest,
    EmberNeighborsResponse,
    EmberRerankRequest,
    EmberTokenizeRequest,
    EmberTokenizeResponse,
    EmberTokenOut,
)
from glassbox.api.streaming import until_disconnected
from glassbox.errors import InvalidRequest

router = APIRouter(prefix="/api/inference/v1", tags=["ember"])


def ember_service(request: Request) -> EmberService:
    return request.app.state.ember


EmberDep = Annotated[EmberService, Depends(ember_service)]
_SSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream"}}


@router.get("/features/search", response_model=EmberFeaturesResponse)
async def search(
    service: EmberDep,
    query: str,
    model: str | None = None,
    page: int = 1,
    per_page: Annotated[int, Query(alias="perPage")] = 10,
) -> EmberFeaturesResponse:
    service.model(model)
    if page != 1:
        raise InvalidRequest("only page 1 is served; raise perPage for more results", param="page")
    return EmberFeaturesResponse(features=await service.search(query, per_page))


@router.post("/features/rerank", response_model=EmberFeaturesResponse)
async def rerank(req: EmberRerankRequest, service: EmberDep) -> EmberFeaturesResponse:
    service.model(req.model)
    return EmberFeaturesResponse(
        features=await service.rerank(req.feature_ids, req.query, req.top_k)
    )


@router.get("/features/", response_model=EmberFeaturesResponse)
async def list_features(
    service: EmberDep,
    feature_id: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies defaults
    model: str | None = None,
) -> EmberFeaturesResponse:
    service.model(model)
    return EmberFeaturesResponse(features=await service.list(feature_id))


@router.post("/features/lookup", response_model=EmberFeaturesResponse)
async def lookup(req: EmberLookupRequest, service: EmberDep) -> EmberFeaturesResponse:
    service.model(req.model)
    return EmberFeaturesResponse(features=await service.lookup(req.indices))


@router.post("/features/auto-edits", response_model=EmberAutoEditsResponse)
async def auto_edits(req: EmberAutoEditsRequest, service: EmberDep) -> EmberAutoEditsResponse:
    service.model(req.model)
    return EmberAutoEditsResponse(edits=await service.auto_edits(req.specification))


@router.post("/attributions/neighbors", response_model=EmberNeighborsResponse)
async def neighbors(req: EmberNeighborsRequest, service: EmberDep) -> EmberNeighborsResponse:
    service.model(req.model)
    return EmberNeighborsResponse(neighbors=await service.neighbors(req.feature_indices, req.top_k))


@router.post("/chat-attribution/compute-features", response_model=EmberInspectResponse)
async def compute_features(req: EmberInspectRequest, service: EmberDep) -> EmberInspectResponse:
    model = service.model(req.model)
    tokens = await service.inspect(req.messages, req.controller, model, req.include_feature_indexes)
    return EmberInspectResponse(tokens=tokens)


@router.post("/chat-attribution/contrast", response_model=EmberContrastResponse)
async def contrast(req: EmberContrastRequest, service: EmberDep) -> EmberContrastResponse:
    service.model(req.model)
    if len(req.dataset_1) != len(req.dataset_2):
        raise InvalidRequest(
            "dataset_1 and dataset_2 must have the same length (they are pairs)",
            param="dataset_2",
        )
    one, two = await service.contrast(req.dataset_1, req.dataset_2, req.k_to_add, req.k_to_remove)
    return EmberContrastResponse(dataset_1_features=one, dataset_2_features=two)


@router.post("/chat-attribution/compute-logits", response_model=EmberLogitsResponse)
async def compute_logits(req: EmberLogitsRequest, service: EmberDep) -> EmberLogitsResponse:
    model = service.model(req.model)
    logits = await service.logits(
        req.messages, req.controller, model, req.top_k, req.filter_vocabulary
    )
    return EmberLogitsResponse(logits=logits)


@router.post("/chat/tokenize", response_model=EmberTokenizeResponse)
async def tokenize(req: EmberTokenizeRequest, service: EmberDep) -> EmberTokenizeResponse:
    service.model(req.model)
    return EmberTokenizeResponse(
        tokens=[EmberTokenOut(value=t) for t in service.tokenize(req.messages)]
    )


@router.post("/chat/completions", response_model=EmberChatCompletion, responses=_SSE)
async def chat_completions(req: EmberChatRequest, request: Request, service: EmberDep):
    chat = await service.check_chat(req, service.model(req.model))
    if req.stream:
        # Plain StreamingResponse, not sse-starlette: the SDK reads `data:` events only (no
        # pings, no [DONE]); each event is one write.
        return StreamingResponse(
            await service.chat_stream(chat),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await until_disconnected(request, service.chat(chat))
