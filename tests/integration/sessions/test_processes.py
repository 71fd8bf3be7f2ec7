"""Two server processes sharing a real PostgreSQL and a real Redis serve one session: messages
sent to both at once are all stored, none twice, user and assistant strictly alternating."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.live_server import free_port
from helpers.pg_server import fresh_database
from helpers.redis_server import running_redis
from helpers.server import TINY_MAX_LEN, TINY_NAME


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    with fresh_database(postgres_url) as url:
        yield url


def serve(tmp: Path, model_dir: Path, database_url: str, redis_url: str) -> tuple:
    port = free_port()
    env = {
        **os.environ,
        "GLASSBOX_MODEL": str(model_dir),
        "GLASSBOX_DTYPE": "float32",
        "GLASSBOX_SERVED_MODEL_NAME": TINY_NAME,
        "GLASSBOX_MAX_MODEL_LEN": str(TINY_MAX_LEN),
        "GLASSBOX_KV_CACHE_BYTES": str(32 * 1024 * 1024),
        "GLASSBOX_CACHE_DIR": str(tmp),
        "GLASSBOX_WARM_FEATURES": "false",
        "GLASSBOX_DATABASE_URL": database_url,
        "GLASSBOX_REDIS_URL": redis_url,
    }
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "glassbox.cli", "serve", "--host", "127.0.0.1", "--port",
         str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not ready")


def test_two_processes_serve_one_session(tiny_model_dir, tmp_path, database_url) -> None:
    with running_redis() as redis_url:
        servers = []
        try:
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                servers.append(serve(tmp_path / name, tiny_model_dir, database_url, redis_url))
            for (proc, url), name in zip(servers, "ab", strict=True):
                wait_ready(proc, url, tmp_path / name / "server.log")
            (_, a), (_, b) = servers
            body = {"user_id": "two", "initial_message": "hello", "temperature": 0,
                    "max_tokens": 5}  # fmt: skip
            r = httpx.post(a + "/llm/chat/", json=body, timeout=60)
            assert r.status_code == 200, r.text
            sid = r.json()["session_id"]
            texts = [f"message {i}" for i in range(6)]

            def send(i: int) -> dict:
                url = (a, b)[i % 2]
                r = httpx.post(f"{url}/llm/chat/{sid}/message/",
                               json={"user_message": texts[i]}, timeout=120)  # fmt: skip
                assert r.status_code == 200, r.text
                return r.json()

            with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
                replies = list(pool.map(send, range(len(texts))))
            histories = [httpx.get(f"{u}/llm/chat/{sid}/history/").json() for u in (a, b)]
            assert histories[0] == histories[1]
            messages = histories[0]
            assert [m["sender"] for m in messages] == ["user", "assistant"] * (1 + len(texts))
            asked = [m["content"] for m in messages[2::2]]
            assert sorted(asked) == sorted(texts)  # none lost, none twice
            for text, reply in zip(texts, replies, strict=True):
                [at] = [i for i, m in enumerate(messages) if m["content"] == text]
                assert messages[at + 1]["content"] == reply["response_message"]
        finally:
            for proc, _ in servers:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
