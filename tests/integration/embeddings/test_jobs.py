"""Embedding jobs end to end on real parts: the bundled all-MiniLM-L6-v2 through the
embedding service, the chunk store on SQLite (sqlite-vec), a real Redis for the scale-out
mode, and `glassbox serve` / `glassbox worker` processes killed with SIGKILL mid-job.

In-process mode runs the routes on a uvicorn thread with the job service's workers in its
event loop; Redis mode runs `StageWorker`s (in this process, or as `glassbox worker`).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from helpers.live_server import serve_in_thread
from helpers.processes import start_server
from helpers.redis_server import running_redis
from sqlalchemy import func, select

from glassbox.api.deps import current_principal
from glassbox.api.embeddings import jobs as job_routes
from glassbox.api.errors import install_error_handlers
from glassbox.embeddings.chunking import Chunker, ChunkingOptions
from glassbox.embeddings.chunks import ChunkStore
from glassbox.embeddings.jobs import STAGES, JobDocument, JobService
from glassbox.embeddings.jobs_worker import StageWorker
from glassbox.embeddings.queue_redis import BANDS
from glassbox.embeddings.service import EmbeddingService
from glassbox.principal import Principal
from glassbox.store import Database
from glassbox.store.embedding_jobs import EmbeddingJobDocumentRow
from glassbox.store.vector_stores import ChunkRow

JOBS = "/api/v1/embeddings/jobs"
SMALL = {"max_tokens": 32, "overlap_tokens": 8}
WORDS = (
    "retrieval augmented generation embeds chunks of documents so that a question finds the "
    "passage that answers it ; the pipeline chunks , embeds and stores every document once "
    "even when a worker dies in the middle of a batch . quotas reset at midnight"
).split()


def texts(n: int, words: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def documents(n: int, words: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": f"doc-{i}", "text": t, "attributes": {"n": i}}
        for i, t in enumerate(texts(n, words, seed))
    ]


@pytest.fixture(scope="module")
def chunker(embedder: EmbeddingService) -> Chunker:
    return Chunker(embedder.tokenizer(), embedder.max_tokens())


def expected_keys(chunker: Chunker, docs: list[dict[str, Any]], options: dict) -> set:
    opts = ChunkingOptions(options["max_tokens"], options["overlap_tokens"])
    return {(d["id"], p) for d in docs for p in range(len(chunker.chunk(d["text"], opts)))}


def stored_rows(db: Database, collection_id: str) -> list[ChunkRow]:
    with db.session() as s:
        return list(s.scalars(select(ChunkRow).where(ChunkRow.collection_id == collection_id)))


def assert_stored_once(db: Database, collection_id: str, keys: set) -> list[ChunkRow]:
    """Every chunk of the job has exactly one row (counted per (document, position))."""
    rows = stored_rows(db, collection_id)
    per_key: dict[tuple[str, int], int] = {}
    for r in rows:
        per_key[(r.document_id, r.position)] = per_key.get((r.document_id, r.position), 0) + 1
    assert set(per_key) == keys
    assert set(per_key.values()) == {1}
    return rows


def tenant_principal(request: Request) -> Principal:
    """The caller's tenant from a test header (the routes' principal dependency replaced)."""
    return Principal(request.headers.get("x-tenant", "local"))


@contextmanager
def serving(db: Database, embedder: EmbeddingService, **options: Any) -> Iterator[httpx.Client]:
    """The job routes on a live uvicorn thread, the job service started and stopped by the
    app's lifespan as the server's app does it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.jobs = JobService(db, embedder, ChunkStore(db), **options)
        await app.state.jobs.start()
        yield
        await app.state.jobs.stop()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(job_routes.router)
    app.dependency_overrides[current_principal] = tenant_principal
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


