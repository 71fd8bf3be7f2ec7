"""The key service on a real SQLite database: keys stored only as an HMAC, verification,
expiry and revocation (here at once, elsewhere within the cache window), last-used writes at
most once per interval, tenant-limited calls, and the server secret."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy import text as sql

from glassbox.auth import KeyService, load_secret
from glassbox.auth.keys import KEY_PREFIX
from glassbox.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from glassbox.principal import KeyLimits, Principal
from glassbox.store import Database
from glassbox.store.api_keys import ApiKeyRow

SECRET = b"s" * 32


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    yield database
    database.close()


@pytest.fixture
def keys(db: Database) -> KeyService:
    return KeyService(db, SECRET)


def test_a_key_is_stored_only_as_its_hmac_and_a_public_prefix(keys: KeyService, db: Database):
    created = keys.create("acme", ["read"], name="dashboards")
    key = created.key
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 43  # 32 bytes, base64
    assert created.record.prefix == key[4:12]
    with db.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sql("SELECT * FROM api_keys")).mappings()]
    assert len(rows) == 1
    stored = " ".join(str(v) for v in rows[0].values())
    assert key not in stored and key[4:] not in stored and key[12:] not in stored
    assert rows[0]["digest"] == hmac.new(SECRET, key.encode(), hashlib.sha256).hexdigest()
    assert (rows[0]["owner"], rows[0]["scopes"], rows[0]["name"]) == ("acme", "read", "dashboards")


async def test_a_valid_key_is_its_tenant_scopes_id_and_limits(keys: KeyService):
    made = keys.create("acme", ["user", "admin"])
    assert await keys.authenticate(made.key) == Principal(
        "acme", frozenset({"admin", "user"}), made.record.id, KeyLimits()
    )
    limited = keys.create("acme", limits=KeyLimits(requests=5, tokens=0))
    principal = await keys.authenticate(limited.key)
    assert principal.limits == KeyLimits(5, 0) == limited.record.limits
    assert principal.key_id == limited.record.id != made.record.id


@pytest.mark.parametrize(
    "presented",
    [None, "", "sk-not-ours", "gbx-short", KEY_PREFIX + "A" * 43],
    ids=["none", "empty", "foreign", "short", "unknown"],
)
async def test_no_or_unknown_key_is_unauthenticated(keys: KeyService, presented: str | None):
    keys.create("acme")
    with pytest.raises(Unauthenticated) as caught:
        await keys.authenticate(presented)
    assert caught.value.code == "invalid_api_key"


async def test_a_key_checked_under_another_secret_is_not_valid(keys: KeyService, db: Database):
    key = keys.create("acme").key
    with pytest.raises(Unauthenticated, match="not valid"):
        await KeyService(db, b"t" * 32).authenticate(key)


async def test_an_expired_key_is_refused_even_from_the_cache(keys: KeyService, db: Database):
    created = keys.create("acme", expires_in=timedelta(seconds=0.3))
    assert (await keys.authenticate(created.key)).tenant == "acme"  # cached for 5 s now
    await asyncio.sleep(0.4)
    for service in (keys, KeyService(db, SECRET)):
        with pytest.raises(Unauthenticated, match="expired"):
            await service.authenticate(created.key)
    assert [k.status() for k in keys.list()] == ["expired"]


async def test_revocation_is_immediate_here_and_within_the_cache_window_elsewhere(db: Database):
    here = KeyService(db, SECRET, cache_seconds=0.5)
    elsewhere = KeyService(db, SECRET, cache_seconds=0.5)  # another process on the database
    key = here.create("acme").key
    await here.authenticate(key)
    await elsewhere.authenticate(key)

    here.revoke(here.list()[0].id)

    with pytest.raises(Unauthenticated, match="revoked"):
        await here.authenticate(key)
    assert (await elsewhere.authenticate(key)).tenant == "acme"  # its cache, for now
    await asyncio.sleep(0.6)
    with pytest.raises(Unauthenticated, match="revoked"):
        await elsewhere.authenticate(key)
    assert here.list()[0].status() == "revoked"


async def test_an_update_changes_what_is_given_and_applies_at_once_here(db: Database):
    here = KeyService(db, SECRET, cache_seconds=0.5)
    elsewhere = KeyService(db, SECRET, cache_seconds=0.5)  # another process on the database
    made = here.create("acme", ["user"], name="old", limits=KeyLimits(requests=5, tokens=7))
    await here.authenticate(made.key)
    await elsewhere.authenticate(made.key)

    updated = here.update(made.record.id, scopes=["read"], requests_per_minute=None)

    assert (updated.name, updated.scopes) == ("old", ("read",))  # the name is kept
    assert updated.limits == KeyLimits(requests=None, tokens=7)  # None: back to the default
    assert updated.expires_at is None and updated.prefix == made.record.prefix
    assert await here.authenticate(made.key) == Principal(
        "acme", frozenset({"read"}), made.record.id, KeyLimits(None, 7)
    )
    assert (await elsewhere.authenticate(made.key)).scopes == {"user"}  # its cache, for now
    await asyncio.sleep(0.6)
    assert (await elsewhere.authenticate(made.key)).scopes == {"read"}

    later = here.update(
        made.record.id, name="new", expires_in=timedelta(days=1), tokens_per_minute=0
    )
    assert (later.name, later.limits, later.scopes) == ("new", KeyLimits(None, 0), ("read",))
    assert later.expires_at is not None and later.status() == "active"
    assert here.update(made.record.id, expires_in=None).expires_at is None
    [kept] = here.list()
    assert here.update(made.record.id) == kept  # nothing given: nothing changes


async def test_an_expired_key_can_be_given_a_new_expiry(keys: KeyService):
    made = keys.create("acme", expires_in=timedelta(milliseconds=1))
    await asyncio.sleep(0.01)
    with pytest.raises(Unauthenticated, match="expired"):
        await keys.authenticate(made.key)
    keys.update(made.record.id, expires_in=timedelta(days=1))
    assert (await keys.authenticate(made.key)).tenant == "acme"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"scopes": ["root"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"name": "x" * 257}, "name"),
        ({"expires_in": timedelta(0)}, "expires_in"),
        ({"requests_per_minute": -1}, "requests_per_minute"),
        ({"tokens_per_minute": 2**31}, "tokens_per_minute"),
    ],
)
def test_bad_updates_name_their_field_and_change_nothing(
    keys: KeyService, kwargs: dict, param: str
):
    made = keys.create("acme", name="kept", limits=KeyLimits(requests=3)).record
    with pytest.raises(InvalidRequest) as caught:
        keys.update(made.id, **kwargs)
    assert caught.value.param == param
    assert keys.list() == [made]


def test_revoked_and_other_tenants_keys_are_not_updated(keys: KeyService):
    revoked = keys.create("acme").record
    keys.revoke(revoked.id)
    with pytest.raises(Conflict, match="revoked"):
        keys.update(revoked.id, requests_per_minute=1)
    theirs = keys.create("globex").record
    with pytest.raises(NotFound):
        keys.update(theirs.id, "acme", name="mine now")
    with pytest.raises(NotFound):
        keys.update("key_nope", name="x")
    assert keys.list()[1] == theirs


@pytest.mark.parametrize(("touch_seconds", "writes"), [(60.0, 1), (0.0, 3)])
async def test_last_used_is_written_at_most_once_per_interval(
    db: Database, touch_seconds: float, writes: int
):
    keys = KeyService(db, SECRET, touch_seconds=touch_seconds)
    key = keys.create("acme").key
    updates: list[str] = []

    def count(conn, cursor, statement, *rest) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_KEYS"):
            updates.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    for _ in range(3):
        await keys.authenticate(key)
    assert len(updates) == writes
    assert keys.list()[0].last_used_at is not None


def test_a_tenant_limited_call_sees_only_that_tenants_keys(keys: KeyService):
    mine = keys.create("acme").record
    theirs = keys.create("globex").record
    assert [k.id for k in keys.list("acme")] == [mine.id]
    assert {k.id for k in keys.list()} == {mine.id, theirs.id}
    with pytest.raises(NotFound) as caught:
        keys.revoke(theirs.id, "acme")
    assert caught.value.code == "api_key_not_found"
    with pytest.raises(NotFound):
        keys.revoke("key_nope")
    assert keys.revoke(theirs.id).status() == "revoked"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tenant": "../etc"}, "tenant"),
        ({"tenant": "acme", "scopes": ["root"]}, "scopes"),
        ({"tenant": "acme", "scopes": []}, "scopes"),
        ({"tenant": "acme", "expires_in": timedelta(0)}, "expires_in"),
    ],
)
def test_bad_key_requests_name_their_field(keys: KeyService, kwargs: dict, param: str):
    with pytest.raises(InvalidRequest) as caught:
        keys.create(**kwargs)
    assert caught.value.param == param
    with keys.db.session() as session:
        assert session.scalars(select(ApiKeyRow)).all() == []


def test_the_secret_is_made_once_with_mode_0600_and_reused(tmp_path: Path):
    first = load_secret(None, tmp_path / "cache")
    path = tmp_path / "cache" / "auth-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 43  # 32 random bytes, url-safe text
    assert load_secret(None, tmp_path / "cache") == first
    assert [p.name for p in path.parent.iterdir()] == ["auth-secret"]


def test_a_configured_secret_wins_and_must_be_long_enough(tmp_path: Path):
    assert load_secret("x" * 40, tmp_path) == b"x" * 40
    assert not (tmp_path / "auth-secret").exists()
    with pytest.raises(ValueError, match="at least 32"):
        load_secret("short", tmp_path)
