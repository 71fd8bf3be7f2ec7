"""Beam search from a stored state: one engine call per search step, so the engine goes on
stepping the other requests between two steps of a search (engine/beam_search.py)."""

from __future__ import annotations

import asyncio

from glassbox.engine.beam_search import BeamSearch, BeamSearchParams, Hypothesis
from glassbox.principal import Principal
from glassbox.requests.builder import about
from glassbox.states.records import State
from glassbox.states.service import StateService


async def beam_search(
    states: StateService, owner: Principal, state_id: str, params: BeamSearchParams
) -> tuple[list[Hypothesis], State | None]:
    """The best hypotheses, and with `params.keep_kv` the child state holding the state's
    tokens and the best one's."""
    engine = states.engine
    lease = await states.lease(owner, state_id)
    search = await engine.call(lambda e: BeamSearch(e, lease, params))
    try:
        with about("state_id"):
            while not await engine.call(lambda e: search.step()):
                pass
        kv = search.take_kv()
    finally:
        # Also when the client went away (cancelled): the search's blocks go back.
        await asyncio.shield(engine.call(lambda e: search.close()))
    child = await states.commit(owner, kv, state_id) if kv is not None else None
    return search.hypotheses, child
