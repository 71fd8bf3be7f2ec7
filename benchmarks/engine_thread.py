"""One thread runs torch: tokens/s through `AsyncLLMEngine` (the server's engine, built and
stepped on its own thread, consumed from asyncio) against the same engine stepped directly
on the thread that loaded it, on the bundled model, with peak memory.

Target: the async engine within 10% of the direct one (ratio >= 0.9) at 1 and 16 streams.
Each measurement runs in a fresh child process (one model, one OpenMP team each), the two
modes ABBA-interleaved; the best of each mode's runs counts. Also prints each child's RSS
after the 16-stream run, its peak (loading included) and the bytes the weights hold in
the chosen format.

    .venv/bin/python benchmarks/engine_thread.py [--new-tokens 128] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

TARGET = 0.9
STREAMS = (1, 16)


def _prompts(tokenizer, n: int) -> list[list[int]]:
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": f"Tell me a story, part {i}."}])
        for i in range(n)
    ]


def _params(n: int, new_tokens: int):
    from glassbox.engine.sequence import SamplingParams

    return [
        SamplingParams(max_tokens=new_tokens, temperature=0.8, seed=i, ignore_eos=True)
        for i in range(n)
    ]


def child(mode: str, new_tokens: int) -> dict:
    """One mode in this process: tokens/s at each stream count, peak RSS, weight bytes."""
    from glassbox.config import Settings
    from glassbox.runtime import load_engine, start_engine

    settings = Settings()
    out: dict = {}
    if mode == "direct":
        engine, _ = load_engine(settings)
        engine.warm_up()
        for n in STREAMS:
            prompts, params = _prompts(engine.tokenizer, n), _params(n, new_tokens)
            t0 = time.perf_counter()
            results = engine.generate(prompts, params)
            out[n] = sum(len(r["token_ids"]) for r in results) / (time.perf_counter() - t0)
        model = engine.model
    else:
        aengine, _ = start_engine(settings)

        async def one(ids, p) -> int:
            return sum([len(o.token_ids) async for o in aengine.submit(ids, p)])

        async def run(n: int) -> float:
            prompts, params = _prompts(aengine.tokenizer, n), _params(n, new_tokens)
            t0 = time.perf_counter()
            done = await asyncio.gather(*(one(i, p) for i, p in zip(prompts, params, strict=True)))
            return sum(done) / (time.perf_counter() - t0)

        for n in STREAMS:
            out[n] = asyncio.run(run(n))
        model = asyncio.run(_model_of(aengine))
        aengine.shutdown()
    out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    out["rss_now_mib"] = pages * resource.getpagesize() / 2**20
    out["weights_mib"] = model.weight_bytes() / 2**20
    out["format"] = f"{model.fmt}, prefill {model.prefill}"
    return out


async def _model_of(aengine):
    return await aengine.call(lambda e: e.model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", choices=["direct", "async"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.new_tokens)))
        return

    from glassbox.models.kernels import describe_cpu

    print(describe_cpu())
    runs: dict[str, list[dict]] = {"direct": [], "async": []}
    order = ["direct", "async", "async", "direct"] * args.rounds
    for mode in order[: 2 * args.rounds]:
        cmd = [sys.executable, __file__, "--child", mode, "--new-tokens", str(args.new_tokens)]
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
        runs[mode].append(result)
        rates = ", ".join(f"{n} streams {result[str(n)]:.1f} tok/s" for n in STREAMS)
        print(f"  {mode:>6}: {rates}; RSS after 16 streams {result['rss_now_mib']:.0f} MiB, "
              f"peak {result['rss_mib']:.0f} MiB (loading included)", flush=True)  # fmt: skip
    print(f"\nweights: {runs['direct'][0]['format']}, {runs['direct'][0]['weights_mib']:.0f} MiB")
    for n in STREAMS:
        direct = max(r[str(n)] for r in runs["direct"])
        through = max(r[str(n)] for r in runs["async"])
        ratio = through / direct
        verdict = "ok" if ratio >= TARGET else f"below the {TARGET} target"
        print(f"{n:>2} streams: direct {direct:.1f}, AsyncLLMEngine {through:.1f} tok/s, "
              f"ratio {ratio:.2f} ({verdict})")  # fmt: skip
    now = max(r["rss_now_mib"] for r in runs["async"])
    peak = max(r["rss_mib"] for r in runs["async"])
    print(f"the async engine's process after 16 streams: RSS {now:.0f} MiB, peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
