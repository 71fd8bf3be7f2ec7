"""Back-pressure on a live server: with the engine's waiting queue full, a new generation
request is refused at once with 503, Retry-After and code server_overloaded; other routes
still answer, and generation is admitted again once the queue has drained."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from helpers.server import TINY_NAME, live, tiny_settings
from helpers.waiting import wait_until

from glassbox.api.limits import GENERATION_ROUTES
from glassbox.app import create_app

CHAT = {"model": TINY_NAME, "messages": [{"role": "user", "content": "hi"}]}


def test_a_full_waiting_queue_answers_503_with_retry_after(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache")).model_copy(
        update={"max_waiting": 1, "max_num_seqs": 1}
    )
    # One sequence runs at a time, slowly (150 steps of 20 ms each): the second one waits,
    # and fills the queue for seconds.
    with contextmanager(live)(settings, step_delay=0.02) as server:
        url = server.base_url + "/v1/chat/completions"
        answers: list[object] = []

        def occupy() -> None:
            body = {**CHAT, "max_tokens": 150, "ignore_eos": True}
            try:
                answers.append(httpx.post(url, json=body, timeout=120).status_code)
            except httpx.HTTPError as exc:
                answers.append(exc)

        def running() -> bool:
            return server.engine.stats()["running"] >= 1

        # The second occupant is sent once the first runs: sent together, both may wait at
        # once, and the second is (rightly) refused.
        busy = [threading.Thread(target=occupy) for _ in range(2)]
        busy[0].start()
        assert wait_until(running, 30, poll=0.02), (answers, server.engine.stats())
        busy[1].start()

        def full() -> bool:
            stats = server.engine.stats()
            return stats["waiting"] >= 1 and stats["running"] >= 1

        assert wait_until(full, 30, poll=0.05), (answers, server.engine.stats())
        # A probe sent while the queue is full is refused; on a loaded machine the queue may
        # drain between the check and the probe, so probes go on while it stays full.
        probes = []
        while full() and not any(p.status_code == 503 for p in probes):
            probes.append(httpx.post(url, json={**CHAT, "max_tokens": 2}, timeout=60))
        models = httpx.get(server.base_url + "/v1/models")
        for thread in busy:
            thread.join()
        admitted = httpx.post(url, json={**CHAT, "max_tokens": 2})
        metrics = httpx.get(server.base_url + "/metrics").text

    refused = probes[-1]
    assert refused.status_code == 503, refused.text
    assert all(p.status_code == 200 for p in probes[:-1])
    assert refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable_error", "server_overloaded")
    assert models.status_code == 200
    assert admitted.status_code == 200
    assert 'glassbox_rate_limited_total{kind="overloaded"} 1.0' in metrics


def test_every_generation_route_exists(tiny_model_dir: Path, tmp_path: Path):
    """A renamed route would silently lose its back-pressure."""
    app = create_app(tiny_settings(tiny_model_dir, tmp_path))
    posts = {path for path, ops in app.openapi()["paths"].items() if "post" in ops}
    assert GENERATION_ROUTES <= posts, GENERATION_ROUTES - posts
