"""Embeddings over HTTP against sentence-transformers' own `encode`, in the same run.

Starts `glassbox serve` on a loopback port and embeds --texts short texts (default 1,000)
two ways, on the bundled all-MiniLM-L6-v2 with the same batch size (--batch, default 32):

- peer: `SentenceTransformer.encode(texts, batch_size=B)` in this process, timed after the
  server has stopped (and this process runs no torch op before: an idle OpenMP team of this
  process would spin on the cores the server needs);
- glassbox: `POST /v1/embeddings` through the official openai package (base64 vectors, its
  default), one request per B texts, --concurrency requests in flight (default 4), the
  cache cleared first so every text is computed.

Printed: texts/s of both and the ratio glassbox / peer (target >= 1); the smallest cosine
between glassbox's vectors and the peer's (target >= 0.999); and a cache hit's latency end
to end over loopback, p50 and p99 of --hits requests of one text already embedded (target
p50 < 2 ms). Best of --repeats for the throughputs.

    .venv/bin/python benchmarks/embeddings.py [--texts 1000] [--batch 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import openai

MODEL = "all-MiniLM-L6-v2"
WORDS = (
    "the a river bright cold market quietly engine garden reads under over music city old "
    "new small quick slow tax bread chess volcano winter light paper story learns builds "
    "children teacher ocean mountain coffee morning evening train station window green"
).split()


def texts(n: int, seed: int = 0) -> list[str]:
    """n distinct short sentences of 5 to 15 words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.choices(WORDS, k=rng.randint(5, 15))
        out.append(" ".join(words).capitalize() + f" (no. {i}).")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peer(sentences: list[str], batch: int, repeats: int) -> tuple[float, np.ndarray]:
    from sentence_transformers import SentenceTransformer

    from glassbox.embeddings.embedder import default_model_path

    model = SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)
    model.encode(sentences[:batch], batch_size=batch)  # warm-up
    best, vectors = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        vectors = model.encode(sentences, batch_size=batch, normalize_embeddings=True)
        best = min(best, time.perf_counter() - t0)
    return best, np.asarray(vectors)


async def glassbox(
    url: str, sentences: list[str], batch: int, concurrency: int, repeats: int
) -> tuple[float, np.ndarray]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    batches = [sentences[i : i + batch] for i in range(0, len(sentences), batch)]
    limit = asyncio.Semaphore(concurrency)

    async def one(texts_: list[str]) -> list[list[float]]:
        async with limit:
            reply = await client.embeddings.create(model=MODEL, input=texts_)
            return [d.embedding for d in reply.data]

    await one(sentences[:batch])  # warm-up (loads the model)
    best, vectors = float("inf"), None
    async with httpx.AsyncClient(base_url=url) as http:
        for _ in range(repeats):
            await http.delete("/v1/embeddings/cache")
            t0 = time.perf_counter()
            rows = await asyncio.gather(*(one(b) for b in batches))
            best = min(best, time.perf_counter() - t0)
            vectors = np.array([r for b in rows for r in b], dtype=np.float32)
    await client.close()
    return best, vectors


def cache_hits(url: str, n: int) -> list[float]:
    body = {"model": MODEL, "input": "a sentence that is already in the cache"}
    times = []
    with httpx.Client(base_url=url) as http:
        http.post("/v1/embeddings", json=body).raise_for_status()
        for _ in range(n):
            t0 = time.perf_counter()
            http.post("/v1/embeddings", json=body).raise_for_status()
            times.append(time.perf_counter() - t0)
    return times


def wait_ready(url: str, server: subprocess.Popen) -> None:
    for _ in range(600):
        if server.poll() is not None:
            raise RuntimeError("glassbox serve exited")
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("glassbox serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hits", type=int, default=300)
    args = parser.parse_args()

    from glassbox.models.kernels import describe_cpu

    print(describe_cpu())
    sentences = texts(args.texts)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GLASSBOX_WARM_FEATURES": "false",
               "GLASSBOX_DATABASE_URL": f"sqlite:///{Path(tmp) / 'bench.db'}"}  # fmt: skip
        log = (Path(tmp) / "server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "glassbox.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_ready(url, server)
            ours_s, ours_vectors = asyncio.run(
                glassbox(url, sentences, args.batch, args.concurrency, args.repeats)
            )
            hits = cache_hits(url, args.hits)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    peer_s, peer_vectors = peer(sentences, args.batch, args.repeats)

    cosines = (ours_vectors * peer_vectors).sum(1) / (
        np.linalg.norm(ours_vectors, axis=1) * np.linalg.norm(peer_vectors, axis=1)
    )
    n = len(sentences)
    print(f"{n} texts, batch {args.batch}, best of {args.repeats}")
    print(f"  sentence-transformers encode (in process): {n / peer_s:8.1f} texts/s")
    print(f"  glassbox /v1/embeddings ({args.concurrency} in flight): {n / ours_s:8.1f} texts/s")
    print(f"  glassbox / sentence-transformers: {peer_s / ours_s:.2f} (target >= 1)")
    print(f"  smallest cosine to the peer's vectors: {cosines.min():.6f} (target >= 0.999)")
    hits_ms = sorted(t * 1000 for t in hits)
    p99 = hits_ms[min(len(hits_ms) - 1, int(len(hits_ms) * 0.99))]
    print(
        f"  cache hit over loopback: p50 {statistics.median(hits_ms):.2f} ms, "
        f"p99 {p99:.2f} ms (target p50 < 2 ms)"
    )


if __name__ == "__main__":
    main()
