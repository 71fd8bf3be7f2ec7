"""API keys over HTTP, for a key with the 'admin' scope; its tenant's keys only (another
tenant's key id is a 404, as everywhere). Keys of any tenant: `glassbox keys`.

    POST   /admin/keys         a new key (the key itself is in this answer, and only here)
    GET    /admin/keys         the tenant's keys, without secrets
    DELETE /admin/keys/{id}    revoke one
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Depends

from glassbox.api.admin.schemas import CreatedKeyObject, CreateKeyRequest, KeyList, KeyObject
from glassbox.api.deps import AdminDep, KeysDep, require_admin
from glassbox.auth.keys import ApiKey
from glassbox.errors import Forbidden

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
    )  # fmt: skip


@router.post("/keys", response_model=CreatedKeyObject)
def create_key(body: CreateKeyRequest, keys: KeysDep, principal: AdminDep) -> CreatedKeyObject:
    tenant = body.tenant or principal.tenant
    if tenant != principal.tenant:
        raise Forbidden(
            f"an admin key manages the keys of its own tenant '{principal.tenant}'; make keys "
            "of other tenants with `glassbox keys create --tenant`",
            param="tenant",
        )
    expires_in = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    created = keys.create(tenant, body.scopes, body.name, expires_in)
    return CreatedKeyObject(**key_object(created.record).model_dump(), key=created.key)


@router.get("/keys", response_model=KeyList)
def list_keys(keys: KeysDep, principal: AdminDep) -> KeyList:
    return KeyList(data=[key_object(k) for k in keys.list(principal.tenant)])


@router.delete("/keys/{key_id}", response_model=KeyObject)
def revoke_key(key_id: str, keys: KeysDep, principal: AdminDep) -> KeyObject:
    return key_object(keys.revoke(key_id, principal.tenant))
