"""The real bundled model (SmolLM2-135M-Instruct), served live. Slow: deselect with
-m 'not slow'."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import goodfire
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
        _stop(proc, log)


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


# --- the first feature search of a fresh server --------------------------------------------

ALIAS = "meta-llama/Llama-3.3-70B-Instruct"  # a model name the goodfire SDK knows
T = TypeVar("T")


@contextmanager
def glassbox_serve(log_path: Path) -> Iterator[str]:
    """`glassbox serve` in a process of its own (nothing imported or loaded beforehand, as
    on a real start), on the default cache; its base URL."""
    port = free_port()
    env = {**os.environ, "GLASSBOX_MODEL_ALIASES": json.dumps({ALIAS: "SmolLM2-135M-Instruct"})}
    log = log_path.open("w+b")
    proc = subprocess.Popen(
        [*_glassbox_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
        assert proc.poll() is None
    except BaseException:
        log.seek(0)
        print(log.read().decode(errors="replace")[-3000:])
        raise
    finally:
        _stop(proc, log)


def first_health(http: httpx.Client, timeout: float = 120.0) -> tuple[float, dict]:
    """Poll /health until the server answers: when it did, and what it said."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = http.get("/health")
        except httpx.TransportError:
            time.sleep(0.01)
            continue
        assert r.status_code == 200, r.text
        return time.monotonic(), r.json()
    raise AssertionError(f"no /health answer within {timeout} s")


@pytest.fixture(scope="module")
def warm_features_cache(bundled_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The bundled model's concept vectors and label embeddings in the default cache: built
    by a first server's warm-up if they are not there yet (minutes, once per cache)."""
    log = tmp_path_factory.mktemp("warm") / "serve.log"
    with glassbox_serve(log) as url, httpx.Client(base_url=url, timeout=10) as http:
        first_health(http)
        deadline = time.monotonic() + 900
        while not http.get("/health").json()["features"]["ready"]:
            assert time.monotonic() < deadline, "features not ready within 900 s"
            time.sleep(0.5)


def with_event_loop(fn: Callable[[], T]) -> T:
    """`fn()` on a thread with an event loop of its own: the SDK's sync client runs on the
    thread's current loop, and this thread's loop is left as it was for the other tests."""

    def run() -> T:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            return fn()
        finally:
            asyncio.get_event_loop().close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


@pytest.mark.parametrize("client", ["http", "goodfire"])
def test_the_first_feature_search_of_a_fresh_server_answers_within_2_s(
    warm_features_cache: None, tmp_path: Path, client: str
) -> None:
    """Measured from the server's first /health answer: the start-up warm-up has the
    dictionaries and the search index ready (or the search waits for the same warm-up)."""
    with glassbox_serve(tmp_path / "serve.log") as url:
        gf = goodfire.Client(api_key="anything", base_url=url)
        with httpx.Client(base_url=url, timeout=10) as http:  # the SDK's timeout too
            t0, health = first_health(http)
            if client == "http":
                body = {"query": "pirate", "session_id": "first", "top_k": 5}
                r = http.post("/features/search", json=body)
                assert r.status_code == 200, r.text
                labels = [f["label"] for f in r.json()]
            else:
                found = with_event_loop(lambda: gf.features.search("pirate", model=ALIAS, top_k=5))
                labels = [f.label for f in found]
            elapsed = time.monotonic() - t0
            ready = http.get("/health").json()["features"]
    print(f"first search {elapsed:.3f} s after the first /health ({health['features']})")
    assert ready == {"ready": True, "stage": "ready"}
    assert any("pirate" in label.lower() for label in labels), labels
    assert elapsed < 2.0, f"{elapsed:.2f} s (features at the first /health: {health['features']})"


def _stop(proc: subprocess.Popen, log) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
