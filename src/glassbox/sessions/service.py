"""Chat sessions: conversations stored as rows, whose KV stays warm between turns.

One turn (`send`), under the session's lock (one turn at a time, so user and assistant
messages strictly alternate):

    stored messages + the new user message --chat template--> token ids
      -> the session's KV state (states/): its KV for the longest common prefix of its
         tokens and these is leased, so only the new tokens are computed (the user message
         and the template around it); no state, or a state that is gone: computed cold
      -> generation with the session's sampling defaults, variant and response_format
      -> the finished sequence's KV becomes the session's new state (the old one is
         deleted); both messages and the new state id are written in one transaction

The state is spilled and reloaded like any state and survives a restart (the state service
writes resident states to their files at shutdown); a session whose state is gone is
recomputed from its messages, never lost. With a Redis (`locks.RedisLocks`) and a shared
database, any number of processes serve the same sessions: a process that does not hold a
session's state computes its prompt from the stored messages.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session as SqlSession

from glassbox.engine.block_manager import KVHandle
from glassbox.engine.grammar import Grammar
from glassbox.engine.llm_engine import StepOutput
from glassbox.errors import Conflict, GlassboxError, InvalidRequest, NotFound, Unavailable
from glassbox.features.emotion import EmotionalState
from glassbox.features.steering import SteeringService
from glassbox.principal import Principal
from glassbox.requests.generation import Generation, GenerationService
from glassbox.sessions.locks import LocalLocks, RedisLocks
from glassbox.states.records import State
from glassbox.states.service import StateService, common_prefix
from glassbox.steering.plan import SteeringPlan
from glassbox.store import Database
from glassbox.store.models import ChatMessageRow, ChatSessionRow, as_utc
from glassbox.structured.grammar import GrammarCompiler

MAX_MESSAGE_CHARS = 32_000
DEFAULT_MAX_TOKENS = 256
SUMMARY_TOKENS = 96
SUMMARY_INSTRUCTION = (
    "Summarize the conversation below in a few sentences: who said what, and every fact, "
    "name and number that matters for what follows. Write only the summary."
)


@dataclass(frozen=True)
class SessionSettings:
    """What every turn of a session uses (stored as JSON with the session)."""

    system_prompt: str | None = None
    variant: dict[str, Any] | None = None  # inline Ember Variant.json()
    variant_namespace: str | None = None  # with variant_id: a stored variant
    variant_id: str | None = None
    emotional_state: dict[str, float] | None = None  # {"valence", "arousal"}
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, seed, max_tokens
    response_format: dict[str, Any] | None = None  # OpenAI's json_object / json_schema
    context_policy: str = "truncate_oldest"  # or "summarize" (see SessionService._fit)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SessionSettings:
        return cls(**json.loads(text or "{}"))


@dataclass(frozen=True)
class ChatMessage:
    message_id: str
    session_id: str
    sender: str  # "user" or "assistant"
    content: str
    timestamp: datetime


@dataclass(frozen=True)
class ChatSession:
    session_id: str
    user_id: str
    settings: SessionSettings
    state_id: str | None
    created_at: datetime
    last_active: datetime
    message_count: int
    context_start: int  # the first message the model still reads (see `_fit`)
    fence: int  # the fencing token of the last turn stored (sessions/locks.py)
    summary: str | None  # context_policy "summarize": the dropped messages, summarized


@dataclass(frozen=True)
class Turn:
    """A turn's outcome: the stored reply, the session after it, and what the turn cost:
    its prompt's tokens, of which `cached_tokens` came warm (the session's KV state or the
    prefix cache) and were not computed."""

    reply: ChatMessage
    session: ChatSession
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


def _not_found(session_id: str) -> NotFound:
    return NotFound("session", session_id, param="session_id")


class SessionService:
    def __init__(
        self,
        db: Database,
        states: StateService,
        generation: GenerationService,
        grammars: GrammarCompiler,
        steering: SteeringService | None = None,
        locks: LocalLocks | RedisLocks | None = None,
    ):
        """`steering` resolves a session's variant and emotional state (None: a server
        without feature dictionaries, whose sessions cannot steer)."""
        self.db = db
        self.states = states
        self.generation = generation
        self.requests = generation.requests
        self.grammars = grammars
        self.steering = steering
        self.locks = locks or LocalLocks()

    # --- rows -----------------------------------------------------------------------------

    def _row(self, s: SqlSession, owner: Principal, session_id: str) -> ChatSessionRow:
        row = s.get(ChatSessionRow, session_id)
        if row is None or row.owner != owner.tenant:
            raise _not_found(session_id)
        return row

    def _session(self, s: SqlSession, row: ChatSessionRow) -> ChatSession:
        count = s.scalar(
            select(func.count())
            .select_from(ChatMessageRow)
            .where(ChatMessageRow.session_id == row.session_id)
        )
        return ChatSession(
            row.session_id, row.user_id, SessionSettings.from_json(row.settings), row.state_id,
            as_utc(row.created_at), as_utc(row.updated_at), int(count or 0), row.context_start,
            row.fence, row.summary,
        )  # fmt: skip

    def _messages(self, s: SqlSession, session_id: str) -> list[ChatMessage]:
        rows = s.scalars(
            select(ChatMessageRow)
            .where(ChatMessageRow.session_id == session_id)
            .order_by(ChatMessageRow.position)
        )
        return [
            ChatMessage(r.message_id, r.session_id, r.sender, r.content, as_utc(r.created_at))
            for r in rows
        ]

    def _load(self, owner: Principal, session_id: str) -> tuple[ChatSession, list[ChatMessage]]:
        with self.db.session() as s, s.begin():
            row = self._row(s, owner, session_id)
            return self._session(s, row), self._messages(s, session_id)

    def get(self, owner: Principal, session_id: str) -> ChatSession:
        return self._load(owner, session_id)[0]

    def history(self, owner: Principal, session_id: str) -> list[ChatMessage]:
        return self._load(owner, session_id)[1]

    def list(
        self, owner: Principal, user_id: str | None, limit: int, offset: int
    ) -> tuple[list[ChatSession], int]:
        """The owner's sessions, most recently active first, and how many there are."""
        query = select(ChatSessionRow).where(ChatSessionRow.owner == owner.tenant)
        if user_id is not None:
            query = query.where(ChatSessionRow.user_id == user_id)
        with self.db.session() as s, s.begin():
            total = s.scalar(select(func.count()).select_from(query.subquery()))
            rows = s.scalars(
                query.order_by(ChatSessionRow.updated_at.desc()).limit(limit).offset(offset)
            ).all()
            return [self._session(s, r) for r in rows], int(total or 0)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(
        self, owner: Principal, user_id: str, initial_message: str, settings: SessionSettings
    ) -> Turn:
        """A new session and the assistant's reply to its first message."""
        await self._check(owner, settings)
        session_id = uuid.uuid4().hex
        now = datetime.now(UTC)
        row = ChatSessionRow(
            session_id=session_id, owner=owner.tenant, user_id=user_id,
            settings=settings.to_json(), state_id=None, created_at=now, updated_at=now,
        )  # fmt: skip
        await asyncio.to_thread(self._insert, row)
        try:
            return await self.send(owner, session_id, initial_message)
        except BaseException:
            await asyncio.to_thread(self._delete_rows, session_id)
            raise

    def _insert(self, row: ChatSessionRow) -> None:
        with self.db.session() as s, s.begin():
            s.add(row)

    async def delete(self, owner: Principal, session_id: str) -> None:
        async with self.locks.hold(session_id):
            session = await asyncio.to_thread(self.get, owner, session_id)
            await asyncio.to_thread(self._delete_rows, session_id)
            await self._drop_state(owner, session.state_id)
        self.locks.forget(session_id)

    def _delete_rows(self, session_id: str) -> None:
        with self.db.session() as s, s.begin():
            for message in s.scalars(
                select(ChatMessageRow).where(ChatMessageRow.session_id == session_id)
            ):
                s.delete(message)
            row = s.get(ChatSessionRow, session_id)
            if row is not None:
                s.delete(row)

    async def _drop_state(self, owner: Principal, state_id: str | None) -> None:
        if state_id is None:
            return
        try:
            await self.states.delete(owner, state_id)
        except NotFound:
            pass  # already gone (deleted through the states routes)

    # --- turns ----------------------------------------------------------------------------

    async def send(self, owner: Principal, session_id: str, user_message: str) -> Turn:
        """The assistant's reply to `user_message`, and the session after it."""
        result = None
        async with aclosing(self.stream(owner, session_id, user_message)) as pieces:
            async for piece in pieces:
                if not isinstance(piece, str):
                    result = piece
        assert result is not None  # stream() ends with it or raises
        return result

    async def stream(
        self, owner: Principal, session_id: str, user_message: str
    ) -> AsyncIterator[str | Turn]:
        """The reply's text pieces as they are generated, then the `Turn` once both messages
        are stored. Turns of one session run one at a time, in arrival order."""
        _check_message(user_message, "user_message")
        async with self.locks.hold(session_id) as token:
            session, messages = await asyncio.to_thread(self._load, owner, session_id)
            # A Redis that lost its counters (restarted without persistence) counts from 1
            # again: the token is raised above the last stored one. A holder whose lock
            # expired read an older fence, so a later holder's token is still at least its.
            token = max(token, session.fence + 1)
            state = self._state(owner, session.state_id)
            start, summary, ids = await self._fit(session, messages, user_message, state)
            params = await self._params(owner, session.settings, len(ids))
            prefix = await self._warm_prefix(owner, state, ids)
            reply = Generation()
            kv: KVHandle | None = None
            cached = 0
            try:
                outputs = self.generation.stream(ids, params, prefix=prefix)
                async with aclosing(outputs) as outs:
                    async for out in outs:
                        reply.add(out)
                        kv = out.kv or kv
                        cached = out.num_cached_tokens
                        _check_finish(out)
                        if out.text:
                            yield out.text
            except BaseException:
                if kv is not None:
                    await self.states.release(kv)
                raise
            state_id = None
            if kv is not None:
                state = await self.states.commit(owner, kv, parent_id="", meta={
                    "session_id": session_id})  # fmt: skip
                state_id = state.state_id
            store = asyncio.to_thread(
                self._store_turn,
                session_id,
                len(messages),
                user_message,
                reply.text,
                state_id,
                start,
                summary,
                token,
            )
            try:
                message, updated = await store
            except Conflict:
                await self._drop_state(owner, state_id)
                raise
            await self._drop_state(owner, session.state_id)
        yield Turn(message, updated, len(ids), cached, reply.num_output_tokens)

    def _state(self, owner: Principal, state_id: str | None) -> State | None:
        """The session's KV state, or None when it has none or it is gone."""
        if state_id is None:
            return None
        try:
            return self.states.get(owner, state_id)
        except NotFound:
            return None

    async def _fit(
        self,
        session: ChatSession,
        messages: list[ChatMessage],
        user_message: str,
        state: State | None,
    ) -> tuple[int, str | None, list[int]]:
        """(the first message the model reads, the summary of the ones before it, the
        prompt's token ids) under the session's context policy.

        When the conversation and room for a reply (max_tokens, at most a quarter of the
        context) no longer fit the context, the oldest messages are dropped, a user/assistant
        pair at a time and never the system prompt, until the prompt fills at most half of
        the context. Dropping that much at once keeps the conversation's start, and so its
        warm KV, the same for the turns that follow. `truncate_oldest` forgets them;
        `summarize` has the model summarize them (with the earlier summary) into a system
        message that opens the conversation. The history keeps every message."""
        settings = session.settings
        limit = self.requests.max_model_len
        room = min(settings.sampling.get("max_tokens") or DEFAULT_MAX_TOKENS, limit // 4)
        start, summary = session.context_start, session.summary
        ids = self._prompt(settings, summary, messages[start:], user_message, state)
        if len(ids) + room <= limit:
            return start, summary, ids
        dropped_from = start
        while start < len(messages) and len(ids) > limit // 2:
            start = min(start + 2, len(messages))
            ids = self._prompt(settings, summary, messages[start:], user_message, None)
        if settings.context_policy == "summarize":
            summary = await self._summarize(summary, messages[dropped_from:start])
            ids = self._prompt(settings, summary, messages[start:], user_message, None)
        return start, summary, ids

    async def _summarize(self, earlier: str | None, messages: list[ChatMessage]) -> str:
        """The model's summary (greedy, at most SUMMARY_TOKENS) of the earlier summary and
        the dropped messages."""
        transcript = "\n".join(f"{m.sender}: {m.content}" for m in messages)
        if earlier:
            transcript = f"(earlier: {earlier})\n{transcript}"
        budget = self.requests.max_model_len // 2 - SUMMARY_TOKENS
        ids = self.requests.text(transcript, add_special_tokens=False)[-budget:]
        transcript = self.requests.decode(ids, skip_special_tokens=True)
        prompt = self.requests.chat([
            {"role": "system", "content": SUMMARY_INSTRUCTION},
            {"role": "user", "content": transcript},
        ])  # fmt: skip
        request = self.requests.request(
            prompt, prompt_param="messages", max_tokens=SUMMARY_TOKENS, cap=True,
            temperature=0.0,
        )  # fmt: skip
        [result] = await self.generation.generate_many([request])
        return result.text.strip()

    def _prompt(
        self,
        settings: SessionSettings,
        summary: str | None,
        messages: list[ChatMessage],
        user_message: str,
        state: State | None,
    ) -> list[int]:
        """The conversation's token ids: the state's tokens as the model read and wrote them,
        then the template's text around the new message (`RequestBuilder.chat_after`)."""
        turns = [{"role": m.sender, "content": m.content} for m in messages]
        turns.append({"role": "user", "content": user_message})
        system = [settings.system_prompt] if settings.system_prompt else []
        if summary:
            system.append(f"Summary of the conversation so far: {summary}")
        if system:
            turns.insert(0, {"role": "system", "content": "\n\n".join(system)})
        if state is None:
            return self.requests.chat(turns, param="user_message")
        return self.requests.chat_after(state.token_ids, turns, param="user_message")

    async def _params(self, owner: Principal, settings: SessionSettings, prompt_len: int):
        sampling = settings.sampling
        max_tokens = self.requests.max_tokens(
            prompt_len, sampling.get("max_tokens") or DEFAULT_MAX_TOKENS,
            prompt_param="user_message", cap=True,
        )  # fmt: skip
        return self.requests.params(
            max_tokens=max_tokens,
            temperature=sampling.get("temperature", 0.7),
            top_p=sampling.get("top_p", 1.0),
            seed=sampling.get("seed"),
            steering=await self._plan(owner, settings),
            grammar=await self._grammar(settings),
            keep_kv=True,
        )

    async def _plan(self, owner: Principal, settings: SessionSettings) -> SteeringPlan | None:
        wants = settings.variant or settings.variant_id or settings.emotional_state
        if not wants:
            return None
        if self.steering is None:
            raise InvalidRequest(
                "this server cannot steer: it has no feature dictionaries", param="variant"
            )
        coefficients = None
        if settings.emotional_state is not None:
            state = EmotionalState(**settings.emotional_state)
            coefficients = state.get_steering_coefficients()
        return await self.steering.request_plan(
            owner, settings.variant, settings.variant_namespace, settings.variant_id, coefficients
        )

    async def _grammar(self, settings: SessionSettings) -> Grammar | None:
        return await asyncio.to_thread(self.grammars.response_format, settings.response_format)

    async def _check(self, owner: Principal, settings: SessionSettings) -> None:
        """Refuse settings that would fail every turn, before the session exists."""
        await self._grammar(settings)
        await self._plan(owner, settings)

    async def _warm_prefix(
        self, owner: Principal, state: State | None, ids: list[int]
    ) -> KVHandle | None:
        """A lease on the session state's KV for the longest prefix it shares with `ids`, or
        None (computed cold) when there is no state or it cannot come back."""
        if state is None:
            return None
        shared = min(common_prefix(state.token_ids, ids), len(ids) - 1)
        if shared < 1:
            return None
        try:
            return await self.states.lease(owner, state.state_id, shared)
        except GlassboxError:
            return None  # recomputed from the messages instead

    def _store_turn(
        self,
        session_id: str,
        position: int,
        user: str,
        reply: str,
        state_id: str | None,
        context_start: int,
        summary: str | None,
        token: int,
    ) -> tuple[ChatMessage, ChatSession]:
        now = datetime.now(UTC)
        with self.db.session() as s, s.begin():
            row = s.get(ChatSessionRow, session_id, with_for_update=True)
            if row is None:
                raise _not_found(session_id)
            if row.fence >= token:
                raise Conflict(
                    f"session '{session_id}' moved on while this turn ran (its lock expired); "
                    "send the message again",
                    param="session_id",
                )
            row.fence = token
            s.add(ChatMessageRow(message_id=uuid.uuid4().hex, session_id=session_id,
                                 position=position, sender="user", content=user,
                                 created_at=now))  # fmt: skip
            answer = ChatMessageRow(
                message_id=uuid.uuid4().hex, session_id=session_id, position=position + 1,
                sender="assistant", content=reply, created_at=now,
            )  # fmt: skip
            s.add(answer)
            row.state_id = state_id
            row.context_start = context_start
            row.summary = summary
            row.updated_at = now
            s.flush()
            message = ChatMessage(answer.message_id, session_id, "assistant", reply, now)
            return message, self._session(s, row)


def _check_message(text: str, param: str) -> None:
    if not text or not text.strip():
        raise InvalidRequest(f"'{param}' is empty; send the message's text", param=param)
    if len(text) > MAX_MESSAGE_CHARS:
        raise InvalidRequest(
            f"'{param}' has {len(text)} characters; send at most {MAX_MESSAGE_CHARS}", param=param
        )


def _check_finish(out: StepOutput) -> None:
    if out.finish_reason in ("abort", "grammar_failed"):
        raise Unavailable("the engine stopped the reply; retry the message")
