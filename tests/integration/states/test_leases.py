"""A lease on a state's KV whose caller is gone (a client that hung up while the lease was
being taken) is given back: once the state is deleted, its blocks are free again."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers.server import tiny_settings
from helpers.waiting import async_wait_until

from glassbox.metrics import Metrics
from glassbox.principal import LOCAL
from glassbox.requests.generation import GenerationService
from glassbox.runtime import start_engine
from glassbox.states.service import StateService
from glassbox.store import Database


async def test_a_lease_taken_for_a_caller_that_left_is_given_back(tiny_model_dir, tmp_path):
    engine, resolved = start_engine(tiny_settings(tiny_model_dir, tmp_path))
    db = Database(f"sqlite:///{tmp_path / 'glassbox.db'}")
    try:
        states = StateService(
            GenerationService(engine, Metrics()), db, tmp_path / "states",
            resolved.fingerprint, 8 * 1024 * 1024,
        )  # fmt: skip
        empty = engine.stats()["kv_blocks_used"]
        state = await states.create_from(LOCAL, text="a text of a few blocks of KV " * 4)
        assert engine.stats()["kv_blocks_used"] > empty
        # The engine thread is busy: the lease's call waits behind this one, and its caller
        # is cancelled meanwhile; the engine still takes the lease when it gets to it.
        busy = asyncio.ensure_future(engine.call(lambda _: time.sleep(0.3)))
        await asyncio.sleep(0.02)
        leasing = asyncio.ensure_future(states.lease(LOCAL, state.state_id))
        await asyncio.sleep(0.05)
        leasing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leasing
        await busy
        await states.delete(LOCAL, state.state_id)
        assert await async_wait_until(
            lambda: engine.stats()["kv_blocks_used"] == empty, timeout=5
        ), engine.stats()
    finally:
        await states.flush()
        db.close()
        engine.shutdown()
