"""A throwaway PostgreSQL 16 server for tests, run from the binaries in the `pgserver` wheel.

`running_postgres()` runs initdb into a temporary directory, starts postgres on 127.0.0.1
at a free port (its Unix socket in that directory too), waits until it takes connections
and yields an SQLAlchemy URL; at the end it stops the server and removes the directory.
PostgreSQL refuses to run as root: as root, initdb and postgres run as `nobody` (created if
the machine has no such user), which owns the directory, from a copy of the binaries in it.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, make_url
from sqlalchemy import text as sql

from helpers.live_server import free_port

USER = "postgres"  # the database superuser initdb makes (trust authentication, loopback only)
UNPRIVILEGED = "nobody"


def _bin_dir() -> Path:
    # Located, not imported: only its files are needed.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pgserver package is not installed (pip install -e '.[dev]')")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _copy_install(bin_dir: Path, into: Path) -> Path:
    """A copy of the server's files for a user who may not reach the virtualenv (one under
    /root, say), laid out as in the wheel: its binaries load libpq from
    $ORIGIN/../../../pgserver.libs. Returns the copy's bin directory."""
    package = bin_dir.parent.parent
    shutil.copytree(package / "pginstall", into / "pgserver" / "pginstall", symlinks=True)
    libs = package.parent / "pgserver.libs"
    if libs.is_dir():
        shutil.copytree(libs, into / "pgserver.libs")
    return into / "pgserver" / "pginstall" / "bin"


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to the unprivileged user; none when not root."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             UNPRIVILEGED],
            check=True,
        )  # fmt: skip
        user = pwd.getpwnam(UNPRIVILEGED)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _wait_ready(server: subprocess.Popen, port: int, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"postgres exited with {server.returncode}:\n{log.read_text()}")
        try:
            psycopg.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres").close()
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                message = f"postgres did not start in {timeout} s:\n{log.read_text()}"
                raise RuntimeError(message) from exc
            time.sleep(0.1)


@contextmanager
def running_postgres() -> Iterator[str]:
    """A started server's URL (`postgresql+psycopg://postgres@127.0.0.1:PORT/postgres`)."""
    bin_dir = _bin_dir()
    as_user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="glassbox-pg-"))
    data, log = root / "data", root / "postgres.log"
    server: subprocess.Popen | None = None
    try:
        if as_user:
            os.chown(root, as_user["user"], as_user["group"])
            bin_dir = _copy_install(bin_dir, root / "install")
        initdb = subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", USER, "--auth=trust", "--encoding=UTF8",
             "--no-locale", "--no-sync"],
            cwd=root, capture_output=True, text=True, **as_user,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb exited with {initdb.returncode}:\n{initdb.stderr}")
        port = free_port()
        with open(log, "wb") as out:
            # -F: no fsync; the data lives for one test session.
            server = subprocess.Popen(
                [bin_dir / "postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port),
                 "-k", root, "-F"],
                cwd=root, stdout=out, stderr=subprocess.STDOUT, **as_user,
            )  # fmt: skip
        _wait_ready(server, port, log)
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # fast shutdown: ends sessions, then stops
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the server at `server_url`, dropped afterwards
    (with any connections still open to it)."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sql(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sql(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
