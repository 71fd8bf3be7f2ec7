"""Chat sessions: conversations stored as rows, on the local model (whose KV stays warm
between turns) or on a model served by another backend.

One turn (`stream`), under the session's lock (one turn at a time, so user and assistant
messages strictly alternate):

    the session and its stored messages + the new user message
      -> the context policy (`_fit`): the messages the model still reads
      -> the generation step, the only part that depends on the session's model:
         local: chat template -> token ids; the session's KV state (states/) is leased for
           the longest common prefix of its tokens and these, so only the new tokens are
           computed; generation with the session's sampling defaults, variant and
           response_format; the finished sequence's KV becomes the session's new state
         another backend (`glassbox.backends`, e.g. an OpenAI-compatible upstream): the
           whole conversation as OpenAI messages, to `chat_completion_stream`; the
           upstream's own prefix cache keeps it warm, there is no state
      -> both messages (and the new state id) written in one transaction, if the turn's
         fencing token is still the newest (`locks.py`); the old state is deleted

The local state is spilled and reloaded like any state and survives a restart (the state
service writes resident states to their files at shutdown); a session whose state is gone
is recomputed from its messages, never lost.

On another backend (`SessionSettings.model` names a model of the `ModelRegistry` whose
backend is not "local"): a variant is refused (steering needs the local engine's
activations), and so is a seed (the backends' chat interface takes none); an emotional
state modulates sampling instead (the backend maps its coefficients to temperature and
top_p); `response_format` is sent to the backend, which enforces it. The context policy
counts tokens with the local tokenizer, an estimate of the upstream's count, against the
model's `max_model_len` (no policy when it is unknown); a summary is asked of the same
backend. Its text interface reports no token counts, so such turns have none
(`Turn.prompt_tokens` etc. are None).

With a Redis (`locks.RedisLocks`) and a shared database, any number of processes serve the
same sessions: the lock is in Redis, and so are the session records every lookup reads
(`cache.SessionCache`: read-through, written through after every change; the database
stays the authority, and the fence is checked on the row itself). A process that does not
hold a session's state computes its prompt from the stored messages.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session as SqlSession

from glassbox.backends.base import InferenceEngine
from glassbox.engine.block_manager import KVHandle
from glassbox.engine.detokenizer import without_nul
from glassbox.engine.grammar import Grammar
from glassbox.engine.llm_engine import StepOutput
from glassbox.errors import (
    Conflict,
    GlassboxError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    Unavailable,
    Unsupported,
)
from glassbox.features.emotion import EmotionalState
from glassbox.features.steering import SteeringService
from glassbox.principal import Principal
from glassbox.requests.generation import Generation, GenerationService
from glassbox.requests.registry import STEERING, ModelRegistry, ServedModel
from glassbox.sessions.cache import SessionCache
from glassbox.sessions.locks import LocalLocks, RedisLocks
from glassbox.states.records import State
from glassbox.states.service import StateService, common_prefix
from glassbox.steering.plan import SteeringPlan
from glassbox.store import Database
from glassbox.store.models import ChatMessageRow, ChatSessionRow, as_utc
from glassbox.structured.grammar import GrammarCompiler

MAX_MESSAGE_CHARS = 32_000
ACTIVE_SECONDS = 900  # /metrics: a session is active if it had a turn this recently
COUNT_SECONDS = 2.0  # /metrics: how long the session counts read from the database are kept
DEFAULT_MAX_TOKENS = 256
SUMMARY_TOKENS = 96
SUMMARY_INSTRUCTION = (
    "Summarize the conversation below in a few sentences: who said what, and every fact, "
    "name and number that matters for what follows. Write only the summary."
)

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class SessionSettings:
    """What every turn of a session uses (stored as JSON with the session)."""

    model: str | None = None  # the name the client asked for (None: the local model)
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
    owner: str  # the tenant it belongs to
    user_id: str
    settings: SessionSettings
    state_id: str | None  # local model: the KV state holding the conversation
    created_at: datetime
    last_active: datetime
    message_count: int
    context_start: int  # the first message the model still reads (see `_fit`)
    fence: int  # the fencing token of the last turn stored (sessions/locks.py)
    summary: str | None  # context_policy "summarize": the dropped messages, summarized
    model: str | None  # the name it is served by (settings.model, or the local model's)


@dataclass(frozen=True)
class Turn:
    """A turn's outcome: the stored reply, the session after it, and what the turn cost:
    its prompt's tokens, of which `cached_tokens` came warm (the session's KV state or the
    prefix cache) and were not computed. None on a backend that does not report them."""

    reply: ChatMessage
    session: ChatSession
    prompt_tokens: int | None
    cached_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True)
class _Reply:
    """What a generation step leaves for the turn to store (see `SessionService.stream`)."""

    text: str
    state_id: str | None
    context_start: int
    summary: str | None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None


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
        *,
        models: ModelRegistry | None = None,
        backends: Mapping[str, InferenceEngine] | None = None,
        cache_ttl: float = 3600.0,
    ):
        """`steering` resolves a session's variant and emotional state (None: a server
        without feature dictionaries, whose sessions cannot steer). With `RedisLocks`, the
        session records are looked up in the same Redis (on the locks' client), kept there
        `cache_ttl` seconds from their last use. `models` resolves a session's `model`
        (without it, sessions run on the local model only); `backends` are the other
        backends' engines by served name (the local model is not among them)."""
        self.db = db
        self.states = states
        self.generation = generation
        self.requests = generation.requests
        self.grammars = grammars
        self.steering = steering
        self.locks = locks or LocalLocks()
        self.cache: SessionCache | None = None
        if isinstance(self.locks, RedisLocks):  # one client for the locks and the lookups
            self.cache = SessionCache(self.locks.client, cache_ttl)
        self.models = models
        self.backends = dict(backends or {})
        # For /metrics: turns by backend ("local" or "backend"), prompt tokens reused from
        # KV or computed, and rebuilds (a turn that follows others but has no warm KV)
        self.counts: Counter[str] = Counter()
        self.turns_running = 0
        self._counted: tuple[float, dict[str, int]] = (-COUNT_SECONDS, {})

    def stats(self) -> dict[str, Any]:
        """For /metrics: "sessions" stored and "active" (a turn in the last ACTIVE_SECONDS),
        read from the database at most every COUNT_SECONDS; the turns running; `counts`."""
        at, counted = self._counted
        if time.monotonic() - at >= COUNT_SECONDS:
            counted = self._count_sessions()
            self._counted = (time.monotonic(), counted)
        return {**counted, "turns_running": self.turns_running, **self.counts}

    def _count_sessions(self) -> dict[str, int]:
        since = datetime.now(UTC) - timedelta(seconds=ACTIVE_SECONDS)
        recent = func.coalesce(func.sum(case((ChatSessionRow.updated_at >= since, 1), else_=0)), 0)
        with self.db.session() as s:
            counts = select(func.count(), recent).select_from(ChatSessionRow)
            stored, active = s.execute(counts).one()
        return {"sessions": int(stored), "active": int(active)}

    # --- records ---------------------------------------------------------------------------

    def _model_name(self, settings: SessionSettings) -> str | None:
        return settings.model or (self.models.served_name if self.models else None)

    def _session(self, s: SqlSession, row: ChatSessionRow) -> ChatSession:
        count = s.scalar(
            select(func.count())
            .select_from(ChatMessageRow)
            .where(ChatMessageRow.session_id == row.session_id)
        )
        settings = SessionSettings.from_json(row.settings)
        return ChatSession(
            row.session_id, row.owner, row.user_id, settings, row.state_id,
            as_utc(row.created_at), as_utc(row.updated_at), int(count or 0), row.context_start,
            row.fence, row.summary, self._model_name(settings),
        )  # fmt: skip

    @staticmethod
    def _encode(session: ChatSession) -> str:
        """The record as cached: its fields (but the derived `model`), the fence as a string
        (see cache.py)."""
        record = asdict(session)
        del record["model"]
        record.update(
            created_at=session.created_at.isoformat(),
            last_active=session.last_active.isoformat(),
            fence=str(session.fence),
        )
        return json.dumps(record, sort_keys=True)

    def _decode(self, text: str) -> ChatSession:
        record = json.loads(text)
        settings = SessionSettings(**record["settings"])
        record.update(
            settings=settings,
            created_at=datetime.fromisoformat(record["created_at"]),
            last_active=datetime.fromisoformat(record["last_active"]),
            fence=int(record["fence"]),
            model=self._model_name(settings),
        )
        return ChatSession(**record)

    async def _remember(self, session: ChatSession) -> None:
        """Write the session's record through to Redis (after the database committed it)."""
        if self.cache is not None:
            await self.cache.put(session.session_id, self._encode(session), session.fence)

    def _read(self, session_id: str) -> ChatSession | None:
        with self.db.session() as s, s.begin():
            row = s.get(ChatSessionRow, session_id)
            return None if row is None else self._session(s, row)

    def _message_rows(self, s: SqlSession, session_id: str) -> list[ChatMessage]:
        rows = s.scalars(
            select(ChatMessageRow)
            .where(ChatMessageRow.session_id == session_id)
            .order_by(ChatMessageRow.position)
        )
        return [
            ChatMessage(r.message_id, r.session_id, r.sender, r.content, as_utc(r.created_at))
            for r in rows
        ]

    def _messages(self, session_id: str) -> list[ChatMessage]:
        with self.db.session() as s, s.begin():
            return self._message_rows(s, session_id)

    def _read_all(self, session_id: str) -> tuple[ChatSession | None, list[ChatMessage]]:
        """The row and its messages in one transaction (without Redis, or to repair it)."""
        with self.db.session() as s, s.begin():
            row = s.get(ChatSessionRow, session_id)
            if row is None:
                return None, []
            return self._session(s, row), self._message_rows(s, session_id)

    async def _lookup(self, owner: Principal, session_id: str) -> ChatSession:
        """The owner's session: from Redis when it holds it, else from the database (and
        then into Redis). Another owner's session is not found."""
        session = None
        if self.cache is not None:
            cached = await self.cache.get(session_id)
            if cached is not None:
                session = self._decode(cached)
        if session is None:
            session = await asyncio.to_thread(self._read, session_id)
            if session is not None:
                await self._remember(session)
        if session is None or session.owner != owner.tenant:
            raise _not_found(session_id)
        return session

    async def _load(
        self, owner: Principal, session_id: str
    ) -> tuple[ChatSession, list[ChatMessage]]:
        """The owner's session (as `_lookup`) and its messages. A cached record whose
        message count is not the database's missed a write-through (a process that stopped
        between its commit and Redis): it is read again from the database."""
        if self.cache is None:
            session, messages = await asyncio.to_thread(self._read_all, session_id)
        else:
            session = await self._lookup(owner, session_id)
            messages = await asyncio.to_thread(self._messages, session_id)
            if session.message_count != len(messages):
                await self.cache.forget(session_id)
                session, messages = await asyncio.to_thread(self._read_all, session_id)
                if session is not None:
                    await self._remember(session)
        if session is None or session.owner != owner.tenant:
            raise _not_found(session_id)
        return session, messages

    async def get(self, owner: Principal, session_id: str) -> ChatSession:
        return await self._lookup(owner, session_id)

    async def history(self, owner: Principal, session_id: str) -> list[ChatMessage]:
        return (await self._load(owner, session_id))[1]

    def list(
        self, owner: Principal, user_id: str | None, limit: int, offset: int
    ) -> tuple[list[ChatSession], int]:
        """The owner's sessions, most recently active first, and how many there are (from
        the database: a listing is a query, not a lookup)."""
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
        try:
            await self._remember(await asyncio.to_thread(self._insert, row))
            return await self.send(owner, session_id, initial_message)
        except BaseException:
            await self._remove(session_id)
            raise

    def _insert(self, row: ChatSessionRow) -> ChatSession:
        with self.db.session() as s, s.begin():
            s.add(row)
            s.flush()
            return self._session(s, row)

    async def delete(self, owner: Principal, session_id: str) -> None:
        async with self.locks.hold(session_id):
            await self._lookup(owner, session_id)
            state_id = await self._remove(session_id)
            await self._drop_state(owner, state_id)
        self.locks.forget(session_id)

    async def _remove(self, session_id: str) -> str | None:
        """Delete the session's rows and its record in Redis; the state id it had."""
        state_id = await asyncio.to_thread(self._delete_rows, session_id)
        if self.cache is not None:
            await self.cache.delete(session_id)
        return state_id

    def _delete_rows(self, session_id: str) -> str | None:
        with self.db.session() as s, s.begin():
            for message in s.scalars(
                select(ChatMessageRow).where(ChatMessageRow.session_id == session_id)
            ):
                s.delete(message)
            row = s.get(ChatSessionRow, session_id)
            if row is None:
                return None
            s.delete(row)
            return row.state_id

    async def _drop_state(self, owner: Principal, state_id: str | None) -> None:
        if state_id is None:
            return
        try:
            await self.states.delete(owner, state_id)
        except NotFound:
            pass  # already gone (deleted through the states routes)

    # --- models ---------------------------------------------------------------------------

    def _served(self, settings: SessionSettings) -> ServedModel | None:
        """The session's model; None for the local model of a service without a registry."""
        if self.models is not None:
            return self.models.served(settings.model)
        if settings.model is not None:
            raise ModelNotFound(
                settings.model, "this server runs sessions on its local model only; leave out "
                "'model'",
            )  # fmt: skip
        return None

    def _backend(self, model: ServedModel) -> InferenceEngine:
        backend = self.backends.get(model.name)
        if backend is None:
            raise Unavailable(
                f"model '{model.name}' ({model.backend}) has no backend in this server process"
            )
        return backend

    async def _check(self, owner: Principal, settings: SessionSettings) -> None:
        """Refuse settings that would fail every turn, before the session exists."""
        model = self._served(settings)
        if model is None or model.local:
            await self._grammar(settings)
            await self._plan(owner, settings)
            return
        if settings.variant or settings.variant_id:
            assert self.models is not None  # a model other than the local one came from it
            self.models.require(settings.model, STEERING, param="variant")
        if settings.sampling.get("seed") is not None:
            raise Unsupported(
                "seed", f"model '{settings.model}' is served by the '{model.backend}' backend, "
                "whose chat interface takes no seed",
            )  # fmt: skip
        self._backend(model).json_format(settings.response_format)

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
        async with self.locks.hold(session_id) as token, self._running():
            session, messages = await self._load(owner, session_id)
            # A Redis that lost its counters (restarted without persistence) counts from 1
            # again: the token is raised above the last stored one. A holder whose lock
            # expired read an older fence, so a later holder's token is still at least its.
            token = max(token, session.fence + 1)
            model = self._served(session.settings)
            if model is None or model.local:
                step = self._local_step(owner, session, messages, user_message)
            else:
                step = self._backend_step(model, session, messages, user_message)
            reply = None
            async with aclosing(step) as pieces:
                async for piece in pieces:
                    if isinstance(piece, str):
                        yield piece
                    else:
                        reply = piece
            assert reply is not None  # a step ends with it or raises
            store = asyncio.to_thread(
                self._store_turn,
                session_id,
                len(messages),
                user_message,
                reply.text,
                reply.state_id,
                reply.context_start,
                reply.summary,
                token,
            )
            try:
                message, updated = await store
            except Conflict:
                await self._drop_state(owner, reply.state_id)
                if self.cache is not None:
                    await self.cache.forget(session_id)  # the next try reads the database
                raise
            # Stored: Redis follows even if the client leaves now.
            await asyncio.shield(self._remember(updated))
            await self._drop_state(owner, session.state_id)
            self._count_turn(model is None or model.local, reply)
        yield Turn(
            message, updated, reply.prompt_tokens, reply.cached_tokens, reply.completion_tokens
        )

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        self.turns_running += 1
        try:
            yield
        finally:
            self.turns_running -= 1

    def _count_turn(self, local: bool, reply: _Reply) -> None:
        self.counts["local_turns" if local else "backend_turns"] += 1
        if reply.prompt_tokens is not None:
            reused = reply.cached_tokens or 0
            self.counts["reused_tokens"] += reused
            self.counts["computed_tokens"] += reply.prompt_tokens - reused

    async def _local_step(
        self,
        owner: Principal,
        session: ChatSession,
        messages: list[ChatMessage],
        user_message: str,
    ) -> AsyncIterator[str | _Reply]:
        """The local engine's generation step: the reply's pieces, then its `_Reply` with
        the finished sequence's KV committed as the session's next state."""
        state = self._state(owner, session.state_id)
        start, summary, ids = await self._fit(
            session, messages, user_message, state, self.requests.context_limit,
            self._generate_local,
        )  # fmt: skip
        assert ids is not None  # the local model's length is known
        params = await self._params(owner, session.settings, len(ids))
        prefix = await self._warm_prefix(owner, state, ids)
        if prefix is None and messages:  # no warm KV: recomputed from the messages
            self.counts["rebuilds"] += 1
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
            committed = await self.states.commit(owner, kv, parent_id="", meta={
                "session_id": session.session_id})  # fmt: skip
            state_id = committed.state_id
        yield _Reply(
            reply.text, state_id, start, summary, len(ids), cached, reply.num_output_tokens
        )

    async def _backend_step(
        self,
        model: ServedModel,
        session: ChatSession,
        messages: list[ChatMessage],
        user_message: str,
    ) -> AsyncIterator[str | _Reply]:
        """Another backend's generation step: the whole conversation, in OpenAI's message
        shape, to `chat_completion_stream` (the reference interface); no state, no counts."""
        backend = self._backend(model)
        settings = session.settings

        async def summarize(prompt: Messages) -> str:
            return without_nul(await backend.chat_completion(prompt, SUMMARY_TOKENS, 0.0))

        start, summary, ids = await self._fit(
            session, messages, user_message, None, model.max_model_len, summarize
        )
        turns = self._turns(settings, summary, messages[start:], user_message)
        sampling = settings.sampling
        max_tokens = sampling.get("max_tokens") or DEFAULT_MAX_TOKENS
        if model.max_model_len is not None and ids is not None:
            max_tokens = max(1, min(max_tokens, model.max_model_len - len(ids)))  # estimated
        coefficients = None
        if settings.emotional_state is not None:
            coefficients = EmotionalState(**settings.emotional_state).get_steering_coefficients()
        pieces: list[str] = []
        stream = backend.chat_completion_stream(
            turns,
            max_tokens,
            sampling.get("temperature"),  # None: the backend's default
            sampling.get("top_p"),
            coefficients,
            response_format=settings.response_format,
        )
        async with aclosing(stream) as texts:
            async for text in texts:
                pieces.append(without_nul(text))  # as the local engine's output
                yield pieces[-1]
        yield _Reply("".join(pieces), None, start, summary)

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
        limit: int | None,
        generate: Callable[[Messages], Awaitable[str]],
    ) -> tuple[int, str | None, list[int] | None]:
        """(the first message the model reads, the summary of the ones before it, the
        prompt's token ids) under the session's context policy, for a model of context
        `limit` (None: unknown, no policy and no token ids). The tokens are the local
        tokenizer's: on another backend, an estimate of the upstream's.

        When the conversation and room for a reply (max_tokens, at most a quarter of the
        context) no longer fit the context, the oldest messages are dropped, a user/assistant
        pair at a time and never the system prompt, until the prompt fills at most half of
        the context. Dropping that much at once keeps the conversation's start, and so its
        warm KV, the same for the turns that follow. `truncate_oldest` forgets them;
        `summarize` has the model (`generate`) summarize them (with the earlier summary)
        into a system message that opens the conversation. The history keeps every
        message."""
        settings = session.settings
        start, summary = session.context_start, session.summary
        if limit is None:
            return start, summary, None
        room = min(settings.sampling.get("max_tokens") or DEFAULT_MAX_TOKENS, limit // 4)
        ids = self._prompt(self._turns(settings, summary, messages[start:], user_message), state)
        if len(ids) + room <= limit:
            return start, summary, ids
        dropped_from = start
        while start < len(messages) and len(ids) > limit // 2:
            start = min(start + 2, len(messages))
            ids = self._prompt(self._turns(settings, summary, messages[start:], user_message))
        if settings.context_policy == "summarize":
            summary = await self._summarize(summary, messages[dropped_from:start], limit, generate)
            ids = self._prompt(self._turns(settings, summary, messages[start:], user_message))
        return start, summary, ids

    async def _summarize(
        self,
        earlier: str | None,
        messages: list[ChatMessage],
        limit: int,
        generate: Callable[[Messages], Awaitable[str]],
    ) -> str:
        """The model's summary (greedy, at most SUMMARY_TOKENS) of the earlier summary and
        the dropped messages, cut to fit half of the context."""
        transcript = "\n".join(f"{m.sender}: {m.content}" for m in messages)
        if earlier:
            transcript = f"(earlier: {earlier})\n{transcript}"
        budget = max(limit // 2 - SUMMARY_TOKENS, 1)
        # The last `budget` tokens lie within the last budget x max_token_chars characters:
        # only those are tokenized (a long history would take seconds, and the check of
        # `text` would refuse it).
        tail = transcript[-budget * self.requests.tokenizer.max_token_chars :]
        ids = self.requests.text(tail, add_special_tokens=False)[-budget:]
        transcript = self.requests.decode(ids, skip_special_tokens=True)
        prompt = [
            {"role": "system", "content": SUMMARY_INSTRUCTION},
            {"role": "user", "content": transcript},
        ]
        return (await generate(prompt)).strip()

    async def _generate_local(self, prompt: Messages) -> str:
        request = self.requests.request(
            self.requests.chat(prompt), prompt_param="messages", max_tokens=SUMMARY_TOKENS,
            cap=True, temperature=0.0,
        )  # fmt: skip
        [result] = await self.generation.generate_many([request])
        return result.text

    @staticmethod
    def _turns(
        settings: SessionSettings,
        summary: str | None,
        messages: list[ChatMessage],
        user_message: str,
    ) -> Messages:
        """The conversation in OpenAI's message shape: the system prompt and the summary,
        the messages, the new user message."""
        turns = [{"role": m.sender, "content": m.content} for m in messages]
        turns.append({"role": "user", "content": user_message})
        system = [settings.system_prompt] if settings.system_prompt else []
        if summary:
            system.append(f"Summary of the conversation so far: {summary}")
        if system:
            turns.insert(0, {"role": "system", "content": "\n\n".join(system)})
        return turns

    def _prompt(self, turns: Messages, state: State | None = None) -> list[int]:
        """The conversation's token ids: the state's tokens as the model read and wrote them,
        then the template's text around the new message (`RequestBuilder.chat_after`)."""
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
