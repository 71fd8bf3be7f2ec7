"""The job pipeline's SQL: jobs, their documents, the batches each stage has done, and the
users' quota use. Synchronous; the services call it from worker threads.

A transaction that reads and then writes begins with a write (an UPDATE of the job's row).
On PostgreSQL that locks the row: workers recording batches of one job take turns, and the
one that records the last batch sees every other (and completes the job). On SQLite it takes
the write lock first, so no transaction has to upgrade a read that another writer made stale.

Progress counts each batch once per stage (`embedding_job_batches`): a batch that runs again
after a crash, or a message delivered twice, changes nothing the second time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, get_args

from sqlalchemy import Text, and_, case, delete, func, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from glassbox.embeddings.chunking import ChunkingOptions
from glassbox.embeddings.jobs_types import (
    FINISHED,
    Job,
    JobDocument,
    JobSpec,
    QuotaExceeded,
    StageProgress,
    Status,
)
from glassbox.errors import Conflict, InvalidRequest
from glassbox.store import Database
from glassbox.store.embedding_jobs import (
    EmbeddingJobBatchRow,
    EmbeddingJobDocumentRow,
    EmbeddingJobRow,
    EmbeddingQuotaRow,
)
from glassbox.store.models import as_utc, utcnow

Row = EmbeddingJobRow
_DONE = {"chunking": Row.chunked, "embedding": Row.embedded, "storage": Row.stored}


@dataclass(frozen=True)
class Quota:
    """A user's daily quota, as it stands when a job is submitted."""

    user_id: str
    tier: str
    limit: int
    day: date
    retry_after: int  # seconds to the next 00:00 UTC


@dataclass(frozen=True)
class Standing:
    """A job's status once a batch is recorded, and whether the worker that recorded it
    still holds the job (in-process mode: another start may have taken it over)."""

    status: str
    held: bool


