"""API keys over HTTP, for a key with the 'admin' scope: the server's administrators, who
manage the keys of every tenant (as `glassbox keys` does on the database).

    POST   /admin/keys            a new key (the key itself is in this answer, and only here)
    GET    /admin/keys[?tenant=]  keys without secrets: every tenant's, or one tenant's
    PATCH  /admin/keys/{id}       change its name, scopes, expiry or limits (the key stays)
    DELETE /admin/keys/{id}       revoke one
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Depends, Query

from glassbox.api.admin.schemas import (
    CreatedKeyObject,
    CreateKeyRequest,
    KeyList,
    KeyObject,
    UpdateKeyRequest,
)
from glassbox.api.deps import AdminDep, KeysDep, require_admin
from glassbox.auth.keys import ApiKey
from glassbox.errors import InvalidRequest
from glassbox.principal import KeyLimits

# Every route here is admin-only, including one that forgets to ask for the principal.
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


def _seconds(t: datetime | None) -> int | None:
    return int(t.timestamp()) if t is not None else None


def key_object(key: ApiKey) -> KeyObject:
    return KeyObject(
        id=key.id, prefix=key.prefix, tenant=key.tenant, scopes=list(key.scopes),
        name=key.name, status=key.status(), created_at=int(key.created_at.timestamp()),
        expires_at=_seconds(key.expires_at), revoked_at=_seconds(key.revoked_at),
        last_used_at=_seconds(key.last_used_at),
        requests_per_minute=key.limits.requests, tokens_per_minute=key.limits.tokens,
    )  # fmt: skip


@router.post("/keys", response_model=CreatedKeyObject)
def create_key(body: CreateKeyRequest, keys: KeysDep, principal: AdminDep) -> CreatedKeyObject:
    expires_in = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    limits = KeyLimits(body.requests_per_minute, body.tokens_per_minute)
    created = keys.create(
        body.tenant or principal.tenant, body.scopes, body.name, expires_in, limits
    )
    return CreatedKeyObject(**key_object(created.record).model_dump(), key=created.key)


@router.get("/keys", response_model=KeyList)
def list_keys(
    keys: KeysDep, tenant: str | None = Query(None, description="Only this tenant's keys")
) -> KeyList:
    return KeyList(data=[key_object(k) for k in keys.list(tenant)])


@router.patch("/keys/{key_id}", response_model=KeyObject)
def update_key(key_id: str, body: UpdateKeyRequest, keys: KeysDep) -> KeyObject:
    given = body.model_fields_set
    if not given:
        raise InvalidRequest(
            "nothing to change: send name, scopes, expires_in_days, requests_per_minute or "
            "tokens_per_minute"
        )
    for field in ("name", "scopes"):
        if field in given and getattr(body, field) is None:
            raise InvalidRequest(f"'{field}' cannot be null; leave it out to keep it", param=field)
    changes = {
        f: getattr(body, f) for f in ("requests_per_minute", "tokens_per_minute") if f in given
    }
    if "expires_in_days" in given:
        days = body.expires_in_days
        changes["expires_in"] = timedelta(days=days) if days is not None else None
    updated = keys.update(key_id, name=body.name, scopes=body.scopes, **changes)
    return key_object(updated)


@router.delete("/keys/{key_id}", response_model=KeyObject)
def revoke_key(key_id: str, keys: KeysDep) -> KeyObject:
    return key_object(keys.revoke(key_id))