def wait_for(http: httpx.Client, job_id: str, until: str = "completed", timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"{JOBS}/{job_id}").json()
        if job["status"] == until:
            return job
        assert job["status"] not in ("failed", "cancelled", "completed"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


# --- in-process mode ------------------------------------------------------------------------

QUOTAS = {"capped": 40}
TIERS = {"capped-user": "capped"}


@pytest.fixture(scope="module")
def jobs_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('jobs') / 'glassbox.db'}")
    yield db
    db.close()


@pytest.fixture(scope="module")
def http(jobs_db: Database, embedder: EmbeddingService) -> Iterator[httpx.Client]:
    with serving(jobs_db, embedder, quotas=QUOTAS, tiers=TIERS, batch_size=8) as client:
        yield client


def test_a_job_over_20_documents_stores_every_chunk_once(http, jobs_db, chunker):
    docs = documents(20)
    r = http.post(JOBS, json={"user_id": "u1", "documents": docs, "collection_id": "twenty",
                              "chunking": SMALL, "media_id": 7})  # fmt: skip
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["media_id"] == "7" and job["user_id"] == "u1"
    assert job["chunking"] == SMALL and job["model"] == "all-MiniLM-L6-v2"
    keys = expected_keys(chunker, docs, SMALL)
    assert {s["total"] for s in job["stages"].values()} == {len(keys)}

    done = wait_for(http, job["job_id"])
    assert done["stages"] == {s: {"done": len(keys), "total": len(keys)}
                              for s in ("chunking", "embedding", "storage")}  # fmt: skip
    assert done["error"] is None
    rows = assert_stored_once(jobs_db, "twenty", keys)
    by_id = {d["id"]: d for d in docs}
    for row in rows:
        doc = by_id[row.document_id]
        assert row.text == doc["text"][row.start_char : row.end_char]
        assert row.attributes == doc["attributes"] and row.dimensions == 384
        assert row.writes == 1  # no stage ran twice
    with jobs_db.session() as s:  # an ended job's texts are dropped
        left = s.scalar(select(func.count()).select_from(EmbeddingJobDocumentRow)
                        .where(EmbeddingJobDocumentRow.job_id == job["job_id"]))  # fmt: skip
    assert left == 0


def test_content_of_a_media_item_goes_to_its_collection(http, jobs_db):
    r = http.post(JOBS, json={"user_id": "u1", "media_id": "m42", "content": texts(1, 200)[0]})
    job = wait_for(http, r.json()["job_id"])
    assert job["collection_id"] == "media:m42"
    assert job["chunking"] == {"max_tokens": 254, "overlap_tokens": 63}  # the model's default
    rows = stored_rows(jobs_db, "media:m42")
    assert {r.document_id for r in rows} == {"m42"}
    assert len(rows) == job["stages"]["storage"]["done"]


