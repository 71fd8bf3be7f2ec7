"""Decode throughput of glassbox's engine against transformers (and llama.cpp if installed).

Loads the bundled SmolLM2-135M-Instruct once into glassbox's LLMEngine (weights format from
--dtype, default 'auto') and into transformers' AutoModelForCausalLM (fp32, its default), from
the same converted directory, and measures in the same run:

- transformers `generate`, one stream, --new-tokens new tokens (min_new_tokens = max);
- glassbox at each --concurrency: that many distinct chat prompts submitted together, each
  generating --new-tokens tokens (ignore_eos), aggregate tokens/s;
- llama-cpp-python on the bundled GGUF, one stream, when `llama_cpp` is importable.

Every figure comes after a warm-up, and is printed as a ratio against transformers'
single stream. Targets: c=1 >= 2x, c=16 >= 6x.

    .venv/bin/python benchmarks/decode.py [--new-tokens 128] [--concurrency 1,4,16]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch
from prompts import QUESTIONS, WARMUP_QUESTIONS

TARGETS = {1: 2.0, 16: 6.0}  # concurrency -> minimum ratio vs transformers single stream


def chat_prompts(tokenizer, questions: list[str], n: int) -> list[list[int]]:
    qs = [
        questions[i % len(questions)] + ("" if i < len(questions) else f" ({i})") for i in range(n)
    ]
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in qs]


def sampling_kwargs(sample: bool) -> dict:
    return {"temperature": 0.7, "top_p": 0.9} if sample else {"temperature": 0.0}


@torch.inference_mode()
def bench_transformers(model_dir, tokenizer, new_tokens: int, sample: bool, repeats: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()  # fp32 by default
    assert model.dtype == torch.float32, model.dtype
    gen = {"do_sample": sample, **({"temperature": 0.7, "top_p": 0.9} if sample else {})}
    if not sample:
        gen.update(temperature=None, top_p=None, top_k=None)
    pad = tokenizer.hf.pad_token_id or tokenizer.hf.eos_token_id

    def run(prompt: list[int], n: int) -> float:
        ids = torch.tensor([prompt])
        t0 = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=pad,
            **gen,
        )
        elapsed = time.perf_counter() - t0
        assert out.shape[1] - ids.shape[1] == n
        return elapsed

    run(chat_prompts(tokenizer, WARMUP_QUESTIONS, 1)[0], 16)
    prompt = chat_prompts(tokenizer, QUESTIONS, 1)[0]
    return new_tokens / min(run(prompt, new_tokens) for _ in range(repeats))


@torch.inference_mode()
def bench_glassbox(engine, concurrency: int, new_tokens: int, sample: bool, repeats: int) -> float:
    from glassbox.engine.sequence import SamplingParams

    def run(prompts: list[list[int]], n: int) -> float:
        params = [
            SamplingParams(max_tokens=n, ignore_eos=True, seed=i, **sampling_kwargs(sample))
            for i in range(len(prompts))
        ]
        t0 = time.perf_counter()
        results = engine.generate(prompts, params)
        elapsed = time.perf_counter() - t0
        assert all(len(r["token_ids"]) == n for r in results)
        return elapsed

    tok = engine.tokenizer
    run(chat_prompts(tok, WARMUP_QUESTIONS, concurrency), 16)
    prompts = chat_prompts(tok, QUESTIONS, concurrency)
    return concurrency * new_tokens / min(run(prompts, new_tokens) for _ in range(repeats))


def bench_llama_cpp(tokenizer, new_tokens: int, sample: bool, repeats: int) -> float:
    from glassbox.backends.llama_cpp import load_llama
    from glassbox.models.loader import bundled_gguf

    # llama.cpp's AMX kernels crash on this kind of VM (see glassbox.backends.llama_cpp)
    llm = load_llama(
        False, model_path=str(bundled_gguf()), n_ctx=2048, n_threads=os.cpu_count(), verbose=False
    )
    eos = llm.token_eos()
    kw = {"temperature": 0.7, "top_p": 0.9} if sample else {"temperature": 0.0, "top_k": 1}

    def run(prompt: list[int], n: int) -> float:
        llm.reset()
        t0 = time.perf_counter()
        out = llm.create_completion(prompt, max_tokens=n, logit_bias={eos: -1e9}, **kw)
        elapsed = time.perf_counter() - t0
        assert out["usage"]["completion_tokens"] == n, out["usage"]
        return elapsed

    run(chat_prompts(tokenizer, WARMUP_QUESTIONS, 1)[0], 16)
    prompt = chat_prompts(tokenizer, QUESTIONS, 1)[0]
    return new_tokens / min(run(prompt, new_tokens) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated list")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8", "int4", "q4"]
    )
    parser.add_argument("--sample", action="store_true", help="temperature 0.7, top_p 0.9")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs; the best counts")
    parser.add_argument("--skip-llama-cpp", action="store_true")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    if args.threads:
        torch.set_num_threads(args.threads)

    from glassbox.config import Settings
    from glassbox.models.kernels import describe_cpu
    from glassbox.runtime import load_engine

    settings = Settings(dtype=args.dtype, max_num_seqs=max(32, *concurrencies))
    t0 = time.perf_counter()
    engine, resolved = load_engine(settings)
    fmt = f"{engine.model.fmt}, prefill {engine.model.prefill}"
    print(describe_cpu())
    print(f"model: {resolved.name} from {resolved.directory}")
    print(
        f"glassbox weights: {fmt} (--dtype {args.dtype}); "
        f"loaded in {time.perf_counter() - t0:.1f} s; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.new_tokens} new tokens per request; "
        f"{'sampling' if args.sample else 'greedy'}"
    )

    load_before = os.getloadavg()[0]
    rows: list[tuple[str, float]] = []
    hf_tps = bench_transformers(
        resolved.directory, engine.tokenizer, args.new_tokens, args.sample, args.repeats
    )
    rows.append(("transformers generate fp32, 1 stream", hf_tps))
    print(f"  transformers: {hf_tps:.1f} tok/s", flush=True)

    glassbox: dict[int, float] = {}
    for c in concurrencies:
        glassbox[c] = bench_glassbox(engine, c, args.new_tokens, args.sample, args.repeats)
        rows.append((f"glassbox {engine.model.fmt}, concurrency {c}", glassbox[c]))
        print(f"  glassbox c={c}: {glassbox[c]:.1f} tok/s", flush=True)

    if args.skip_llama_cpp:
        pass
    elif importlib.util.find_spec("llama_cpp") is None:
        print("  llama_cpp not importable: pip install llama-cpp-python to compare")
    else:
        tps = bench_llama_cpp(engine.tokenizer, args.new_tokens, args.sample, args.repeats)
        rows.append(("llama.cpp (llama-cpp-python, GGUF), 1 stream", tps))

    width = max(len(name) for name, _ in rows)
    load_after = os.getloadavg()[0]
    print(
        f"\nbest of {args.repeats} timed runs each; 1-min load average {load_before:.2f} "
        f"before, {load_after:.2f} after (other CPU work skews every figure)"
    )
    print()
    print(f"{'run':<{width}}  {'tok/s':>8}  {'vs HF':>7}")
    print("-" * (width + 19))
    for name, tps in rows:
        print(f"{name:<{width}}  {tps:8.1f}  {tps / hf_tps:6.2f}x")
    print()
    failed = False
    for c, target in TARGETS.items():
        if c not in glassbox:
            continue
        ratio = glassbox[c] / hf_tps
        ok = ratio >= target
        failed |= not ok
        verdict = "PASS" if ok else "FAIL"
        print(f"{verdict}: glassbox c={c} is {ratio:.2f}x transformers (target >= {target}x)")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
