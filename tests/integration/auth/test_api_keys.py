"""API keys on a live server (the tiny model) with GLASSBOX_API_KEYS=required: the official
openai and goodfire SDKs with a valid key, and their own authentication errors with an
invalid, an expired and a revoked one; read-only keys; the admin routes; the `glassbox keys`
round trip; open and closed /health and /metrics; the refusal to serve beyond loopback with
keys off."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import goodfire
import httpx
import openai
import pytest
from goodfire.api.exceptions import UnauthorizedException
from helpers.server import TINY_NAME, LiveServer, running, tiny_settings
from helpers.waiting import wait_until
from sqlalchemy import text as sql

from glassbox import cli
from glassbox.app import create_app
from glassbox.auth import KeyService
from glassbox.cli import main as cli_main
from glassbox.config import Settings
from glassbox.logs import configure_logging
from glassbox.principal import KeyLimits

GOODFIRE_MODEL = "meta-llama/Llama-3.3-70B-Instruct"  # a name the goodfire SDK accepts
CACHE_SECONDS = 0.5
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def keys_settings(model_dir: Path, cache_dir: Path, **update: object) -> Settings:
    settings = tiny_settings(model_dir, cache_dir)
    return settings.model_copy(
        update={
            "api_keys": "required",
            "api_keys_cache_seconds": CACHE_SECONDS,
            "model_aliases": {**settings.model_aliases, GOODFIRE_MODEL: TINY_NAME},
            **update,
        }
    )


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with running(keys_settings(tiny_model_dir, tmp_path_factory.mktemp("cache"))) as live:
        yield live


@pytest.fixture(scope="module")
def keys(server: LiveServer) -> KeyService:
    return server.app.state.keys


@pytest.fixture(scope="module")
def bad_keys(keys: KeyService) -> dict[str, str]:
    """An invalid, an expired and a revoked key, by name."""
    expired = keys.create("acme", expires_in=timedelta(milliseconds=1)).key
    revoked = keys.create("acme")
    keys.revoke(revoked.record.id)
    time.sleep(0.01)
    return {"invalid": "gbx-" + "x" * 43, "expired": expired, "revoked": revoked.key}


def openai_client(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)


@pytest.fixture
def loop_for_goodfire() -> Iterator[None]:
    """The goodfire SDK's sync client runs on the thread's current event loop."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


def goodfire_chat(server: LiveServer, key: str) -> str:
    gf = goodfire.Client(api_key=key, base_url=server.base_url)
    messages = [{"role": "user", "content": "hi"}]
    out = gf.chat.completions.create(messages, model=GOODFIRE_MODEL, max_completion_tokens=2)
    return out.choices[0].message["content"]


# --- the SDKs -----------------------------------------------------------------------------


def test_openai_sdk_works_with_a_valid_key(server: LiveServer, keys: KeyService):
    with openai_client(server, keys.create("acme").key) as client:
        reply = client.chat.completions.create(model=TINY_NAME, **CHAT)
    assert reply.choices[0].message.content is not None


@pytest.mark.parametrize("which", ["invalid", "expired", "revoked"])
def test_openai_sdk_gets_authentication_error(
    server: LiveServer, bad_keys: dict[str, str], which: str
):
    with openai_client(server, bad_keys[which]) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model=TINY_NAME, **CHAT)
    error = caught.value
    assert error.status_code == 401
    assert error.response.headers["www-authenticate"] == "Bearer"
    assert error.body["type"] == "authentication_error"
    assert error.body["code"] == "invalid_api_key"
    assert error.body["param"] is None
    assert bad_keys[which] not in error.body["message"]


def test_goodfire_sdk_works_with_a_valid_key(
    server: LiveServer, keys: KeyService, loop_for_goodfire: None
):
    assert isinstance(goodfire_chat(server, keys.create("acme").key), str)


@pytest.mark.parametrize("which", ["invalid", "expired", "revoked"])
def test_goodfire_sdk_gets_unauthorized(
    server: LiveServer, bad_keys: dict[str, str], which: str, loop_for_goodfire: None
):
    with pytest.raises(UnauthorizedException, match="authentication_error"):
        goodfire_chat(server, bad_keys[which])


# --- scopes and open routes ---------------------------------------------------------------


