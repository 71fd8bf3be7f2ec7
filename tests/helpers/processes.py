"""`glassbox serve` as a separate process on the tiny model: for tests of several servers
(shared sessions, upstreams), which must talk to each other over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from helpers.live_server import free_port
from helpers.server import TINY_MAX_LEN, TINY_NAME


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    log: Path

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"server exited:\n{tail}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def start_server(directory: Path, model_dir: Path, **env: str) -> ServerProcess:
    """A tiny-model server with its own cache in `directory` (not yet ready: call
    `wait_ready`, so that several can start at once); `env` adds GLASSBOX_* settings."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = {
        **os.environ,
        "GLASSBOX_MODEL": str(model_dir),
        "GLASSBOX_DTYPE": "float32",
        "GLASSBOX_SERVED_MODEL_NAME": TINY_NAME,
        "GLASSBOX_MAX_MODEL_LEN": str(TINY_MAX_LEN),
        "GLASSBOX_KV_CACHE_BYTES": str(32 * 1024 * 1024),
        "GLASSBOX_CACHE_DIR": str(directory),
        "GLASSBOX_WARM_FEATURES": "false",
        **env,
    }
    log = directory / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "glassbox.cli", "serve", "--host", "127.0.0.1", "--port",
         str(port)],
        env=environment, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    return ServerProcess(proc, f"http://127.0.0.1:{port}", log)


@contextmanager
def servers(*starts: tuple[Path, Path, dict[str, str]]) -> Iterator[list[ServerProcess]]:
    """Servers started together, ready on entry, stopped on exit."""
    started = []
    try:
        for directory, model_dir, env in starts:
            started.append(start_server(directory, model_dir, **env))
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()
