"""The three stages' work, the same in both modes: chunk a job into numbered batches, embed a
batch, store a batch. How batches travel from stage to stage is the mode's business
(jobs_local.py: one task runs the stages in turn; jobs_worker.py: Redis streams).

Batches are numbered in the job's order (documents in order, chunks of each in order, cut
every `batch_size` chunks), and a chunk's key in the store is (document, its position in the
document): chunking is deterministic for a model, so a job chunked again after a crash gives
the same batches with the same keys, and storing one again replaces what it stored before.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from glassbox.embeddings.chunking import Chunker
from glassbox.embeddings.jobs_records import JobRecords
from glassbox.embeddings.jobs_types import ChunkCountChanged, JobDocument, JobSpec
from glassbox.principal import Principal

if TYPE_CHECKING:
    from glassbox.embeddings.jobs import ChunkSink, Embedder


@dataclass(frozen=True)
class PendingChunk:
    document_id: str
    position: int
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Batch:
    """Chunks `index * batch_size` onwards of a job, with their documents' attributes."""

    job_id: str
    index: int
    chunks: list[PendingChunk]
    attributes: dict[str, dict[str, Any]]  # by document id

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> Batch:
        fields = json.loads(data)
        chunks = [PendingChunk(**c) for c in fields.pop("chunks")]
        return cls(chunks=chunks, **fields)


@dataclass(frozen=True)
class ChunkToStore:
    """The fields `ChunkStore.put` reads of a chunk (embeddings/chunks.py `StoredChunk`)."""

    document_id: str
    position: int
    text: str
    vector: np.ndarray
    attributes: dict[str, Any]
    start: int
    end: int


class Pipeline:
    def __init__(self, records: JobRecords, embedder: Embedder, sink: ChunkSink):
        self.records = records
        self.embedder = embedder
        self.sink = sink
        self._chunkers: dict[str, Chunker] = {}

    async def chunker(self, model: str) -> Chunker:
        """The chunker of the model's tokenizer (the model is loaded first: the tokenizer
        comes with it)."""
        if model not in self._chunkers:
            await self.embedder.load()
            tokenizer = self.embedder.tokenizer(model)
            self._chunkers[model] = Chunker(tokenizer, self.embedder.max_tokens(model))
        return self._chunkers[model]

    async def batches(self, job: JobSpec) -> list[Batch]:
        """Stage 1: the job's documents as batches of chunks. ChunkCountChanged when they
        are not the chunks counted at submit."""
        documents = await asyncio.to_thread(self.records.documents, job.job_id)
        chunker = await self.chunker(job.model)
        return await asyncio.to_thread(_batches, job, documents, chunker)

    async def embed(self, job: JobSpec, batch: Batch) -> np.ndarray:
        """Stage 2: the batch's vectors, in its order."""
        texts = [c.text for c in batch.chunks]
        result = await self.embedder.embed(Principal(job.owner), texts, model=job.model)
        return np.asarray(result.vectors, dtype=np.float32)

    async def store(self, job: JobSpec, batch: Batch, vectors: np.ndarray) -> None:
        """Stage 3: the batch into the chunk store (a chunk stored again replaces itself)."""
        chunks = [
            ChunkToStore(c.document_id, c.position, c.text, vector,
                         batch.attributes[c.document_id], c.start, c.end)
            for c, vector in zip(batch.chunks, vectors, strict=True)
        ]  # fmt: skip
        await asyncio.to_thread(self.sink.put, job.owner, job.collection_id, chunks)


def _batches(job: JobSpec, documents: list[JobDocument], chunker: Chunker) -> list[Batch]:
    batches: list[Batch] = []
    pending: list[PendingChunk] = []
    attributes: dict[str, dict[str, Any]] = {}
    for doc in documents:
        for position, c in enumerate(chunker.chunk(doc.text, job.chunking)):
            pending.append(PendingChunk(doc.document_id, position, c.text, c.start, c.end))
            attributes[doc.document_id] = doc.attributes
            if len(pending) == job.batch_size:
                batches.append(Batch(job.job_id, len(batches), pending, attributes))
                pending, attributes = [], {}
    if pending:
        batches.append(Batch(job.job_id, len(batches), pending, attributes))
    chunks = sum(len(b.chunks) for b in batches)
    if chunks != job.chunks:
        raise ChunkCountChanged(
            f"the job's documents make {chunks} chunks here, not the {job.chunks} counted when "
            f"it was submitted: the tokenizer of '{job.model}' differs between the server and "
            "this worker (or the job's documents are gone); submit the job again"
        )
    return batches
