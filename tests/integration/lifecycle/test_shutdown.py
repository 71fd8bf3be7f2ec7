"""SIGTERM to a real `glassbox serve`: it stops accepting connections at once, lets in-flight
streams finish within GLASSBOX_SHUTDOWN_GRACE_SECONDS, cuts what still runs then, flushes
its states and exits 0; a KV state made before is there after a restart."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
from helpers.http import create_state
from helpers.processes import ServerProcess, start_server
from helpers.server import TINY_NAME
from helpers.waiting import wait_until

from glassbox.api.streaming import FAREWELL_SECONDS

# 16 choices of 450 tokens on one thread: a stream of a few seconds on the tiny model.
LONG_STREAM = {
    "model": TINY_NAME,
    "messages": [{"role": "user", "content": "Tell me a long story"}],
    "max_tokens": 450,
    "n": 16,
    "ignore_eos": True,
    "stream": True,
}
SLOW = {"GLASSBOX_NUM_THREADS": "1"}


class Stream(threading.Thread):
    """A long chat stream read in the background: its `data:` lines, or the error that
    ended it."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.lines: list[str] = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            url = self.url + "/v1/chat/completions"
            with httpx.stream("POST", url, json=LONG_STREAM, timeout=60) as r:
                self.lines.extend(line for line in r.iter_lines() if line)
        except httpx.HTTPError as exc:
            self.error = exc

    @property
    def done(self) -> bool:
        return bool(self.lines) and self.lines[-1] == "data: [DONE]"


def _sigterm(server: ServerProcess) -> float:
    os.killpg(server.proc.pid, signal.SIGTERM)
    return time.monotonic()


def _exit_code(server: ServerProcess, within: float) -> int:
    return server.proc.wait(timeout=within)


def _refused(url: str) -> bool:
    """No new request is served: the connection is refused, or (accepted by the socket just
    as the server stopped listening) closed without an answer."""
    try:
        httpx.get(url + "/health", timeout=2)
    except (httpx.ConnectError, httpx.RemoteProtocolError):
        return True
    return False


def test_sigterm_lets_a_stream_finish_and_keeps_states(tiny_model_dir, tmp_path: Path) -> None:
    directory = tmp_path / "server"
    server = start_server(directory, tiny_model_dir, **SLOW)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            state = create_state(http)
        stream = Stream(server.url)
        stream.start()
        assert wait_until(lambda: len(stream.lines) > 0, 30)
        _sigterm(server)
        assert wait_until(lambda: _refused(server.url), 5)  # no new connections
        assert stream.is_alive(), "the stream ended before the refused connection was seen"
        stream.join(60)
        assert stream.error is None and stream.done
        assert _exit_code(server, 10) == 0
    finally:
        server.stop()

    restarted = start_server(directory, tiny_model_dir, **SLOW)
    try:
        restarted.wait_ready()
        r = httpx.get(f"{restarted.url}/states/{state['id']}", timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["token_ids"] == state["token_ids"]
    finally:
        restarted.stop()


def test_a_stream_past_the_grace_ends_with_an_error_event_and_the_server_exits_0(
    tiny_model_dir, tmp_path: Path
) -> None:
    """A stream still running FAREWELL_SECONDS before the grace ends is told so in its last
    event (OpenAI's error shape), instead of being cut without a word."""
    # The farewell goes out at grace - FAREWELL_SECONDS and is seen within sse-starlette's
    # 0.5 s poll: a short grace, so that the stream (a few seconds long) is still running.
    grace = FAREWELL_SECONDS + 0.2
    server = start_server(
        tmp_path / "server", tiny_model_dir, GLASSBOX_SHUTDOWN_GRACE_SECONDS=str(grace), **SLOW
    )
    try:
        server.wait_ready()
        stream = Stream(server.url)
        stream.start()
        assert wait_until(lambda: len(stream.lines) > 0, 30)
        sent = _sigterm(server)
        assert _exit_code(server, grace + 10) == 0
        exited = time.monotonic() - sent
        stream.join(10)
        assert not stream.done  # stopped at the deadline, not finished
        assert stream.error is None, stream.error  # ended by the server, not cut
        last = json.loads(stream.lines[-1].removeprefix("data: "))
        assert last["error"]["code"] == "server_shutting_down", last
        assert last["error"]["type"] == "service_unavailable_error"
        assert grace - FAREWELL_SECONDS - 0.1 < exited < grace + 5
    finally:
        server.stop()
