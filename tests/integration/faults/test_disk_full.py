"""A full disk under the state directory (a small tmpfs the test mounts): exports are refused
with a 507 in OpenAI's error shape, spills and imports go on, no file half written is left,
the records stay what the files say, and the same operations succeed once space is freed.

What a full disk does (documented in states/service.py and files.py): a file the request
itself asks for (POST /states/{id}/export) is refused with 507 Insufficient Storage, code
`insufficient_storage`, nothing written; a spill (the memory budget pushing a state out of
the KV pool, or the flush at shutdown) that finds no room drops the state's KV instead, so
the state is served from its tokens (location "tokens", its KV recomputed on next use): a
full disk costs time, never a state or a request.
"""

from __future__ import annotations

import errno
import sqlite3
import subprocess
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from helpers.processes import ServerProcess, start_server
from helpers.waiting import wait_until

from glassbox.states import files
from glassbox.store import StateRow

# The tiny model's KV: 2 layers * (K, V) * 2 kv heads * 16 dims * fp32 = 512 bytes a token,
# 8 KiB a block of 16 tokens. Five blocks of budget hold two states of ~20 tokens.
BUDGET = 5 * 16 * 512
TEXT = "the quick brown fox jumps over the lazy dog and then the dog runs after the fox"


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the block's length (root, as here and in CI)."""
    path.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "glassbox-faults", str(path)]
    r = subprocess.run(mount, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(
            f"could not mount a {size} tmpfs at {path} for the full-disk test: "
            f"{(r.stderr or r.stdout).strip()} (the test needs root or CAP_SYS_ADMIN, as the "
            "test machines and CI have; run it there)"
        )
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left; the file (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def temporaries(disk: Path) -> list[Path]:
    return sorted(p for p in disk.rglob("*") if p.is_file() and p.name.endswith(".tmp"))


def create(http: httpx.Client, text: str) -> dict:
    r = http.post("/states", json={"text": text})
    assert r.status_code == 201, r.text
    return r.json()


def generate(http: httpx.Client, state_id: str) -> str:
    r = http.post("/generate/token", json={"state_id": state_id, "max_tokens": 4,
                                           "temperature": 0.0})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()["text"]


def states(http: httpx.Client) -> dict[str, dict]:
    """Every state by id, as GET /states/{id} shows it."""
    ids: list[str] = []
    params: dict = {"limit": 100}
    while True:
        page = http.get("/states", params=params).json()
        ids += [d["id"] for d in page["data"]]
        if not page["has_more"]:
            break
        params["after"] = page["last_id"]
    return {i: http.get(f"/states/{i}").json() for i in ids}


def exports(http: httpx.Client) -> list[str]:
    return [e["name"] for e in http.get("/states/exports").json()["data"]]


def records(server_dir: Path) -> dict[str, list[int]]:
    """The state records in the server's database: their token ids by state id."""
    db = sqlite3.connect(f"file:{server_dir / 'glassbox.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(f"SELECT state_id, token_ids FROM {StateRow.__tablename__}")
        return {state_id: array("i", tokens).tolist() for state_id, tokens in rows}
    finally:
        db.close()


def assert_consistent(http: httpx.Client, server_dir: Path, disk: Path) -> dict[str, dict]:
    """The database holds a record of every state served, with its tokens (records are
    written behind: waited for); every spill file is a whole state file of a recorded state
    with the record's tokens; every state said to be on disk has its file."""
    served = states(http)
    wanted = {i: s["token_ids"] for i, s in served.items()}
    assert wait_until(lambda: records(server_dir) == wanted, 10, 0.1), "records differ"
    for path in disk.glob(f"*{files.SUFFIX}"):
        assert path.stem in served, f"a spill file of no state: {path.name}"
        assert files.decode(path.read_bytes()).token_ids == served[path.stem]["token_ids"]
    for state_id, state in served.items():
        if state["location"] == "disk":
            assert (disk / f"{state_id}{files.SUFFIX}").is_file()
    assert temporaries(disk) == []
    return served


def assert_disk_full(r: httpx.Response) -> None:
    assert r.status_code == 507, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "insufficient_storage" and error["type"] == "server_error"
    assert "no space left" in error["message"]


def stop(server: ServerProcess) -> str:
    """SIGTERM, then the exit status checked: 0 (a clean shutdown). The server's log."""
    server.stop()
    log = server.log.read_text(errors="replace")
    assert server.proc.returncode == 0, log[-3000:]
    return log


@pytest.mark.slow
def test_a_full_state_disk_refuses_exports_and_keeps_every_state(tiny_model_dir, tmp_path):
    server_dir = tmp_path / "srv"
    with small_disk(tmp_path / "states", "1m") as disk:
        env = {"GLASSBOX_STATES_DIR": str(disk), "GLASSBOX_STATE_MEMORY_BYTES": str(BUDGET)}
        server = start_server(server_dir, tiny_model_dir, **env)
        try:
            server.wait_ready()
            with httpx.Client(base_url=server.url, timeout=60) as http:
                first = create(http, TEXT)
                r = http.post(f"/states/{first['id']}/export", json={"name": "kept"})
                assert r.status_code == 200, r.text
                download = http.get(f"/states/{first['id']}/export").content
                filler = fill(disk)

                # An export: refused, nothing written, the earlier export intact.
                for _ in range(2):
                    assert_disk_full(
                        http.post(f"/states/{first['id']}/export", json={"name": "full"})
                    )
                assert exports(http) == ["kept"] and temporaries(disk) == []
                assert_disk_full(http.post(f"/states/{first['id']}/export", json={"name": "kept"}))
                kept = files.decode((disk / "exports" / "local" / "kept.gbstate").read_bytes())
                assert kept.token_ids == first["token_ids"]

                # Spills: states past the budget are still made; those pushed out of memory
                # keep their tokens (no file could be written) and still generate.
                made = [create(http, f"{TEXT} number {i}") for i in range(5)]
                served = assert_consistent(http, server_dir, disk)
                assert {s["location"] for s in served.values()} == {"memory", "tokens"}
                for state in made:
                    assert generate(http, state["id"])

                # Imports need no disk: by name and uploaded.
                r = http.post("/states/import", json={"name": "kept"})
                assert r.status_code == 201 and r.json()["token_ids"] == first["token_ids"]
                r = http.post("/states/import", content=download,
                              headers={"content-type": "application/octet-stream"})  # fmt: skip
                assert r.status_code == 201 and r.json()["token_ids"] == first["token_ids"]
                before_room = assert_consistent(http, server_dir, disk)

                # Space freed: the same export succeeds, spills write files again.
                filler.unlink()
                r = http.post(f"/states/{first['id']}/export", json={"name": "full"})
                assert r.status_code == 200, r.text
                full = files.decode((disk / "exports" / "local" / "full.gbstate").read_bytes())
                assert full.token_ids == first["token_ids"]
                assert sorted(exports(http)) == ["full", "kept"]
                r = http.post("/states/import", json={"name": "full"})
                assert r.status_code == 201 and r.json()["token_ids"] == first["token_ids"]
                for state_id in before_room:  # each loaded, pushing others out to files
                    assert generate(http, state_id)
                served = assert_consistent(http, server_dir, disk)
                assert "disk" in {s["location"] for s in served.values()}

                # Shut down on a full disk: the states that cannot be written keep their tokens.
                last = create(http, f"{TEXT} the last one")
                filler = fill(disk)
                served = states(http)
        finally:
            log = stop(server)
        assert "state not spilled" in log
        assert temporaries(disk) == []

        # A write killed midway left its temporary file: the next start removes it.
        filler.unlink()
        dead = _dead_pid()
        stale = disk / f"{last['id']}{files.SUFFIX}.{dead}.k1ll3d00.tmp"
        stale.write_bytes(b"half a state")
        again = start_server(server_dir, tiny_model_dir, **env)
        try:
            again.wait_ready()
            with httpx.Client(base_url=again.url, timeout=60) as http:
                after = assert_consistent(http, server_dir, disk)
                assert {i: s["token_ids"] for i, s in after.items()} == {
                    i: s["token_ids"] for i, s in served.items()
                }
                for state_id in after:
                    assert generate(http, state_id)
                assert sorted(exports(http)) == ["full", "kept"]
                assert not stale.exists()
        finally:
            stop(again)


def _dead_pid() -> int:
    """The id of a process that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
