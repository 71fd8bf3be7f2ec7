"""One file per state: its KV, tokens, config and the fingerprint of the model it belongs to.

Format (`.gbstate`): a zstandard frame (with its content checksum) around a safetensors
file holding `kv` [layers, tokens - 1, 2 * kv_heads, head_dim] and `token_ids` [tokens]; the
safetensors metadata carries the format tag, the model fingerprint and the state's JSON
record. Spilled states and exported states use the same format. Reading checks the frame's
checksum, the header and every shape before anything is used, so a corrupted or truncated
file is refused whole, never half-loaded. Nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import zstandard
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from glassbox.errors import DiskFull

FORMAT = "glassbox-state/1"
SUFFIX = ".gbstate"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# KV in fp32 compresses little; level 3 is zstd's default balance of speed and size.
_LEVEL = 3


class StateFileError(ValueError):
    """The file is not a usable state file (corrupted, truncated, wrong model or shape)."""


@dataclass
class StateFile:
    fingerprint: str
    token_ids: list[int]
    kv: torch.Tensor
    record: dict[str, Any]  # the state's metadata as it was written


def encode(fingerprint: str, token_ids: list[int], kv: torch.Tensor, record: dict) -> bytes:
    if kv.shape[1] != len(token_ids) - 1:
        raise ValueError("the KV must cover every token but the last")
    payload = st_save(
        {"kv": kv.contiguous(), "token_ids": torch.tensor(token_ids, dtype=torch.int64)},
        metadata={"format": FORMAT, "fingerprint": fingerprint, "record": json.dumps(record)},
    )
    return zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True).compress(payload)


def decode(data: bytes, max_payload: int | None = None) -> StateFile:
    """Read a state file; `max_payload` bounds its decompressed size (checked from the
    frame header before anything is allocated)."""
    try:
        size = zstandard.frame_content_size(data)
        if size < 0:
            raise StateFileError("not a state file: its frame does not declare its size")
        if max_payload is not None and size > max_payload:
            raise StateFileError(
                f"the state file holds {size} bytes, more than a state of this model can "
                f"({max_payload})"
            )
        payload = zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise StateFileError(f"not a state file, or a truncated or corrupted one ({exc})") from exc
    try:
        tensors = st_load(payload)
        metadata = _metadata(payload)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise StateFileError(f"the state file's contents are damaged ({exc})") from exc
    if metadata.get("format") != FORMAT or set(tensors) != {"kv", "token_ids"}:
        raise StateFileError(f"not a {FORMAT} file")
    kv, tokens = tensors["kv"], tensors["token_ids"]
    n = tokens.numel()
    if tokens.dim() != 1 or n < 1 or kv.dim() != 4 or kv.shape[1] != n - 1:
        raise StateFileError("the state file's KV and tokens do not match")
    try:
        record = json.loads(metadata.get("record", "{}"))
    except json.JSONDecodeError as exc:
        raise StateFileError("the state file's record is damaged") from exc
    if not isinstance(record, dict) or not all(
        isinstance(record.get(k, {}), dict) for k in ("config", "checkpoints", "meta")
    ):
        raise StateFileError("the state file's record is not in the expected shape")
    return StateFile(metadata.get("fingerprint", ""), tokens.tolist(), kv, record)


def _metadata(payload: bytes) -> dict[str, str]:
    """The safetensors header's `__metadata__` (safetensors.torch.load drops it)."""
    n = int.from_bytes(payload[:8], "little")
    if n <= 0 or 8 + n > len(payload):
        raise ValueError("bad header size")
    return json.loads(payload[8 : 8 + n]).get("__metadata__", {})


TEMPORARY = ".tmp"
_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a temporary file next to `path` (named for this process, so concurrent writers
    never share one), fsync it and rename it over `path`, then fsync the directory: a crash
    leaves the old file or the new one, never part of one. A write that fails removes its
    temporary file; a full disk (or quota) is `DiskFull`, with nothing written."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f"{path.name}.{os.getpid()}.", suffix=TEMPORARY, dir=path.parent
        )
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(path.parent)
    except OSError as exc:
        if exc.errno in _FULL:
            raise DiskFull(
                "the server's state directory is full (no space left on device): nothing "
                "was written; retry once space has been freed on the server"
            ) from exc
        raise
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort: the file is in place either way,
    so a failure here is not the write's)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files under `directory` that a process which is gone (killed
    mid-write) left behind; a live process's writes in progress are left alone."""
    removed = []
    for tmp in directory.rglob(f"*{TEMPORARY}") if directory.is_dir() else []:
        if SUFFIX not in tmp.name:
            continue
        pid = tmp.name.removesuffix(TEMPORARY).rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def safe_path(directory: Path, name: str) -> Path:
    """`directory/name.gbstate`, for a plain name only: no separators, no `..`, no hidden
    files, so a name can never reach outside `directory`."""
    stem = name.removesuffix(SUFFIX)
    if not _NAME.fullmatch(stem) or ".." in stem:
        raise ValueError(
            "a state file name is 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    root = directory.resolve()
    path = (root / (stem + SUFFIX)).resolve()
    if path.parent != root:
        raise ValueError("the name must stay inside the state directory")
    return path
