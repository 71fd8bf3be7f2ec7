"""Feature readout overhead: 16 concurrent streamed chats with `readout` on, against the same
16 without it, through the HTTP API of one `glassbox serve` in the same run. Target: with
readout >= 0.85x the tokens/s without it.

Starts `glassbox serve` (the bundled SmolLM2-135M-Instruct, as `make serve` serves it) on a
free loopback port with its own temporary database and state directory, waits for
/health/ready and loads the feature dictionaries (one readout request). Then, --repeats
times, interleaved so that drifting machine load hits both alike: --streams streamed
/v1/chat/completions at once (distinct questions, greedy, --new-tokens tokens each with
ignore_eos), once plain and once with `"readout": {"features": --features}`. Aggregate
tokens/s is the streams' completion tokens over the wall time of the round; the best round
of each is compared. The readout rounds check that every token came with its features.

    .venv/bin/python benchmarks/readout.py [--streams 16] [--new-tokens 64] [--repeats 3]
        [--features 5] [--dictionary NAME] [-- more `glassbox serve` options]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import httpx
from load import free_port, serving, wait_ready
from prompts import QUESTIONS

TARGET = 0.85


async def stream(client: httpx.AsyncClient, question: str, args, readout: dict | None) -> int:
    """One streamed chat; its completion tokens (every one with its readout, when asked)."""
    body = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": args.new_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if readout is not None:
        body["readout"] = readout
    tokens = read = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {(await r.aread()).decode()[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk["choices"]:
                read += len(choice.get("readout") or [])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if readout is not None and read != tokens:
        raise RuntimeError(f"{tokens} tokens came with {read} readouts")
    return tokens


async def round_(url: str, args, readout: dict | None) -> float:
    """One round of --streams concurrent streams: aggregate tokens/s."""
    questions = [
        QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})")
        for i in range(args.streams)
    ]
    limits = httpx.Limits(max_connections=args.streams + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(stream(client, q, args, readout) for q in questions))
        return sum(counts) / (time.perf_counter() - t0)


async def bench(url: str, args) -> tuple[float, float]:
    readout = {"features": args.features}
    if args.dictionary:
        readout["dictionary"] = args.dictionary
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        t0 = time.perf_counter()
        await stream(client, "Say hello.", argparse.Namespace(new_tokens=4), readout)
        print(f"feature dictionaries ready in {time.perf_counter() - t0:.1f} s")
    await round_(url, argparse.Namespace(**{**vars(args), "new_tokens": 8}), None)  # warm-up
    best_plain = best_read = 0.0
    for i in range(args.repeats):
        plain = await round_(url, args, None)
        read = await round_(url, args, readout)
        print(f"round {i + 1}: without readout {plain:.1f} tok/s, with readout {read:.1f} tok/s")
        best_plain, best_read = max(best_plain, plain), max(best_read, read)
    return best_plain, best_read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--features", type=int, default=5, help="features per token")
    ap.add_argument("--dictionary", help="the dictionary to read (default: concept vectors)")
    ap.add_argument("serve_args", nargs="*", help="after --: more `glassbox serve` options")
    args = ap.parse_args()

    import torch

    from glassbox.models.kernels import describe_cpu

    print(describe_cpu())
    print(f"torch capability: {torch.backends.cpu.get_cpu_capability()}, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ,
               "GLASSBOX_DATABASE_URL": f"sqlite:///{tmp / 'readout.db'}",
               "GLASSBOX_STATES_DIR": str(tmp / "states"),
               "GLASSBOX_FILES_DIR": str(tmp / "files")}  # fmt: skip
        with serving(port, env, tmp / "server.log", args.serve_args) as server:
            wait_ready(url, server)
            plain, read = asyncio.run(bench(url, args))
    ratio = read / plain
    print(f"{args.streams} streams without readout: {plain:.1f} tok/s")
    print(f"{args.streams} streams with readout ({args.features} features/token): {read:.1f} tok/s")
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"{verdict}: with/without readout = {ratio:.3f} (target >= {TARGET})")


if __name__ == "__main__":
    main()