def test_cancel_stops_within_one_batch_and_keeps_what_was_stored(http, jobs_db):
    r = http.post(JOBS, json={"user_id": "u1", "documents": documents(100, seed=1),
                              "collection_id": "cancelled", "chunking": SMALL})  # fmt: skip
    job_id, total = r.json()["job_id"], r.json()["stages"]["storage"]["total"]
    deadline = time.monotonic() + 60
    while http.get(f"{JOBS}/{job_id}").json()["stages"]["storage"]["done"] < 16:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    cancelled = http.delete(f"{JOBS}/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    at_cancel = cancelled.json()["stages"]["storage"]["done"]
    time.sleep(1.5)  # far longer than a batch of 8 chunks takes
    job = http.get(f"{JOBS}/{job_id}").json()
    stored = job["stages"]["storage"]["done"]
    assert job["status"] == "cancelled"
    assert at_cancel <= stored <= at_cancel + 8 < total  # the batch in hand, no more
    assert len(stored_rows(jobs_db, "cancelled")) == stored  # kept, and counted truly
    time.sleep(0.5)
    assert len(stored_rows(jobs_db, "cancelled")) == stored  # stopped
    assert http.delete(f"{JOBS}/{job_id}").json()["status"] == "cancelled"  # idempotent


def test_over_quota_is_refused_with_429_before_any_work(http, jobs_db, chunker):
    docs = documents(11, words=40, seed=2)  # over 20 chunks of 32 tokens: one job fits in 40
    n = len(expected_keys(chunker, docs, SMALL))
    assert 20 < n <= 40
    body = {"user_id": "capped-user", "documents": docs, "chunking": SMALL}
    first = http.post(JOBS, json={**body, "collection_id": "quota-1"})
    assert first.status_code == 202
    wait_for(http, first.json()["job_id"])

    refused = http.post(JOBS, json={**body, "collection_id": "quota-2"})
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "quota_exceeded"
    assert f"has {40 - n} left today; this job has {n} chunks" in error["message"]
    assert "resets at 00:00 UTC" in error["message"]
    assert 0 < int(refused.headers["Retry-After"]) <= 86400
    listed = http.get(JOBS, params={"user_id": "capped-user"}).json()["data"]
    assert [j["collection_id"] for j in listed] == ["quota-1"]  # no job was made
    assert stored_rows(jobs_db, "quota-2") == []
    # another user of the default tier (no quota) is not limited
    assert http.post(JOBS, json={**body, "user_id": "u1"}).status_code == 202


def test_another_tenants_job_is_not_found(http):
    r = http.post(JOBS, json={"user_id": "u1", "content": "alice's notes"},
                  headers={"x-tenant": "alice"})  # fmt: skip
    job_id = r.json()["job_id"]
    for method in ("GET", "DELETE"):
        other = http.request(method, f"{JOBS}/{job_id}", headers={"x-tenant": "bob"})
        assert other.status_code == 404, other.text
        assert other.json()["error"]["code"] == "embedding_job_not_found"
    assert http.get(JOBS, headers={"x-tenant": "bob"}).json()["data"] == []
    assert http.get(f"{JOBS}/{job_id}", headers={"x-tenant": "alice"}).status_code == 200
    assert [j["job_id"] for j in http.get(JOBS, headers={"x-tenant": "alice"}).json()["data"]] == [
        job_id
    ]


def test_a_job_of_higher_priority_runs_first(http):
    low = http.post(JOBS, json={"user_id": "u1", "documents": documents(40, seed=3),
                                "chunking": SMALL, "priority": -5}).json()  # fmt: skip
    high = http.post(JOBS, json={"user_id": "u1", "documents": documents(5, seed=4),
                                 "chunking": SMALL, "priority": 5}).json()  # fmt: skip
    done = wait_for(http, high["job_id"])
    assert http.get(f"{JOBS}/{low['job_id']}").json()["status"] != "completed"
    low_done = wait_for(http, low["job_id"])
    finished = [datetime.fromisoformat(j["updated_at"]) for j in (done, low_done)]
    assert finished[0] < finished[1]


def test_jobs_list_newest_first_in_pages(http):
    made = [
        http.post(JOBS, json={"user_id": "lister", "content": f"text {i}"}).json()["job_id"]
        for i in range(3)
    ]
    page = http.get(JOBS, params={"user_id": "lister", "limit": 2}).json()
    assert [j["job_id"] for j in page["data"]] == made[:0:-1] and page["has_more"]
    rest = http.get(JOBS, params={"user_id": "lister", "after": made[1]}).json()
    assert [j["job_id"] for j in rest["data"]] == made[:1] and not rest["has_more"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"user_id": "u", "content": "a", "documents": [{"text": "b"}]}, None),
        ({"user_id": "u", "content": "a", "chunking": {"max_tokens": 255}}, "chunking.max_tokens"),
        ({"user_id": "u", "content": "a", "chunking": {"max_tokens": 32, "overlap_tokens": 32}},
         "chunking.overlap_tokens"),
        ({"user_id": "u", "documents": [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]},
         "documents"),
        ({"user_id": "u", "content": "a", "model": "no-such-model"}, "model"),
    ],
)  # fmt: skip
def test_bad_jobs_are_refused_with_the_field_at_fault(http, body: dict, param: str | None):
    r = http.post(JOBS, json=body)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param


