"""Hostile inputs and the checks of the hostile-input tests (tests/integration/hostile/): what
to send, and what every answer to it must be (a 4xx in OpenAI's error shape, never a 5xx)."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from helpers.server import LiveServer


@dataclass
class Hostile:
    """The hostile tests' live server (tests/integration/hostile/conftest.py)."""

    server: LiveServer
    http: httpx.Client
    root: Path  # the server's cache is root/srv/data/cache; nothing else may appear in root
    cache: Path
    ids: dict[str, str]  # kind -> id of a stored object (for the path parameters and bodies)
    baseline_blocks: int  # KV blocks in use before any object was made


# --- the strings, numbers and bodies ------------------------------------------------------------

HUGE = 5 * 1024 * 1024  # characters of the huge string
MANY = 100_000  # items of the huge list
DEEP = 10_000  # levels of the deeply nested body

LONE_SURROGATE = "a\ud800b"
NUL = "a\x00b"
# Right-to-left override, zero-width space/joiner/no-break space, and a letter with 300
# combining marks: all valid text, however odd.
UNICODE = "\u202eevil\u202c\u200b\u200d\ufeffZ" + "\u0301\u0308\u0327" * 100

STRING_KINDS: dict[str, str] = {
    "huge-string": "x" * HUGE,
    "lone-surrogate": LONE_SURROGATE,
    "nul-byte": NUL,
    "unicode-odd": UNICODE,
}

# Numbers JSON cannot say or that no field takes. Python's json module reads NaN, Infinity
# and 1e400 (as inf), so they reach the schemas. 1e400 is written as a bare token by `dumps`.
BIG_LITERAL = "@@1e400@@"
NUMBER_KINDS: dict[str, Any] = {
    "nan": float("nan"),
    "infinity": float("inf"),
    "1e400": BIG_LITERAL,
    "minus-one": -1,
    "2**63": 2**63,
}

TRAVERSALS = ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%00", "a\x00b", "..", "x" * 10_000)


def dumps(body: Any) -> bytes:
    """JSON as Python writes it (NaN and Infinity as those words, lone surrogates escaped),
    with BIG_LITERAL written as the bare number 1e400."""
    return json.dumps(body).replace(f'"{BIG_LITERAL}"', "1e400").encode()


MALFORMED_BODIES: dict[str, bytes] = {
    "malformed-json": b'{"model": "x", "messages": [{"role": "user", "content": "hi"',
    "trailing-garbage": b'{"a": 1} }}}',
    "invalid-utf8": b'{"prompt": "\xff\xfe\xfd"}',
    "not-an-object": b"[1, 2, 3]",
    "deep-array": b"[" * DEEP + b"]" * DEEP,
    "deep-object": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
}


def nested(depth: int) -> Any:
    """A JSON object `depth` levels deep ({"a": {"a": ... 1}})."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


# --- the checks -------------------------------------------------------------------------------


def error_of(r: httpx.Response, what: str) -> dict[str, Any]:
    """The 4xx error object of `r`, checked to be OpenAI's shape with a message that says
    something; an AssertionError naming `what` otherwise."""
    assert 400 <= r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(f"{what}: {r.status_code} is not JSON: {r.text[:300]}") from None
    assert isinstance(body, dict) and set(body) == {"error"}, f"{what}: {r.text[:300]}"
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, f"{what}: {r.text[:300]}"
    assert isinstance(error["message"], str) and len(error["message"]) >= 10, f"{what}: {error}"
    assert isinstance(error["type"], str) and error["type"], f"{what}: {error}"
    assert "internal" not in error["message"].lower(), f"{what}: {error}"
    return error


def files_outside(root: Path, inside: Path) -> list[Path]:
    """Files (and folders) under `root` that are not under `inside`, nor one of its parents."""
    keep = {inside, *inside.parents}
    return sorted(
        p for p in root.rglob("*") if p != inside and inside not in p.parents and p not in keep
    )


class Marker:
    """Unpickling this opens (so creates) the file at `path`: a pickle that must never be
    loaded leaves the file behind when it is."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def marker_pickle(path: Path) -> bytes:
    return pickle.dumps(Marker(path))
