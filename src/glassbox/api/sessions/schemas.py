"""The chat-session contract (the reference chat microservice's routes and schemas, kept:
`ChatSessionSchema`, `ChatMessageSchema`), with glassbox's per-session settings."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from glassbox.api.common import StrictRequest
from glassbox.api.openai.schemas import EmotionalStateIn, ResponseFormat


class StartChatRequest(StrictRequest):
    user_id: str = Field(min_length=1, max_length=128)
    initial_message: str = Field(min_length=1)
    model: str | None = Field(
        None,
        description="A model this server serves (GET /v1/models; default: the local model). "
        "On a model of another backend (an OpenAI-compatible upstream, llama.cpp) variants "
        "are refused, emotional_state modulates temperature and top_p, and the whole "
        "conversation is sent every turn",
    )
    system_prompt: str | None = Field(None, description="The system message of every turn")
    variant: dict[str, Any] | None = Field(None, description="An inline Ember Variant.json()")
    variant_namespace: str | None = Field(None, description="With variant_id: a stored variant")
    variant_id: str | None = None
    emotional_state: EmotionalStateIn | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, description="Per reply")
    seed: int | None = None
    response_format: ResponseFormat | None = Field(
        None, description="Every reply of the session follows it (json_object, json_schema)"
    )
    context_policy: Literal["truncate_oldest", "summarize"] = Field(
        "truncate_oldest",
        description="When the conversation outgrows the context: drop the oldest messages, "
        "or replace them with the model's summary",
    )

    @model_validator(mode="after")
    def _one_variant(self) -> StartChatRequest:
        if (self.variant_namespace is None) != (self.variant_id is None):
            raise ValueError("a stored variant needs both 'variant_namespace' and 'variant_id'")
        if self.variant is not None and self.variant_id is not None:
            raise ValueError("give 'variant' (inline) or 'variant_namespace' + 'variant_id'")
        return self


class ChatSessionSchema(BaseModel):
    session_id: str
    user_id: str
    created_at: datetime
    last_active: datetime
    message_count: int
    state_id: str | None = Field(None, description="The KV state holding the conversation")
    context_start: int = Field(
        0,
        description="The first message the model still reads (older ones were dropped to "
        "fit the context); the history keeps them all",
    )
    summary: str | None = Field(
        None, description="context_policy summarize: the summary of the messages before it"
    )
    model: str | None = Field(None, description="The model the session runs on")


class ChatMessageSchema(BaseModel):
    message_id: str
    session_id: str
    sender: Literal["user", "assistant"]
    content: str
    timestamp: datetime


class TurnUsage(BaseModel):
    """The turn's token counts. null on a model of another backend: its text interface
    reports none, and glassbox does not estimate them."""

    prompt_tokens: int | None = Field(description="null on a model of another backend")
    cached_tokens: int | None = Field(
        description="Prompt tokens that came warm, not computed (null on another backend)"
    )
    completion_tokens: int | None = Field(description="null on a model of another backend")


class StartChatResponse(BaseModel):
    session_id: str
    message: str = Field(description="The assistant's reply to the initial message")
    session: ChatSessionSchema
    usage: TurnUsage


class SendMessageRequest(StrictRequest):
    user_message: str = Field(min_length=1)
    stream: bool = Field(False, description="Server-Sent Events: the reply's pieces, then this")


class SendMessageResponse(BaseModel):
    response_message: str
    updated_session: str = Field(description="The session's id")
    session: ChatSessionSchema
    usage: TurnUsage


class ChatSessionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ChatSessionSchema]
    total: int
    limit: int
    offset: int


class ChatEnded(BaseModel):
    session_id: str
    deleted: bool = True
    message: str = "the session has ended"
