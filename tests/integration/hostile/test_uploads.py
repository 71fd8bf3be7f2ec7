"""Pickles where state files and vectors come in, and path traversal in every name that
could become a file name: each refused with a clear 4xx (or stored as harmless bytes), no
pickle ever loaded (its marker file never appears), no file written outside the cache."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers.hostile import TRAVERSALS, Hostile, error_of, files_outside, marker_pickle

from glassbox.features.vector_files import load_vector_folder


@pytest.fixture
def marker(hostile: Hostile) -> Iterator[Path]:
    """Where an unpickled payload would write: a file in the root, outside the cache."""
    path = hostile.root / "unpickled-marker"
    yield path
    assert not path.exists(), "a pickle was loaded: its marker file was written"
    assert not files_outside(hostile.root, hostile.cache), "a file appeared outside the cache"


def _torch_style(payload: bytes) -> bytes:
    """The payload as torch.save lays a pickle out: a zip with archive/data.pkl."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    return out.getvalue()


def test_a_pickle_is_no_state_file(hostile: Hostile, marker: Path) -> None:
    payload = marker_pickle(marker)
    for body in (payload, _torch_style(payload), b"\x80\x04" + payload[2:]):
        r = hostile.http.post(
            "/states/import", content=body, headers={"content-type": "application/octet-stream"}
        )
        error = error_of(r, "a pickle imported as a state")
        assert error["param"] == "file", error


def test_a_pickle_is_stored_as_bytes_and_never_loaded(hostile: Hostile, marker: Path) -> None:
    """/v1/files keeps bytes (any name, any content) and never loads them; ingesting the pickle
    into a vector store reads it as text or fails it, never unpickles it."""
    http = hostile.http
    payload = marker_pickle(marker)
    made = []
    for name in ("vectors.pkl", "steer.pt", "state.gbstate", "v.npy"):
        r = http.post("/v1/files", files={"file": (name, payload)}, data={"purpose": "assistants"})
        assert r.status_code == 200, r.text
        made.append(r.json()["id"])
        assert http.get(f"/v1/files/{made[-1]}/content").content == payload
    # Not UTF-8 text: refused as such (read as bytes, never loaded).
    store = http.post("/v1/vector_stores", json={"name": "pickles", "file_ids": made})
    assert error_of(store, "pickles into a vector store")["param"] == "file_id"
    for file_id in made:
        http.delete(f"/v1/files/{file_id}")


def test_pickled_vector_files_are_refused(tmp_path: Path, marker: Path) -> None:
    """Vector files come from the operator's folders (no route uploads them): a pickled .pt,
    a torch.save-style zip and an object-array .npy are refused, naming the file."""
    payload = marker_pickle(marker)
    cases = {
        "a.pt": payload,
        "b.pth": _torch_style(payload),
        "c.npy": _npy_with_objects(payload),
    }
    for name, data in cases.items():
        folder = tmp_path / name.replace(".", "-")
        folder.mkdir()
        (folder / name).write_bytes(data)
        with pytest.raises(ValueError, match=name):
            load_vector_folder(folder, layer=1, hidden_size=64)


def _npy_with_objects(payload: bytes) -> bytes:
    """An .npy of dtype object: its data is a pickle (np.load needs allow_pickle for it)."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out, {"descr": "|O", "fortran_order": False, "shape": (1,)}
    )
    return out.getvalue() + payload


# --- names that become file names --------------------------------------------------------------


def _escapes(hostile: Hostile) -> list[str]:
    """Names that would land a file in the root (outside the cache) if a service joined them
    to one of its folders unchecked."""
    target = hostile.root / "escaped"
    return [
        *TRAVERSALS,
        "../" * 12 + str(target).lstrip("/"),
        str(target),
        "..\\..\\..\\escaped",
        "exports/../../escaped",
        ".hidden",
        "name.gbstate/../../x",
    ]


def test_traversal_in_state_file_names(hostile: Hostile) -> None:
    http, state = hostile.http, hostile.ids["state"]
    for name in _escapes(hostile):
        what = f"export name {name[:40]!r}"
        error_of(http.post(f"/states/{state}/export", json={"name": name}), what)
        error_of(http.post("/states/import", json={"name": name}), what + " (import)")
        r = http.delete(f"/states/exports/{_quoted(name)}")
        error_of(r, what + " (delete)")
        r = http.post(f"/states/{state}/checkpoints", json={"name": name})
        error_of(r, f"checkpoint name {name[:40]!r}")
    assert {e["name"] for e in http.get("/states/exports").json()["data"]} <= {
        hostile.ids["export"],
        "walked",
    }


def _quoted(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def test_traversal_in_other_names(hostile: Hostile) -> None:
    """Variant namespaces and ids, chat user ids, collections, vector store and file names,
    tenants: names kept in the database, never joined to a path; each refused or stored as
    text, and nothing written outside the cache."""
    http = hostile.http
    for name in _escapes(hostile):
        what = repr(name[:40])
        for body in (
            {"session_id": name, "variant_id": "v", "base_variant_id": "default"},
            {"session_id": "ns", "variant_id": name, "base_variant_id": "default"},
        ):
            _refused_or_stored(http.post("/variants", json=body), f"variant {what}")
        r = http.post(
            "/v1/files", files={"file": (name, b"some text")}, data={"purpose": "assistants"}
        )
        _refused_or_stored(r, f"file name {what}")
        if r.is_success:
            content = http.get(f"/v1/files/{r.json()['id']}/content")
            assert content.status_code == 200, f"file name {what}: {content.text}"
            http.delete(f"/v1/files/{r.json()['id']}")
        r = http.post("/v1/vector_stores", json={"name": name})
        _refused_or_stored(r, f"vector store name {what}")
        if name == ".hidden":
            continue  # a valid tenant: its folder (exports/.hidden) is inside the cache
        error_of(http.post("/admin/keys", json={"tenant": name, "scopes": ["read"]}), what)
        if _header_safe(name):
            r = http.get("/states", headers={"X-Glassbox-Tenant": name})
            error_of(r, f"X-Glassbox-Tenant {what}")


def _header_safe(value: str) -> bool:
    return value.isascii() and "\x00" not in value and len(value) < 4096


def _refused_or_stored(r: httpx.Response, what: str) -> None:
    if r.is_success:
        return
    error_of(r, what)


def test_header_injection_in_a_file_name(hostile: Hostile) -> None:
    """A file name with quotes and line breaks comes back in Content-Disposition: it must
    neither break the response nor add a header."""
    http = hostile.http
    for name in ('a"; filename="evil.sh', "a\r\nX-Injected: yes", "naïve ✓.txt", "a\x00b"):
        r = http.post("/v1/files", files={"file": (name, b"text")}, data={"purpose": "assistants"})
        if not r.is_success:
            error_of(r, f"file name {name!r}")
            continue
        content = http.get(f"/v1/files/{r.json()['id']}/content")
        assert content.status_code == 200, f"{name!r}: {content.status_code} {content.text}"
        assert "x-injected" not in content.headers
        assert content.content == b"text"
        http.delete(f"/v1/files/{r.json()['id']}")
