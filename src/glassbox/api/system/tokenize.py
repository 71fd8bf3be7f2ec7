"""vLLM-compatible /tokenize and /detokenize."""

from __future__ import annotations

from fastapi import APIRouter

from glassbox.api.deps import OpenAIDep, RegistryDep
from glassbox.api.system.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from glassbox.requests.registry import TOKENIZE

router = APIRouter(tags=["tokenize"])


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(
    req: TokenizeRequest,
    service: OpenAIDep,
    models: RegistryDep,
) -> TokenizeResponse:
    models.require(req.model, TOKENIZE)
    return service.tokenize(req)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(
    req: DetokenizeRequest,
    service: OpenAIDep,
    models: RegistryDep,
) -> DetokenizeResponse:
    models.require(req.model, TOKENIZE)
    return service.detokenize(req)
