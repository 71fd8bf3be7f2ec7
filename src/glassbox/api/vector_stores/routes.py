"""OpenAI's Files and Vector Stores endpoints (/v1/files, /v1/vector_stores), so that the
official `openai` package's `client.files` and `client.vector_stores` work unchanged.

The service (glassbox/embeddings/vector_stores.py, with its FileService as `.files`) is
`app.state.vector_stores`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.responses import FileResponse

from glassbox.api.deps import PrincipalDep, VectorStoresDep
from glassbox.api.vector_stores.schemas import (
    AutoChunking,
    CreateVectorStoreFileRequest,
    CreateVectorStoreRequest,
    FileContentPage,
    FileCounts,
    FileDeleted,
    FileObject,
    LastError,
    ListPage,
    ModifyVectorStoreRequest,
    SearchRequest,
    SearchResult,
    SearchResultsPage,
    StaticChunking,
    TextContent,
    UpdateVectorStoreFileRequest,
    VectorStoreDeleted,
    VectorStoreFileDeleted,
    VectorStoreFileObject,
    VectorStoreObject,
)
from glassbox.embeddings.chunking import ChunkingOptions
from glassbox.embeddings.files import FileInfo, Page
from glassbox.embeddings.vector_stores import VectorStore, VectorStoreFile
from glassbox.errors import Unsupported

router = APIRouter(prefix="/v1", tags=["vector stores"])

# How long the openai package's pollers (create_and_poll) wait between two looks at a file
# being ingested; they read it from this header (1 s without it).
POLL_AFTER_MS = "250"


OrderQuery = Annotated[Literal["asc", "desc"], Query()]


def _page(page: Page[Any], items: list[Any]) -> dict[str, Any]:
    return {
        "data": items,
        "first_id": items[0].id if items else None,
        "last_id": items[-1].id if items else None,
        "has_more": page.has_more,
    }


def _chunking(strategy: AutoChunking | StaticChunking | None) -> ChunkingOptions | None:
    if not isinstance(strategy, StaticChunking):
        return None
    s = strategy.static
    return ChunkingOptions(s.max_chunk_size_tokens, s.chunk_overlap_tokens)


def _no_expiry(expires_after: dict[str, Any] | None) -> None:
    if expires_after is not None:
        raise Unsupported("expires_after", "vector stores do not expire on this server")


def file_out(f: FileInfo) -> FileObject:
    return FileObject(id=f.file_id, bytes=f.bytes, created_at=int(f.created_at.timestamp()),
                      filename=f.filename, purpose=f.purpose)  # fmt: skip


def store_out(v: VectorStore) -> VectorStoreObject:
    c = v.file_counts
    return VectorStoreObject(
        id=v.vector_store_id, created_at=int(v.created_at.timestamp()), name=v.name,
        description=v.description, usage_bytes=v.usage_bytes,
        file_counts=FileCounts(in_progress=c.in_progress, completed=c.completed,
                               failed=c.failed, cancelled=c.cancelled, total=c.total),
        status=v.status, last_active_at=int(v.last_active_at.timestamp()), metadata=v.metadata,
    )  # fmt: skip


def store_file_out(f: VectorStoreFile) -> VectorStoreFileObject:
    error = None
    if f.error_code is not None:
        error = LastError(code=f.error_code, message=f.error_message or "")
    static = {"max_chunk_size_tokens": f.chunking.max_tokens,
              "chunk_overlap_tokens": f.chunking.overlap_tokens}  # fmt: skip
    return VectorStoreFileObject(
        id=f.file_id, usage_bytes=f.usage_bytes, created_at=int(f.created_at.timestamp()),
        vector_store_id=f.vector_store_id, status=f.status, last_error=error,
        attributes=f.attributes, chunking_strategy={"type": "static", "static": static},
    )  # fmt: skip


# --- files --------------------------------------------------------------------------------


@router.post("/files", response_model=FileObject)
async def upload_file(
    principal: PrincipalDep,
    service: VectorStoresDep,
    file: Annotated[UploadFile, File(description="The file's bytes (text, to be ingested)")],
    purpose: Annotated[str, Form(description="assistants, user_data, batch, ...")],
) -> FileObject:
    info = await asyncio.to_thread(
        service.files.create, principal, file.filename or "", purpose, file.file
    )
    return file_out(info)


@router.get("/files", response_model=ListPage[FileObject])
async def list_files(
    principal: PrincipalDep,
    service: VectorStoresDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: OrderQuery = "desc",
    purpose: str | None = None,
) -> dict:
    page = await asyncio.to_thread(
        service.files.list, principal, limit=limit, order=order, after=after, purpose=purpose
    )
    return _page(page, [file_out(f) for f in page.data])


@router.get("/files/{file_id}", response_model=FileObject)
async def get_file(file_id: str, principal: PrincipalDep, service: VectorStoresDep) -> FileObject:
    return file_out(await asyncio.to_thread(service.files.get, principal, file_id))


@router.get("/files/{file_id}/content", response_class=FileResponse)
async def file_content(file_id: str, principal: PrincipalDep, service: VectorStoresDep):
    path = await asyncio.to_thread(service.files.path, principal, file_id)
    return FileResponse(path, media_type="application/octet-stream")


@router.delete("/files/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, principal: PrincipalDep, service: VectorStoresDep):
    """Also detaches the file from every vector store it is in."""
    await service.delete_file(principal, file_id)
    return FileDeleted(id=file_id)


# --- vector stores ------------------------------------------------------------------------


@router.post("/vector_stores", response_model=VectorStoreObject)
async def create_vector_store(
    req: CreateVectorStoreRequest, principal: PrincipalDep, service: VectorStoresDep
) -> VectorStoreObject:
    _no_expiry(req.expires_after)
    store = await service.create(
        principal, name=req.name, description=req.description, metadata=req.metadata,
        file_ids=req.file_ids, chunking=_chunking(req.chunking_strategy),
    )  # fmt: skip
    return store_out(store)


@router.get("/vector_stores", response_model=ListPage[VectorStoreObject])
async def list_vector_stores(
    principal: PrincipalDep,
    service: VectorStoresDep,
    after: str | None = None,
    before: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: OrderQuery = "desc",
) -> dict:
    page = await service.list(principal, limit=limit, order=order, after=after, before=before)
    return _page(page, [store_out(v) for v in page.data])


@router.get("/vector_stores/{vector_store_id}", response_model=VectorStoreObject)
async def get_vector_store(
    vector_store_id: str, principal: PrincipalDep, service: VectorStoresDep
) -> VectorStoreObject:
    return store_out(await service.get(principal, vector_store_id))


@router.post("/vector_stores/{vector_store_id}", response_model=VectorStoreObject)
async def modify_vector_store(
    vector_store_id: str,
    req: ModifyVectorStoreRequest,
    principal: PrincipalDep,
    service: VectorStoresDep,
) -> VectorStoreObject:
    _no_expiry(req.expires_after)
    store = await service.modify(principal, vector_store_id, name=req.name, metadata=req.metadata)
    return store_out(store)


@router.delete("/vector_stores/{vector_store_id}", response_model=VectorStoreDeleted)
async def delete_vector_store(
    vector_store_id: str, principal: PrincipalDep, service: VectorStoresDep
) -> VectorStoreDeleted:
    await service.delete(principal, vector_store_id)
    return VectorStoreDeleted(id=vector_store_id)


@router.post("/vector_stores/{vector_store_id}/search", response_model=SearchResultsPage)
async def search_vector_store(
    vector_store_id: str, req: SearchRequest, principal: PrincipalDep, service: VectorStoresDep
) -> SearchResultsPage:
    """Cosine similarity to the query embedded with the store's model; `rewrite_query` and
    `ranking_options.ranker` are accepted and have no effect."""
    queries = [req.query] if isinstance(req.query, str) else req.query
    threshold = req.ranking_options.score_threshold if req.ranking_options else 0.0
    hits = await service.search(
        principal, vector_store_id, queries, max_results=req.max_num_results,
        filters=req.filters, score_threshold=threshold,
    )  # fmt: skip
    return SearchResultsPage(
        search_query=queries,
        data=[
            SearchResult(file_id=h.file_id, filename=h.filename, score=h.score,
                         attributes=h.attributes, content=[TextContent(text=h.text)])
            for h in hits
        ],
    )  # fmt: skip


# --- a vector store's files ---------------------------------------------------------------


@router.post("/vector_stores/{vector_store_id}/files", response_model=VectorStoreFileObject)
async def add_vector_store_file(
    vector_store_id: str,
    req: CreateVectorStoreFileRequest,
    principal: PrincipalDep,
    service: VectorStoresDep,
    response: Response,
) -> VectorStoreFileObject:
    added = await service.add_file(
        principal, vector_store_id, req.file_id, attributes=req.attributes,
        chunking=_chunking(req.chunking_strategy),
    )  # fmt: skip
    response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return store_file_out(added)


@router.get(
    "/vector_stores/{vector_store_id}/files", response_model=ListPage[VectorStoreFileObject]
)
async def list_vector_store_files(
    vector_store_id: str,
    principal: PrincipalDep,
    service: VectorStoresDep,
    after: str | None = None,
    before: str | None = None,
    filter: Literal["in_progress", "completed", "failed", "cancelled"] | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: OrderQuery = "desc",
) -> dict:
    page = await service.list_files(
        principal, vector_store_id, limit=limit, order=order, after=after, before=before,
        status=filter,
    )  # fmt: skip
    return _page(page, [store_file_out(f) for f in page.data])


@router.get(
    "/vector_stores/{vector_store_id}/files/{file_id}", response_model=VectorStoreFileObject
)
async def get_vector_store_file(
    vector_store_id: str,
    file_id: str,
    principal: PrincipalDep,
    service: VectorStoresDep,
    response: Response,
) -> VectorStoreFileObject:
    response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return store_file_out(await service.get_file(principal, vector_store_id, file_id))


@router.post(
    "/vector_stores/{vector_store_id}/files/{file_id}", response_model=VectorStoreFileObject
)
async def update_vector_store_file(
    vector_store_id: str,
    file_id: str,
    req: UpdateVectorStoreFileRequest,
    principal: PrincipalDep,
    service: VectorStoresDep,
) -> VectorStoreFileObject:
    updated = await service.update_file(principal, vector_store_id, file_id, req.attributes)
    return store_file_out(updated)


@router.delete(
    "/vector_stores/{vector_store_id}/files/{file_id}", response_model=VectorStoreFileDeleted
)
async def remove_vector_store_file(
    vector_store_id: str, file_id: str, principal: PrincipalDep, service: VectorStoresDep
) -> VectorStoreFileDeleted:
    """Detaches the file from the store; the file itself stays (DELETE /v1/files deletes it)."""
    await service.remove_file(principal, vector_store_id, file_id)
    return VectorStoreFileDeleted(id=file_id)


@router.get(
    "/vector_stores/{vector_store_id}/files/{file_id}/content", response_model=FileContentPage
)
async def vector_store_file_content(
    vector_store_id: str, file_id: str, principal: PrincipalDep, service: VectorStoresDep
) -> FileContentPage:
    text = await service.file_content(principal, vector_store_id, file_id)
    return FileContentPage(data=[TextContent(text=text)])
