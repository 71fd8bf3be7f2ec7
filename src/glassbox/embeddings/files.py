"""Uploaded files (OpenAI's Files API): their records in SQL, their bytes on disk.

A file's bytes are `<directory>/<owner>/<file_id>`, written to a hidden part file first and
renamed into place once complete and within the size limit, so a file on disk is always
whole; its record is written after the bytes and deleted before them, so a record always has
its bytes. Files are stored as uploaded, whatever they hold; only ingestion into a vector
store asks for UTF-8 text (`text`).

Also the cursor paging that OpenAI's list endpoints share (`cursor_page`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Generic, Literal, TypeVar

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from glassbox.errors import InvalidRequest, LimitReached, NotFound, TooLarge
from glassbox.principal import Principal
from glassbox.store import Database
from glassbox.store.models import as_utc
from glassbox.store.vector_stores import FileRow

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
# OpenAI's purposes; glassbox stores a file of any of them, and ingests any into vector stores.
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_COPY_BYTES = 1024 * 1024

T = TypeVar("T")
Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; `has_more`: more items follow in the direction read."""

    data: list[T]
    has_more: bool


def cursor_page(
    session: Session,
    stmt: Select[Any],
    *,
    id_column: InstrumentedAttribute[str],
    created_column: InstrumentedAttribute[datetime],
    limit: int,
    order: Order = "desc",
    after: str | None = None,
    before: str | None = None,
) -> Page[Any]:
    """OpenAI's cursor paging over `stmt` (which selects one entity and carries the owner's
    scope): ordered by creation time (ties by id), `after`/`before` the id of an object of
    the list, read in that direction. An id that is not in the list is a 400."""
    key = (created_column, id_column)

    def position(cursor: str, param: str) -> tuple[datetime, str]:
        found = session.execute(stmt.with_only_columns(*key).where(id_column == cursor)).first()
        if found is None:
            raise InvalidRequest(f"'{param}' must be the id of an object in this list, got "
                                 f"'{cursor}'", param=param)  # fmt: skip
        return found[0], found[1]

    def beyond(at: tuple[datetime, str], greater: bool):
        if greater:
            return or_(created_column > at[0], and_(created_column == at[0], id_column > at[1]))
        return or_(created_column < at[0], and_(created_column == at[0], id_column < at[1]))

    ascending = order == "asc"
    if after is not None:
        stmt = stmt.where(beyond(position(after, "after"), greater=ascending))
    if before is not None:
        stmt = stmt.where(beyond(position(before, "before"), greater=not ascending))
    # `before` alone reads backwards from the cursor: the items just before it.
    backwards = before is not None and after is None
    forward = ascending != backwards
    ordering = [c.asc() if forward else c.desc() for c in key]
    rows = list(session.scalars(stmt.order_by(*ordering).limit(limit + 1)))
    has_more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows[::-1] if backwards else rows, has_more)


@dataclass(frozen=True)
class FileInfo:
    file_id: str
    filename: str
    purpose: str
    bytes: int
    created_at: datetime


def _not_text(file_id: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"file '{file_id}' is not UTF-8 text ({why}); only text files can be added to a "
        "vector store",
        param="file_id",
        code="unsupported_file",
    )


def _info(row: FileRow) -> FileInfo:
    return FileInfo(row.file_id, row.filename, row.purpose, row.bytes, as_utc(row.created_at))


