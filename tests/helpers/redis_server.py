"""A real Redis for the tests: Debian's `redis-server` (installed with apt-get when missing),
started on a loopback port in a temporary directory and stopped afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers.live_server import free_port


def _binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        install = ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update"], check=True, capture_output=True)
            subprocess.run(install, check=True, capture_output=True)
        found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed and apt-get could not install it")
    return found


@contextmanager
def running_redis() -> Iterator[str]:
    """A started server's URL (`redis://127.0.0.1:PORT/0`)."""
    root = Path(tempfile.mkdtemp(prefix="glassbox-redis-"))
    port = free_port()
    server = subprocess.Popen(
        [_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(root, ignore_errors=True)