# --- Redis mode -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


class Poisoned:
    """The real embedding service, failing every batch with a text that says "poison"."""

    def __init__(self, real: EmbeddingService):
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def embed(self, owner, texts, model=None, dimensions=None):
        if any("poison" in t for t in texts):
            raise RuntimeError("this batch cannot be embedded")
        return await self.real.embed(owner, texts, model, dimensions)


async def wait_job(jobs: JobService, job_id: str, until: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while (job := await jobs.get(Principal("local"), job_id)).status != until:
        assert job.status not in ("failed", "cancelled", "completed"), job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)
    return job


async def test_redis_mode_workers_run_the_stages(tmp_path, redis_url, embedder, chunker):
    db = Database(f"sqlite:///{tmp_path / 'glassbox.db'}")
    jobs = JobService(db, embedder, ChunkStore(db), redis_url=redis_url, batch_size=8)
    await jobs.start()
    workers = [StageWorker.create(db, embedder, ChunkStore(db), redis_url, consumer=f"w{i}",
                                  block_ms=100) for i in range(2)]  # fmt: skip
    running = [asyncio.create_task(w.run()) for w in workers]
    try:
        docs = [JobDocument(d["id"], d["text"], d["attributes"]) for d in documents(20, seed=5)]
        job = await jobs.submit(Principal("local"), user_id="u1", documents=docs,
                                collection_id="redis-twenty",
                                chunking=ChunkingOptions(32, 8))  # fmt: skip
        done = await wait_job(jobs, job.job_id, "completed")
        keys = expected_keys(chunker, documents(20, seed=5), SMALL)
        assert {s.done for s in done.stages.values()} == {len(keys)}
        assert_stored_once(db, "redis-twenty", keys)
        stats = await asyncio.to_thread(jobs.records.stats)  # what /metrics and /health show
        assert stats["stages"]["storage"] == {"done": len(keys), "queued": 0}
        assert stats["jobs"] == {"queued": 0, "running": 0}
        assert jobs.health()["mode"] == "redis" and "storage" in jobs.stats()["stages"]
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*running)
        for w in workers:
            await w.close()
        await jobs.stop()
        db.close()


async def test_an_entry_that_keeps_failing_goes_to_the_dead_letter_stream(
    tmp_path, redis_url, embedder
):
    db = Database(f"sqlite:///{tmp_path / 'glassbox.db'}")
    jobs = JobService(db, embedder, ChunkStore(db), redis_url=redis_url, batch_size=8)
    await jobs.start()
    worker = StageWorker.create(db, Poisoned(embedder), ChunkStore(db), redis_url,
                                visibility_timeout=0.3, max_deliveries=2, block_ms=50)  # fmt: skip
    running = asyncio.create_task(worker.run())
    try:
        docs = [JobDocument("ok", "a sentence to embed"), JobDocument("bad", "poison pill")]
        job = await jobs.submit(Principal("local"), user_id="u1", documents=docs,
                                collection_id="dead")  # fmt: skip
        failed = await wait_job(jobs, job.job_id, "failed", timeout=30)
        assert "delivered 3 times without completing" in failed.error
        assert "last error: embedding of job" in failed.error
        assert "RuntimeError: this batch cannot be embedded" in failed.error
        dead = await worker.queue.redis.xrange(worker.queue.dead_key)
        fields = [f for _, f in dead if f[b"job"] == job.job_id.encode()]
        assert len(fields) == 1
        assert fields[0][b"stage"] == b"embedding" and fields[0][b"deliveries"] == b"3"
    finally:
        worker.stop()
        await running
        await worker.close()
        await jobs.stop()
        db.close()


# --- kill -9 mid-job, then start again ------------------------------------------------------


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _wait_stored(url: str, at_least: int, timeout: float = 60) -> dict:
    """Poll the job at `url` until `at_least` chunks are stored, the job unfinished."""
    deadline = time.monotonic() + timeout
    while (job := httpx.get(url).json())["stages"]["storage"]["done"] < at_least:
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    return job