class JobRecords:
    def __init__(self, db: Database):
        self.db = db

    # --- submit, read, cancel ---------------------------------------------------------------

    def insert(
        self, values: dict[str, Any], documents: Sequence[JobDocument], quota: Quota | None
    ) -> Job:
        """A new job (`values`: its row's columns) and its documents, with its chunks charged
        to the quota in the same transaction; QuotaExceeded if they do not fit. Two first
        jobs of a user's day can race to create the quota row: the loser tries once more."""
        attempts = 0
        while True:
            try:
                with self.db.session() as s, s.begin():
                    if quota is not None and values["chunks"]:
                        self._charge(s, values["owner"], quota, values["chunks"])
                    row = Row(**values)
                    s.add(row)
                    s.add_all(
                        EmbeddingJobDocumentRow(
                            job_id=row.job_id,
                            seq=seq,
                            document_id=d.document_id,
                            text=d.text,
                            attributes=json.dumps(d.attributes),
                        )  # fmt: skip
                        for seq, d in enumerate(documents)
                    )
                    s.flush()
                    return _job(row)
            except IntegrityError:
                attempts += 1
                if attempts == 2:
                    raise

    def _charge(self, s: Session, owner: str, quota: Quota, chunks: int) -> None:
        Q = EmbeddingQuotaRow
        key = (Q.owner == owner, Q.user_id == quota.user_id, Q.day == quota.day)
        charged = s.execute(
            update(Q).where(*key, Q.chunks + chunks <= quota.limit).values(chunks=Q.chunks + chunks)
        ).rowcount
        if charged:
            return
        used = s.scalar(select(Q.chunks).where(*key))
        if used is None and chunks <= quota.limit:
            s.add(Q(owner=owner, user_id=quota.user_id, day=quota.day, chunks=chunks))
            s.flush()
            return
        left = quota.limit - (used or 0)
        hours, minutes = divmod(quota.retry_after // 60, 60)
        split = (
            f"; a job of more than {quota.limit} chunks never fits: split it"
            if chunks > quota.limit
            else ""
        )
        raise QuotaExceeded(
            f"user '{quota.user_id}' ({quota.tier} tier) may embed {quota.limit} chunks a day "
            f"and has {left} left today; this job has {chunks} chunks{split}. The quota resets "
            f"at 00:00 UTC, in {hours}h{minutes:02d}m ({quota.retry_after} s)",
            retry_after=quota.retry_after,
        )

    def get(self, owner: str, job_id: str) -> Job | None:
        with self.db.session() as s:
            row = s.get(Row, job_id)
            return _job(row) if row is not None and row.owner == owner else None

    def list(
        self,
        owner: str,
        *,
        user_id: str | None = None,
        status: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> tuple[list[Job], bool]:
        """The owner's jobs, newest first, from the one after job `after`; and whether more
        follow."""
        q = select(Row).where(Row.owner == owner)
        if user_id is not None:
            q = q.where(Row.user_id == user_id)
        if status is not None:
            q = q.where(Row.status == status)
        with self.db.session() as s:
            if after is not None:
                anchor = s.get(Row, after)
                if anchor is None or anchor.owner != owner:
                    raise InvalidRequest(f"'after': no embedding job '{after}'", param="after")
                q = q.where(
                    or_(
                        Row.created_at < anchor.created_at,
                        and_(Row.created_at == anchor.created_at, Row.job_id < anchor.job_id),
                    )
                )
            rows = s.scalars(q.order_by(Row.created_at.desc(), Row.job_id.desc()).limit(limit + 1))
            jobs = [_job(r) for r in rows]
        return jobs[:limit], len(jobs) > limit

    def cancel(self, owner: str, job_id: str) -> Job | None:
        """Cancel a queued or running job (a cancelled one stays as it is); None when the
        owner has no such job, Conflict when it has ended otherwise."""
        with self.db.session() as s, s.begin():
            cancelled = s.execute(
                update(Row)
                .where(Row.job_id == job_id, Row.owner == owner,
                       Row.status.in_(("queued", "running")))
                .values(status="cancelled", worker=None, updated_at=utcnow())
            ).rowcount  # fmt: skip
            row = s.get(Row, job_id)
            if row is None or row.owner != owner:
                return None
            if cancelled:
                _drop_documents(s, job_id)
            elif row.status != "cancelled":
                raise Conflict(
                    f"embedding job '{job_id}' has {row.status} already; only a queued or "
                    "running job can be cancelled",
                    code="job_finished",
                )
            return _job(row)

    # --- workers ----------------------------------------------------------------------------

    def spec(self, job_id: str) -> JobSpec | None:
        with self.db.session() as s:
            row = s.get(Row, job_id)
            return _spec(row) if row is not None else None

    def documents(self, job_id: str) -> list[JobDocument]:
        D = EmbeddingJobDocumentRow
        with self.db.session() as s:
            rows = s.scalars(select(D).where(D.job_id == job_id).order_by(D.seq))
            return [JobDocument(r.document_id, r.text, json.loads(r.attributes)) for r in rows]

    def claim(self, worker: str) -> JobSpec | None:
        """In-process mode: the queued job of highest priority (oldest first among equals),
        now running and held by `worker`; None when none is queued."""
        with self.db.session() as s, s.begin():
            while True:
                job_id = s.scalar(
                    select(Row.job_id)
                    .where(Row.status == "queued")
                    .order_by(Row.priority.desc(), Row.created_at, Row.job_id)
                    .limit(1)
                )
                if job_id is None:
                    return None
                taken = s.execute(
                    update(Row)
                    .where(Row.job_id == job_id, Row.status == "queued")
                    .values(status="running", worker=worker, updated_at=utcnow())
                ).rowcount
                if taken:  # else another worker took it first: the next one
                    return _spec(s.get_one(Row, job_id))

    def requeue_running(self) -> int:
        """In-process mode, at start: jobs left running (by a process that ended without
        finishing them) are queued again; how many."""
        with self.db.session() as s, s.begin():
            return s.execute(
                update(Row)
                .where(Row.status == "running")
                .values(status="queued", worker=None, updated_at=utcnow())
            ).rowcount

    def release(self, job_id: str, worker: str) -> None:
        """`worker` puts its job back in the queue (to run one of higher priority first)."""
        with self.db.session() as s, s.begin():
            s.execute(
                update(Row)
                .where(Row.job_id == job_id, Row.status == "running", Row.worker == worker)
                .values(status="queued", worker=None, updated_at=utcnow())
            )

    def higher_waiting(self, priority: int) -> bool:
        with self.db.session() as s:
            q = select(Row.job_id).where(Row.status == "queued", Row.priority > priority)
            return s.scalar(q.limit(1)) is not None

    def start(self, job_id: str, *, again: bool) -> JobSpec | None:
        """Redis mode, chunking stage: the job, now running; None if it is not to be run
        (ended, or running already while this is not a second delivery: a duplicate)."""
        allowed = ("queued", "running") if again else ("queued",)
        with self.db.session() as s, s.begin():
            started = s.execute(
                update(Row)
                .where(Row.job_id == job_id, Row.status.in_(allowed))
                .values(status="running", updated_at=utcnow())
            ).rowcount
            return _spec(s.get_one(Row, job_id)) if started else None

    def stale_queued(self, seconds: float) -> list[tuple[str, int]]:
        """Redis mode: jobs queued for longer than `seconds` without a change, as (job_id,
        priority), touched so that the next sweep waits as long again. Their chunking
        message may have been lost (a server that stopped between storing a job and queueing
        it); queueing one again costs a duplicate that the chunking stage skips."""
        cutoff = utcnow() - timedelta(seconds=seconds)
        with self.db.session() as s, s.begin():
            rows = s.execute(
                select(Row.job_id, Row.priority)
                .where(Row.status == "queued", Row.updated_at < cutoff)
                .limit(100)
            ).all()
            if rows:
                ids = [r.job_id for r in rows]
                s.execute(update(Row).where(Row.job_id.in_(ids)).values(updated_at=utcnow()))
            return [(r.job_id, r.priority) for r in rows]

    def stats(self) -> dict[str, Any]:
        """For /metrics and /health: chunks each stage has done (all jobs ever: a counter
        across processes) and chunks waiting for it, and the jobs queued and running;
        for /metrics also the jobs in each status, and the running ones by the first stage
        they have not finished."""
        active = Row.status.in_(("queued", "running"))
        stage_now = case(
            (Row.chunked < Row.chunks, "chunking"),
            (Row.embedded < Row.chunks, "embedding"),
            else_="storage",
        )
        with self.db.session() as s:
            done = s.execute(select(*(func.coalesce(func.sum(c), 0) for c in _DONE.values()))).one()
            waiting = s.execute(
                select(func.coalesce(func.sum(Row.chunks - Row.chunked), 0),
                       func.coalesce(func.sum(Row.chunked - Row.embedded), 0),
                       func.coalesce(func.sum(Row.embedded - Row.stored), 0)).where(active)
            ).one()  # fmt: skip
            by_status = dict(s.execute(select(Row.status, func.count()).group_by(Row.status)).all())
            running = dict(s.execute(
                select(stage_now, func.count()).where(Row.status == "running").group_by(stage_now)
            ).all())  # fmt: skip
        return {
            "stages": {
                stage: {"done": int(d), "queued": int(q)}
                for stage, d, q in zip(_DONE, done, waiting, strict=True)
            },
            "jobs": {"queued": by_status.get("queued", 0), "running": by_status.get("running", 0)},
            "statuses": {status: by_status.get(status, 0) for status in get_args(Status)},
            "running_stages": {stage: running.get(stage, 0) for stage in _DONE},
        }

    def done_batches(self, job_id: str, stage: str) -> set[int]:
        B = EmbeddingJobBatchRow
        with self.db.session() as s:
            return set(s.scalars(select(B.batch).where(B.job_id == job_id, B.stage == stage)))

    def record(
        self, job_id: str, stage: str, batches: dict[int, int], worker: str | None = None
    ) -> Standing | None:
        """Batches (index -> chunks) done by `stage`, each counted once; the storage of the
        last chunk completes the job. None if the job is gone."""
        B = EmbeddingJobBatchRow
        with self.db.session() as s, s.begin():
            touched = s.execute(
                update(Row).where(Row.job_id == job_id).values(updated_at=utcnow())
            ).rowcount
            if not touched:
                return None
            known = set(s.scalars(
                select(B.batch).where(B.job_id == job_id, B.stage == stage,
                                      B.batch.in_(list(batches)))
            ))  # fmt: skip
            new = {i: n for i, n in batches.items() if i not in known}
            s.add_all(B(job_id=job_id, stage=stage, batch=i, chunks=n) for i, n in new.items())
            if new:
                done = _DONE[stage]
                s.execute(
                    update(Row).where(Row.job_id == job_id).values({done: done + sum(new.values())})
                )
            row = s.get_one(Row, job_id)
            if stage == "storage" and row.status == "running" and row.stored >= row.chunks:
                row.status, row.worker, row.error = "completed", None, None
                _drop_documents(s, job_id)
            return Standing(row.status, worker is None or row.worker == worker)

    def note_error(self, job_id: str, error: str) -> None:
        """The last error of a running job whose stage will be tried again."""
        with self.db.session() as s, s.begin():
            s.execute(
                update(Row)
                .where(Row.job_id == job_id, Row.status == "running")
                .values(error=error, updated_at=utcnow())
            )

    def fail(self, job_id: str, error: str) -> None:
        """The job fails with `error`, followed by the last error noted, if any."""
        with_last = func.coalesce(literal(f"{error}; last error: ", Text) + Row.error, error)
        with self.db.session() as s, s.begin():
            failed = s.execute(
                update(Row)
                .where(Row.job_id == job_id, Row.status.not_in(FINISHED))
                .values(status="failed", error=with_last, worker=None, updated_at=utcnow())
            ).rowcount
            if failed:
                _drop_documents(s, job_id)


def _drop_documents(s: Session, job_id: str) -> None:
    """An ended job needs its texts no more (the chunk store has what was made of them)."""
    s.execute(delete(EmbeddingJobDocumentRow).where(EmbeddingJobDocumentRow.job_id == job_id))


def _options(row: Row) -> ChunkingOptions:
    return ChunkingOptions(row.max_tokens, row.overlap_tokens)


def _spec(row: Row) -> JobSpec:
    return JobSpec(
        job_id=row.job_id, owner=row.owner, status=row.status, priority=row.priority,
        collection_id=row.collection_id, model=row.model, chunking=_options(row),
        batch_size=row.batch_size, chunks=row.chunks,
    )  # fmt: skip


def _job(row: Row) -> Job:
    done = {"chunking": row.chunked, "embedding": row.embedded, "storage": row.stored}
    return Job(
        job_id=row.job_id, owner=row.owner, user_id=row.user_id, status=row.status,
        priority=row.priority, collection_id=row.collection_id, media_id=row.media_id,
        model=row.model, chunking=_options(row),
        stages={stage: StageProgress(n, row.chunks) for stage, n in done.items()},
        error=row.error, created_at=as_utc(row.created_at), updated_at=as_utc(row.updated_at),
    )  # fmt: skip
