"""The request body bound on a live server: a body larger than GLASSBOX_MAX_BODY_BYTES is a
413 in OpenAI's error shape before it is parsed, whether its Content-Length says so or it
streams in chunks; file uploads keep their own limit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.server import TINY_NAME, LiveServer, running, tiny_settings

MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache")).model_copy(
        update={"max_body_bytes": MAX_BYTES}
    )
    with running(settings) as live:
        yield live


def chat_body(size: int) -> bytes:
    messages = [{"role": "user", "content": "x" * size}]
    return json.dumps({"model": TINY_NAME, "messages": messages, "max_tokens": 1}).encode()


def assert_too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    assert r.json() == {
        "error": {
            "message": f"the request body is larger than {MAX_BYTES} bytes, the most this "
            "server accepts (GLASSBOX_MAX_BODY_BYTES); send less",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }
    assert r.headers["x-request-id"]


def test_a_body_whose_content_length_is_too_large_is_a_413(server: LiveServer):
    r = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=chat_body(MAX_BYTES),
        headers={"content-type": "application/json"},
    )
    assert_too_large(r)


def test_a_chunked_body_is_counted_as_it_streams(server: LiveServer):
    body = chat_body(MAX_BYTES)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    r = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert_too_large(r)
    assert httpx.get(server.base_url + "/health").status_code == 200


def test_a_body_within_the_bound_is_served(server: LiveServer):
    r = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=chat_body(100),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text


def test_file_uploads_keep_their_own_limit(server: LiveServer):
    r = httpx.post(
        server.base_url + "/v1/files",
        files={"file": ("notes.txt", b"a line of notes\n" * (MAX_BYTES // 8), "text/plain")},
        data={"purpose": "assistants"},
    )
    assert r.status_code == 200, r.text