def test_no_key_is_a_401_in_openais_shape(server: LiveServer):
    r = httpx.get(server.base_url + "/v1/models")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {
        "error": {
            "message": "no API key: send it as 'Authorization: Bearer gbx-...'",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_a_read_key_may_get_but_not_post(server: LiveServer, keys: KeyService):
    with openai_client(server, keys.create("acme", ["read"]).key) as client:
        assert TINY_NAME in {m.id for m in client.models.list()}
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model=TINY_NAME, **CHAT)
    assert caught.value.status_code == 403
    assert caught.value.body["type"] == "permission_error"
    assert caught.value.body["code"] == "insufficient_scope"


def test_health_metrics_and_docs_are_open_by_default(server: LiveServer):
    for path in ("/health", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(server.base_url + path).status_code == 200, path


def test_health_and_metrics_closed_by_the_settings(tiny_model_dir: Path, tmp_path: Path):
    settings = keys_settings(tiny_model_dir, tmp_path, open_health=False, open_metrics=False)
    with running(settings) as closed:
        key = closed.app.state.keys.create("ops", ["read"]).key
        for path in ("/health", "/metrics"):
            assert httpx.get(closed.base_url + path).status_code == 401, path
            auth = {"Authorization": f"Bearer {key}"}
            assert httpx.get(closed.base_url + path, headers=auth).status_code == 200, path
        assert httpx.get(closed.base_url + "/openapi.json").status_code == 200


# --- admin routes -------------------------------------------------------------------------


def test_admin_routes_manage_every_tenants_keys(server: LiveServer, keys: KeyService):
    admin = {"Authorization": f"Bearer {keys.create('acme', ['admin']).key}"}
    theirs = keys.create("globex", ["user"]).record
    with httpx.Client(base_url=server.base_url, headers=admin) as http:
        r = http.post("/admin/keys", json={"scopes": ["read"], "name": "ci", "expires_in_days": 1})
        assert r.status_code == 200, r.text
        made = r.json()
        assert made["tenant"] == "acme" and made["scopes"] == ["read"]
        assert made["status"] == "active" and made["expires_at"] > made["created_at"]
        assert made["key"].startswith("gbx-") and made["prefix"] == made["key"][4:12]
        assert (made["requests_per_minute"], made["tokens_per_minute"]) == (None, None)
        new_key = {"Authorization": f"Bearer {made['key']}"}
        assert httpx.get(server.base_url + "/v1/models", headers=new_key).status_code == 200

        listed = http.get("/admin/keys").json()["data"]
        assert {"acme", "globex"} <= {k["tenant"] for k in listed}
        assert {made["id"], theirs.id} <= {k["id"] for k in listed}
        assert all("key" not in k for k in listed)
        only = http.get("/admin/keys", params={"tenant": "globex"}).json()["data"]
        assert {k["tenant"] for k in only} == {"globex"} and theirs.id in {k["id"] for k in only}

        body = {"tenant": "globex", "requests_per_minute": 7, "tokens_per_minute": 0}
        r = http.post("/admin/keys", json=body)
        assert r.status_code == 200, r.text
        limited = r.json()
        assert limited["tenant"] == "globex"
        assert (limited["requests_per_minute"], limited["tokens_per_minute"]) == (7, 0)
        r = http.post("/admin/keys", json={"requests_per_minute": -1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "requests_per_minute"
        r = http.post("/admin/keys", json={"tenant": "../etc"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tenant"

        assert http.delete(f"/admin/keys/{theirs.id}").json()["status"] == "revoked"
        missing = http.delete("/admin/keys/key_nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "api_key_not_found"
        revoked = http.delete(f"/admin/keys/{made['id']}").json()
        assert revoked["status"] == "revoked" and revoked["revoked_at"] is not None
    r = httpx.get(server.base_url + "/v1/models", headers=new_key)
    assert r.status_code == 401  # at once: revoked in this process

    with server.app.state.db.engine.connect() as conn:
        stored = " ".join(
            str(v) for row in conn.execute(sql("SELECT * FROM api_keys")) for v in row
        )
    assert made["key"] not in stored and made["key"][4:] not in stored


def test_an_admin_sees_every_tenants_objects_with_the_tenant_header(
    server: LiveServer, keys: KeyService
):
    """Another tenant's state is a 404 to an admin too, until it acts for that tenant."""
    acme = {"Authorization": f"Bearer {keys.create('acme-data', ['user']).key}"}
    admin_key = keys.create("operators", ["admin"]).key
    admin = {"Authorization": f"Bearer {admin_key}"}
    as_acme = {**admin, "X-Glassbox-Tenant": "acme-data"}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        r = http.post("/states", json={"text": "the fox"}, headers=acme)
        assert r.status_code == 201, r.text
        state = r.json()["id"]
        assert http.get(f"/states/{state}", headers=admin).status_code == 404
        assert http.get(f"/states/{state}", headers=as_acme).json()["id"] == state
        listed = http.get("/states", headers=as_acme).json()["data"]
        assert state in {s["id"] for s in listed}
        assert state not in {s["id"] for s in http.get("/states", headers=admin).json()["data"]}
        made = http.post("/states", json={"text": "on behalf"}, headers=as_acme).json()["id"]
        assert http.get(f"/states/{made}", headers=acme).status_code == 200  # it is acme's

        user_as = {**acme, "X-Glassbox-Tenant": "operators"}
        r = http.get("/states", headers=user_as)
        assert r.status_code == 403 and r.json()["error"]["param"] == "X-Glassbox-Tenant"
        r = http.get("/states", headers={**admin, "X-Glassbox-Tenant": "../x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "X-Glassbox-Tenant"
        own = {**acme, "X-Glassbox-Tenant": "acme-data"}  # naming its own tenant is no change
        assert http.get(f"/states/{state}", headers=own).status_code == 200


@pytest.mark.parametrize("scopes", [["user"], ["read"]])
def test_admin_routes_refuse_keys_without_the_admin_scope(
    server: LiveServer, keys: KeyService, scopes: list[str]
):
    headers = {"Authorization": f"Bearer {keys.create('acme', scopes).key}"}
    r = httpx.get(server.base_url + "/admin/keys", headers=headers)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_an_admin_updates_a_key_and_it_applies_at_once(server: LiveServer, keys: KeyService):
    admin = {"Authorization": f"Bearer {keys.create('acme', ['admin']).key}"}
    made = keys.create("globex", ["user"], name="bot")
    theirs = {"Authorization": f"Bearer {made.key}"}
    chat_body = {"model": TINY_NAME, **CHAT}
    url = f"/admin/keys/{made.record.id}"
    with httpx.Client(base_url=server.base_url, headers=admin) as http:
        with httpx.Client(base_url=server.base_url, headers=theirs) as bot:
            assert bot.post("/v1/chat/completions", json=chat_body).status_code == 200

            body = {"scopes": ["read"], "expires_in_days": 2, "tokens_per_minute": 500}
            r = http.patch(url, json=body)
            assert r.status_code == 200, r.text
            updated = r.json()
            assert (updated["scopes"], updated["name"], updated["tenant"]) == (
                ["read"], "bot", "globex"
            )  # fmt: skip
            assert updated["tokens_per_minute"] == 500 and updated["requests_per_minute"] is None
            assert 2 * 86400 - 60 < updated["expires_at"] - time.time() <= 2 * 86400
            assert "key" not in updated
            assert bot.post("/v1/chat/completions", json=chat_body).status_code == 403  # at once
            assert bot.get("/v1/models").status_code == 200

            r = http.patch(url, json={"expires_in_days": None, "name": "bot 2"})
            good = r.json()
            assert (good["expires_at"], good["name"]) == (None, "bot 2")

            for bad, param in (
                ({}, None),
                ({"name": None}, "name"),
                ({"scopes": []}, "scopes"),
                ({"requests_per_minute": -1}, "requests_per_minute"),
                ({"expires_in_days": 0}, "expires_in_days"),
                ({"tenant": "acme"}, "tenant"),
            ):
                r = http.patch(url, json=bad)
                assert r.status_code == 400, (bad, r.text)
                assert r.json()["error"]["param"] == param, (bad, r.text)
            listed = http.get("/admin/keys", params={"tenant": "globex"}).json()["data"]
            assert [k for k in listed if k["id"] == made.record.id] == [good]  # none changed it

            missing = http.patch("/admin/keys/key_nope", json={"name": "x"})
            assert missing.status_code == 404
            http.delete(url)
            revoked = http.patch(url, json={"requests_per_minute": 1})
            assert revoked.status_code == 409 and "revoked" in revoked.json()["error"]["message"]
            assert bot.get("/v1/models").status_code == 401
    user = {"Authorization": f"Bearer {keys.create('acme', ['user']).key}"}
    r = httpx.patch(server.base_url + url, headers=user, json={"scopes": ["admin"]})
    assert r.status_code == 403


# --- the CLI ------------------------------------------------------------------------------


def test_cli_create_list_update_revoke_round_trip(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """The command works on the server's database and secret (its cache dir) directly; its
    revocation reaches the running server within the server's cache window."""
    monkeypatch.setenv("GLASSBOX_CACHE_DIR", str(server.settings.cache_dir))
    argv = ["keys", "create", "--tenant", "cli-t", "--scope", "user", "--name", "laptop"]
    assert cli_main([*argv, "--expires-in", "7"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("gbx-") and "shown only this once" in err
    key_id = err.split()[0]

    with openai_client(server, key) as client:
        assert client.chat.completions.create(model=TINY_NAME, **CHAT).choices

    assert cli_main(["keys", "list", "--tenant", "cli-t"]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "laptop" in listing and "active" in listing
    assert key not in listing and key[12:] not in listing

    argv = ["keys", "update", key_id, "--never-expires", "--requests-per-minute", "9"]
    assert cli_main([*argv, "--tokens-per-minute", "default", "--name", "desk"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"updated {key_id} ") and "expires=- " in out and "name=desk" in out
    assert "requests_per_minute=9 tokens_per_minute=None" in out
    [record] = server.app.state.keys.list("cli-t")
    assert (record.expires_at, record.limits, record.name) == (None, KeyLimits(9, None), "desk")
    assert cli_main(["keys", "update", key_id]) == 2
    assert "nothing to change" in capsys.readouterr().err
    assert cli_main(["keys", "update", key_id, "--requests-per-minute", "-3"]) == 1
    assert "'requests_per_minute' must be 0 (no limit)" in capsys.readouterr().err

    assert cli_main(["keys", "revoke", key_id]) == 0
    assert capsys.readouterr().out.strip() == f"revoked {key_id}"
    t0 = time.monotonic()

    def refused() -> bool:
        r = httpx.get(server.base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        return r.status_code == 401

    assert wait_until(refused, timeout=5)
    assert time.monotonic() - t0 < CACHE_SECONDS + 1
    assert cli_main(["keys", "revoke", "key_nope"]) == 1
    assert "No API key with id 'key_nope'" in capsys.readouterr().err


# --- binding beyond loopback --------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "glassbox.example"])
def test_keys_off_refuses_a_non_loopback_host(host: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli, "run_server", lambda server: pytest.fail("it served"))
    with pytest.raises(ValueError, match="GLASSBOX_API_KEYS=required"):
        create_app(Settings(host=host))
    create_app(Settings(host=host, api_keys="required"))  # with keys it starts
    monkeypatch.setenv("GLASSBOX_HOST", host)
    with pytest.raises(ValueError, match=f"refusing to serve on {host}"):
        cli_main(["serve"])


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.9", "::1", "localhost"])
def test_keys_off_serves_loopback(host: str):
    create_app(Settings(host=host))


def test_logs_name_the_tenant_never_the_key_and_failures_are_counted(
    server: LiveServer, keys: KeyService
):
    key = keys.create("logged", scopes=("read",)).key
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    try:
        with httpx.Client(base_url=server.base_url) as http:
            before = http.get("/metrics").text
            assert http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).is_success
            assert http.get("/v1/models").status_code == 401
            bad = {"Authorization": "Bearer gbx-" + "y" * 43}
            assert http.get("/v1/models", headers=bad).status_code == 401
            posted = http.post("/tokenize", json={"prompt": "x"},
                               headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            assert posted.status_code == 403
            after = http.get("/metrics").text
    finally:
        configure_logging("WARNING")
    lines = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    served = [x for x in lines if x.get("path") == "/v1/models" and x.get("status") == 200]
    assert served and served[-1]["tenant"] == "logged"
    assert key not in buf.getvalue() and "y" * 43 not in buf.getvalue()
    for reason in ("missing", "invalid", "forbidden"):
        name = f'glassbox_auth_failures_total{{reason="{reason}"}}'
        assert _count(after, name) - _count(before, name) == 1, reason


def _count(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0
