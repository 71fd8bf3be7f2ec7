"""The chunk store: chunks of documents with their embeddings, in collections, searched by
cosine similarity. The job pipeline writes it, vector store search reads it.

One table (`chunks`, store/vector_stores.py) on both databases. On SQLite a vector is a
float32 BLOB and `vec_distance_cosine` of sqlite-vec (loaded on every connection by
store/db.py) scores it; on PostgreSQL it is pgvector's `vector`, scored by `<=>`. The column
has no fixed dimension, so the vectors of different models live side by side and a search
compares only the rows of its query's dimension. Search is exact (a scan of the owner's
collections, no approximate index): ANN indexes need one dimension per index, and exact
results keep a user's collection of a few thousand chunks cheap and right.

Storage is idempotent: a chunk's key is (owner, collection_id, document_id, position) and
`put` upserts, so a pipeline stage that runs twice after a crash stores each chunk once.

Attribute filters (OpenAI's shape: comparisons eq, ne, gt, gte, lt, lte, in, nin on a key,
compounds and/or of filters) are applied entirely in SQL with each dialect's JSON functions,
before the ranking, so `k` results are `k` matching results (no over-fetch). Comparison is
typed as in JSON: a string equals only a string and a number only a number (1 == 1.0), gt..lte
order numbers numerically and strings by code point, booleans only take eq/ne/in/nin; a chunk
without the key matches only ne and nin.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Boolean, Float, and_, delete, false, func, not_, or_, select, true, update
from sqlalchemy import literal as sql_literal
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from glassbox.errors import InvalidRequest
from glassbox.store import Database
from glassbox.store.vector_stores import ChunkRow, EmbeddingVector

_TABLE = ChunkRow.__table__
_KEY = ("owner", "collection_id", "document_id", "position")
# Rows per INSERT statement: a bound parameter per column stays far below either
# database's limit on parameters.
_BATCH = 500

_ORDERINGS = ("gt", "gte", "lt", "lte")
_COMPARISONS = ("eq", "ne", "in", "nin", *_ORDERINGS)


@dataclass(frozen=True)
class StoredChunk:
    """A chunk to store: its text, its place in the document (`position`: its index among the
    document's chunks; `start`..`end`: character offsets), its embedding and attributes."""

    document_id: str
    position: int
    text: str
    vector: np.ndarray
    attributes: dict[str, Any] = field(default_factory=dict)
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class Hit:
    """A search result: the chunk and its cosine similarity to the query (1 = same
    direction)."""

    document_id: str
    position: int
    text: str
    score: float
    attributes: dict[str, Any]


def _as_vector(vector: Any, param: str) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    if v.ndim != 1 or v.size == 0:
        raise InvalidRequest(
            f"{param} must be a non-empty 1-D vector, got shape {v.shape}", param=param
        )
    if not np.isfinite(v).all():
        raise InvalidRequest(f"{param} holds a NaN or an infinity", param=param)
    return v


class ChunkStore:
    """Chunks by owner (a tenant id) and collection; every method reads and writes only the
    owner's rows."""

    def __init__(self, db: Database):
        self._db = db
        self._dialect = db.engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"the chunk store needs SQLite or PostgreSQL, not {self._dialect}")

    def put(self, owner: str, collection_id: str, chunks: Sequence[StoredChunk]) -> int:
        """Store the chunks, replacing any stored under the same (document_id, position) in
        this collection; how many of them were not stored before. Of two chunks with the same
        key in one call, the later one is stored."""
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for chunk in chunks:
            vector = _as_vector(chunk.vector, "vector")
            rows[(chunk.document_id, chunk.position)] = {
                "owner": owner, "collection_id": collection_id,
                "document_id": chunk.document_id, "position": chunk.position,
                "text": chunk.text, "start_char": chunk.start, "end_char": chunk.end,
                "dimensions": int(vector.size), "embedding": vector,
                "attributes": dict(chunk.attributes), "writes": 1,
            }  # fmt: skip
        values = list(rows.values())
        new = 0
        with self._db.engine.begin() as conn:
            for i in range(0, len(values), _BATCH):
                written = conn.execute(self._upsert(values[i : i + _BATCH])).scalars().all()
                new += sum(1 for writes in written if writes == 1)
        return new

    def _upsert(self, rows: list[dict[str, Any]]):
        """INSERT ... ON CONFLICT (key) DO UPDATE, returning each row's `writes` (1 = new)."""
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        stmt = insert(_TABLE).values(rows)
        replaced = ("text", "start_char", "end_char", "dimensions", "embedding", "attributes")
        return stmt.on_conflict_do_update(
            index_elements=list(_KEY),
            set_={**{c: stmt.excluded[c] for c in replaced}, "writes": _TABLE.c.writes + 1},
        ).returning(_TABLE.c.writes)

    def count(self, owner: str, collection_id: str, document_id: str | None = None) -> int:
        stmt = select(func.count()).select_from(_TABLE).where(self._scope(owner, collection_id))
        if document_id is not None:
            stmt = stmt.where(_TABLE.c.document_id == document_id)
        with self._db.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def delete(self, owner: str, collection_id: str, document_id: str | None = None) -> int:
        """Remove a document's chunks, or the whole collection's; how many rows went."""
        stmt = delete(_TABLE).where(self._scope(owner, collection_id))
        if document_id is not None:
            stmt = stmt.where(_TABLE.c.document_id == document_id)
        with self._db.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def set_attributes(
        self, owner: str, collection_id: str, document_id: str, attributes: Mapping[str, Any]
    ) -> int:
        """Give every chunk of the document these attributes (a file's attributes changed)."""
        stmt = (
            update(_TABLE)
            .where(self._scope(owner, collection_id), _TABLE.c.document_id == document_id)
            .values(attributes=dict(attributes))
        )
        with self._db.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def search(
        self,
        owner: str,
        collection_ids: str | Sequence[str],
        vector: Any,
        k: int,
        filters: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """The `k` chunks most similar to `vector` among those of its dimension in the
        collections that match `filters`, best first (ties in document and position order)."""
        if k < 1:
            raise InvalidRequest(f"k must be at least 1, got {k}")
        query = _as_vector(vector, "vector")
        ids = [collection_ids] if isinstance(collection_ids, str) else list(collection_ids)
        embedding = _TABLE.c.embedding
        q = sql_literal(query, EmbeddingVector())
        if self._dialect == "postgresql":
            distance = embedding.op("<=>", return_type=Float)(q)
        else:
            distance = func.vec_distance_cosine(embedding, q, type_=Float)
        stmt = (
            select(_TABLE.c.document_id, _TABLE.c.position, _TABLE.c.text,
                   _TABLE.c.attributes, distance.label("distance"))
            .where(_TABLE.c.owner == owner, _TABLE.c.collection_id.in_(ids),
                   _TABLE.c.dimensions == int(query.size))
            .order_by(distance, _TABLE.c.document_id, _TABLE.c.position)
            .limit(k)
        )  # fmt: skip
        if filters is not None:
            stmt = stmt.where(self._filter(filters))
        with self._db.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            Hit(r.document_id, r.position, r.text, 1.0 - float(r.distance), r.attributes or {})
            for r in rows
        ]

    def _scope(self, owner: str, collection_id: str) -> ColumnElement[bool]:
        return and_(_TABLE.c.owner == owner, _TABLE.c.collection_id == collection_id)

    def _filter(self, spec: Any) -> ColumnElement[bool]:
        """An OpenAI attribute filter as a SQL condition that is never NULL (so NOT works)."""
        if not isinstance(spec, Mapping):
            raise _bad_filter(f"a filter must be an object, got {spec!r}")
        kind = spec.get("type")
        if kind in ("and", "or"):
            parts = spec.get("filters")
            if not isinstance(parts, list):
                raise _bad_filter(f"an '{kind}' filter needs 'filters', a list of filters")
            clauses = [self._filter(p) for p in parts]
            return and_(true(), *clauses) if kind == "and" else or_(false(), *clauses)
        if kind not in _COMPARISONS:
            raise _bad_filter(
                f"unknown filter type {kind!r}: use one of {', '.join(_COMPARISONS)}, and, or"
            )
        key, value = spec.get("key"), spec.get("value")
        if not isinstance(key, str) or not key:
            raise _bad_filter(f"a '{kind}' filter needs 'key', a non-empty string")
        if kind in ("in", "nin"):
            if not isinstance(value, list) or not all(_is_scalar(v) for v in value):
                raise _bad_filter(f"an '{kind}' filter's value must be a list of strings/numbers")
            clause = or_(false(), *(self._equals(key, v) for v in value))
            return clause if kind == "in" else not_(clause)
        if not _is_scalar(value):
            raise _bad_filter(f"a '{kind}' filter's value must be a string, number or boolean")
        if kind in ("eq", "ne"):
            clause = self._equals(key, value)
            return clause if kind == "eq" else not_(clause)
        if isinstance(value, bool):
            raise _bad_filter(f"'{kind}' compares numbers or strings, not booleans")
        return self._ordered(kind, key, value)

    def _equals(self, key: str, value: str | float | bool) -> ColumnElement[bool]:
        col = _TABLE.c.attributes
        if self._dialect == "postgresql":
            # jsonb equality is typed: "1" is not 1, 1 is 1.0.
            return _never_null(col[key] == sql_literal(value, JSONB()))
        kind, extracted = _sqlite_json(key)
        if isinstance(value, bool):
            return _never_null(kind == ("true" if value else "false"))
        json_types = ("text",) if isinstance(value, str) else ("integer", "real")
        return _never_null(and_(kind.in_(json_types), extracted == value))

    def _ordered(self, op: str, key: str, value: str | float) -> ColumnElement[bool]:
        col = _TABLE.c.attributes
        compare = {"gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__"}[op]
        if self._dialect == "postgresql":
            kind = func.jsonb_typeof(col[key])
            if isinstance(value, str):
                subject = col[key].as_string().collate("C")  # code point order, as in SQLite
                return _never_null(and_(kind == "string", getattr(subject, compare)(value)))
            subject = col[key]  # jsonb orders numbers numerically
            bound = sql_literal(value, JSONB())
            return _never_null(and_(kind == "number", getattr(subject, compare)(bound)))
        kind, extracted = _sqlite_json(key)
        json_types = ("text",) if isinstance(value, str) else ("integer", "real")
        return _never_null(and_(kind.in_(json_types), getattr(extracted, compare)(value)))


def _sqlite_json(key: str) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """SQLite's JSON type name ('text', 'integer', 'real', 'true', ...) of the key's value,
    and the value."""
    path = "$." + json.dumps(key, ensure_ascii=False)  # a quoted label: any key is safe
    col = _TABLE.c.attributes
    return func.json_type(col, path), func.json_extract(col, path)


def _never_null(clause: ColumnElement[Any]) -> ColumnElement[bool]:
    return func.coalesce(clause, false(), type_=Boolean)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | bool | int | float)


def _bad_filter(message: str) -> InvalidRequest:
    return InvalidRequest(f"filters: {message}", param="filters", code="invalid_filter")
