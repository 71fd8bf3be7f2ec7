"""State records in SQL: what a state is besides its KV (tokens, tree, config, checkpoints),
loaded once at start-up and written behind.

This is the states' one boundary to blocking SQL: the service runs on the event loop and
queues writes here; one writer task applies them in order in a worker thread, so the
service's lock is never held over SQL (about half a millisecond, more than the rest of a
fork). A change is acknowledged only once its record is written (`written`, awaited by the
service after its lock is released): a server killed after answering keeps what it answered.
`flush` waits for every queued write (shutdown).
"""

from __future__ import annotations

import asyncio
import json
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update

from glassbox.logs import get_logger
from glassbox.principal import LOCAL_TENANT
from glassbox.store import Database, StateRow

log = get_logger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class State:
    state_id: str
    token_ids: list[int]
    parent_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, seed
    checkpoints: dict[str, int] = field(default_factory=dict)  # name -> token count
    meta: dict[str, Any] = field(default_factory=dict)  # merged_from, imported_from
    created_at: datetime = field(default_factory=now)
    modified_at: datetime = field(default_factory=now)
    owner: str = LOCAL_TENANT  # the tenant of the principal that made it

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def record(self) -> dict[str, Any]:
        """What a state file carries besides KV and tokens."""
        return {
            "state_id": self.state_id,
            "parent_id": self.parent_id,
            "config": self.config,
            "checkpoints": self.checkpoints,
            "meta": self.meta,
            "created_at": self.created_at.isoformat(),
        }


class StateRecords:
    def __init__(self, db: Database, fingerprint: str):
        self.db = db
        self.fingerprint = fingerprint  # records of another model's states are not loaded
        self._writes: deque[tuple[Callable[..., None], tuple]] = deque()
        self._writer: asyncio.Task | None = None
        self._queued = 0  # writes queued since start, and applied: `written` compares them
        self._applied = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def load(self) -> list[State]:
        """Every state of this model, oldest first (blocking: start-up only)."""
        with self.db.session() as s:
            rows = s.scalars(
                select(StateRow)
                .where(StateRow.fingerprint == self.fingerprint)
                .order_by(StateRow.created_at)
            ).all()
        states = []
        for row in rows:
            tokens = array("i")
            tokens.frombytes(row.token_ids)
            states.append(
                State(
                    row.state_id, tokens.tolist(), row.parent_id, json.loads(row.config),
                    json.loads(row.checkpoints), json.loads(row.meta),
                    row.created_at.replace(tzinfo=UTC), row.modified_at.replace(tzinfo=UTC),
                    row.owner,
                )
            )  # fmt: skip
        return states

    # --- queued writes (call on the event loop) ------------------------------------------

    def insert(self, state: State) -> None:
        self._queue(self._insert, state)

    def update(self, *states: State) -> None:
        self._queue(self._update, *states)

    def delete(self, state_id: str) -> None:
        self._queue(self._delete, state_id)

    async def flush(self) -> None:
        while self._writer is not None and not self._writer.done():
            await self._writer

    async def written(self) -> None:
        """Wait until every write queued so far is applied (not those queued after: a steady
        stream of writes keeps no caller waiting)."""
        if self._applied >= self._queued:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((self._queued, waiter))
        await asyncio.shield(waiter)

    def _queue(self, fn: Callable[..., None], *args: Any) -> None:
        self._writes.append((fn, args))
        self._queued += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())

    async def _write_queued(self) -> None:
        while self._writes:
            batch = list(self._writes)
            self._writes.clear()
            try:
                await asyncio.to_thread(self._apply, batch)
            finally:
                self._applied += len(batch)
                waiting, self._waiters = self._waiters, []
                for target, waiter in waiting:
                    if target > self._applied:
                        self._waiters.append((target, waiter))
                    elif not waiter.done():
                        waiter.set_result(None)

    @staticmethod
    def _apply(batch: list[tuple[Callable[..., None], tuple]]) -> None:
        for fn, args in batch:
            try:
                fn(*args)
            except Exception:  # the state stays served; its record is what is lost
                log.exception("state record write failed", write=fn.__name__)

    # --- SQL (in the writer's thread) ------------------------------------------------------

    def _values(self, state: State) -> dict[str, Any]:
        return {
            "owner": state.owner,
            "fingerprint": self.fingerprint,
            "parent_id": state.parent_id,
            "num_tokens": state.num_tokens,
            "token_ids": array("i", state.token_ids).tobytes(),
            "config": json.dumps(state.config),
            "checkpoints": json.dumps(state.checkpoints),
            "meta": json.dumps(state.meta),
            "created_at": state.created_at,
            "modified_at": state.modified_at,
        }

    def _insert(self, state: State) -> None:
        # A Core insert: the ORM's unit of work costs more than the rest of a fork.
        with self.db.engine.begin() as conn:
            conn.execute(insert(StateRow), {"state_id": state.state_id, **self._values(state)})

    def _update(self, *states: State) -> None:
        with self.db.session() as s, s.begin():
            for state in states:
                s.execute(
                    update(StateRow)
                    .where(StateRow.state_id == state.state_id)
                    .values(**self._values(state))
                )

    def _delete(self, state_id: str) -> None:
        with self.db.session() as s, s.begin():
            s.execute(delete(StateRow).where(StateRow.state_id == state_id))
