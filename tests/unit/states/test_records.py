"""State records are written behind, in order, and `written` waits for exactly the writes
queued before it: what the service acknowledges is in the database."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from glassbox.states.records import State, StateRecords
from glassbox.store import Database


async def test_written_waits_for_the_writes_queued_before_it(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'states.db'}")
    try:
        records = StateRecords(db, "f" * 64)
        await records.written()  # nothing queued: returns at once
        inserted, updated = threading.Event(), threading.Event()
        real_insert, real_update = records._insert, records._update

        def slow_insert(state: State) -> None:
            inserted.wait(5)
            real_insert(state)

        def slow_update(*states: State) -> None:
            updated.wait(5)
            real_update(*states)

        records._insert, records._update = slow_insert, slow_update
        first = State("a" * 32, [1, 2, 3])
        records.insert(first)
        waiting = asyncio.ensure_future(records.written())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # its write is not applied yet
        records.update(first)  # queued after: `waiting` does not wait for it
        inserted.set()
        await asyncio.wait_for(waiting, 5)
        assert [s.state_id for s in records.load()] == [first.state_id]
        after = asyncio.ensure_future(records.written())
        await asyncio.sleep(0.05)
        assert not after.done()  # the update is still being written
        updated.set()
        await asyncio.wait_for(after, 5)
        await records.flush()
    finally:
        db.close()
