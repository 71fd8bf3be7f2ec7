"""Files and vector stores through the official `openai` package, on real parts: the bundled
all-MiniLM-L6-v2 through the embedding service, the job pipeline's in-process workers, the
chunk store on SQLite (sqlite-vec) and on PostgreSQL (pgvector).

The routes run on a uvicorn thread in an app of their own (the router, the services, the
error handlers), the caller's tenant taken from an `x-tenant` header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from helpers.live_server import serve_in_thread
from helpers.pg_server import fresh_database
from sqlalchemy import select

from glassbox.api.deps import current_principal
from glassbox.api.errors import install_error_handlers
from glassbox.api.vector_stores import routes
from glassbox.embeddings.chunks import ChunkStore
from glassbox.embeddings.files import FileService
from glassbox.embeddings.jobs import JobService
from glassbox.embeddings.service import EmbeddingService
from glassbox.embeddings.vector_stores import VectorStoreService
from glassbox.principal import Principal
from glassbox.store import Database
from glassbox.store.vector_stores import VectorStoreFileRow

VOLCANOES = """Volcanoes form where molten rock reaches the surface of the Earth. Most of them \
sit along the edges of tectonic plates, around the Pacific Ring of Fire, where one plate \
slides beneath another and melts into the mantle.

A volcano erupts when the pressure of the gas dissolved in its magma becomes too great. As \
magma rises the pressure on it drops, the dissolved water vapour and carbon dioxide form \
bubbles, as in a bottle of soda opened too fast, and the expanding gas drives the magma out \
through the vent.

The lava of shield volcanoes such as those of Hawaii is runny basalt that flows for miles, \
while the sticky, silica-rich magma of stratovolcanoes like Mount St. Helens traps its gas \
and explodes, throwing ash high into the atmosphere."""

BREAD = """Bread is made of flour, water, salt and yeast. Kneading the dough for ten minutes \
develops the gluten, the network of proteins that gives a loaf its chewy structure and holds \
the gas the yeast makes.

After kneading, let the dough rise in a warm place for one to two hours, until it has \
doubled in size; a finger pressed into it should leave a dent that springs back slowly. \
Then shape the loaf and let it rise a second time.

Bake the loaf in a hot oven at about 230 degrees Celsius. A tray of water in the oven makes \
steam, which keeps the crust soft at first so the bread can expand, then lets it brown."""

CHESS = """Chess openings are the first moves of a game. The Italian Game begins 1.e4 e5 \
2.Nf3 Nc6 3.Bc4, developing the bishop to aim at the weak f7 square.

Against 1.e4, Black's most popular and combative reply is the Sicilian Defence, 1...c5, \
which fights for the centre from the side and leads to unbalanced positions where Black \
often counterattacks on the queenside.

The Queen's Gambit, 1.d4 d5 2.c4, offers White's c-pawn to lure Black's pawn away from the \
centre; declining it with 2...e6 is one of the most solid defences known."""

DOCUMENTS = {"volcanoes.txt": VOLCANOES, "bread.txt": BREAD, "chess.txt": CHESS}
TOPICS = {"volcanoes.txt": "geology", "bread.txt": "cooking", "chess.txt": "games"}
QUESTIONS = [
    ("Why does a volcano erupt?", "volcanoes.txt", "pressure of the gas"),
    ("How long should bread dough rise before it is shaped?", "bread.txt", "doubled in size"),
    ("What should Black play against 1.e4?", "chess.txt", "Sicilian Defence"),
]
SMALL_CHUNKS = {"type": "static", "static": {"max_chunk_size_tokens": 100,
                                             "chunk_overlap_tokens": 20}}  # fmt: skip
MAX_BYTES = 64 * 1024


def tenant_principal(request: Request) -> Principal:
    return Principal(request.headers.get("x-tenant", "local"))


class Server:
    def __init__(self, url: str, app: FastAPI):
        self.url = url
        self.app = app

    def client(self, tenant: str = "alice") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0,
                             default_headers={"x-tenant": tenant})  # fmt: skip

    def http(self, tenant: str = "alice") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"x-tenant": tenant}, timeout=30)

    @property
    def service(self) -> VectorStoreService:
        return self.app.state.vector_stores


