"""Steering quality on held-out concepts, on the bundled model.

The concept vectors are built from the *train* split of the shipped concepts only. For each
*held-out* concept (never used to build a vector), AutoSteer turns its description into
edits of the train features, and the model answers a few neutral prompts with and without
those edits, sampled at temperature 0.7 with several seeds per prompt (one sample per seed
is a noisy estimate: the median perplexity ratio of a single seed ranged from x2.05 to x3.05
at the same settings). Measured, in the same run:

- similarity: cosine between the embedding (all-MiniLM-L6-v2) of each answer and of the
  concept's description, steered vs unsteered;
- fluency: perplexity of each answer under the *unsteered* model, steered vs unsteered.

Targets: the steered similarity well above the unsteered one (mean gain >= 0.10 and higher
for >= 80% of the held-out concepts) and the steered perplexity within 2x the unsteered one
(median ratio over concepts).

    .venv/bin/python benchmarks/steering_quality.py [--value-scale 1.0] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from glassbox.config import Settings
from glassbox.embeddings.embedder import LocalEmbedder
from glassbox.engine.llm_engine import LLMEngine
from glassbox.engine.sequence import SamplingParams
from glassbox.features.autosteer import autosteer
from glassbox.features.concepts import (
    ConceptData,
    build_concept_dictionary,
    cache_path,
    load_concept_data,
    load_dictionary,
    save_dictionary,
)
from glassbox.features.search import EmbedderEncoder, FeatureIndex
from glassbox.runtime import load_engine
from glassbox.steering.plan import SteeringPlan

PROMPTS = [
    "Tell me about your day.",
    "Write a few sentences about anything you like.",
    "What do you think about when you wake up?",
]
GAIN_TARGET = 0.10
IMPROVED_TARGET = 0.80
PPL_TARGET = 2.0


def train_dictionary(engine: LLMEngine, settings: Settings, fingerprint: str):
    data = load_concept_data()
    train = ConceptData(
        data.neutral, tuple(c for c in data.concepts if c.split == "train"), "train-" + data.digest
    )
    layer = engine.model.config.num_layers // 2
    path = cache_path(settings.cache_dir, fingerprint, layer, train.digest)
    if path.is_file():
        return load_dictionary(path, fingerprint), data
    d = build_concept_dictionary(engine, train, layer, fingerprint)
    save_dictionary(d, path)
    return d, data


def perplexity(engine: LLMEngine, prompt: list[int], output: list[int]) -> float:
    """Perplexity of `output` after `prompt` under the unsteered model."""
    if not output:
        return float("nan")
    last = engine.model.config.num_layers - 1
    captured, _ = engine.capture([prompt + output], {last})
    logits = engine.model.logits_from_residual(captured[0][last])
    logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    picked = logprobs.gather(1, torch.tensor(output)[:, None]).squeeze(1)
    return float(torch.exp(-picked.mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--value-scale", type=float, default=1.0, help="multiplies AutoSteer values")
    ap.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    ap.add_argument("--seed", type=int, default=0, help="the first seed")
    ap.add_argument(
        "--seeds", type=int, default=3, help="samples per prompt (seeds seed, seed + 1, ...)"
    )
    ap.add_argument("--top-k", type=int, default=3, help="features AutoSteer considers")
    args = ap.parse_args()

    t0 = time.perf_counter()
    settings = Settings()
    engine, resolved = load_engine(settings)
    d, data = train_dictionary(engine, settings, resolved.fingerprint)
    embedder = EmbedderEncoder(LocalEmbedder(call=None))  # encode only: in this thread
    index = FeatureIndex([d], embedder)
    heldout = [c for c in data.concepts if c.split == "heldout"]
    tok = engine.tokenizer
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]

    seeds = [args.seed + k for k in range(args.seeds)]
    # One sample per (prompt, seed): unsteered and under each concept's edits alike.
    samples = [(p, seed) for p in prompts for seed in seeds]

    def params(plan: SteeringPlan | None, seed: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=args.max_tokens, temperature=args.temperature, seed=seed, steering=plan
        )

    plain = engine.generate([p for p, _ in samples], [params(None, seed) for _, seed in samples])
    plain_ppl = [
        perplexity(engine, p, o["token_ids"]) for (p, _), o in zip(samples, plain, strict=True)
    ]

    jobs, owners, chosen = [], [], {}
    for c in heldout:
        edits = autosteer(index, c.description, args.top_k)
        chosen[c.id] = edits
        plan = SteeringPlan(
            [x for f, value in edits for x in d.nudge(f.index, value * args.value_scale)]
        )
        for i, (p, seed) in enumerate(samples):
            jobs.append((p, params(plan, seed)))
            owners.append((c, i))
    outs = engine.generate([p for p, _ in jobs], [sp for _, sp in jobs])

    descriptions = embedder.embed([c.description for c in heldout])
    plain_emb = embedder.embed([o["text"] for o in plain])
    steered_emb = embedder.embed([o["text"] for o in outs])
    rows = []
    for ci, c in enumerate(heldout):
        idx = [k for k, (owner, _) in enumerate(owners) if owner.id == c.id]
        sim_steered = float((steered_emb[idx] @ descriptions[ci]).mean())
        sim_plain = float((plain_emb @ descriptions[ci]).mean())
        ratios = [
            perplexity(engine, jobs[k][0], outs[k]["token_ids"]) / plain_ppl[owners[k][1]]
            for k in idx
        ]
        rows.append((c, sim_plain, sim_steered, statistics.median(ratios)))

    print(f"{len(d)} train concept vectors at layer {d.layer}; {len(heldout)} held-out concepts; "
          f"{len(PROMPTS)} prompts x {len(seeds)} seeds; temperature {args.temperature}, "
          f"{args.max_tokens} tokens; value scale {args.value_scale}")  # fmt: skip
    print(f"{'held-out concept':28s} {'features chosen by AutoSteer':48s} unsteered steered ppl x")
    for c, sp, ss, r in rows:
        names = ", ".join(f"{f.label} {v:+.2f}" for f, v in chosen[c.id])[:48]
        print(f"{c.label[:28]:28s} {names:48s} {sp:9.3f} {ss:7.3f} {r:5.2f}")
    gain = statistics.mean(ss - sp for _, sp, ss, _ in rows)
    improved = sum(ss > sp for _, sp, ss, _ in rows) / len(rows)
    ppl_ratio = statistics.median(r for *_, r in rows)
    print(f"\nmean similarity: unsteered {statistics.mean(sp for _, sp, _, _ in rows):.3f}, "
          f"steered {statistics.mean(ss for _, _, ss, _ in rows):.3f} (gain {gain:+.3f}); "
          f"improved for {improved:.0%} of concepts")  # fmt: skip
    print(f"perplexity under the unsteered model, steered / unsteered: median {ppl_ratio:.2f}")
    ok = gain >= GAIN_TARGET and improved >= IMPROVED_TARGET and ppl_ratio <= PPL_TARGET
    print(f"{'PASS' if ok else 'FAIL'}: gain >= {GAIN_TARGET}, improved >= {IMPROVED_TARGET:.0%}, "
          f"perplexity ratio <= {PPL_TARGET} ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    print("\nexample (first held-out concept, first prompt):")
    print("  unsteered:", plain[0]["text"][:200].replace("\n", " "))
    print("  steered:  ", outs[0]["text"][:200].replace("\n", " "))


if __name__ == "__main__":
    main()
