"""Who is asking: the identity every stored object is owned by.

A `Principal` is a tenant id and scopes (and, when it comes from an API key, the key's id and
its own rate limits). Every service call that reads or writes stored
objects (variants, states and their exports; sessions, files and jobs next) takes the
caller's principal: objects carry their owner's tenant id, reads filter by it, and another
tenant's id is reported as not found. The HTTP layer produces the principal
(glassbox.api.deps): from the request's API key when keys are required (glassbox.auth),
else the local anonymous principal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

LOCAL_TENANT = "local"
_TENANT = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # also a safe directory name (exports)


@dataclass(frozen=True)
class KeyLimits:
    """A key's own rate limits, per minute (None: the tenant's or the server's default)."""

    requests: int | None = None
    tokens: int | None = None


DEFAULT_LIMITS = KeyLimits()


@dataclass(frozen=True)
class Principal:
    tenant: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    key_id: str | None = None  # the API key the request came with (None: keys are off)
    limits: KeyLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if not _TENANT.fullmatch(self.tenant) or self.tenant in (".", ".."):
            raise ValueError(f"tenant id {self.tenant!r} must be 1-128 letters, digits and _ . -")

    def acting_as(self, tenant: str) -> Principal:
        """The same caller (key, scopes, limits) working on `tenant`'s objects: how an admin
        reads, lists and changes any tenant's data (the X-Glassbox-Tenant header)."""
        return replace(self, tenant=tenant)  # checked again by __post_init__


# The caller when the server checks no API keys (the default on loopback).
LOCAL = Principal(LOCAL_TENANT, frozenset({"admin"}))