@contextmanager
def serving(db: Database, embedder: EmbeddingService, files_dir: Path, workers: int = 1):
    """The files and vector store routes on a live uvicorn thread; the job service's
    in-process workers (`workers` of them: 0 leaves every job queued) in its event loop."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        chunks = ChunkStore(db)
        jobs = JobService(db, embedder, chunks, workers=workers)
        await jobs.start()
        files = FileService(db, files_dir, max_bytes=MAX_BYTES)
        app.state.vector_stores = VectorStoreService(db, files, chunks, jobs, embedder)
        yield
        await jobs.stop()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(routes.router)
    app.dependency_overrides[current_principal] = tenant_principal
    with serve_in_thread(app) as url:
        yield Server(url, app)


@pytest.fixture(scope="module")
def server(embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("vector-stores")
    db = Database(f"sqlite:///{root / 'glassbox.db'}")
    with serving(db, embedder, root / "files") as live:
        yield live
    db.close()


@pytest.fixture(scope="module")
def idle_server(embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No job workers: every ingestion stays queued until the test ends it."""
    root = tmp_path_factory.mktemp("vector-stores-idle")
    db = Database(f"sqlite:///{root / 'glassbox.db'}")
    with serving(db, embedder, root / "files", workers=0) as live:
        yield live
    db.close()


def upload(client: openai.OpenAI, name: str, data: str | bytes) -> Any:
    content = data.encode() if isinstance(data, str) else data
    return client.files.create(file=(name, content), purpose="assistants")


