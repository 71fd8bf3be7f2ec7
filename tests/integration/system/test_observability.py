"""Prometheus metrics, X-Request-Id and structured logs."""

from __future__ import annotations

import io
import json
import re
import time
from contextlib import ExitStack, contextmanager

import httpx
from helpers.http import create_state
from helpers.server import TINY_NAME, live, tiny_settings
from helpers.waiting import wait_until
from prometheus_client.parser import text_string_to_metric_families

from glassbox.logs import configure_logging

USER = [{"role": "user", "content": "Hi"}]


def scrape(http) -> dict[tuple[str, tuple], float]:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metric_names_present(http) -> None:
    names = {name for name, _ in scrape(http)}
    for expected in [
        "glassbox_prompt_tokens_total",
        "glassbox_generation_tokens_total",
        "glassbox_num_requests_running",
        "glassbox_num_requests_waiting",
        "glassbox_kv_blocks_used",
        "glassbox_kv_blocks_total",
        "glassbox_time_to_first_token_seconds_count",
    ]:
        assert expected in names, expected


def test_counters_increase(http, tiny_server) -> None:
    route = "/v1/chat/completions"
    before = scrape(http)
    body = {"model": TINY_NAME, "messages": USER, "max_tokens": 5, "ignore_eos": True}
    r = http.post(route, json=body)
    assert r.status_code == 200
    assert http.post(route, json={"messages": USER, "n": 99}).status_code == 400
    after = scrape(http)
    prompt = r.json()["usage"]["prompt_tokens"]

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("glassbox_requests_total", route=route, status="200") == 1
    assert delta("glassbox_requests_total", route=route, status="400") == 1
    assert delta("glassbox_request_duration_seconds_count", route=route) == 2
    assert delta("glassbox_generation_tokens_total") == 5
    assert delta("glassbox_prompt_tokens_total") == prompt
    assert delta("glassbox_time_to_first_token_seconds_count") == 1
    total = tiny_server.engine.stats()["kv_blocks_total"]
    assert value(after, "glassbox_kv_blocks_total") == total

    state = http.post("/states", json={"text": "counted too"}).json()
    r = http.post("/generate/token", json={"state_id": state["id"], "max_tokens": 4})
    generated = len(r.json()["tokens"])  # the random tiny model may end before 4
    assert r.status_code == 200 and 1 <= generated <= 4
    assert (
        value(scrape(http), "glassbox_generation_tokens_total")
        - value(after, "glassbox_generation_tokens_total")
        == generated
    )


def test_request_id_is_echoed_or_generated(http) -> None:
    r = http.get("/health", headers={"X-Request-Id": "client-id-123"})
    assert r.headers["x-request-id"] == "client-id-123"
    generated = http.get("/health").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert http.get("/health").headers["x-request-id"] != generated


def test_errors_and_streams_carry_the_request_id(http) -> None:
    bad = http.post("/v1/chat/completions", json={}, headers={"X-Request-Id": "bad-1"})
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "bad-1"
    missing = http.get("/nowhere", headers={"X-Request-Id": "lost-1"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "lost-1"
    body = {"messages": USER, "max_tokens": 2, "stream": True}
    with http.stream(
        "POST", "/v1/chat/completions", json=body, headers={"x-request-id": "s-1"}
    ) as r:
        assert r.headers["x-request-id"] == "s-1"
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_log_lines_are_json_with_request_id_and_duration(http) -> None:
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    try:
        http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2},
                  headers={"X-Request-Id": "log-test-1"})  # fmt: skip
    finally:
        configure_logging("WARNING")
    records = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    mine = [r for r in records if r.get("request_id") == "log-test-1"]
    access = [r for r in mine if r["event"] == "request"]
    assert len(access) == 1
    assert access[0]["status"] == 200 and access[0]["method"] == "POST"
    assert access[0]["path"] == "/v1/chat/completions" and access[0]["duration_ms"] > 0
    assert {"timestamp", "level"} <= set(access[0])


def test_prefix_cache_hits_are_counted(http, tiny_server) -> None:
    """A repeated long prompt reuses the cached KV blocks of its prefix: every full block
    before the block of its last token (that token is computed to give the next's logits)."""
    long_prompt = [{"role": "user", "content": "Tell me a story about the sea. " * 8}]
    body = {"model": TINY_NAME, "messages": long_prompt, "max_tokens": 2}
    first = http.post("/v1/chat/completions", json=body)
    assert first.status_code == 200
    before = value(scrape(http), "glassbox_prefix_cache_hit_tokens_total")
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    prompt = first.json()["usage"]["prompt_tokens"]
    block = tiny_server.settings.block_size
    assert prompt > 4 * block  # a prefix of several blocks
    hits = value(scrape(http), "glassbox_prefix_cache_hit_tokens_total") - before
    assert hits == (prompt - 1) // block * block


