"""X-Request-Id: a client's sane id is echoed, anything else is replaced by a generated one,
and the id the response carries is on the request's JSON log lines."""

from __future__ import annotations

import io
import json
import re
import string
from collections.abc import Iterator

import httpx
import pytest
from helpers.waiting import wait_until

from glassbox.logs import configure_logging

GENERATED = re.compile(r"[0-9a-f]{32}")  # uuid4().hex
ALLOWED = string.ascii_letters + string.digits + "._:/+=@-"
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The server's log lines (INFO and up) while the test runs, as the JSON it writes."""
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    try:
        yield buf
    finally:
        configure_logging("WARNING")


def records(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def sent_id(http: httpx.Client, value: str | bytes, path: str = "/health") -> str:
    """GET `path` with X-Request-Id `value`; the id the response carries."""
    r = http.get(path, headers={"X-Request-Id": value})
    assert r.status_code == 200
    return r.headers["x-request-id"]


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "client-id-123",
        ALLOWED,  # every allowed character
        "x" * 128,  # the longest allowed
        "trace:0af7651916cd43dd8448eb211c80319c/span=b7ad6b7169203331+e@host.example",
    ],
)
def test_a_sane_client_id_is_echoed(http, value: str) -> None:
    assert sent_id(http, value) == value
    r = http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": value})
    assert r.status_code == 200 and r.headers["x-request-id"] == value


@pytest.mark.parametrize(
    "value",
    [
        "x" * 129,  # one over the limit
        "y" * 1000,
        "has space",
        "comma,separated",
        "semi;colon",
        'quote"d',
        "back\\slash",
        "percent%20",
        "hash#tag",
        "star*",
        "tilde~",
        "brace{}",
        "angle<script>",
        "question?",
        "bang!",
        "caret^",
        "pipe|",
        "amp&",
        "dollar$",
        "tab\there",
        "apos'",
        "paren()",
        "bracket[]",
        "back`tick",
        "ok-" + "x" * 125 + "!",  # 129 characters, and one is not allowed
    ],
)
def test_an_unsafe_or_too_long_id_is_replaced_by_a_generated_one(http, value: str) -> None:
    got = sent_id(http, value)
    assert got != value
    assert GENERATED.fullmatch(got), got


@pytest.mark.parametrize("value", ["caf\xe9".encode("latin-1"), "\u00fcber".encode()])
def test_non_ascii_ids_are_replaced(http, value: bytes) -> None:
    got = sent_id(http, value)
    assert GENERATED.fullmatch(got), got


def test_generated_ids_differ_per_request(http) -> None:
    ids = {http.get("/health").headers["x-request-id"] for _ in range(5)}
    ids |= {sent_id(http, "bad id") for _ in range(5)}
    assert len(ids) == 10 and all(GENERATED.fullmatch(i) for i in ids)


def test_the_echoed_id_is_on_the_access_log_line(http, log_lines) -> None:
    r = http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "ids-log-1"})
    assert r.status_code == 200
    bad = http.post("/v1/chat/completions", json={}, headers={"X-Request-Id": "ids-log-2"})
    assert bad.status_code == 400
    lines = records(log_lines)
    mine = [x for x in lines if x.get("request_id") == "ids-log-1"]
    assert [(x["event"], x["logger"], x["status"], x["path"]) for x in mine] == [
        ("request", "glassbox.access", 200, "/v1/chat/completions")
    ]
    errors = [x for x in lines if x.get("request_id") == "ids-log-2"]
    assert [(x["event"], x["status"]) for x in errors] == [("request", 400)]


def test_a_replaced_id_logs_the_generated_one(http, log_lines) -> None:
    sent = "not allowed!"
    r = http.get("/health", headers={"X-Request-Id": sent})
    generated = r.headers["x-request-id"]
    assert GENERATED.fullmatch(generated)
    lines = records(log_lines)
    access = [x for x in lines if x.get("request_id") == generated]
    assert [(x["event"], x["path"], x["status"]) for x in access] == [("request", "/health", 200)]
    assert sent not in log_lines.getvalue()


def test_every_line_of_the_request_carries_its_id(slow_server, log_lines) -> None:
    """A client that hangs up on a long generation: the server's "client disconnected" line
    and the access line (499) both carry the request's id."""
    body = {**CHAT, "max_tokens": 400, "ignore_eos": True}
    with httpx.Client(base_url=slow_server.base_url, timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json=body, headers={"X-Request-Id": "ids-gone-1"})

    def logged() -> list[dict]:
        return [x for x in records(log_lines) if x.get("request_id") == "ids-gone-1"]

    assert wait_until(lambda: any(x["event"] == "request" for x in logged()), timeout=10)
    assert [(x["event"], x["level"], x.get("status")) for x in logged()] == [
        ("client disconnected; generation cancelled", "info", None),
        ("request", "info", 499),
    ]
    slow_server.wait_idle()
