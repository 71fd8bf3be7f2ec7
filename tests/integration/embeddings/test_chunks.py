"""The chunk store on SQLite (sqlite-vec) and on a real PostgreSQL with pgvector: idempotent
puts, cosine ranking and scores, dimensions kept apart, OpenAI's attribute filters in SQL,
owners kept apart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.pg_server import fresh_database
from sqlalchemy import select

from glassbox.embeddings.chunks import ChunkStore, StoredChunk
from glassbox.errors import InvalidRequest
from glassbox.store import Database
from glassbox.store.vector_stores import ChunkRow


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChunkStore]:
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'glassbox.db'}")
        try:
            yield ChunkStore(db)
        finally:
            db.close()
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        db = Database(url)
        try:
            yield ChunkStore(db)
        finally:
            db.close()


def chunk(doc: str, pos: int, vector: list[float], **attributes: Any) -> StoredChunk:
    text = f"{doc}#{pos}"
    return StoredChunk(doc, pos, text, np.array(vector, np.float32), attributes, 0, len(text))


def ids(hits) -> list[str]:
    return [f"{h.document_id}#{h.position}" for h in hits]


def test_put_replaces_a_chunk_stored_again_and_counts_only_new_rows(store: ChunkStore):
    first = [chunk("d1", i, [1.0, float(i), 0.0]) for i in range(3)]
    assert store.put("alice", "c1", first) == 3
    again = [StoredChunk("d1", 1, "rewritten", np.array([0, 1, 0], np.float32), {"v": 2}, 5, 14),
             chunk("d1", 3, [0.0, 0.0, 1.0])]  # fmt: skip
    assert store.put("alice", "c1", again) == 1
    assert store.count("alice", "c1") == 4
    assert store.count("alice", "c1", "d1") == 4
    assert store.count("alice", "c1", "d2") == 0

    with store._db.session() as s:
        rows = {r.position: r for r in s.scalars(select(ChunkRow).order_by(ChunkRow.position))}
    assert [r.writes for r in rows.values()] == [1, 2, 1, 1]
    assert (rows[1].text, rows[1].start_char, rows[1].end_char) == ("rewritten", 5, 14)
    assert rows[1].attributes == {"v": 2}
    np.testing.assert_array_equal(rows[1].embedding, [0, 1, 0])
    assert rows[1].embedding.dtype == np.float32

    # The same key twice in one call: the later one is stored, once.
    twice = [chunk("d2", 0, [1.0, 0.0, 0.0]), StoredChunk("d2", 0, "later", np.ones(3), {})]
    assert store.put("alice", "c1", twice) == 1
    assert store.count("alice", "c1", "d2") == 1
    assert store.search("alice", "c1", [1, 1, 1], 1)[0].text == "later"


def test_put_of_many_chunks_spans_several_statements(store: ChunkStore):
    rng = np.random.default_rng(0)
    chunks = [StoredChunk("big", i, str(i), rng.normal(size=8)) for i in range(1200)]
    assert store.put("alice", "c1", chunks) == 1200
    assert store.put("alice", "c1", chunks) == 0
    assert store.count("alice", "c1") == 1200


def test_search_ranks_by_cosine_similarity_with_its_score(store: ChunkStore):
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(20, 16)).astype(np.float32)
    vectors[3] *= 50.0  # the norm does not matter to cosine
    store.put("alice", "c1", [StoredChunk(f"d{i}", 0, f"t{i}", v) for i, v in enumerate(vectors)])
    query = vectors[3] + 0.1 * rng.normal(size=16).astype(np.float32)

    hits = store.search("alice", "c1", query, 5)

    cosine = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    best = np.argsort(-cosine)[:5]
    assert [h.document_id for h in hits] == [f"d{i}" for i in best]
    np.testing.assert_allclose([h.score for h in hits], cosine[best], atol=1e-5)
    assert hits[0].document_id == "d3" and hits[0].text == "t3"
    assert len(store.search("alice", "c1", query, 50)) == 20
    with pytest.raises(InvalidRequest):
        store.search("alice", "c1", query, 0)
    with pytest.raises(InvalidRequest):
        store.search("alice", "c1", [np.nan] * 16, 1)


def test_search_compares_only_vectors_of_the_query_dimension(store: ChunkStore):
    small = [chunk("small", 0, [1, 0, 0]), chunk("small", 1, [0, 1, 0])]
    large = [chunk("large", 0, [1, 0, 0, 0]), chunk("large", 1, [0, 0, 0, 1])]
    store.put("alice", "c1", small + large)
    assert ids(store.search("alice", "c1", [0, 1, 0], 10)) == ["small#1", "small#0"]
    assert ids(store.search("alice", "c1", [0, 0, 0, 1], 10)) == ["large#1", "large#0"]
    assert store.search("alice", "c1", [1, 0], 10) == []


def test_search_spans_the_collections_it_is_given(store: ChunkStore):
    store.put("alice", "c1", [chunk("a", 0, [1, 0])])
    store.put("alice", "c2", [chunk("b", 0, [0.9, 0.1])])
    store.put("alice", "c3", [chunk("c", 0, [1, 0.01])])
    assert ids(store.search("alice", ["c1", "c2"], [1, 0], 10)) == ["a#0", "b#0"]
    assert ids(store.search("alice", "c2", [1, 0], 10)) == ["b#0"]


ATTRIBUTES = {
    "a": {"kind": "report", "year": 2021, "score": 0.5, "public": True, "code": "1"},
    "b": {"kind": "memo", "year": 2023, "score": 2, "public": False, "code": 1},
    "c": {"kind": "Report", "year": 2024.0, "public": True, 'we"ird key': "x"},
    "d": {},
}

FILTERS: list[tuple[dict[str, Any], set[str]]] = [
    ({"type": "eq", "key": "kind", "value": "report"}, {"a"}),
    ({"type": "ne", "key": "kind", "value": "report"}, {"b", "c", "d"}),
    ({"type": "eq", "key": "year", "value": 2024}, {"c"}),  # 2024 == 2024.0
    ({"type": "eq", "key": "code", "value": "1"}, {"a"}),  # typed: "1" is not 1
    ({"type": "eq", "key": "code", "value": 1}, {"b"}),
    ({"type": "eq", "key": "public", "value": True}, {"a", "c"}),
    ({"type": "eq", "key": "public", "value": False}, {"b"}),
    ({"type": "ne", "key": "public", "value": True}, {"b", "d"}),
    ({"type": "gt", "key": "year", "value": 2021}, {"b", "c"}),
    ({"type": "gte", "key": "year", "value": 2021}, {"a", "b", "c"}),
    ({"type": "lt", "key": "score", "value": 2}, {"a"}),
    ({"type": "lte", "key": "score", "value": 2.0}, {"a", "b"}),
    ({"type": "lt", "key": "kind", "value": "n"}, {"b", "c"}),  # code points: "R" < "m" < "r"
    ({"type": "gte", "key": "kind", "value": "report"}, {"a"}),
    ({"type": "gt", "key": "kind", "value": 5}, set()),  # a number orders only numbers
    ({"type": "in", "key": "kind", "value": ["memo", "Report"]}, {"b", "c"}),
    ({"type": "in", "key": "year", "value": [2021, 2024]}, {"a", "c"}),
    ({"type": "nin", "key": "kind", "value": ["memo", "Report"]}, {"a", "d"}),
    ({"type": "in", "key": "kind", "value": []}, set()),
    ({"type": "eq", "key": 'we"ird key', "value": "x"}, {"c"}),
    (
        {
            "type": "and",
            "filters": [
                {"type": "eq", "key": "public", "value": True},
                {"type": "gt", "key": "year", "value": 2022},
            ],
        },
        {"c"},
    ),  # fmt: skip
    (
        {
            "type": "or",
            "filters": [
                {"type": "eq", "key": "kind", "value": "memo"},
                {
                    "type": "and",
                    "filters": [
                        {"type": "lt", "key": "year", "value": 2022},
                        {"type": "eq", "key": "public", "value": True},
                    ],
                },
            ],
        },
        {"a", "b"},
    ),  # fmt: skip
    ({"type": "and", "filters": []}, {"a", "b", "c", "d"}),
    ({"type": "or", "filters": []}, set()),
]


def test_attribute_filters_select_in_sql_before_ranking(store: ChunkStore):
    store.put("alice", "c1", [chunk(doc, 0, [1, i]) for i, doc in enumerate(ATTRIBUTES)])
    for doc, attributes in ATTRIBUTES.items():
        store.set_attributes("alice", "c1", doc, attributes)
    for spec, expected in FILTERS:
        # k = 1: a filter applied after ranking would return nothing for most of these.
        hits = store.search("alice", "c1", [1, 0], 1, spec)
        everything = store.search("alice", "c1", [1, 0], 10, spec)
        assert {h.document_id for h in everything} == expected, spec
        assert len(hits) == min(1, len(expected)), spec
    assert store.search("alice", "c1", [1, 0], 1, FILTERS[0][0])[0].attributes == ATTRIBUTES["a"]


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "like", "key": "kind", "value": "x"},
        {"type": "eq", "value": "x"},
        {"type": "eq", "key": "kind"},
        {"type": "eq", "key": "kind", "value": {"nested": 1}},
        {"type": "gt", "key": "public", "value": True},
        {"type": "in", "key": "kind", "value": "report"},
        {"type": "and", "filters": {"type": "eq", "key": "kind", "value": "x"}},
        {"type": "or", "filters": ["not a filter"]},
    ],
)
def test_a_malformed_filter_is_an_invalid_request_naming_filters(store: ChunkStore, spec):
    store.put("alice", "c1", [chunk("a", 0, [1, 0])])
    with pytest.raises(InvalidRequest) as err:
        store.search("alice", "c1", [1, 0], 1, spec)
    assert err.value.param == "filters"


def test_owners_see_only_their_own_chunks(store: ChunkStore):
    store.put("alice", "shared-name", [chunk("doc", 0, [1, 0]), chunk("doc", 1, [0, 1])])
    assert store.put("bob", "shared-name", [chunk("doc", 0, [1, 1])]) == 1  # not alice's row

    assert ids(store.search("bob", "shared-name", [1, 0], 10)) == ["doc#0"]
    assert store.search("bob", "shared-name", [1, 0], 10)[0].score == pytest.approx(0.70710677)
    assert store.count("bob", "shared-name") == 1
    assert store.set_attributes("bob", "shared-name", "doc", {"x": 1}) == 1
    assert store.delete("bob", "shared-name", "doc") == 1

    assert store.count("alice", "shared-name") == 2
    assert all(h.attributes == {} for h in store.search("alice", "shared-name", [1, 0], 10))


def test_delete_removes_a_document_or_a_whole_collection(store: ChunkStore):
    store.put("alice", "c1", [chunk("a", 0, [1, 0]), chunk("a", 1, [1, 0]), chunk("b", 0, [0, 1])])
    store.put("alice", "c2", [chunk("a", 0, [1, 0])])
    assert store.delete("alice", "c1", "a") == 2
    assert ids(store.search("alice", "c1", [1, 0], 10)) == ["b#0"]
    assert store.delete("alice", "c1") == 1
    assert store.count("alice", "c1") == 0
    assert store.count("alice", "c2") == 1
