"""/llm/chat: chat sessions whose KV stays warm between turns (glassbox/sessions)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request

from glassbox.api.deps import PrincipalDep, SessionsDep
from glassbox.api.sessions.schemas import (
    ChatEnded,
    ChatMessageSchema,
    ChatSessionList,
    ChatSessionSchema,
    SendMessageRequest,
    SendMessageResponse,
    StartChatRequest,
    StartChatResponse,
    TurnUsage,
)
from glassbox.api.streaming import sse_response, until_disconnected
from glassbox.sessions.service import ChatMessage, ChatSession, SessionSettings, Turn

router = APIRouter(prefix="/llm/chat", tags=["sessions"])
_SSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream"}}


def session_out(s: ChatSession) -> ChatSessionSchema:
    return ChatSessionSchema(
        session_id=s.session_id, user_id=s.user_id, created_at=s.created_at,
        last_active=s.last_active, message_count=s.message_count, state_id=s.state_id,
        context_start=s.context_start, summary=s.summary, model=s.model,
    )  # fmt: skip


def message_out(m: ChatMessage) -> ChatMessageSchema:
    return ChatMessageSchema(
        message_id=m.message_id, session_id=m.session_id, sender=m.sender, content=m.content,
        timestamp=m.timestamp,
    )  # fmt: skip


def usage_of(turn: Turn) -> TurnUsage:
    return TurnUsage(
        prompt_tokens=turn.prompt_tokens, cached_tokens=turn.cached_tokens,
        completion_tokens=turn.completion_tokens,
    )  # fmt: skip


def reply_of(turn: Turn) -> SendMessageResponse:
    return SendMessageResponse(
        response_message=turn.reply.content, updated_session=turn.session.session_id,
        session=session_out(turn.session), usage=usage_of(turn),
    )  # fmt: skip


def settings_of(req: StartChatRequest) -> SessionSettings:
    sampling = {"temperature": req.temperature, "top_p": req.top_p,
                "max_tokens": req.max_tokens, "seed": req.seed}  # fmt: skip
    return SessionSettings(
        model=req.model,
        system_prompt=req.system_prompt,
        variant=req.variant,
        variant_namespace=req.variant_namespace,
        variant_id=req.variant_id,
        emotional_state=req.emotional_state.model_dump() if req.emotional_state else None,
        sampling={k: v for k, v in sampling.items() if v is not None},
        response_format=req.response_format.model_dump(by_alias=True, exclude_none=True)
        if req.response_format
        else None,
        context_policy=req.context_policy,
    )


@router.post("/", response_model=StartChatResponse)
async def start_chat(
    req: StartChatRequest, request: Request, sessions: SessionsDep, principal: PrincipalDep
):
    work = sessions.start(principal, req.user_id, req.initial_message, settings_of(req))
    turn = await until_disconnected(request, work)
    if not isinstance(turn, Turn):
        return turn  # the client left: the generation was aborted, nothing was stored
    return StartChatResponse(
        session_id=turn.session.session_id, message=turn.reply.content,
        session=session_out(turn.session), usage=usage_of(turn),
    )  # fmt: skip


@router.get("/sessions/", response_model=ChatSessionList)
async def list_sessions(
    sessions: SessionsDep,
    principal: PrincipalDep,
    user_id: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    offset: int = Query(0, ge=0, le=2**63 - 1),  # SQL's OFFSET is a signed 64-bit integer
) -> ChatSessionList:
    found, total = await asyncio.to_thread(sessions.list, principal, user_id, limit, offset)
    return ChatSessionList(
        data=[session_out(s) for s in found], total=total, limit=limit, offset=offset
    )


@router.post("/{session_id}/message/", response_model=SendMessageResponse, responses=_SSE)
async def send_message(
    session_id: str,
    req: SendMessageRequest,
    request: Request,
    sessions: SessionsDep,
    principal: PrincipalDep,
):
    if not req.stream:
        work = sessions.send(principal, session_id, req.user_message)
        turn = await until_disconnected(request, work)
        return reply_of(turn) if isinstance(turn, Turn) else turn
    pieces = sessions.stream(principal, session_id, req.user_message)
    first = await anext(pieces)  # errors before the first piece are ordinary 4xx responses
    return sse_response(_events(first, pieces))


async def _events(first, pieces: AsyncIterator) -> AsyncIterator[str]:
    """`{"delta": text}` per piece of the reply, then the SendMessageResponse."""
    async for piece in _chain(first, pieces):
        if isinstance(piece, str):
            yield json.dumps({"delta": piece}, ensure_ascii=False)
        else:
            yield reply_of(piece).model_dump_json()


async def _chain(first, rest: AsyncIterator) -> AsyncIterator:
    yield first
    async for item in rest:
        yield item


@router.get("/{session_id}/history/", response_model=list[ChatMessageSchema])
async def history(
    session_id: str, sessions: SessionsDep, principal: PrincipalDep
) -> list[ChatMessageSchema]:
    messages = await sessions.history(principal, session_id)
    return [message_out(m) for m in messages]


@router.delete("/{session_id}/", response_model=ChatEnded)
async def end_chat(session_id: str, sessions: SessionsDep, principal: PrincipalDep) -> ChatEnded:
    await sessions.delete(principal, session_id)
    return ChatEnded(session_id=session_id)
