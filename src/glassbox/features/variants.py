"""Stored variants: named variants of the served model, grouped in namespaces, kept in the
database and owned by the principal that made them.

A namespace (the `session_id` field on the wire) is a client's folder of variants; each
owner has its own namespaces, and another owner's namespace is empty to the caller. Every
namespace has a variant named "default" (no edits on the served model) that comes into
being on first use, so clients can steer without creating anything first; deleting it
resets it.

This is the variants' one boundary to blocking SQL: methods are synchronous and are called
from worker threads only (FastAPI's threadpool for plain `def` routes, `asyncio.to_thread`
from the steering service). Writes in one process are serialized by a lock so
read-modify-write edits never lose an update.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from glassbox.errors import Conflict, InvalidRequest, NotFound
from glassbox.features.variant import Edit, EditMode, FeatureRef, VariantSpec
from glassbox.principal import Principal
from glassbox.store import Database, VariantRow
from glassbox.store.models import as_utc

DEFAULT_VARIANT = "default"
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


@dataclass(frozen=True)
class StoredVariant:
    namespace: str
    variant_id: str
    spec: VariantSpec
    parent_variant_id: str | None
    created_at: datetime
    updated_at: datetime


def check_id(value: str, param: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidRequest(
            f"'{param}' must be 1-128 characters of letters, digits and _ . : - (got {value!r})",
            param=param,
        )
    return value


def _stored(row: VariantRow) -> StoredVariant:
    return StoredVariant(
        row.namespace,
        row.variant_id,
        VariantSpec.model_validate_json(row.spec),
        row.parent_variant_id,
        as_utc(row.created_at),
        as_utc(row.updated_at),
    )


def _not_found(namespace: str, variant_id: str, param: str = "variant_id") -> NotFound:
    return NotFound(
        "variant",
        variant_id,
        f"session {namespace!r} has no variant {variant_id!r}; create it with POST /variants",
        param=param,
    )


class VariantService:
    def __init__(self, db: Database, base_model: str, max_edits: int = 256):
        """`max_edits`: the most edits one variant may hold (the server's bound)."""
        self.db = db
        self.base_model = base_model
        self.max_edits = max_edits
        self._lock = threading.Lock()

    def check_size(self, spec: VariantSpec, param: str) -> VariantSpec:
        """`spec`, if it holds at most `max_edits` edits (a 400 about `param` if not)."""
        if spec.edit_count > self.max_edits:
            raise InvalidRequest(
                f"the variant would hold {spec.edit_count} edits; a variant may hold at most "
                f"{self.max_edits}",
                param=param,
            )
        return spec

    def empty(self) -> VariantSpec:
        return VariantSpec(base_model=self.base_model)

    # --- rows -------------------------------------------------------------------------

    def _row(
        self,
        s: Session,
        owner: Principal,
        namespace: str,
        variant_id: str,
        param: str = "variant_id",
    ) -> VariantRow:
        """The row, creating the default variant on first use; 404 for any other missing."""
        row = s.get(VariantRow, (owner.tenant, namespace, variant_id))
        if row is not None:
            return row
        if variant_id != DEFAULT_VARIANT:
            raise _not_found(namespace, variant_id, param)
        row = VariantRow(
            owner=owner.tenant,
            namespace=namespace,
            variant_id=variant_id,
            spec=self.empty().model_dump_json(),
        )
        s.add(row)
        s.flush()
        return row

    # --- reads ------------------------------------------------------------------------

    def get(
        self, owner: Principal, namespace: str, variant_id: str = DEFAULT_VARIANT
    ) -> StoredVariant:
        check_id(namespace, "session_id")
        check_id(variant_id, "variant_id")
        with self._lock, self.db.session() as s, s.begin():
            return _stored(self._row(s, owner, namespace, variant_id))

    def list(self, owner: Principal, namespace: str) -> list[StoredVariant]:
        """The namespace's variants, the default first, then by creation time."""
        check_id(namespace, "session_id")
        with self._lock, self.db.session() as s, s.begin():
            self._row(s, owner, namespace, DEFAULT_VARIANT)
            rows = s.scalars(
                select(VariantRow)
                .where(VariantRow.owner == owner.tenant, VariantRow.namespace == namespace)
                .order_by(VariantRow.created_at, VariantRow.variant_id)
            ).all()
            out = [_stored(r) for r in rows]
        return sorted(out, key=lambda v: v.variant_id != DEFAULT_VARIANT)

    def modified(
        self, owner: Principal, namespace: str, variant_id: str = DEFAULT_VARIANT
    ) -> list[Edit]:
        """The variant's unconditional edits (what a client has set)."""
        return self.get(owner, namespace, variant_id).spec.edits

    # --- writes -----------------------------------------------------------------------

    def create(
        self,
        owner: Principal,
        namespace: str,
        variant_id: str,
        base_variant_id: str | None = None,
        spec: VariantSpec | None = None,
    ) -> StoredVariant:
        """A new variant: a copy of `base_variant_id`'s edits and scopes, or `spec`, or empty.
        409 if it exists, 404 if the base does not."""
        check_id(namespace, "session_id")
        check_id(variant_id, "variant_id")
        if base_variant_id is not None:
            check_id(base_variant_id, "base_variant_id")
            if spec is not None:
                raise InvalidRequest(
                    "give 'base_variant_id' (copy a stored variant) or 'variant' (its JSON), "
                    "not both",
                    param="base_variant_id",
                )
        with self._lock, self.db.session() as s, s.begin():
            if s.get(VariantRow, (owner.tenant, namespace, variant_id)) is not None:
                raise Conflict(
                    f"session {namespace!r} already has a variant {variant_id!r}; "
                    f"change it with PUT /variants/{namespace}/{variant_id}",
                    param="variant_id",
                    code="variant_exists",
                )
            if base_variant_id is not None:
                base = _stored(self._row(s, owner, namespace, base_variant_id, "base_variant_id"))
                spec = base.spec.model_copy(deep=True)
            row = VariantRow(
                owner=owner.tenant,
                namespace=namespace,
                variant_id=variant_id,
                spec=(spec or self.empty()).model_dump_json(),
                parent_variant_id=base_variant_id,
            )
            s.add(row)
            s.flush()
            return _stored(row)

    def replace(
        self, owner: Principal, namespace: str, variant_id: str, spec: VariantSpec
    ) -> StoredVariant:
        check_id(namespace, "session_id")
        check_id(variant_id, "variant_id")
        with self._lock, self.db.session() as s, s.begin():
            row = self._row(s, owner, namespace, variant_id)
            row.spec = spec.model_dump_json()
            s.flush()
            return _stored(row)

    def delete(self, owner: Principal, namespace: str, variant_id: str) -> None:
        """Deleting the default resets it: it comes back empty on next use."""
        check_id(namespace, "session_id")
        check_id(variant_id, "variant_id")
        with self._lock, self.db.session() as s, s.begin():
            row = s.get(VariantRow, (owner.tenant, namespace, variant_id))
            if row is None:
                if variant_id == DEFAULT_VARIANT:
                    return
                raise _not_found(namespace, variant_id)
            s.delete(row)

    def set_edit(
        self,
        owner: Principal,
        namespace: str,
        variant_id: str,
        feature: FeatureRef,
        value: float | None,
        mode: EditMode | str = "nudge",
    ) -> StoredVariant:
        """Set one feature's unconditional edit, replacing any edit of that feature. Mode
        "clear", a value of None, or a nudge of 0 (which changes nothing) removes it."""
        check_id(namespace, "session_id")
        check_id(variant_id, "variant_id")
        remove = mode == "clear" or (value is None and mode != "ablate")
        remove = remove or (mode == "nudge" and value == 0)
        with self._lock, self.db.session() as s, s.begin():
            row = self._row(s, owner, namespace, variant_id)
            spec = VariantSpec.model_validate_json(row.spec)
            edit = None if remove else Edit(feature=feature, mode=mode, value=value or 0.0)
            edits, placed = [], False
            for e in spec.edits:
                if e.feature.uuid != feature.uuid:
                    edits.append(e)
                elif edit is not None and not placed:  # keeps its place in the list
                    edits.append(edit)
                    placed = True
            if edit is not None and not placed:
                edits.append(edit)
            changed = self.check_size(spec.model_copy(update={"edits": edits}), "feature")
            row.spec = changed.model_dump_json()
            s.flush()
            return _stored(row)
