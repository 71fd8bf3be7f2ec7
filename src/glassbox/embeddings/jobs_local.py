"""In-process workers (the embedded default): asyncio tasks in the server that take queued
jobs from the database and run their stages batch by batch.

A worker holds its job (`embedding_jobs.worker`) and records each batch's progress as it
goes. Between batches it checks that the job is still its own and still running (a cancel
stops it there: within one batch) and whether a job of higher priority waits (it then puts
its job back in the queue, to go on where it stopped once the other is done).

At start, jobs left "running" by a process that died are queued again: their done batches
are known (`embedding_job_batches`), and only the others run. In-process mode expects one
server process per database; several processes share jobs through Redis (jobs_worker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from glassbox.embeddings.jobs_pipeline import Batch, Pipeline
from glassbox.embeddings.jobs_records import JobRecords
from glassbox.embeddings.jobs_types import ChunkCountChanged, JobSpec
from glassbox.logs import get_logger

log = get_logger(__name__)


class LocalWorkers:
    def __init__(self, records: JobRecords, pipeline: Pipeline, *, workers: int = 1,
                 poll_seconds: float = 5.0):  # fmt: skip
        """`poll_seconds`: how often an idle worker looks for queued jobs that no `wake`
        announced (a worker that failed to claim, say, when the database was away)."""
        self.records = records
        self.pipeline = pipeline
        self.workers = workers
        self.poll_seconds = poll_seconds
        self.name = f"local-{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        requeued = await asyncio.to_thread(self.records.requeue_running)
        if requeued:
            log.info("embedding jobs resumed", jobs=requeued)
        self._tasks = [
            asyncio.create_task(self._loop(f"{self.name}-{i}"), name=f"embedding-jobs-{i}")
            for i in range(self.workers)
        ]

    def alive(self) -> int:
        """Workers running (a worker's task ends only by a bug)."""
        return sum(not t.done() for t in self._tasks)

    def wake(self) -> None:
        """A job was queued."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop at once: a job in the middle of a batch stays running in the database and is
        resumed at the next start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _loop(self, me: str) -> None:
        while True:
            self._wake.clear()  # before looking: a job queued from now on wakes the wait
            try:
                busy = await self._next(me)
            except Exception:  # the database, say: wait, and try again
                log.exception("embedding job worker failed", worker=me)
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def _next(self, me: str) -> bool:
        """Run the next queued job; False if there was none."""
        job = await asyncio.to_thread(self.records.claim, me)
        if job is None:
            return False
        try:
            await self._run(job, me)
        except ChunkCountChanged as exc:
            await asyncio.to_thread(self.records.fail, job.job_id, str(exc))
        except Exception as exc:  # the job fails; the worker goes on with the next
            log.exception("embedding job failed", job_id=job.job_id)
            await asyncio.to_thread(self.records.fail, job.job_id, f"{type(exc).__name__}: {exc}")
        return True

    async def _run(self, job: JobSpec, me: str) -> None:
        batches = await self.pipeline.batches(job)
        chunked = await asyncio.to_thread(self.records.done_batches, job.job_id, "chunking")
        fresh = {b.index: len(b.chunks) for b in batches if b.index not in chunked}
        if fresh:
            await asyncio.to_thread(self.records.record, job.job_id, "chunking", fresh, me)
        stored = await asyncio.to_thread(self.records.done_batches, job.job_id, "storage")
        for batch in batches:
            if batch.index in stored:
                continue
            if not await self._batch(job, batch, me):
                return
            if await asyncio.to_thread(self.records.higher_waiting, job.priority):
                await asyncio.to_thread(self.records.release, job.job_id, me)
                self.wake()
                return

    async def _batch(self, job: JobSpec, batch: Batch, me: str) -> bool:
        """Embed and store one batch; whether the job goes on."""
        n = {batch.index: len(batch.chunks)}
        vectors = await self.pipeline.embed(job, batch)
        standing = await asyncio.to_thread(self.records.record, job.job_id, "embedding", n, me)
        if standing is None or standing.status != "running" or not standing.held:
            return False
        await self.pipeline.store(job, batch, vectors)
        standing = await asyncio.to_thread(self.records.record, job.job_id, "storage", n, me)
        return standing is not None and standing.status == "running" and standing.held
