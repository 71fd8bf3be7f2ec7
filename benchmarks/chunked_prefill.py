"""Chunked prefill on the bundled model: running streams while a long prompt arrives.

--streams chat prompts decode (greedy, ignore_eos) on one `LLMEngine`, driven directly on
this thread (the scheduler, not HTTP, is measured); once each has a few tokens, a
--prompt-tokens prompt arrives. Reported, with chunking on (prefill_chunk_tokens = --chunk)
and off (prefill_chunk_tokens = max_num_batched_tokens, so the prompt is one prefill step):

- the streams' inter-token latency (median, p99, max) from the arrival until each stream's
  first token after the long prompt's first token (the stall of its last chunk included);
- the long prompt's time to first token;
- the streams' inter-token latency before the arrival, for scale.

Chunking off is the peer: the ratios say how much shorter the worst stall is with chunks,
and what the chunks cost the long prompt's first token.

--lone also times the long prompt alone (nothing decoding): one prefill step of
max_num_batched_tokens against chunks of --chunk back to back (the scheduler uses the
former when nothing decodes).

    .venv/bin/python benchmarks/chunked_prefill.py [--prompt-tokens 4000] [--chunk 256]
        [--streams 4] [--threads N] [--lone]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

from prompts import QUESTIONS

from glassbox.config import Settings
from glassbox.engine.llm_engine import LLMEngine
from glassbox.engine.sequence import SamplingParams
from glassbox.models.kernels import describe_cpu
from glassbox.runtime import load_engine

PARAGRAPH = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a tin "
    "of oil and a cloth for the great lens. From the gallery he could see the fishing boats "
    "returning to the harbour, their lamps bobbing like fireflies on the dark water. "
)


def long_prompt(engine: LLMEngine, n: int, variant: int) -> list[int]:
    """`n` tokens of English text; `variant` changes the first words, so no two prompts
    share a cached prefix."""
    text = f"Story number {variant}. " + PARAGRAPH * (n // 30 + 2)
    return engine.tokenizer.encode(text)[:n]


def stream_prompts(engine: LLMEngine, n: int, variant: int) -> list[list[int]]:
    tok = engine.tokenizer
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({variant})"}]
        )
        for i in range(n)
    ]


def _percentile(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def arrival(engine: LLMEngine, streams: int, prompt_tokens: int, variant: int) -> dict:
    """Streams decode; the long prompt arrives. Times in seconds."""
    greedy = SamplingParams(max_tokens=100_000, temperature=0.0, ignore_eos=True)
    seqs = [engine.add_request(p, greedy) for p in stream_prompts(engine, streams, variant)]
    times: dict[int, list[float]] = {s.seq_id: [] for s in seqs}
    while min(len(ts) for ts in times.values()) < 6:
        for out in engine.step():
            times[out.seq_id].append(time.perf_counter())
    ids = long_prompt(engine, prompt_tokens, variant)
    t0 = time.perf_counter()
    long = engine.add_request(ids, SamplingParams(max_tokens=1, temperature=0.0))
    first_token = None
    while first_token is None or min(ts[-1] for ts in times.values()) <= first_token:
        outs = engine.step()
        now = time.perf_counter()
        for out in outs:
            if out.seq_id == long.seq_id:
                first_token = now
            else:
                times[out.seq_id].append(now)
    for seq in seqs:
        engine.abort(seq.seq_id)
    assert not engine.has_work()
    during, before = [], []
    for ts in times.values():
        for a, b in zip(ts, ts[1:], strict=False):
            (during if b > t0 else before).append(b - a)
    return {"ttft": first_token - t0, "during": during, "before": before}


def lone_prefill(engine: LLMEngine, prompt_tokens: int, variant: int) -> float:
    ids = long_prompt(engine, prompt_tokens, variant)
    t0 = time.perf_counter()
    engine.add_request(ids, SamplingParams(max_tokens=1, temperature=0.0))
    while engine.has_work():
        engine.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-tokens", type=int, default=4000)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=None, help="default: the engine's default")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--lone", action="store_true", help="also time the prompt alone")
    args = ap.parse_args()

    settings = Settings(dtype=args.dtype, num_threads=args.threads)
    chunk = args.chunk or settings.prefill_chunk_tokens
    t0 = time.perf_counter()
    base, resolved = load_engine(settings)
    budget = base.config.max_num_batched_tokens
    print(describe_cpu())
    print(f"model: {resolved.name}, weights {args.dtype}, context {base.config.max_model_len}, "
          f"loaded in {time.perf_counter() - t0:.1f} s; max_num_batched_tokens {budget}; "
          f"{args.streams} streams; a {args.prompt_tokens}-token prompt arrives")  # fmt: skip
    assert args.prompt_tokens < base.config.max_model_len, "the prompt must fit the context"
    # Two engines over the same weights (each its own KV pool): chunks on, and off.
    engines = {
        f"on  (chunks of {chunk})": LLMEngine(
            base.model, base.tokenizer, replace(base.config, prefill_chunk_tokens=chunk)
        ),
        f"off (one step of {budget})": LLMEngine(
            base.model, base.tokenizer, replace(base.config, prefill_chunk_tokens=budget)
        ),
    }
    for i, engine in enumerate(engines.values()):  # warm the kernels, a chunk's included
        arrival(engine, args.streams, min(chunk + 50, args.prompt_tokens), -1 - i)

    load_before = os.getloadavg()[0]
    results = {}
    for i, (name, engine) in enumerate(engines.items()):
        results[name] = arrival(engine, args.streams, args.prompt_tokens, i)
        r = results[name]
        print(f"  {name}: ttft {r['ttft']:.2f} s, max ITL {max(r['during']) * 1e3:.0f} ms",
              flush=True)  # fmt: skip
    load_after = os.getloadavg()[0]

    print(f"\none run each; 1-min load average {load_before:.2f} before, {load_after:.2f} after "
          "(other CPU work skews every figure)\n")  # fmt: skip
    header = (
        f"{'chunking':<26} {'ITL before':>10} {'ITL median':>10} {'p99':>8} {'max':>8}"
        f" {'long TTFT':>10}"
    )
    print(header + "\n" + "-" * len(header))
    for name, r in results.items():
        d = r["during"]
        print(
            f"{name:<26} {statistics.median(r['before']) * 1e3:8.0f}ms "
            f"{statistics.median(d) * 1e3:8.0f}ms {_percentile(d, 99) * 1e3:6.0f}ms "
            f"{max(d) * 1e3:6.0f}ms {r['ttft']:9.2f}s"
        )
    on, off = results.values()
    worst = max(off["during"]) / max(on["during"])
    p99 = _percentile(off["during"], 99) / _percentile(on["during"], 99)
    print(f"\nworst stall of a running stream: {worst:.1f}x shorter with chunks (p99 "
          f"{p99:.1f}x); the long prompt's first token: {on['ttft'] / off['ttft']:.2f}x its "
          "time in one step")  # fmt: skip

    if args.lone:
        on_engine, off_engine = engines.values()
        whole = lone_prefill(off_engine, args.prompt_tokens, 100)
        # nothing decodes, so the scheduler would take max_num_batched_tokens: force chunks
        chunked = LLMEngine(
            base.model,
            base.tokenizer,
            replace(base.config, max_num_batched_tokens=chunk, prefill_chunk_tokens=chunk),
        )
        pieces = lone_prefill(chunked, args.prompt_tokens, 101)
        print(f"\nthe prompt alone: one step {whole:.2f} s, chunks of {chunk} back to back "
              f"{pieces:.2f} s ({pieces / whole:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
