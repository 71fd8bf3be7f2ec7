"""Vector stores, OpenAI's API over the job pipeline and the chunk store.

A vector store is a collection of the chunk store (its id is the collection id) and a
record of the files attached to it. Attaching a file submits an embedding job of one
document (the file's text, with the file's id as its document id and the file's attributes
as its chunks' attributes), and the file's status is its job's: "in_progress" while the job
is queued or running, then the job's end. The end is written into the file's record when it
is first seen, so a finished file never asks the pipeline again; the store's `file_counts`
are its files' statuses, counted.

A store remembers the embedding model its files were embedded with, and a search embeds its
queries with that model: vectors of different models are never compared.

Async: the job pipeline and the embedding service are; the SQL runs in worker threads.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from glassbox.embeddings.chunking import ChunkingOptions
from glassbox.embeddings.chunks import ChunkStore
from glassbox.embeddings.files import FileInfo, FileService, Order, Page, cursor_page
from glassbox.embeddings.jobs import Job, JobDocument, JobService
from glassbox.embeddings.service import EmbeddingService
from glassbox.errors import Conflict, InvalidRequest, NotFound
from glassbox.principal import Principal
from glassbox.store import Database
from glassbox.store.models import as_utc, utcnow
from glassbox.store.vector_stores import VectorStoreFileRow, VectorStoreRow

FileStatus = Literal["in_progress", "completed", "failed", "cancelled"]
_FILE_STATUS: dict[str, FileStatus] = {
    "queued": "in_progress", "running": "in_progress", "completed": "completed",
    "failed": "failed", "cancelled": "cancelled",
}  # fmt: skip


@dataclass(frozen=True)
class FileCounts:
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.in_progress + self.completed + self.failed + self.cancelled


@dataclass(frozen=True)
class VectorStore:
    vector_store_id: str
    name: str
    description: str | None
    metadata: dict[str, str]
    model: str
    created_at: datetime
    last_active_at: datetime
    usage_bytes: int  # the bytes of its ingested files
    file_counts: FileCounts

    @property
    def status(self) -> Literal["in_progress", "completed"]:
        return "in_progress" if self.file_counts.in_progress else "completed"


@dataclass(frozen=True)
class VectorStoreFile:
    file_id: str
    vector_store_id: str
    status: FileStatus
    error_code: str | None
    error_message: str | None
    attributes: dict[str, Any]
    chunking: ChunkingOptions
    usage_bytes: int
    created_at: datetime


@dataclass(frozen=True)
class SearchHit:
    file_id: str
    filename: str
    score: float
    attributes: dict[str, Any]
    text: str


def _store_file(row: VectorStoreFileRow) -> VectorStoreFile:
    return VectorStoreFile(
        file_id=row.file_id, vector_store_id=row.vector_store_id, status=row.status,
        error_code=row.error_code, error_message=row.error_message,
        attributes=json.loads(row.attributes), chunking=ChunkingOptions(**json.loads(row.chunking)),
        usage_bytes=row.usage_bytes, created_at=as_utc(row.created_at),
    )  # fmt: skip


class VectorStoreService:
    def __init__(
        self,
        db: Database,
        files: FileService,
        chunks: ChunkStore,
        jobs: JobService,
        embeddings: EmbeddingService,
    ):
        self._db = db
        self.files = files
        self._chunks = chunks
        self._jobs = jobs
        self._embeddings = embeddings

    # --- stores -----------------------------------------------------------------------------

    async def create(
        self,
        owner: Principal,
        *,
        name: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        file_ids: Sequence[str] = (),
        chunking: ChunkingOptions | None = None,
    ) -> VectorStore:
        """A new store, its files (if any) submitted for ingestion. Every file is checked
        (the owner's, UTF-8 text) before anything is made; should a submission fail after
        all (a quota), the store is deleted again and the error raised."""
        model = self._embeddings.check_model(owner, None)
        if chunking is not None:
            await self._check_chunking(model, chunking)
        texts = [await asyncio.to_thread(self._text, owner, f) for f in dict.fromkeys(file_ids)]
        row = VectorStoreRow(
            vector_store_id="vs_" + secrets.token_hex(12), owner=owner.tenant, name=name or "",
            description=description, model=model, meta=json.dumps(dict(metadata or {})),
            chunking=json.dumps(asdict(chunking) if chunking else None),
        )  # fmt: skip
        await asyncio.to_thread(self._add, row)
        try:
            for info, text in texts:
                await self._attach(owner, row.vector_store_id, model, info, text, {}, chunking)
        except Exception:
            await self.delete(owner, row.vector_store_id)
            raise
        return await self.get(owner, row.vector_store_id)

    async def get(self, owner: Principal, vector_store_id: str) -> VectorStore:
        await self._refresh(owner, vector_store_id)
        return await asyncio.to_thread(self._read_store, owner, vector_store_id)

    async def list(
        self,
        owner: Principal,
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
    ) -> Page[VectorStore]:
        def read_page() -> Page[Any]:
            stmt = select(VectorStoreRow).where(VectorStoreRow.owner == owner.tenant)
            with self._db.session() as s:
                return cursor_page(
                    s, stmt, id_column=VectorStoreRow.vector_store_id,
                    created_column=VectorStoreRow.created_at, limit=limit, order=order,
                    after=after, before=before,
                )  # fmt: skip

        page = await asyncio.to_thread(read_page)
        stores = [await self.get(owner, row.vector_store_id) for row in page.data]
        return Page(stores, page.has_more)

    async def modify(
        self,
        owner: Principal,
        vector_store_id: str,
        *,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> VectorStore:
        """Change the fields given (metadata is replaced as a whole, as OpenAI does)."""

        def write() -> None:
            with self._db.session() as s, s.begin():
                row = _store_row(s, owner, vector_store_id)
                if name is not None:
                    row.name = name
                if metadata is not None:
                    row.meta = json.dumps(dict(metadata))
                row.last_active_at = utcnow()

        await asyncio.to_thread(write)
        return await self.get(owner, vector_store_id)

    async def delete(self, owner: Principal, vector_store_id: str) -> None:
        """The store, its files' records and chunks; ingestion still running is cancelled."""

        def remove() -> list[str]:
            with self._db.session() as s, s.begin():
                s.delete(_store_row(s, owner, vector_store_id))
                rows = list(s.scalars(_files_of(owner, vector_store_id)))
                for row in rows:
                    s.delete(row)
                return [r.job_id for r in rows if r.status == "in_progress" and r.job_id]

        for job_id in await asyncio.to_thread(remove):
            await self._cancel(owner, job_id)
        await asyncio.to_thread(self._chunks.delete, owner.tenant, vector_store_id)

    # --- a store's files --------------------------------------------------------------------

    async def add_file(
        self,
        owner: Principal,
        vector_store_id: str,
        file_id: str,
        *,
        attributes: Mapping[str, Any] | None = None,
        chunking: ChunkingOptions | None = None,
    ) -> VectorStoreFile:
        """Attach a file (UTF-8 text: else a 400) and submit its ingestion; `chunking`
        defaults to the store's own."""
        store = await asyncio.to_thread(self._store, owner, vector_store_id)
        if chunking is None and store.chunking != "null":
            chunking = ChunkingOptions(**json.loads(store.chunking))
        elif chunking is not None:
            await self._check_chunking(store.model, chunking)
        info, text = await asyncio.to_thread(self._text, owner, file_id)
        if await asyncio.to_thread(self._attached, owner, vector_store_id, file_id):
            raise Conflict(
                f"file '{file_id}' is in vector store '{vector_store_id}' already; delete it "
                "from the store first to ingest it again",
                param="file_id",
            )
        await self._attach(
            owner, vector_store_id, store.model, info, text, dict(attributes or {}), chunking
        )
        return await self.get_file(owner, vector_store_id, file_id)

    async def get_file(
        self, owner: Principal, vector_store_id: str, file_id: str
    ) -> VectorStoreFile:
        await self._refresh(owner, vector_store_id, file_id)
        return _store_file(await asyncio.to_thread(self._required, owner, vector_store_id, file_id))

    async def list_files(
        self,
        owner: Principal,
        vector_store_id: str,
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
        status: FileStatus | None = None,
    ) -> Page[VectorStoreFile]:
        await self._refresh(owner, vector_store_id)

        def read_page() -> Page[VectorStoreFile]:
            with self._db.session() as s:
                _store_row(s, owner, vector_store_id)
                stmt = _files_of(owner, vector_store_id)
                if status is not None:
                    stmt = stmt.where(VectorStoreFileRow.status == status)
                page = cursor_page(
                    s, stmt, id_column=VectorStoreFileRow.file_id,
                    created_column=VectorStoreFileRow.created_at, limit=limit, order=order,
                    after=after, before=before,
                )  # fmt: skip
                return Page([_store_file(r) for r in page.data], page.has_more)

        return await asyncio.to_thread(read_page)

    async def update_file(
        self,
        owner: Principal,
        vector_store_id: str,
        file_id: str,
        attributes: Mapping[str, Any] | None,
    ) -> VectorStoreFile:
        """New attributes for the file and its chunks. Refused (409) while the file is being
        ingested: chunks stored afterwards would carry the old ones."""
        current = await self.get_file(owner, vector_store_id, file_id)
        if current.status == "in_progress":
            raise Conflict(
                f"file '{file_id}' is still being ingested; change its attributes once its "
                "status is completed",
                param="attributes",
            )
        new = dict(attributes or {})

        def write() -> None:
            with self._db.session() as s, s.begin():
                _required_file(s, owner, vector_store_id, file_id).attributes = json.dumps(new)
            self._chunks.set_attributes(owner.tenant, vector_store_id, file_id, new)

        await asyncio.to_thread(write)
        return await self.get_file(owner, vector_store_id, file_id)

    async def remove_file(self, owner: Principal, vector_store_id: str, file_id: str) -> None:
        """Detach the file (the file itself stays): its chunks go, its ingestion stops."""

        def remove() -> VectorStoreFileRow:
            with self._db.session() as s, s.begin():
                row = _required_file(s, owner, vector_store_id, file_id)
                s.delete(row)
                return row

        row = await asyncio.to_thread(remove)
        if row.status == "in_progress" and row.job_id:
            await self._cancel(owner, row.job_id)
        await asyncio.to_thread(self._chunks.delete, owner.tenant, vector_store_id, file_id)

    async def file_content(self, owner: Principal, vector_store_id: str, file_id: str) -> str:
        await asyncio.to_thread(self._required, owner, vector_store_id, file_id)
        return await asyncio.to_thread(self.files.text, owner, file_id)

    async def delete_file(self, owner: Principal, file_id: str) -> None:
        """Delete an uploaded file, detaching it from every store of the owner first (so no
        search returns a chunk of a file that is gone)."""
        await asyncio.to_thread(self.files.get, owner, file_id)

        def stores() -> list[str]:
            stmt = select(VectorStoreFileRow.vector_store_id).where(
                VectorStoreFileRow.owner == owner.tenant, VectorStoreFileRow.file_id == file_id
            )
            with self._db.session() as s:
                return list(s.scalars(stmt))

        for vector_store_id in await asyncio.to_thread(stores):
            await self.remove_file(owner, vector_store_id, file_id)
        await asyncio.to_thread(self.files.delete, owner, file_id)

    # --- search -----------------------------------------------------------------------------

    async def search(
        self,
        owner: Principal,
        vector_store_id: str,
        queries: Sequence[str],
        *,
        max_results: int = 10,
        filters: Mapping[str, Any] | None = None,
        score_threshold: float = 0.0,
    ) -> list[SearchHit]:
        """The chunks most similar to the queries (a chunk's score: its best cosine similarity
        to any of them), at least `score_threshold`, best first; only chunks of files still
        attached to the store."""
        store = await asyncio.to_thread(self._store, owner, vector_store_id)
        embedded = await self._embeddings.embed(owner, list(queries), model=store.model)

        def find() -> tuple[list[Any], dict[str, FileInfo], set[str]]:
            best: dict[tuple[str, int], Any] = {}
            for vector in embedded.vectors:
                for hit in self._chunks.search(
                    owner.tenant, vector_store_id, vector, max_results, filters
                ):
                    key = (hit.document_id, hit.position)
                    if key not in best or hit.score > best[key].score:
                        best[key] = hit
            ranked = sorted(best.values(), key=lambda h: (-h.score, h.document_id, h.position))
            ranked = [h for h in ranked if h.score >= score_threshold][:max_results]
            with self._db.session() as s, s.begin():
                attached = set(s.scalars(_files_of(owner, vector_store_id).with_only_columns(
                    VectorStoreFileRow.file_id)))  # fmt: skip
                s.execute(
                    update(VectorStoreRow)
                    .where(VectorStoreRow.vector_store_id == vector_store_id)
                    .values(last_active_at=utcnow())
                )
            infos = self.files.get_many(owner, [h.document_id for h in ranked])
            return ranked, infos, attached

        ranked, infos, attached = await asyncio.to_thread(find)
        return [
            SearchHit(h.document_id, infos[h.document_id].filename, h.score, h.attributes, h.text)
            for h in ranked
            if h.document_id in attached and h.document_id in infos
        ]

    # --- internals --------------------------------------------------------------------------

    async def _check_chunking(self, model: str, chunking: ChunkingOptions) -> None:
        """Refuse chunks longer than the model reads, in the words of OpenAI's fields."""
        budget = (await self._jobs.pipeline.chunker(model)).budget
        if chunking.max_tokens > budget:
            raise InvalidRequest(
                f"'max_chunk_size_tokens' must be at most {budget} for the embedding model "
                f"'{model}' (it reads {budget} tokens), got {chunking.max_tokens}",
                param="chunking_strategy.static.max_chunk_size_tokens",
            )

    async def _attach(
        self,
        owner: Principal,
        vector_store_id: str,
        model: str,
        info: FileInfo,
        text: str,
        attributes: dict[str, Any],
        chunking: ChunkingOptions | None,
    ) -> None:
        # Chunks left by an earlier attachment of the file (a cancelled job's last batch can
        # land after the detach) would otherwise mix with the new ones.
        await asyncio.to_thread(self._chunks.delete, owner.tenant, vector_store_id, info.file_id)
        job = await self._jobs.submit(
            owner, user_id=owner.tenant, collection_id=vector_store_id, chunking=chunking,
            documents=[JobDocument(info.file_id, text, attributes)], model=model,
        )  # fmt: skip
        status = _FILE_STATUS[job.status]
        row = VectorStoreFileRow(
            vector_store_id=vector_store_id, file_id=info.file_id, owner=owner.tenant,
            job_id=job.job_id, status=status, attributes=json.dumps(attributes),
            chunking=json.dumps(asdict(job.chunking)),
            usage_bytes=info.bytes if status == "completed" else 0,
        )  # fmt: skip

        def write() -> None:
            with self._db.session() as s, s.begin():
                s.add(row)
                s.execute(
                    update(VectorStoreRow)
                    .where(VectorStoreRow.vector_store_id == vector_store_id)
                    .values(last_active_at=utcnow())
                )

        await asyncio.to_thread(write)

    async def _refresh(
        self, owner: Principal, vector_store_id: str, file_id: str | None = None
    ) -> None:
        """Write the end of every ingestion job of the store's files (or of one file) that
        has ended since it was last seen."""

        def pending() -> list[tuple[str, str | None]]:
            stmt = _files_of(owner, vector_store_id).where(
                VectorStoreFileRow.status == "in_progress"
            )
            if file_id is not None:
                stmt = stmt.where(VectorStoreFileRow.file_id == file_id)
            with self._db.session() as s:
                return [(r.file_id, r.job_id) for r in s.scalars(stmt)]

        ended: dict[str, Job | None] = {}
        for fid, job_id in await asyncio.to_thread(pending):
            try:
                job: Job | None = await self._jobs.get(owner, job_id or "")
            except NotFound:
                job = None  # the job's record is gone: the file can no longer complete
            if job is None or _FILE_STATUS[job.status] != "in_progress":
                ended[fid] = job
        if ended:
            await asyncio.to_thread(self._write_ends, owner, vector_store_id, ended)

    def _write_ends(
        self, owner: Principal, vector_store_id: str, ended: dict[str, Job | None]
    ) -> None:
        sizes = self.files.get_many(owner, list(ended))
        with self._db.session() as s, s.begin():
            for fid, job in ended.items():
                row = _file_row(s, owner, vector_store_id, fid)
                if row is None:
                    continue  # detached meanwhile
                if job is None:
                    row.status, row.error_code = "failed", "server_error"
                    row.error_message = "the file's ingestion job no longer exists"
                    continue
                row.status = _FILE_STATUS[job.status]
                if row.status == "failed":
                    row.error_code = "server_error"
                    row.error_message = job.error or "the file's ingestion failed"
                if row.status == "completed" and fid in sizes:
                    row.usage_bytes = sizes[fid].bytes

    async def _cancel(self, owner: Principal, job_id: str) -> None:
        """Stop an ingestion job; one that has ended meanwhile, or is gone, is left as it is."""
        try:
            await self._jobs.cancel(owner, job_id)
        except (Conflict, NotFound):
            pass

    def _add(self, row: VectorStoreRow) -> None:
        with self._db.session() as s, s.begin():
            s.add(row)

    def _text(self, owner: Principal, file_id: str) -> tuple[FileInfo, str]:
        return self.files.get(owner, file_id), self.files.text(owner, file_id)

    def _store(self, owner: Principal, vector_store_id: str) -> VectorStoreRow:
        with self._db.session() as s:
            return _store_row(s, owner, vector_store_id)

    def _read_store(self, owner: Principal, vector_store_id: str) -> VectorStore:
        with self._db.session() as s:
            row = _store_row(s, owner, vector_store_id)
            files = list(s.scalars(_files_of(owner, vector_store_id)))
        counts = {status: 0 for status in ("in_progress", "completed", "failed", "cancelled")}
        for f in files:
            counts[f.status] += 1
        return VectorStore(
            row.vector_store_id, row.name, row.description, json.loads(row.meta), row.model,
            as_utc(row.created_at), as_utc(row.last_active_at),
            sum(f.usage_bytes for f in files), FileCounts(**counts),
        )  # fmt: skip

    def _attached(
        self, owner: Principal, vector_store_id: str, file_id: str
    ) -> VectorStoreFileRow | None:
        with self._db.session() as s:
            return _file_row(s, owner, vector_store_id, file_id)

    def _required(self, owner: Principal, vector_store_id: str, file_id: str) -> VectorStoreFileRow:
        with self._db.session() as s:
            return _required_file(s, owner, vector_store_id, file_id)


def _file_row(
    s: Session, owner: Principal, vector_store_id: str, file_id: str
) -> VectorStoreFileRow | None:
    """The record of a file in the owner's store (NotFound for the store), None if the file
    is not in it."""
    _store_row(s, owner, vector_store_id)
    return s.get(VectorStoreFileRow, (vector_store_id, file_id))


def _required_file(
    s: Session, owner: Principal, vector_store_id: str, file_id: str
) -> VectorStoreFileRow:
    row = _file_row(s, owner, vector_store_id, file_id)
    if row is None:
        raise NotFound(
            "vector store file", file_id,
            f"No file '{file_id}' in vector store '{vector_store_id}'", param="file_id",
        )  # fmt: skip
    return row


def _store_row(s: Session, owner: Principal, vector_store_id: str) -> VectorStoreRow:
    row = s.get(VectorStoreRow, vector_store_id)
    if row is None or row.owner != owner.tenant:
        raise NotFound("vector store", vector_store_id, param="vector_store_id")
    return row


def _files_of(owner: Principal, vector_store_id: str):
    return select(VectorStoreFileRow).where(
        VectorStoreFileRow.owner == owner.tenant,
        VectorStoreFileRow.vector_store_id == vector_store_id,
    )