def test_engine_gauges_follow_the_engine(tiny_model_dir, tmp_path) -> None:
    """Running, waiting and KV-block gauges while one generation runs and two wait (one
    sequence at a time, 20 ms per step), then back to nothing once all are done."""
    settings = tiny_settings(tiny_model_dir, tmp_path)
    settings.max_num_seqs = 1
    body = {"model": TINY_NAME, "prompt": "Once upon a time", "max_tokens": 20,
            "ignore_eos": True, "stream": True}  # fmt: skip
    with (
        contextmanager(live)(settings, step_delay=0.02) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as http,
    ):
        idle = scrape(http)
        assert value(idle, "glassbox_num_requests_running") == 0
        assert value(idle, "glassbox_num_requests_waiting") == 0
        assert value(idle, "glassbox_kv_blocks_used") == 0
        with ExitStack() as streams:
            first, *others = (
                streams.enter_context(http.stream("POST", "/v1/completions", json=body))
                for _ in range(3)
            )
            lines = first.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # it runs
            assert wait_until(lambda: server.engine.stats()["waiting"] == 2)  # they wait
            least = server.engine.stats()["kv_blocks_used"]  # its blocks only grow meanwhile
            busy = scrape(http)
            most = server.engine.stats()["kv_blocks_used"]
            assert value(busy, "glassbox_num_requests_running") == 1
            assert value(busy, "glassbox_num_requests_waiting") == 2
            assert 0 < least <= value(busy, "glassbox_kv_blocks_used") <= most
            for rest in [lines, *(r.iter_lines() for r in others)]:
                assert [line for line in rest if line][-1] == "data: [DONE]"
        server.wait_idle(0)
        done = scrape(http)
        assert value(done, "glassbox_num_requests_running") == 0
        assert value(done, "glassbox_num_requests_waiting") == 0
        assert value(done, "glassbox_kv_blocks_used") == 0


def _read_stream(http: httpx.Client, route: str, body: dict) -> tuple[float, float]:
    """Stream a request to its end: (seconds until the first data event that carries a
    token, seconds from then to the last event), both measured here on the client. Chat's
    opening event (the assistant's role, sent before the sequence is submitted) carries
    none, so it does not count as the first token."""
    t0 = time.perf_counter()
    with http.stream("POST", route, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = (line for line in r.iter_lines() if line.startswith("data: "))
        line = next(lines)
        if '"role":"assistant"' in line:
            line = next(lines)
        first = time.perf_counter()
        assert list(lines)[-1] == "data: [DONE]"
        last = time.perf_counter()
    return first - t0, last - first


def test_time_to_first_token_counts_each_stream(http) -> None:
    """One TTFT observation per streamed generation, no longer than the client waited for
    its first event."""
    state = create_state(http, "time to the first token")
    streams = [
        ("/v1/chat/completions", {"messages": USER, "max_tokens": 3}),
        ("/v1/completions", {"model": TINY_NAME, "prompt": "Hello", "max_tokens": 3}),
        ("/generate/token", {"state_id": state["id"], "max_tokens": 3}),
    ]
    before = scrape(http)
    waited = sum(_read_stream(http, route, body)[0] for route, body in streams)
    after = scrape(http)
    count = "glassbox_time_to_first_token_seconds_count"
    assert value(after, count) - value(before, count) == len(streams)
    total = "glassbox_time_to_first_token_seconds_sum"
    assert 0 < value(after, total) - value(before, total) <= waited


def test_a_stream_is_timed_to_its_end(slow_server) -> None:
    """The request-duration histogram observes a stream when it ends, not when its headers
    go out: at least as long as the client saw events arrive (20 tokens of 20 ms steps)."""
    route = "/v1/completions"
    body = {"model": TINY_NAME, "prompt": "Hello", "max_tokens": 20, "ignore_eos": True}
    with httpx.Client(base_url=slow_server.base_url, timeout=30) as http:
        before = scrape(http)
        _, streaming = _read_stream(http, route, body)
        after = scrape(http)
    count, total = (
        "glassbox_request_duration_seconds_count",
        "glassbox_request_duration_seconds_sum",
    )
    assert value(after, count, route=route) - value(before, count, route=route) == 1
    assert streaming > 0.1  # the events spread over the generation's steps (20 ms each)
    assert value(after, total, route=route) - value(before, total, route=route) >= streaming
