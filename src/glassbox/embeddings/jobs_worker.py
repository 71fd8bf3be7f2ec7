"""`glassbox worker`: the stages of the job pipeline as consumers of Redis streams
(queue_redis.py), on any number of machines sharing one database and one Redis.

Each stage's consumer commits its work before it acknowledges the entry, and passes the
batch on (XADD to the next stage) before it records the batch as done:

    chunking:  the job's batches -> for each batch not yet chunked: XADD embedding, record
    embedding: skip a batch recorded already; vectors -> XADD storage (chunks and vectors),
               record
    storage:   ChunkStore.put (an upsert by chunk key) -> record (the last batch completes
               the job)

A worker that dies between two of these steps leaves its entry pending; it is delivered
again after the visibility timeout, and the steps done before are either skipped (recorded)
or harmless to repeat (a duplicate entry downstream, a chunk stored again in its place). A
cancelled or ended job's entries are acknowledged without work; what it stored stays.
An entry whose work fails is not acknowledged: it is tried again after the visibility
timeout, and after `max_deliveries` it goes to the dead-letter stream and its job fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from glassbox.embeddings.jobs_pipeline import Batch, Pipeline
from glassbox.embeddings.jobs_records import JobRecords
from glassbox.embeddings.jobs_types import STAGES, ChunkCountChanged, JobSpec
from glassbox.embeddings.queue_redis import Entry, RedisStages
from glassbox.logs import get_logger
from glassbox.store import Database

if TYPE_CHECKING:
    from glassbox.embeddings.jobs import ChunkSink, Embedder

log = get_logger(__name__)

VISIBILITY_TIMEOUT = 60.0  # seconds an entry may stay unacknowledged before another takes it
MAX_DELIVERIES = 5
# A job queued this many visibility timeouts ago without a change is queued again.
REQUEUE_AFTER = 5


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class StageWorker:
    def __init__(
        self,
        records: JobRecords,
        pipeline: Pipeline,
        queue: RedisStages,
        *,
        consumer: str | None = None,
        stages: tuple[str, ...] = STAGES,
        visibility_timeout: float = VISIBILITY_TIMEOUT,
        max_deliveries: int = MAX_DELIVERIES,
        block_ms: int = 1000,
    ):
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}: use {', '.join(STAGES)}")
        self.records = records
        self.pipeline = pipeline
        self.queue = queue
        self.consumer = consumer or default_consumer()
        self.stages = stages
        self.visibility_timeout = visibility_timeout
        self.max_deliveries = max_deliveries
        self.block_ms = block_ms
        self._stopping = asyncio.Event()

    @classmethod
    def create(
        cls, db: Database, embedder: Embedder, sink: ChunkSink, redis_url: str, **options: Any
    ) -> StageWorker:
        """A worker over the database, the embedding service, the chunk store and Redis;
        `options` as the constructor's."""
        records = JobRecords(db)
        return cls(records, Pipeline(records, embedder, sink), RedisStages(redis_url), **options)

    async def close(self) -> None:
        await self.queue.close()

    def stop(self) -> None:
        """Finish the entries in hand, then return from `run`."""
        self._stopping.set()

    async def run(self) -> None:
        await self.queue.ensure_groups(STAGES)
        log.info("embedding worker ready", consumer=self.consumer, stages=list(self.stages))
        await asyncio.gather(*(self._serve(stage) for stage in self.stages))

    async def _serve(self, stage: str) -> None:
        handlers: dict[str, Callable[[Entry], Awaitable[None]]] = {
            "chunking": self._chunk, "embedding": self._embed, "storage": self._store,
        }  # fmt: skip
        loop = asyncio.get_running_loop()
        next_reclaim = 0.0
        while not self._stopping.is_set():
            try:
                entries: list[Entry] = []
                if loop.time() >= next_reclaim:
                    next_reclaim = loop.time() + self.visibility_timeout / 2
                    entries = await self._reclaim(stage)
                if not entries:
                    entries = await self.queue.read(stage, self.consumer, self.block_ms)
                for entry in entries:
                    await self._handle(stage, handlers[stage], entry)
            except Exception:  # Redis or the database away: wait, and try again
                log.exception("embedding worker stage failed", stage=stage)
                await asyncio.sleep(1.0)

    async def _reclaim(self, stage: str) -> list[Entry]:
        """Entries a dead (or failing) consumer left, and, for chunking, jobs whose message
        may have been lost."""
        if stage == "chunking":
            stale = self.visibility_timeout * REQUEUE_AFTER
            for job_id, priority in await asyncio.to_thread(self.records.stale_queued, stale):
                await self.queue.add("chunking", priority, {"job": job_id})
        idle_ms = int(self.visibility_timeout * 1000)
        taken = await self.queue.reclaim(stage, self.consumer, idle_ms, count=16)
        if taken:
            log.info("embedding job entries taken over", stage=stage, entries=len(taken))
        entries = []
        for entry, deliveries in taken:
            if deliveries > self.max_deliveries:
                await self._dead_letter(stage, entry, deliveries)
            else:
                entries.append(entry)
        return entries

    async def _dead_letter(self, stage: str, entry: Entry, deliveries: int) -> None:
        reason = (
            f"{_what(stage, entry)} was delivered {deliveries} times without completing "
            f"(dead-letter stream {self.queue.dead_key}, entry {entry.id})"
        )
        await self.queue.dead_letter(entry, stage, deliveries, reason)
        await asyncio.to_thread(self.records.fail, entry.fields["job"].decode(), reason)
        log.error("embedding job entry dead-lettered", stage=stage, entry=entry.id)

    async def _handle(
        self, stage: str, handler: Callable[[Entry], Awaitable[None]], entry: Entry
    ) -> None:
        job_id = entry.fields["job"].decode()
        try:
            await handler(entry)
        except ChunkCountChanged as exc:
            await asyncio.to_thread(self.records.fail, job_id, str(exc))
        except Exception as exc:  # not acknowledged: tried again after the visibility timeout
            log.exception("embedding job stage failed", stage=stage, job_id=job_id)
            error = f"{_what(stage, entry)}: {type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.records.note_error, job_id, error)
            return
        await self.queue.ack(entry)

    async def _running(self, job_id: str) -> JobSpec | None:
        job = await asyncio.to_thread(self.records.spec, job_id)
        return job if job is not None and job.status == "running" else None

    async def _chunk(self, entry: Entry) -> None:
        job_id = entry.fields["job"].decode()
        job = await asyncio.to_thread(self.records.start, job_id, again=entry.again)
        if job is None:
            return
        batches = await self.pipeline.batches(job)
        chunked = await asyncio.to_thread(self.records.done_batches, job_id, "chunking")
        for batch in batches:
            if batch.index in chunked:
                continue
            fields = {"job": job_id, "index": str(batch.index), "batch": batch.encode()}
            await self.queue.add("embedding", job.priority, fields)
            n = {batch.index: len(batch.chunks)}
            standing = await asyncio.to_thread(self.records.record, job_id, "chunking", n)
            if standing is None or standing.status != "running":
                return
            await self.queue.touch(entry, self.consumer)

    async def _embed(self, entry: Entry) -> None:
        batch = Batch.decode(entry.fields["batch"])
        job = await self._running(batch.job_id)
        if job is None:
            return
        embedded = await asyncio.to_thread(self.records.done_batches, job.job_id, "embedding")
        if batch.index in embedded:  # a duplicate: its storage entry exists already
            return
        vectors = await self.pipeline.embed(job, batch)
        fields = {**entry.fields, "vectors": vectors.astype(np.float32).tobytes()}
        await self.queue.add("storage", job.priority, fields)
        n = {batch.index: len(batch.chunks)}
        await asyncio.to_thread(self.records.record, job.job_id, "embedding", n)

    async def _store(self, entry: Entry) -> None:
        batch = Batch.decode(entry.fields["batch"])
        job = await self._running(batch.job_id)
        if job is None:
            return
        vectors = np.frombuffer(entry.fields["vectors"], dtype=np.float32)
        await self.pipeline.store(job, batch, vectors.reshape(len(batch.chunks), -1))
        n = {batch.index: len(batch.chunks)}
        await asyncio.to_thread(self.records.record, job.job_id, "storage", n)


def _what(stage: str, entry: Entry) -> str:
    job_id = entry.fields["job"].decode()
    index = entry.fields.get("index")
    return f"{stage} of job {job_id}" + (f" batch {index.decode()}" if index else "")


async def run_until_signalled(worker: StageWorker) -> None:
    """Run the worker until SIGTERM or SIGINT (then it finishes the entries in hand)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await worker.run()
