"""CORS: off by default (no headers); with GLASSBOX_CORS_ORIGINS a browser page on a listed
origin may call the API the way the openai SDK does (Authorization, JSON, its own headers),
and any other origin gets no CORS headers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from helpers.server import running, tiny_settings

PAGE = "https://app.example"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os",
}


@pytest.fixture(scope="module")
def cors_http(tiny_model_dir, tmp_path_factory) -> Iterator[httpx.Client]:
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cors"))
    settings = settings.model_copy(update={"cors_origins": [PAGE]})
    with running(settings) as server, httpx.Client(base_url=server.base_url) as http:
        yield http


def test_a_preflight_from_a_listed_origin_is_allowed(cors_http: httpx.Client) -> None:
    r = cors_http.options("/v1/chat/completions", headers={"Origin": PAGE, **PREFLIGHT})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == PAGE
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].lower().split(",")}
    assert {"authorization", "content-type", "x-stainless-os"} <= allowed


def test_a_preflight_from_another_origin_is_refused(cors_http: httpx.Client) -> None:
    r = cors_http.options(
        "/v1/chat/completions", headers={"Origin": "https://evil.example", **PREFLIGHT}
    )
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers


def test_a_simple_request_carries_the_headers_for_a_listed_origin_only(
    cors_http: httpx.Client,
) -> None:
    r = cors_http.get("/v1/models", headers={"Origin": PAGE})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == PAGE
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    other = cors_http.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_by_default(http: httpx.Client) -> None:
    r = http.get("/v1/models", headers={"Origin": PAGE})
    assert "access-control-allow-origin" not in r.headers
    preflight = http.options("/v1/chat/completions", headers={"Origin": PAGE, **PREFLIGHT})
    assert preflight.status_code == 405
    assert "access-control-allow-origin" not in preflight.headers
