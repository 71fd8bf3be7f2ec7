"""Steering overhead: a batch of 16 where every row has a different variant, against the same
batch unsteered, on the bundled model, in the same run. Target: >= 90% of the unsteered
tokens/s.

Each steered row nudges a different concept feature (and, every other row, also pins a
second one), so the batch carries 16 distinct plans through every decode step.

    .venv/bin/python benchmarks/steering_overhead.py [--rows 16] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from glassbox.config import Settings
from glassbox.engine.llm_engine import LLMEngine
from glassbox.engine.sequence import SamplingParams
from glassbox.features.concepts import concept_dictionary
from glassbox.runtime import load_engine
from glassbox.steering.plan import ResolvedEdit, SteeringPlan

TARGET = 0.90


def _run(engine: LLMEngine, prompts, params) -> float:
    t0 = time.perf_counter()
    out = engine.generate(prompts, params)
    dt = time.perf_counter() - t0
    return sum(len(o["token_ids"]) for o in out) / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    settings = Settings()
    engine, resolved = load_engine(settings)
    d = concept_dictionary(engine, settings.cache_dir, resolved.fingerprint)
    tok = engine.tokenizer
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": f"Tell me about topic number {i}."}])
        for i in range(args.rows)
    ]

    def params(plan: SteeringPlan | None) -> SamplingParams:
        return SamplingParams(
            max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True, steering=plan
        )

    plain = [params(None) for _ in prompts]
    steered = []
    for i in range(args.rows):
        edits = d.nudge((7 * i) % len(d), 0.5)
        if i % 2:
            edits.append(ResolvedEdit(d.direction((7 * i + 3) % len(d)), "pin", 0.2))
        steered.append(params(SteeringPlan(edits)))

    _run(engine, prompts[:4], [params(None)] * 4)  # warm-up
    best_plain = best_steered = 0.0
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
        best_plain = max(best_plain, _run(engine, prompts, plain))
        best_steered = max(best_steered, _run(engine, prompts, steered))
    ratio = best_steered / best_plain
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"unsteered batch of {args.rows}: {best_plain:.1f} tok/s")
    print(f"{args.rows} different variants:   {best_steered:.1f} tok/s")
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"{verdict}: steered/unsteered = {ratio:.3f} (target >= {TARGET})")


if __name__ == "__main__":
    main()
