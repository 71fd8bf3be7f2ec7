"""glassbox.client raises the server's error when a live server ends a stream with an error
event after tokens were sent (the status is already 200 then: the client gives the error
back the status its type stands for)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from helpers.http import TEXT
from helpers.server import LiveServer, fail_after_first

from glassbox.client import Client, GlassboxError, NotFoundError
from glassbox.engine.errors import EngineDeadError
from glassbox.errors import GlassboxError as DomainError
from glassbox.errors import InvalidRequest, NotFound


@pytest.fixture
async def c(tiny_server: LiveServer) -> AsyncIterator[Client]:
    async with Client(tiny_server.base_url, timeout=60) as client:
        yield client


def fail_after_first_token(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, error: DomainError
) -> None:
    """The live app's state service yields one generation step, then raises `error`."""
    fail_after_first(monkeypatch, server.app.state.states, "generate", error)


async def tokens_then_error(c: Client, state_id: str) -> tuple[list[dict], GlassboxError]:
    events = []
    with pytest.raises(GlassboxError) as info:
        async for event in c.stream(state_id, max_tokens=8, seed=3, temperature=1.0):
            events.append(event)
    return events, info.value


async def test_engine_dead_mid_stream_raises_a_503(
    c: Client, tiny_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = await c.create_state(text=TEXT)
    whole = await c.generate(state["id"], max_tokens=8, seed=3, temperature=1.0)
    fail_after_first_token(tiny_server, monkeypatch, EngineDeadError("the engine has stopped"))

    events, error = await tokens_then_error(c, state["id"])
    assert [e["index"] for e in events] == [0]
    assert events[0]["token_id"] == whole["tokens"][0]["token_id"]
    assert type(error) is GlassboxError
    assert error.status == 503
    assert error.message == "the engine has stopped"
    assert error.code == "engine_dead"
    assert error.type == "service_unavailable_error"
    assert error.param is None
    assert str(error) == "503: the engine has stopped"


async def test_not_found_mid_stream_raises_not_found_error(
    c: Client, tiny_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = await c.create_state(text=TEXT)
    fail_after_first_token(tiny_server, monkeypatch, NotFound("state", "gone", param="state_id"))

    events, error = await tokens_then_error(c, state["id"])
    assert len(events) == 1 and "token_id" in events[0]
    assert isinstance(error, NotFoundError)
    assert (error.status, error.code, error.param) == (404, "state_not_found", "state_id")
    assert error.message == "No state with id 'gone'"
    assert error.type == "not_found_error"


async def test_invalid_request_mid_stream_keeps_message_and_param(
    c: Client, tiny_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = await c.create_state(text=TEXT)
    bad = InvalidRequest("the stop string ran away", param="stop_sequences", code="odd")
    fail_after_first_token(tiny_server, monkeypatch, bad)

    events, error = await tokens_then_error(c, state["id"])
    assert len(events) == 1
    assert type(error) is GlassboxError
    assert (error.status, error.type) == (400, "invalid_request_error")
    assert (error.message, error.param, error.code) == (
        "the stop string ran away",
        "stop_sequences",
        "odd",
    )


async def test_the_stream_works_again_once_the_failure_is_gone(
    c: Client, tiny_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = await c.create_state(text=TEXT)
    fail_after_first_token(tiny_server, monkeypatch, EngineDeadError("the engine has stopped"))
    await tokens_then_error(c, state["id"])
    monkeypatch.undo()
    events = [e async for e in c.stream(state["id"], max_tokens=8, seed=3, temperature=1.0)]
    assert [e["index"] for e in events if "token_id" in e] == list(range(8))
    assert events[-1]["finish_reason"] == "length"