async def _wait_stored_async(jobs: JobService, job_id: str, at_least: int, timeout: float):
    deadline = time.monotonic() + timeout
    while (job := await jobs.get(Principal("local"), job_id)).stages["storage"].done < at_least:
        assert job.status in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.02)
    return job


@pytest.mark.slow
def test_kill_9_of_the_server_mid_job_resumes_and_stores_each_chunk_once(
    tmp_path: Path, tiny_model_dir: Path, chunker: Chunker
):
    docs = documents(200, seed=6)
    keys = expected_keys(chunker, docs, SMALL)
    server = start_server(tmp_path / "srv", tiny_model_dir)
    try:
        server.wait_ready()
        job = httpx.post(server.url + JOBS, json={"user_id": "u1", "documents": docs,
                                                  "collection_id": "killed", "chunking": SMALL},
                         timeout=60).json()  # fmt: skip
        seen = _wait_stored(f"{server.url}{JOBS}/{job['job_id']}", 64)
        _kill(server.proc)
    finally:
        server.stop()
    assert seen["stages"]["storage"]["done"] < len(keys)

    again = start_server(tmp_path / "srv", tiny_model_dir)
    try:
        again.wait_ready()
        url = f"{again.url}{JOBS}/{job['job_id']}"
        deadline = time.monotonic() + 60
        while (done := httpx.get(url).json())["status"] != "completed":
            assert done["status"] == "running" or done["status"] == "queued", done
            assert time.monotonic() < deadline, done
            time.sleep(0.1)
    finally:
        again.stop()
    assert done["stages"]["storage"] == {"done": len(keys), "total": len(keys)}
    db = Database(f"sqlite:///{tmp_path / 'srv' / 'glassbox.db'}")
    try:
        assert_stored_once(db, "killed", keys)
    finally:
        db.close()


def _worker(tmp_path: Path, database_url: str, redis_url: str, name: str) -> subprocess.Popen:
    log = tmp_path / f"{name}.log"
    return subprocess.Popen(
        [sys.executable, "-m", "glassbox.cli", "worker", "--database-url", database_url,
         "--redis-url", redis_url, "--name", name, "--visibility-timeout", "2"],
        env={**os.environ, "GLASSBOX_CACHE_DIR": str(tmp_path)},
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


@pytest.mark.slow
async def test_kill_9_of_a_redis_worker_mid_job_resumes_and_stores_each_chunk_once(
    tmp_path: Path, redis_url: str, embedder: EmbeddingService, chunker: Chunker
):
    url = f"sqlite:///{tmp_path / 'glassbox.db'}"
    db = Database(url)
    jobs = JobService(db, embedder, ChunkStore(db), redis_url=redis_url)
    await jobs.start()
    docs = documents(200, seed=7)
    keys = expected_keys(chunker, docs, SMALL)
    owner = Principal("local")
    first = _worker(tmp_path, url, redis_url, "first")
    try:
        job = await jobs.submit(
            owner, user_id="u1", collection_id="killed-worker", chunking=ChunkingOptions(32, 8),
            documents=[JobDocument(d["id"], d["text"], d["attributes"]) for d in docs],
        )  # fmt: skip
        seen = await _wait_stored_async(jobs, job.job_id, 64, timeout=90)
        _kill(first)
        assert seen.stages["storage"].done < len(keys)
        second = _worker(tmp_path, url, redis_url, "second")
        try:
            done = await wait_job(jobs, job.job_id, "completed", timeout=60)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
        assert {s.done for s in done.stages.values()} == {len(keys)}
        assert_stored_once(db, "killed-worker", keys)
        for stage in STAGES:  # every entry acknowledged and deleted, the dead one's too
            for band in BANDS:
                assert await jobs.queue.redis.xlen(jobs.queue.key(stage, band)) == 0
    finally:
        if first.poll() is None:
            _kill(first)
        await jobs.stop()
        db.close()
