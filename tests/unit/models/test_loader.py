"""The conversion cache of GGUF files: named by the file's content, so that a reinstalled
package (a new path or mtime) finds the conversion it made before; the digest remembered by
path, size and mtime; stale conversions of the same file name removed. The conversion itself
runs in the tests of the bundled model (tests/e2e/)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from glassbox.models.loader import DIGESTS_FILE, content_digest, convert_gguf

BYTES = b"GGUF" + bytes(range(256)) * 64


def gguf(folder: Path, data: bytes = BYTES, name: str = "m.gguf") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def converted(models: Path, name: str, *sources: Path, legacy: bool = False) -> Path:
    """A finished conversion, as `convert_gguf` leaves one (legacy: the one-source form
    written before conversions were named by content)."""
    folder = models / name
    folder.mkdir(parents=True)
    done = {"source": str(sources[0])} if legacy else {"sources": [str(s) for s in sources]}
    (folder / "complete.json").write_text(json.dumps(done))
    return folder


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def test_the_same_file_in_another_folder_shares_one_conversion(tmp_path: Path):
    models = tmp_path / "cache" / "models"
    first, second = gguf(tmp_path / "venv-1"), gguf(tmp_path / "venv-2")
    made = converted(models, f"m-{digest_of(BYTES)}", first)

    assert convert_gguf(second, tmp_path / "cache") == made
    assert json.loads((made / "complete.json").read_text()) == {
        "sources": [str(first), str(second)]
    }
    assert convert_gguf(first, tmp_path / "cache") == made  # both stay its sources
    assert len(json.loads((made / "complete.json").read_text())["sources"]) == 2
    assert [p.name for p in models.iterdir() if p.is_dir()] == [made.name]


def test_the_digest_is_read_once_per_path_size_and_mtime(tmp_path: Path):
    models = tmp_path / "models"
    models.mkdir()
    path = gguf(tmp_path / "venv")
    assert content_digest(path, models) == digest_of(BYTES)

    # Other bytes of the same size under the same mtime: the remembered digest (no re-read).
    other = BYTES[::-1]
    stat = path.stat()
    path.write_bytes(other)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_digest(path, models) == digest_of(BYTES)

    # A new mtime (a reinstall): read again, and the path's old entry is dropped.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert content_digest(path, models) == digest_of(other)
    index = json.loads((models / DIGESTS_FILE).read_text())
    assert list(index.values()) == [digest_of(other)]


def test_stale_conversions_of_the_file_name_are_removed(tmp_path: Path):
    """Kept: the one served, one whose source still exists elsewhere, one not finished, one
    of another file name. Removed: one whose sources are all gone, and one made from an
    earlier file at this same path (a reinstall; here in the form written before)."""
    models = tmp_path / "cache" / "models"
    here = gguf(tmp_path / "venv", BYTES)
    elsewhere = gguf(tmp_path / "old-venv", b"an older release")
    served = converted(models, f"m-{digest_of(BYTES)}", here)
    kept = converted(models, f"m-{digest_of(b'an older release')}", elsewhere)
    unfinished = models / "m-00000000000000aa"
    unfinished.mkdir()
    other_name = converted(models, "m-q8-00000000000000bb", tmp_path / "gone" / "m-q8.gguf")
    gone = converted(models, "m-00000000000000cc", tmp_path / "gone" / "m.gguf")
    reinstalled = converted(models, "m-00000000000000dd", here, legacy=True)
    (reinstalled / "model.safetensors").write_bytes(b"0" * 1024)

    assert convert_gguf(here, tmp_path / "cache") == served
    left = {p.name for p in models.iterdir() if p.is_dir()}
    assert left == {served.name, kept.name, unfinished.name, other_name.name}
    assert not gone.exists() and not reinstalled.exists()

    shutil.rmtree(tmp_path / "old-venv")  # its last source goes: so does its conversion
    convert_gguf(here, tmp_path / "cache")
    assert not kept.exists() and served.exists()
