"""Prometheus metrics, X-Request-Id and structured logs."""

from __future__ import annotations

import io
import json
import re

from helpers.server import TINY_NAME
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
    assert r.status_code == 200 and len(r.json()["tokens"]) == 4
    assert (
        value(scrape(http), "glassbox_generation_tokens_total")
        - value(after, "glassbox_generation_tokens_total")
        == 4
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


def test_prefix_cache_hits_are_counted(http) -> None:
    """A repeated long prompt reuses the cached KV blocks of its prefix."""
    long_prompt = [{"role": "user", "content": "Tell me a story about the sea. " * 8}]
    body = {"model": TINY_NAME, "messages": long_prompt, "max_tokens": 2}
    before = value(scrape(http), "glassbox_prefix_cache_hit_tokens_total")
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert value(scrape(http), "glassbox_prefix_cache_hit_tokens_total") - before >= 16
