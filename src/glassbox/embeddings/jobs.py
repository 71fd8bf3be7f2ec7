"""Embedding jobs: documents chunked, embedded and stored in the chunk store, durably, with
per-stage progress, cancellation, priorities and daily quotas per user tier (the reference's
job API, tldw_server's `EmbeddingJobManager`).

    submit: model checked -> chunks counted with the job's chunker (the quota needs the
            count before any work) -> quota charged and job stored, in one transaction
            (QuotaExceeded, a 429, if the chunks do not fit) -> queued
    stages: chunking -> embedding (batches through EmbeddingService.embed) -> storage
            (ChunkStore.put, idempotent by chunk key), progress recorded per batch

Two modes run the stages (one `JobService` API):
- embedded default: in-process workers, asyncio tasks of the server (jobs_local.py); jobs
  and progress live in the database, and a process that died resumes its jobs at start;
- scale-out (`redis_url`): the server only queues, and `glassbox worker` processes consume
  the stages from Redis streams (queue_redis.py, jobs_worker.py).

Every job belongs to its owner (the principal's tenant); another tenant's job id is a 404.
The quota: `quotas` maps a tier to chunks per day, `tiers` a user id to its tier (default
`default_tier`); a tier without a quota has no limit. A job's chunks are charged when it is
accepted, whatever becomes of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any, Protocol

from glassbox.embeddings.chunking import ChunkingOptions
from glassbox.embeddings.jobs_local import LocalWorkers
from glassbox.embeddings.jobs_pipeline import Pipeline
from glassbox.embeddings.jobs_records import JobRecords, Quota
from glassbox.embeddings.jobs_types import (
    STAGES,
    Job,
    JobDocument,
    QuotaExceeded,
    StageProgress,
    Status,
)
from glassbox.embeddings.queue_redis import RedisStages
from glassbox.errors import InvalidRequest, NotFound, Unavailable
from glassbox.principal import Principal
from glassbox.store import Database

__all__ = [
    "BATCH_SIZE",
    "MAX_DOCUMENTS",
    "MAX_ID_LENGTH",
    "STAGES",
    "ChunkSink",
    "ChunkingOptions",
    "Embedder",
    "Job",
    "JobDocument",
    "JobService",
    "QuotaExceeded",
    "StageProgress",
    "Status",
]

MAX_DOCUMENTS = 10_000
MAX_ID_LENGTH = 128  # of user, collection and document ids (the chunk store's keys)
BATCH_SIZE = 32  # chunks per batch: a unit of progress, of cancellation and of redelivery
STATS_SECONDS = 5.0  # how often the stats for /metrics and /health are read again


class Embedder(Protocol):
    """What the pipeline uses of `EmbeddingService` (embeddings/service.py)."""

    default_model: str

    def check_model(self, owner: Principal, model: str | None) -> str: ...

    async def load(self) -> None: ...

    def tokenizer(self, model: str | None = None) -> Any: ...

    def max_tokens(self, model: str | None = None) -> int: ...

    async def embed(
        self,
        owner: Principal,
        texts: list[str],
        model: str | None = None,
        dimensions: int | None = None,
    ) -> Any: ...


class ChunkSink(Protocol):
    """What the pipeline uses of the chunk store (embeddings/chunks.py `ChunkStore`): `put`
    replaces a chunk stored under the same (collection, document, position)."""

    def put(self, owner: str, collection_id: str, chunks: Sequence[Any]) -> int: ...

    def count(self, owner: str, collection_id: str, document_id: str | None = None) -> int: ...


class JobService:
    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        chunks: ChunkSink,
        *,
        quotas: Mapping[str, int] | None = None,
        tiers: Mapping[str, str] | None = None,
        default_tier: str = "free",
        redis_url: str | None = None,
        batch_size: int = BATCH_SIZE,
        workers: int = 1,
    ):
        """`workers`: in-process workers (jobs run at once) when there is no `redis_url`."""
        self.embedder = embedder
        self.quotas = dict(quotas or {})
        self.tiers = dict(tiers or {})
        self.default_tier = default_tier
        self.batch_size = batch_size
        self.records = JobRecords(db)
        self.pipeline = Pipeline(self.records, embedder, chunks)
        self.queue = RedisStages(redis_url) if redis_url else None
        self.local = None if redis_url else LocalWorkers(self.records, self.pipeline,
                                                         workers=workers)  # fmt: skip
        self._stats: dict[str, Any] = {}
        self._stats_task: asyncio.Task | None = None

    async def start(self) -> None:
        """In-process mode: resume the jobs a previous process left, start the workers.
        Redis mode: make the streams' consumer groups. Both: read the stats every
        STATS_SECONDS (scrapes and health checks then read them without SQL)."""
        if self.local is not None:
            await self.local.start()
        else:
            await self.queue.ensure_groups(STAGES)
        self._stats = await self._read_stats_once()
        self._stats_task = asyncio.create_task(self._read_stats())

    async def stop(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
        if self.local is not None:
            await self.local.stop()
        else:
            await self.queue.close()

    async def _read_stats_once(self) -> dict[str, Any]:
        stats = await asyncio.to_thread(self.records.stats)
        if self.queue is not None:
            stats["dead_lettered"] = await self.queue.dead_letters()
        return stats

    async def _read_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_SECONDS)
            with contextlib.suppress(Exception):  # the database away: the last stats stay
                self._stats = await self._read_stats_once()

    def stats(self) -> dict[str, Any]:
        """For /metrics: {"stages": {stage: {"done", "queued"}}}, in chunks: done by every
        process since the database began, waiting in the jobs queued or running;
        "statuses": {status: jobs}; "running_stages": {stage: running jobs at that stage};
        "dead_lettered": entries in the dead-letter stream (Redis mode; else 0)."""
        keys = ("stages", "statuses", "running_stages")
        return {**{k: self._stats.get(k, {}) for k in keys},
                "dead_lettered": self._stats.get("dead_lettered", 0)}  # fmt: skip

    def health(self) -> dict[str, Any]:
        """For /health: the mode, the in-process workers alive, jobs and stages."""
        workers = self.local.alive() if self.local is not None else None
        return {"mode": "in-process" if self.local is not None else "redis",
                "workers": workers, **self._stats}  # fmt: skip

    async def submit(
        self,
        owner: Principal,
        *,
        user_id: str,
        documents: list[JobDocument],
        collection_id: str,
        priority: int = 0,
        chunking: ChunkingOptions | None = None,
        media_id: str | None = None,
        model: str | None = None,
    ) -> Job:
        """A new job, queued (or completed at once when its documents make no chunk).
        `chunking` defaults to the model's whole budget with a quarter of it shared."""
        _check_ids(user_id, collection_id, documents)
        name = self.embedder.check_model(owner, model)
        chunker = await self.pipeline.chunker(name)
        options = chunking or ChunkingOptions.default(chunker.budget)
        chunker.check(options)
        chunks = await asyncio.to_thread(chunker.count, [d.text for d in documents], options)
        values = {
            "job_id": f"embjob_{uuid.uuid4().hex}", "owner": owner.tenant, "user_id": user_id,
            "status": "queued" if chunks else "completed", "priority": priority,
            "collection_id": collection_id, "media_id": media_id, "model": name,
            "max_tokens": options.max_tokens, "overlap_tokens": options.overlap_tokens,
            "batch_size": self.batch_size, "documents": len(documents), "chunks": chunks,
            "chunked": 0, "embedded": 0, "stored": 0,
        }  # fmt: skip
        stored = documents if chunks else []
        job = await asyncio.to_thread(self.records.insert, values, stored, self._quota(user_id))
        if chunks:
            await self._enqueue(job)
        return job

    async def _enqueue(self, job: Job) -> None:
        if self.local is not None:
            self.local.wake()
            return
        try:
            await self.queue.add("chunking", job.priority, {"job": job.job_id})
        except Exception as exc:  # redis' errors, and OSError: the job cannot run
            reason = f"the job queue (Redis) could not be reached: {type(exc).__name__}: {exc}"
            await asyncio.to_thread(self.records.fail, job.job_id, reason)
            raise Unavailable(reason) from exc

    def _quota(self, user_id: str) -> Quota | None:
        tier = self.tiers.get(user_id, self.default_tier)
        limit = self.quotas.get(tier)
        if limit is None:
            return None
        now = datetime.now(UTC)
        midnight = datetime.combine(now.date() + timedelta(days=1), time(), tzinfo=UTC)
        retry_after = max(1, math.ceil((midnight - now).total_seconds()))
        return Quota(user_id, tier, limit, now.date(), retry_after)

    async def get(self, owner: Principal, job_id: str) -> Job:
        job = await asyncio.to_thread(self.records.get, owner.tenant, job_id)
        if job is None:
            raise _not_found(job_id)
        return job

    async def list(
        self,
        owner: Principal,
        *,
        user_id: str | None = None,
        status: Status | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> tuple[list[Job], bool]:
        """The owner's jobs, newest first (from the one after job `after`), and whether
        more follow."""
        return await asyncio.to_thread(
            self.records.list, owner.tenant, user_id=user_id, status=status, limit=limit,
            after=after,
        )  # fmt: skip

    async def cancel(self, owner: Principal, job_id: str) -> Job:
        """Cancel a queued or running job: its workers stop within one batch, and what it
        stored stays. Cancelling a cancelled job changes nothing; an ended one is a
        Conflict."""
        job = await asyncio.to_thread(self.records.cancel, owner.tenant, job_id)
        if job is None:
            raise _not_found(job_id)
        return job


def _not_found(job_id: str) -> NotFound:
    return NotFound("embedding job", job_id)


def _check_ids(user_id: str, collection_id: str, documents: list[JobDocument]) -> None:
    for param, value in (("user_id", user_id), ("collection_id", collection_id)):
        if not 1 <= len(value) <= MAX_ID_LENGTH:
            raise InvalidRequest(f"'{param}' must be 1 to {MAX_ID_LENGTH} characters",
                                 param=param)  # fmt: skip
    if not 1 <= len(documents) <= MAX_DOCUMENTS:
        raise InvalidRequest(
            f"a job takes 1 to {MAX_DOCUMENTS} documents, got {len(documents)}",
            param="documents",
        )
    seen: set[str] = set()
    for i, doc in enumerate(documents):
        if not 1 <= len(doc.document_id) <= MAX_ID_LENGTH:
            raise InvalidRequest(
                f"documents[{i}]: the id must be 1 to {MAX_ID_LENGTH} characters",
                param="documents",
            )
        if doc.document_id in seen:
            raise InvalidRequest(
                f"documents[{i}]: the id '{doc.document_id}' is used twice in the job (the "
                "chunks of one would replace the other's)",
                param="documents",
            )
        seen.add(doc.document_id)
