"""Per-key rate limits on a live server (the tiny model, API keys required): the official
openai SDK gets its RateLimitError with Retry-After once a key has used its requests or
tokens of the minute; other keys, of the same tenant or another, are not affected; a key's
own limits; per-tenant overrides; the metric."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from helpers.server import TINY_NAME, LiveServer, running, tiny_settings

from glassbox.config import TenantLimits
from glassbox.principal import KeyLimits

REQUESTS = 3
TOKENS = 200


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache")).model_copy(
        update={
            "api_keys": "required",
            "rate_limit_requests": REQUESTS,
            "rate_limit_tokens": TOKENS,
            "rate_limit_tenants": {"vip": TenantLimits(requests=0)},
        }
    )
    with running(settings) as live:
        yield live


def client_of(server: LiveServer, tenant: str, limits: KeyLimits | None = None) -> openai.OpenAI:
    key = server.app.state.keys.create(tenant, limits=limits or KeyLimits()).key
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)


def chat(client: openai.OpenAI, max_tokens: int) -> None:
    client.chat.completions.create(
        model=TINY_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens
    )


def assert_rate_limited(error: openai.RateLimitError) -> int:
    assert error.status_code == 429
    assert error.body["type"] == "rate_limit_error"
    assert error.body["code"] == "rate_limit_exceeded"
    retry_after = int(error.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    return retry_after


def test_requests_per_minute_give_the_sdk_its_rate_limit_error(server: LiveServer):
    with client_of(server, "acme") as acme, client_of(server, "beta") as beta:
        for _ in range(REQUESTS):
            acme.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            acme.models.list()
        beta.models.list()  # another tenant has a budget of its own

    assert_rate_limited(caught.value)
    assert f"{REQUESTS} requests per minute" in caught.value.body["message"]
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'glassbox_rate_limited_total{kind="requests"}' in metrics


def test_tokens_per_minute_count_the_prompt_and_max_tokens(server: LiveServer):
    with client_of(server, "gamma") as gamma:
        chat(gamma, max_tokens=150)  # about 152 of 200
        with pytest.raises(openai.RateLimitError) as caught:
            chat(gamma, max_tokens=150)
        chat(gamma, max_tokens=40)  # what is left of the minute still serves

    assert_rate_limited(caught.value)
    assert f"{TOKENS} tokens per minute" in caught.value.body["message"]


def test_a_request_larger_than_the_tokens_per_minute_says_so(server: LiveServer):
    with client_of(server, "delta") as delta:
        with pytest.raises(openai.RateLimitError) as caught:
            chat(delta, max_tokens=TOKENS + 1)
        chat(delta, max_tokens=2)  # the refused request counted nothing

    assert_rate_limited(caught.value)
    assert "lower max_tokens" in caught.value.body["message"]


def test_embeddings_count_their_input(server: LiveServer):
    with client_of(server, "epsilon") as epsilon:
        with pytest.raises(openai.RateLimitError) as caught:
            epsilon.embeddings.create(model="all-MiniLM-L6-v2", input=["word " * 50] * 4)
    assert "more than the 200 tokens per minute" in caught.value.body["message"]


def test_a_tenant_override_lifts_the_requests_limit(server: LiveServer):
    with client_of(server, "vip") as vip:
        for _ in range(REQUESTS + 2):
            vip.models.list()


def test_health_and_metrics_are_not_counted(server: LiveServer):
    key = server.app.state.keys.create("zeta").key
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(REQUESTS + 2):
        assert httpx.get(server.base_url + "/health", headers=headers).status_code == 200
        assert httpx.get(server.base_url + "/metrics", headers=headers).status_code == 200
    assert httpx.get(server.base_url + "/v1/models", headers=headers).status_code == 200


def test_each_key_has_its_own_counters(server: LiveServer):
    with client_of(server, "theta") as first, client_of(server, "theta") as second:
        for _ in range(REQUESTS):
            first.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            first.models.list()
        for _ in range(REQUESTS):
            second.models.list()  # the same tenant's other key: its own minute
    assert "for this API key" in caught.value.body["message"]


def test_an_admin_changes_a_keys_limits_and_the_next_request_has_them(server: LiveServer):
    keys = server.app.state.keys
    admin = {"Authorization": f"Bearer {keys.create('ops', ['admin']).key}"}
    made = keys.create("kappa", limits=KeyLimits(requests=1))
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=made.key, max_retries=0) as c:
        c.models.list()
        with pytest.raises(openai.RateLimitError):
            c.models.list()
        r = httpx.patch(f"{server.base_url}/admin/keys/{made.record.id}", headers=admin,
                        json={"requests_per_minute": 0})  # fmt: skip
        assert r.status_code == 200 and r.json()["requests_per_minute"] == 0, r.text
        for _ in range(REQUESTS + 2):
            c.models.list()  # no limit from now on, within the same minute
        r = httpx.patch(f"{server.base_url}/admin/keys/{made.record.id}", headers=admin,
                        json={"requests_per_minute": None})  # fmt: skip
        assert r.json()["requests_per_minute"] is None
        for _ in range(REQUESTS):
            c.models.list()  # the server's default again, counted from the change
        with pytest.raises(openai.RateLimitError) as caught:
            c.models.list()
    assert f"{REQUESTS} requests per minute" in caught.value.body["message"]


def test_a_keys_own_limits_replace_the_defaults(server: LiveServer):
    with client_of(server, "iota", KeyLimits(requests=1)) as strict:
        strict.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            strict.models.list()
    assert "1 requests per minute" in caught.value.body["message"]
    with client_of(server, "iota", KeyLimits(requests=0, tokens=0)) as free:
        for _ in range(REQUESTS + 2):
            free.models.list()
        chat(free, max_tokens=TOKENS + 1)  # neither limit applies to this key
    # a key of an overridden tenant keeps its own limit
    with client_of(server, "vip", KeyLimits(requests=1)) as vip:
        vip.models.list()
        with pytest.raises(openai.RateLimitError):
            vip.models.list()
