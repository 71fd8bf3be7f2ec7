"""The real bundled model (SmolLM2-135M-Instruct), served live. Slow: deselect with
-m 'not slow'."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from helpers.live_server import free_port, serve_in_thread

from glassbox.app import create_app
from glassbox.config import Settings
from glassbox.runtime import resolve

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def bundled_cache() -> Path:
    """Converts the bundled GGUF into the cache once (about 30 s the first time)."""
    return resolve(Settings(model="bundled")).directory


@pytest.fixture(scope="module")
def bundled_url(bundled_cache: Path):
    # No engine given: the app's lifespan loads the model and stops the engine at the end.
    with serve_in_thread(create_app(Settings(model="bundled")), startup_timeout=600) as url:
        yield url


def test_capital_of_france(bundled_url: str) -> None:
    kw = {"model": "SmolLM2-135M-Instruct", "messages": QUESTION, "temperature": 0}
    with openai.OpenAI(base_url=bundled_url + "/v1", api_key="unused", max_retries=0) as client:
        r = client.chat.completions.create(**kw, max_tokens=30)
        cut = client.chat.completions.create(**kw, max_tokens=3)
    assert "Paris" in r.choices[0].message.content
    # The greedy answer is one short sentence ended by the model's EOS, well inside 30 tokens.
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens < 30
    # Three tokens cannot hold it: the same answer cut at max_tokens.
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
    assert r.choices[0].message.content.startswith(cut.choices[0].message.content)


def _glassbox_command() -> list[str]:
    script = Path(sys.executable).parent / "glassbox"
    if script.exists():
        return [str(script)]
    found = shutil.which("glassbox")
    return [found] if found else [sys.executable, "-m", "glassbox.cli"]


def test_glassbox_serve_answers(bundled_cache: Path, tmp_path: Path) -> None:
    """`glassbox serve` starts and answers (the --port flag winning over GLASSBOX_PORT). How
    fast is a benchmark figure (benchmarks/startup.py); 60 s here only catches a hang."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w+b")
    env = {**os.environ, "GLASSBOX_PORT": "1"}  # the --port flag must win over the env var
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*_glassbox_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        answer = None
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            while answer is None and time.monotonic() - t0 < 60 and proc.poll() is None:
                try:
                    r = http.post(
                        "/v1/chat/completions",
                        json={"messages": QUESTION, "temperature": 0, "max_tokens": 10},
                    )
                except httpx.TransportError:
                    time.sleep(0.1)
                    continue
                assert r.status_code == 200, r.text
                answer = r.json()["choices"][0]["message"]["content"]
        log.seek(0)
        assert proc.poll() is None, log.read().decode(errors="replace")[-2000:]
        assert answer is not None, "no answer within 60 s"
        assert "Paris" in answer  # the greedy answer fits in its 10 tokens
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_a_state_exported_and_imported_after_a_restart_continues_identically(
    bundled_cache: Path, tmp_path: Path
) -> None:
    settings = Settings(
        model="bundled",
        states_dir=tmp_path / "states",
        database_url=f"sqlite:///{tmp_path / 'glassbox.db'}",
        warm_features=False,
    )
    story = {"role": "user", "content": "Tell me a short story about a lighthouse keeper."}
    body = {"max_tokens": 32, "temperature": 0.8, "seed": 1234}
    with serve_in_thread(create_app(settings), startup_timeout=600) as url:
        with httpx.Client(base_url=url, timeout=120) as http:
            state = http.post("/states", json={"messages": [story]}).json()
            before = http.post("/generate/token", json={"state_id": state["id"], **body}).json()
            data = http.get(f"/states/{state['id']}/export").content
    with serve_in_thread(create_app(settings), startup_timeout=600) as url:
        with httpx.Client(base_url=url, timeout=120) as http:
            r = http.post(
                "/states/import", content=data, headers={"content-type": "application/octet-stream"}
            )
            assert r.status_code == 201, r.text
            after = http.post("/generate/token", json={"state_id": r.json()["id"], **body}).json()
            kept = http.post("/generate/token", json={"state_id": state["id"], **body}).json()
    assert len(before["tokens"]) == 32
    assert after["text"] == before["text"] and kept["text"] == before["text"]
