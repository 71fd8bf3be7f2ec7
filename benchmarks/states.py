"""KV states on the bundled model: continuing a 1,000-token state against reading the same
text cold, and forking a state against copying its KV.

- time to first token: `POST /generate/token` on a state computes only the state's last
  token (the rest of its KV is reused); the peer is a cold prefill of the same 1,000 tokens
  (a fresh prompt each run, so the prefix cache cannot help). Target: warm <= 5% of cold.
- fork: `StateService.fork` (in-process, with its SQLite record) shares the parent's blocks;
  the peer copies the state's KV out of the pool (what a server without paged, reference
  counted blocks must do). Target: <= 1 ms and no KV byte copied.

    .venv/bin/python benchmarks/states.py [--tokens 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from glassbox.config import Settings
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.block_manager import KVHandle
from glassbox.engine.llm_engine import LLMEngine
from glassbox.engine.sequence import SamplingParams
from glassbox.metrics import Metrics
from glassbox.principal import LOCAL
from glassbox.requests.generation import GenerationService
from glassbox.runtime import load_engine
from glassbox.states.service import StateService
from glassbox.store import Database

PARAGRAPH = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a tin "
    "of oil and a cloth for the great lens. From the gallery he could see the fishing boats "
    "returning to the harbour, their lamps bobbing like fireflies on the dark water. "
)


def prompt_tokens(engine: LLMEngine, n: int, variant: int) -> list[int]:
    """`n` tokens of English text; `variant` changes the first words, so no two prompts
    share a cached prefix."""
    text = f"Story number {variant}. " + PARAGRAPH * (n // 30 + 2)
    return engine.tokenizer.encode(text)[:n]


def time_to_first_token(engine: LLMEngine, ids: list[int], prefix: KVHandle | None) -> float:
    t0 = time.perf_counter()
    engine.add_request(ids, SamplingParams(max_tokens=1, temperature=0.0), prefix)
    while engine.has_work():
        engine.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    llm, resolved = load_engine(Settings())
    time_to_first_token(llm, prompt_tokens(llm, 64, -1), None)  # warm the kernels

    cold = [
        time_to_first_token(llm, prompt_tokens(llm, args.tokens, i), None) for i in range(args.runs)
    ]
    ids = prompt_tokens(llm, args.tokens, 10_000)
    state = llm.prefill_kv(ids)
    warm = [time_to_first_token(llm, ids, llm.block_manager.share(state)) for _ in range(args.runs)]
    cold_ms, warm_ms = statistics.median(cold) * 1e3, statistics.median(warm) * 1e3
    print(f"bundled model, {args.tokens}-token prompt, median of {args.runs} runs")
    print(f"time to first token: cold prefill {cold_ms:.1f} ms, continuing the state "
          f"{warm_ms:.1f} ms: {warm_ms / cold_ms:.1%} of cold (target <= 5%)")  # fmt: skip
    llm.block_manager.release(state)

    copies = 0
    copy_block = llm.runner.copy_block

    def counting_copy(src: int, dst: int) -> None:
        nonlocal copies
        copies += 1
        copy_block(src, dst)

    llm.block_manager.copy_block = counting_copy
    engine = AsyncLLMEngine(lambda: llm)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'states.db'}")
        generation = GenerationService(engine, Metrics())
        states = StateService(generation, db, Path(tmp), resolved.fingerprint, 2 * 1024**3)

        async def forks() -> tuple[list[float], list[float], int, int]:
            parent = await states.create(LOCAL, ids, {})
            handle = states.residency.get(parent.state_id)
            used_before = llm.kv_usage()[0]
            fork_times, copy_times = [], []
            for _ in range(args.runs * 4):
                t0 = time.perf_counter()
                await states.fork(LOCAL, parent.state_id)
                fork_times.append(time.perf_counter() - t0)
            for _ in range(args.runs):
                t0 = time.perf_counter()
                await engine.call(lambda e: e.read_kv(handle))
                copy_times.append(time.perf_counter() - t0)
            return fork_times, copy_times, used_before, llm.kv_usage()[0]

        fork_times, copy_times, used_before, used_after = asyncio.run(forks())
        engine.shutdown()
        db.close()
    fork_ms = statistics.median(fork_times) * 1e3
    copy_ms = statistics.median(copy_times) * 1e3
    kv_mb = llm.model.config.kv_bytes_per_token() * (args.tokens - 1) / 1e6
    print(f"fork of a {args.tokens}-token state ({kv_mb:.0f} MB of KV): {fork_ms:.2f} ms "
          f"(median of {len(fork_times)}; target <= 1 ms); copying its KV instead: "
          f"{copy_ms:.1f} ms ({copy_ms / fork_ms:.0f}x the fork)")  # fmt: skip
    print(f"KV blocks copied by {len(fork_times)} forks: {copies}; pool blocks in use before "
          f"{used_before}, after {used_after}")  # fmt: skip


if __name__ == "__main__":
    main()
