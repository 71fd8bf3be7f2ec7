"""API keys: create, list, update, revoke, and turn a presented key into the caller's
`Principal`.

A key is `gbx-` + 32 random bytes (url-safe base64). It is shown once, when created, and never
stored: a row keeps the HMAC-SHA256 of the key under the server's secret (a table that leaks
gives nothing to try, and unlike a slow hash the check costs microseconds on every request),
and the first characters of the random part as a public prefix, which lists show and
verification looks the row up by.

Verification compares digests in constant time and caches a verified key in memory for
`cache_seconds` (keyed by its digest, never the key): a key revoked through this service stops
working at once in this process; one revoked elsewhere (the CLI, another server process) stops
within `cache_seconds`. An update (name, scopes, expiry, limits) takes effect the same way.
A key may carry its own rate limits (requests and tokens per minute), which the principal it
produces carries to the limiter. `last_used_at` is written at most once per `touch_seconds`
per key, so that requests do not all write.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Literal

from sqlalchemy import select, update

from glassbox.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from glassbox.principal import DEFAULT_LIMITS, KeyLimits, Principal
from glassbox.store import Database
from glassbox.store.api_keys import ApiKeyRow
from glassbox.store.models import as_utc, utcnow

KEY_PREFIX = "gbx-"
ADMIN, USER, READ = "admin", "user", "read"
SCOPES = (ADMIN, USER, READ)
# Scopes that may change things; a key with only READ may GET and HEAD.
WRITE_SCOPES = frozenset({ADMIN, USER})
PUBLIC_CHARS = 8  # of the random part: the prefix shown in lists and looked up by
SECRET_FILE = "auth-secret"
_MIN_SECRET_CHARS = 32
_MAX_CACHED = 10_000
_MAX_LIMIT = 2**31 - 1  # an INTEGER column

Status = Literal["active", "expired", "revoked"]


class Keep(Enum):
    """An `update` argument left as it is (None is a value there: no expiry, the default
    limit)."""

    KEEP = "keep"


KEEP = Keep.KEEP


def load_secret(configured: str | None, cache_dir: Path) -> bytes:
    """The HMAC key: the configured secret (GLASSBOX_AUTH_SECRET), else the one in
    `<cache_dir>/auth-secret`, made once (32 random bytes, url-safe text, mode 0600). Text, so
    that it can be copied into GLASSBOX_AUTH_SECRET of other processes on the same database:
    every process that checks keys needs the secret that made them."""
    if configured is not None:
        if len(configured) < _MIN_SECRET_CHARS:
            raise ValueError(
                f"GLASSBOX_AUTH_SECRET must be at least {_MIN_SECRET_CHARS} characters; make "
                "one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return configured.encode()
    path = Path(cache_dir) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        with os.fdopen(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secrets.token_urlsafe(32))
        try:
            os.link(part, path)  # whole, and never over a secret another process made first
        except FileExistsError:
            pass
        finally:
            part.unlink()
    return path.read_text().strip().encode()


@dataclass(frozen=True)
class ApiKey:
    """A key as lists show it: everything but the secret."""

    id: str
    tenant: str
    scopes: tuple[str, ...]
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    limits: KeyLimits = DEFAULT_LIMITS

    def status(self, now: datetime | None = None) -> Status:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"


@dataclass(frozen=True)
class CreatedKey:
    """A new key: `key` is the only time the secret is seen."""

    key: str
    record: ApiKey


@dataclass(frozen=True)
class _Verified:
    principal: Principal
    key_id: str
    expires_at: datetime | None
    until: float  # time.monotonic() when the cache entry must be checked again


def _record(row: ApiKeyRow) -> ApiKey:
    def utc(t: datetime | None) -> datetime | None:
        return as_utc(t) if t is not None else None

    return ApiKey(
        id=row.key_id, tenant=row.owner, scopes=tuple(row.scopes.split()), name=row.name,
        prefix=row.prefix, created_at=as_utc(row.created_at), expires_at=utc(row.expires_at),
        revoked_at=utc(row.revoked_at), last_used_at=utc(row.last_used_at),
        limits=KeyLimits(row.requests_per_minute, row.tokens_per_minute),
    )  # fmt: skip


def _checked_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    chosen = set(scopes)
    if not chosen or not chosen <= set(SCOPES):
        raise InvalidRequest(
            f"'scopes' must be one or more of {', '.join(SCOPES)}, got {sorted(chosen)}",
            param="scopes",
        )
    return tuple(s for s in SCOPES if s in chosen)


def _check_name(name: str) -> None:
    if len(name) > 256:
        raise InvalidRequest("'name' must be at most 256 characters", param="name")


def _check_expiry(expires_in: timedelta | None) -> None:
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidRequest("a key must expire in the future", param="expires_in")


def _check_limit(param: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= _MAX_LIMIT:
        raise InvalidRequest(f"'{param}' must be 0 (no limit) to {_MAX_LIMIT}", param=param)


class KeyService:
    """The keys of every tenant, in the database. `tenant` arguments limit a call to one
    tenant's keys (another tenant's key id is then not found); None reaches every tenant's
    (the CLI, run by whoever holds the database)."""

    def __init__(
        self,
        db: Database,
        secret: bytes,
        *,
        cache_seconds: float = 5.0,
        touch_seconds: float = 60.0,
    ):
        self.db = db
        self._secret = secret
        self.cache_seconds = cache_seconds
        self.touch_seconds = touch_seconds
        self._lock = threading.Lock()  # revoke runs on worker threads, authenticate on the loop
        self._verified: dict[str, _Verified] = {}
        self._touched: dict[str, float] = {}

    def _digest(self, key: str) -> str:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()

    def create(
        self,
        tenant: str,
        scopes: Iterable[str] = (USER,),
        name: str = "",
        expires_in: timedelta | None = None,
        limits: KeyLimits = DEFAULT_LIMITS,
    ) -> CreatedKey:
        try:
            Principal(tenant)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="tenant") from None
        chosen = _checked_scopes(scopes)
        _check_name(name)
        _check_expiry(expires_in)
        _check_limit("requests_per_minute", limits.requests)
        _check_limit("tokens_per_minute", limits.tokens)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        row = ApiKeyRow(
            key_id="key_" + secrets.token_hex(12),
            owner=tenant,
            prefix=key[len(KEY_PREFIX) : len(KEY_PREFIX) + PUBLIC_CHARS],
            digest=self._digest(key),
            scopes=" ".join(chosen),
            name=name,
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
            requests_per_minute=limits.requests,
            tokens_per_minute=limits.tokens,
        )
        with self.db.session() as session, session.begin():
            session.add(row)
        return CreatedKey(key, _record(row))

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        stmt = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
        if tenant is not None:
            stmt = stmt.where(ApiKeyRow.owner == tenant)
        with self.db.session() as session:
            return [_record(row) for row in session.scalars(stmt)]

    def revoke(self, key_id: str, tenant: str | None = None) -> ApiKey:
        """Revoke a key (again: it stays revoked since the first time). Requests with it fail
        at once here, within `cache_seconds` in other processes."""
        with self.db.session() as session, session.begin():
            row = session.get(ApiKeyRow, key_id)
            if row is None or (tenant is not None and row.owner != tenant):
                raise NotFound("api key", key_id, f"No API key with id '{key_id}'")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            record = _record(row)
        self._forget(key_id)
        return record

    def update(
        self,
        key_id: str,
        tenant: str | None = None,
        *,
        name: str | None = None,
        scopes: Iterable[str] | None = None,
        expires_in: timedelta | None | Keep = KEEP,
        requests_per_minute: int | None | Keep = KEEP,
        tokens_per_minute: int | None | Keep = KEEP,
    ) -> ApiKey:
        """Change what a key may do, keeping the key itself: its name, scopes, expiry (from
        now; None: never) and limits (None: the tenant's or the server's; 0: none). Arguments
        left out stay as they are. A revoked key stays as it was revoked (Conflict). Requests
        with the key see the change at once here, within `cache_seconds` in other
        processes."""
        chosen = _checked_scopes(scopes) if scopes is not None else None
        if name is not None:
            _check_name(name)
        if expires_in is not KEEP:
            _check_expiry(expires_in)
        for param, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not KEEP:
                _check_limit(param, value)
        with self.db.session() as session, session.begin():
            row = session.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None or (tenant is not None and row.owner != tenant):
                raise NotFound("api key", key_id, f"No API key with id '{key_id}'")
            if row.revoked_at is not None:
                raise Conflict(f"API key '{key_id}' is revoked; make a new key instead")
            if name is not None:
                row.name = name
            if chosen is not None:
                row.scopes = " ".join(chosen)
            if expires_in is not KEEP:
                row.expires_at = utcnow() + expires_in if expires_in is not None else None
            if requests_per_minute is not KEEP:
                row.requests_per_minute = requests_per_minute
            if tokens_per_minute is not KEEP:
                row.tokens_per_minute = tokens_per_minute
            record = _record(row)
        self._forget(key_id)
        return record

    def _forget(self, key_id: str) -> None:
        """Drop the key's cached verifications: its next request reads the database."""
        with self._lock:
            for digest in [d for d, v in self._verified.items() if v.key_id == key_id]:
                del self._verified[digest]

    async def authenticate(self, key: str | None) -> Principal:
        """The principal of a presented key; Unauthenticated when there is none or it is not
        a valid key (unknown, expired, revoked). The database is read on a worker thread, and
        only when the key is not in the cache."""
        if not key:
            raise Unauthenticated("no API key: send it as 'Authorization: Bearer gbx-...'")
        digest = self._digest(key)
        now = time.monotonic()
        with self._lock:
            verified = self._verified.get(digest)
        if verified is None or verified.until <= now:
            verified = await asyncio.to_thread(self._verify, key, digest, now)
            self._remember(digest, verified, now)
        if verified.expires_at is not None and verified.expires_at <= utcnow():
            raise Unauthenticated(f"the API key expired at {verified.expires_at.isoformat()}")
        if now - self._touched.get(verified.key_id, -self.touch_seconds) >= self.touch_seconds:
            self._touched[verified.key_id] = now
            await asyncio.to_thread(self._touch, verified.key_id)
        return verified.principal

    def _verify(self, key: str, digest: str, now: float) -> _Verified:
        invalid = Unauthenticated("the API key is not valid")
        prefix = key[len(KEY_PREFIX) : len(KEY_PREFIX) + PUBLIC_CHARS]
        if not key.startswith(KEY_PREFIX) or len(prefix) < PUBLIC_CHARS:
            raise invalid
        with self.db.session() as session:
            rows = session.scalars(select(ApiKeyRow).where(ApiKeyRow.prefix == prefix)).all()
        row = next((r for r in rows if hmac.compare_digest(r.digest, digest)), None)
        if row is None:
            raise invalid
        record = _record(row)
        if record.revoked_at is not None:
            raise Unauthenticated("the API key has been revoked")
        principal = Principal(record.tenant, frozenset(record.scopes), record.id, record.limits)
        return _Verified(principal, record.id, record.expires_at, now + self.cache_seconds)

    def _remember(self, digest: str, verified: _Verified, now: float) -> None:
        with self._lock:
            if len(self._verified) >= _MAX_CACHED:
                stale = [d for d, v in self._verified.items() if v.until <= now]
                for d in stale or list(self._verified):
                    del self._verified[d]
            self._verified[digest] = verified

    def _touch(self, key_id: str) -> None:
        with self.db.session() as session, session.begin():
            session.execute(
                update(ApiKeyRow).where(ApiKeyRow.key_id == key_id).values(last_used_at=utcnow())
            )
