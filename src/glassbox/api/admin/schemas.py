"""Wire shapes of the API key routes. Times are Unix seconds, as in OpenAI's objects."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Scope = Literal["admin", "user", "read"]


class _KeyLimitFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(
        None, ge=0, le=2**31 - 1, description="This key's own limit (0: none; null: default)"
    )
    tokens_per_minute: int | None = Field(
        None, ge=0, le=2**31 - 1, description="This key's own limit (0: none; null: default)"
    )


class CreateKeyRequest(_KeyLimitFields):
    tenant: str | None = Field(
        None, description="Whose data the key reaches (default: the admin's own tenant)"
    )
    scopes: list[Scope] = Field(["user"], min_length=1)
    name: str = Field("", max_length=256)
    expires_in_days: float | None = Field(
        None, gt=0, le=36_500, description="null: it never expires (at most 100 years)"
    )


class UpdateKeyRequest(_KeyLimitFields):
    """The fields to change; those left out stay as they are. null is a value for the
    expiry (never) and the limits (the tenant's or the server's default)."""

    name: str | None = Field(None, max_length=256)
    scopes: list[Scope] | None = Field(None, min_length=1)
    expires_in_days: float | None = Field(
        None, gt=0, le=36_500, description="From now; null: it never expires"
    )


class KeyObject(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    prefix: str = Field(description="The first characters of the key's random part")
    tenant: str
    scopes: list[Scope]
    name: str
    status: Literal["active", "expired", "revoked"]
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    last_used_at: int | None
    requests_per_minute: int | None
    tokens_per_minute: int | None


class CreatedKeyObject(KeyObject):
    key: str = Field(description="The key itself: shown this once, stored only as a hash")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyObject]