def wait_completed(client: openai.OpenAI, store_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        store = client.vector_stores.retrieve(store_id)
        if store.status == "completed":
            return store
        assert time.monotonic() < deadline, store
        time.sleep(0.1)


# --- the acceptance test ------------------------------------------------------------------


def build_and_ask(server: Server) -> None:
    """Three text files uploaded, a vector store built from them, three questions asked:
    each one's top result is the passage that answers it."""
    with server.client() as client:
        files = {name: upload(client, name, text) for name, text in DOCUMENTS.items()}
        store = client.vector_stores.create(name="notes", chunking_strategy=SMALL_CHUNKS)
        assert store.object == "vector_store" and store.name == "notes"
        for name, f in files.items():
            added = client.vector_stores.files.create_and_poll(
                file_id=f.id, vector_store_id=store.id, attributes={"topic": TOPICS[name]}
            )
            assert added.status == "completed", added.last_error
            assert added.chunking_strategy.type == "static"
            assert added.chunking_strategy.static.max_chunk_size_tokens == 100
            assert added.usage_bytes == len(DOCUMENTS[name].encode())
        store = client.vector_stores.retrieve(store.id)
        assert store.status == "completed"
        assert (store.file_counts.completed, store.file_counts.total) == (3, 3)
        assert store.usage_bytes == sum(len(t.encode()) for t in DOCUMENTS.values())

        for question, filename, answer in QUESTIONS:
            page = client.vector_stores.search(store.id, query=question, max_num_results=5)
            results = page.data
            assert results[0].filename == filename, (question, results[0])
            assert results[0].file_id == files[filename].id
            assert answer in results[0].content[0].text, (question, results[0].content)
            assert results[0].attributes == {"topic": TOPICS[filename]}
            scores = [r.score for r in results]
            assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1

        geology = client.vector_stores.search(
            store.id, query="What should Black play against 1.e4?",
            filters={"type": "eq", "key": "topic", "value": "geology"},
        )  # fmt: skip
        assert {r.filename for r in geology.data} == {"volcanoes.txt"}


def test_openai_package_builds_a_vector_store_and_its_search_finds_the_answer(server):
    build_and_ask(server)


def test_the_same_on_the_whole_server(embeddings_server):
    """The server as `glassbox serve` builds it (create_app: its job workers, its chunk
    store, the embedder shared with /v1/embeddings)."""
    build_and_ask(Server(embeddings_server.base_url, embeddings_server.app))


def test_the_same_on_postgresql_with_pgvector(embedder, postgres_url, tmp_path):
    with fresh_database(postgres_url) as url:
        db = Database(url)
        try:
            with serving(db, embedder, tmp_path / "files") as live:
                build_and_ask(live)
        finally:
            db.close()


def test_file_ids_at_creation_are_ingested_with_the_store(server):
    with server.client() as client:
        ids = [upload(client, name, text).id for name, text in DOCUMENTS.items()]
        store = client.vector_stores.create(name="at once", file_ids=ids,
                                            metadata={"project": "rag"})  # fmt: skip
        assert store.file_counts.total == 3 and store.metadata == {"project": "rag"}
        store = wait_completed(client, store.id)
        assert store.file_counts.completed == 3
        files = client.vector_stores.files.list(store.id)
        assert {f.id for f in files} == set(ids)
        # auto: the model's whole window per chunk (254 tokens), a quarter shared
        strategies = {(f.chunking_strategy.static.max_chunk_size_tokens,
                       f.chunking_strategy.static.chunk_overlap_tokens) for f in files}  # fmt: skip
        assert strategies == {(254, 63)}
        hits = client.vector_stores.search(store.id, query=["lava and ash", "kneading gluten"])
        assert hits.search_query == ["lava and ash", "kneading gluten"]
        assert {h.filename for h in hits.data[:2]} == {"volcanoes.txt", "bread.txt"}


# --- files --------------------------------------------------------------------------------


def test_files_upload_list_retrieve_content_delete(server):
    with server.client("files-owner") as client:
        made = [upload(client, f"note-{i}.txt", f"note {i}") for i in range(5)]
        f = client.files.retrieve(made[0].id)
        assert (f.filename, f.bytes, f.purpose, f.object) == ("note-0.txt", 6, "assistants", "file")
        assert client.files.content(made[2].id).content == b"note 2"

        newest_first = [x.id for x in client.files.list()]
        assert newest_first == [m.id for m in reversed(made)]
        page = client.files.list(limit=2, order="asc")
        assert [x.id for x in page.data] == [made[0].id, made[1].id] and page.has_more
        assert list(page.iter_pages())[-1].data[-1].id == made[4].id
        assert [x.id for x in client.files.list(limit=2, order="asc", after=made[3].id)] == [
            made[4].id
        ]
        assert list(client.files.list(purpose="batch")) == []

        deleted = client.files.delete(made[0].id)
        assert deleted.deleted and deleted.id == made[0].id
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(made[0].id)
        with pytest.raises(openai.BadRequestError):
            client.files.list(after=made[0].id)


def test_an_upload_over_the_limit_is_a_413_and_leaves_nothing(server, tmp_path):
    with server.http("big-owner") as http:
        r = http.post("/v1/files", files={"file": ("big.txt", b"x" * (MAX_BYTES + 1))},
                      data={"purpose": "assistants"})  # fmt: skip
        assert r.status_code == 413, r.text
        assert r.json()["error"]["param"] == "file"
        assert str(MAX_BYTES) in r.json()["error"]["message"]
        r = http.post("/v1/files", files={"file": ("a.txt", b"a")}, data={"purpose": "nope"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
        assert http.get("/v1/files").json()["data"] == []
    folder = server.service.files.directory / "big-owner"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_a_file_that_is_not_utf8_text_is_refused_at_ingestion(server):
    with server.client() as client:
        binary = upload(client, "image.png", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00")
        store = client.vector_stores.create(name="refuses")
        with pytest.raises(openai.BadRequestError) as err:
            client.vector_stores.files.create(vector_store_id=store.id, file_id=binary.id)
        assert err.value.body["code"] == "unsupported_file"
        assert "UTF-8" in err.value.body["message"]
        with pytest.raises(openai.BadRequestError):
            client.vector_stores.create(name="refused too", file_ids=[binary.id])
        assert client.vector_stores.files.list(store.id).data == []


# --- vector stores ------------------------------------------------------------------------


def test_vector_stores_list_modify_and_page(server):
    with server.client("lister") as client:
        made = [client.vector_stores.create(name=f"s{i}") for i in range(4)]
        assert [s.id for s in client.vector_stores.list()] == [m.id for m in reversed(made)]
        page = client.vector_stores.list(limit=3)
        assert len(page.data) == 3 and page.has_more
        assert [s.id for s in client.vector_stores.list(limit=3, after=page.data[-1].id)] == [
            made[0].id
        ]
        before = client.vector_stores.list(order="asc", before=made[3].id, limit=2)
        assert [s.id for s in before.data] == [made[1].id, made[2].id]

        changed = client.vector_stores.update(made[0].id, name="renamed", metadata={"k": "v"})
        assert (changed.name, changed.metadata) == ("renamed", {"k": "v"})
        assert client.vector_stores.retrieve(made[0].id).name == "renamed"

        gone = client.vector_stores.delete(made[1].id)
        assert gone.deleted and gone.object == "vector_store.deleted"
        with pytest.raises(openai.NotFoundError):
            client.vector_stores.retrieve(made[1].id)
        with pytest.raises(openai.BadRequestError) as err:
            client.vector_stores.create(name="x", expires_after={"anchor": "last_active_at",
                                                                 "days": 1})  # fmt: skip
        assert err.value.body["param"] == "expires_after"


def test_removing_and_deleting_files_takes_their_chunks_out_of_search(server):
    with server.client("remover") as client:
        ids = {name: upload(client, name, text).id for name, text in DOCUMENTS.items()}
        store = wait_completed(client, client.vector_stores.create(file_ids=list(ids.values())).id)
        chunks = server.app.state.vector_stores._chunks

        def found() -> set[str]:
            hits = client.vector_stores.search(store.id, query="volcano bread chess",
                                               max_num_results=50)  # fmt: skip
            return {h.filename for h in hits.data}

        assert found() == set(DOCUMENTS)
        removed = client.vector_stores.files.delete(ids["bread.txt"], vector_store_id=store.id)
        assert removed.deleted and removed.object == "vector_store.file.deleted"
        assert found() == {"volcanoes.txt", "chess.txt"}
        assert chunks.count("remover", store.id, ids["bread.txt"]) == 0
        assert client.files.retrieve(ids["bread.txt"]).filename == "bread.txt"  # file stays

        client.files.delete(ids["chess.txt"])  # detached from the store too
        assert found() == {"volcanoes.txt"}
        assert client.vector_stores.retrieve(store.id).file_counts.total == 1

        client.vector_stores.delete(store.id)
        assert chunks.count("remover", store.id) == 0


def test_attributes_change_after_ingestion_and_filter_search(server):
    with server.client() as client:
        f = upload(client, "volcanoes.txt", VOLCANOES)
        store = client.vector_stores.create(name="attrs")
        client.vector_stores.files.create_and_poll(
            file_id=f.id, vector_store_id=store.id, attributes={"year": 2020, "ok": True}
        )
        newer = {"type": "gt", "key": "year", "value": 2021}
        assert client.vector_stores.search(store.id, query="lava", filters=newer).data == []
        updated = client.vector_stores.files.update(
            f.id, vector_store_id=store.id, attributes={"year": 2024, "ok": True}
        )
        assert updated.attributes == {"year": 2024, "ok": True}
        hits = client.vector_stores.search(store.id, query="lava", filters=newer)
        assert hits.data and all(h.attributes["year"] == 2024 for h in hits.data)
        strict = client.vector_stores.search(
            store.id, query="lava", ranking_options={"score_threshold": hits.data[0].score}
        )
        assert [h.score for h in strict.data] == [hits.data[0].score]
        content = client.vector_stores.files.content(f.id, vector_store_id=store.id)
        assert [c.text for c in content] == [VOLCANOES]


def test_search_requests_out_of_bounds_are_400s(server):
    with server.client() as client:
        store = client.vector_stores.create(name="bounds")
        for bad in ({"max_num_results": 0}, {"max_num_results": 51}, {"query": []},
                    {"filters": {"type": "gt", "key": "ok", "value": True}},
                    {"ranking_options": {"score_threshold": 2}}):  # fmt: skip
            args = {"query": "lava", **bad}
            with pytest.raises(openai.BadRequestError):
                client.vector_stores.search(store.id, **args)
        too_long = {"type": "static", "static": {"max_chunk_size_tokens": 800,
                                                 "chunk_overlap_tokens": 400}}  # fmt: skip
        with pytest.raises(openai.BadRequestError) as err:
            client.vector_stores.create(name="long chunks", chunking_strategy=too_long)
        assert err.value.body["param"] == "chunking_strategy.static.max_chunk_size_tokens"
        assert "254" in err.value.body["message"]
        with pytest.raises(openai.NotFoundError):
            client.vector_stores.search("vs_nope", query="lava")


def test_another_tenant_sees_nothing_and_gets_404s(server):
    with server.client("alice") as alice, server.client("bob") as bob:
        f = upload(alice, "chess.txt", CHESS)
        store = alice.vector_stores.create(name="private", file_ids=[f.id])
        wait_completed(alice, store.id)

        assert list(bob.files.list()) == [] and list(bob.vector_stores.list()) == []
        calls = [
            lambda: bob.files.retrieve(f.id),
            lambda: bob.files.content(f.id),
            lambda: bob.files.delete(f.id),
            lambda: bob.vector_stores.retrieve(store.id),
            lambda: bob.vector_stores.update(store.id, name="mine"),
            lambda: bob.vector_stores.search(store.id, query="chess"),
            lambda: bob.vector_stores.files.list(store.id),
            lambda: bob.vector_stores.files.retrieve(f.id, vector_store_id=store.id),
            lambda: bob.vector_stores.files.delete(f.id, vector_store_id=store.id),
            lambda: bob.vector_stores.delete(store.id),
        ]
        for call in calls:
            with pytest.raises(openai.NotFoundError):
                call()
        bobs = bob.vector_stores.create(name="bob's")
        with pytest.raises(openai.NotFoundError):  # alice's file is not bob's to attach
            bob.vector_stores.files.create(vector_store_id=bobs.id, file_id=f.id)
        assert alice.vector_stores.search(store.id, query="Sicilian").data


# --- a file's status is its job's ---------------------------------------------------------


def test_a_file_status_follows_its_ingestion_job(idle_server: Server):
    service = idle_server.service
    jobs = service._jobs
    with idle_server.client() as client:
        ids = [upload(client, name, text).id for name, text in DOCUMENTS.items()]
        store = client.vector_stores.create(name="queued", file_ids=ids)
        assert store.status == "in_progress" and store.file_counts.in_progress == 3
        with pytest.raises(openai.ConflictError):  # attributes wait for the end of ingestion
            client.vector_stores.files.update(ids[0], vector_store_id=store.id,
                                              attributes={"a": 1})  # fmt: skip
        with pytest.raises(openai.ConflictError):
            client.vector_stores.files.create(vector_store_id=store.id, file_id=ids[0])

        job_of = {f.file_id: f.job_id for f in _rows(service, store.id)}
        asyncio.run(jobs.cancel(Principal("alice"), job_of[ids[0]]))
        jobs.records.fail(job_of[ids[1]], "the embedding provider is down")

        cancelled = client.vector_stores.files.retrieve(ids[0], vector_store_id=store.id)
        assert (cancelled.status, cancelled.last_error) == ("cancelled", None)
        failed = client.vector_stores.files.retrieve(ids[1], vector_store_id=store.id)
        assert failed.status == "failed"
        assert failed.last_error.code == "server_error"
        assert failed.last_error.message == "the embedding provider is down"
        counts = client.vector_stores.retrieve(store.id).file_counts
        assert (counts.in_progress, counts.cancelled, counts.failed, counts.total) == (1, 1, 1, 3)
        assert [f.id for f in client.vector_stores.files.list(store.id, filter="failed")] == [
            ids[1]
        ]

        # Removing a file whose job is still queued cancels the job.
        client.vector_stores.files.delete(ids[2], vector_store_id=store.id)
        assert asyncio.run(jobs.get(Principal("alice"), job_of[ids[2]])).status == "cancelled"


def _rows(service: VectorStoreService, store_id: str) -> list[VectorStoreFileRow]:
    stmt = select(VectorStoreFileRow).where(VectorStoreFileRow.vector_store_id == store_id)
    with service._db.session() as s:
        return list(s.scalars(stmt))