class FileService:
    """Files of each owner under `directory`, each at most `max_bytes` (a larger upload is a
    413), at most `max_per_tenant` of them per owner (None: no bound). Synchronous SQL and
    disk: call it from worker threads."""

    def __init__(
        self,
        db: Database,
        directory: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_per_tenant: int | None = None,
    ):
        self._db = db
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_per_tenant = max_per_tenant

    def _check_room(self, owner: Principal) -> None:
        if self.max_per_tenant is None:
            return
        stmt = select(func.count()).select_from(FileRow).where(FileRow.owner == owner.tenant)
        with self._db.session() as s:
            held = s.scalar(stmt) or 0
        if held >= self.max_per_tenant:
            raise LimitReached(
                f"this tenant keeps {held} files, the most this server allows; delete some "
                "(DELETE /v1/files/{file_id}) first",
                param="file",
            )

    def create(self, owner: Principal, filename: str, purpose: str, data: BinaryIO) -> FileInfo:
        """Store the bytes read from `data` as a new file of the owner's."""
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"'purpose' must be one of {', '.join(PURPOSES)}, got {purpose!r}", param="purpose"
            )
        if not filename or len(filename) > 512 or "\x00" in filename:
            raise InvalidRequest(
                "the file needs a name of 1 to 512 characters, without NUL", param="file"
            )
        self._check_room(owner)
        file_id = "file-" + secrets.token_hex(12)
        folder = self.directory / owner.tenant
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f".{file_id}.part"
        try:
            size = self._copy(data, part)
            os.replace(part, folder / file_id)
        finally:
            part.unlink(missing_ok=True)
        row = FileRow(file_id=file_id, owner=owner.tenant, filename=filename, purpose=purpose,
                      bytes=size)  # fmt: skip
        try:
            with self._db.session() as s, s.begin():
                s.add(row)
        except BaseException:
            (folder / file_id).unlink(missing_ok=True)
            raise
        return _info(row)

    def _copy(self, data: BinaryIO, path: Path) -> int:
        size = 0
        with open(path, "wb") as out:
            while block := data.read(_COPY_BYTES):
                size += len(block)
                if size > self.max_bytes:
                    raise TooLarge(
                        f"the file is over this server's limit of {self.max_bytes} bytes",
                        param="file",
                        code="file_too_large",
                    )
                out.write(block)
        return size

    def get(self, owner: Principal, file_id: str) -> FileInfo:
        with self._db.session() as s:
            return _info(self._row(s, owner, file_id))

    def get_many(self, owner: Principal, file_ids: Sequence[str]) -> dict[str, FileInfo]:
        """The owner's files among `file_ids`, by id (the others are left out)."""
        stmt = select(FileRow).where(FileRow.owner == owner.tenant,
                                     FileRow.file_id.in_(set(file_ids)))  # fmt: skip
        with self._db.session() as s:
            return {row.file_id: _info(row) for row in s.scalars(stmt)}

    def list(
        self,
        owner: Principal,
        *,
        limit: int = 10_000,
        order: Order = "desc",
        after: str | None = None,
        purpose: str | None = None,
    ) -> Page[FileInfo]:
        stmt = select(FileRow).where(FileRow.owner == owner.tenant)
        if purpose is not None:
            stmt = stmt.where(FileRow.purpose == purpose)
        with self._db.session() as s:
            page = cursor_page(
                s, stmt, id_column=FileRow.file_id, created_column=FileRow.created_at,
                limit=limit, order=order, after=after,
            )  # fmt: skip
        return Page([_info(row) for row in page.data], page.has_more)

    def path(self, owner: Principal, file_id: str) -> Path:
        """Where the file's bytes are (after checking that the owner has the file)."""
        self.get(owner, file_id)
        return self.directory / owner.tenant / file_id

    def text(self, owner: Principal, file_id: str) -> str:
        """The file's content as text: UTF-8 (a byte-order mark is dropped), else a 400."""
        data = self.path(owner, file_id).read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _not_text(file_id, f"byte {exc.start} is not valid UTF-8") from exc
        nul = text.find("\x00")  # binary data that happens to decode; PostgreSQL refuses it
        if nul >= 0:
            raise _not_text(file_id, f"it holds a NUL character at {nul}")
        return text

    def delete(self, owner: Principal, file_id: str) -> None:
        with self._db.session() as s, s.begin():
            s.delete(self._row(s, owner, file_id))
        (self.directory / owner.tenant / file_id).unlink(missing_ok=True)

    @staticmethod
    def _row(s: Session, owner: Principal, file_id: str) -> FileRow:
        row = s.get(FileRow, file_id)
        if row is None or row.owner != owner.tenant:
            raise NotFound("file", file_id, param="file_id")
        return row
