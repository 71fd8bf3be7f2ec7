"""Classification accuracy on the bundled model: label scoring (TaskService.classify) against
free generation, on a labelled set kept in the repo (benchmarks/data/classify.jsonl: 48
short texts, 12 each of sport, food, tech and weather).

All are greedy and, but for the second, read the same prompt (TaskService.classify_prompt:
the labels in the system message, the text as the user message):

- unconstrained: the model writes up to 16 tokens freely; the prediction is the label named
  first in its answer (whole words, any case, a plural s allowed); an answer that names
  none is wrong. With this prompt the bundled model mostly repeats the text, so:
- unconstrained, question last: the same with one user message, the text then the
  question ("Which one of these labels fits the text: ...? Answer with the label only.");
- scored, uncalibrated: the label whose tokens (then the end of the turn) the model finds
  most likely after the prompt, i.e. the likeliest answer of decoding constrained to the
  labels;
- scored, calibrated (what /tasks/classify returns): the same log-probabilities minus those
  for a content-free text (see glassbox/structured/tasks.py).

    .venv/bin/python benchmarks/tasks.py [--limit N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path

from glassbox.config import Settings
from glassbox.metrics import Metrics
from glassbox.models.kernels import describe_cpu
from glassbox.requests.generation import GenerationService
from glassbox.runtime import start_engine
from glassbox.structured.grammar import GrammarCompiler
from glassbox.structured.tasks import TaskService

DATA = Path(__file__).parent / "data" / "classify.jsonl"


def load(limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    if limit is None or limit >= len(rows):
        return rows
    step = len(rows) / limit  # spread over the file, so every label keeps its share
    return [rows[int(i * step)] for i in range(limit)]


def named_label(answer: str, labels: list[str]) -> str | None:
    """The label the answer names first (whole words, any case, a plural s allowed)."""
    hits = [
        (m.start(), label)
        for label in labels
        if (m := re.search(rf"(?<!\w){re.escape(label)}(?:s|es)?(?!\w)", answer, re.IGNORECASE))
    ]
    return min(hits)[1] if hits else None


async def run(tasks: TaskService, rows: list[dict], labels: list[str]) -> dict[str, list]:
    names = ["unconstrained", "unconstrained, question last", "uncalibrated", "calibrated"]
    results: dict[str, list] = {name: [] for name in names}
    answers = [tasks.answer_tokens(label) for label in labels]
    requests = tasks.requests
    question = (
        f"Which one of these labels fits the text: {', '.join(labels)}? Answer with the label only."
    )
    for row in rows:
        prompt = tasks.classify_prompt(row["text"], labels, multi_label=False)
        last = requests.chat([{"role": "user", "content": f"Text: {row['text']}\n\n{question}"}])
        for name, free_prompt in (
            ("unconstrained", prompt),
            ("unconstrained, question last", last),
        ):
            t0 = time.perf_counter()
            request = requests.request(
                free_prompt, prompt_param="text", max_tokens=16, temperature=0.0
            )
            [free] = await tasks.generation.generate_many([request])
            results[name].append(
                (named_label(free.text, labels) == row["label"], time.perf_counter() - t0)
            )

        t0 = time.perf_counter()
        logprobs = await tasks.score([(prompt, a) for a in answers])
        raw = labels[max(range(len(labels)), key=logprobs.__getitem__)]
        results["uncalibrated"].append((raw == row["label"], time.perf_counter() - t0))

        t0 = time.perf_counter()
        calibrated = await tasks.classify(row["text"], labels)
        results["calibrated"].append((calibrated.label == row["label"], time.perf_counter() - t0))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, help="texts to use, spread over the set (default all)")
    args = ap.parse_args()

    rows = load(args.limit)
    labels = list(dict.fromkeys(r["label"] for r in load(None)))  # in the file's order
    engine, resolved = start_engine(Settings())
    try:
        generation = GenerationService(engine, Metrics())
        tasks = TaskService(generation, GrammarCompiler(engine.tokenizer, engine.vocab_size))
        results = asyncio.run(run(tasks, rows, labels))
    finally:
        engine.shutdown()

    print(describe_cpu())
    print(f"{resolved.name}, {len(rows)} texts of {DATA.name}, labels: {', '.join(labels)}")
    accuracy = {}
    for name, outcomes in results.items():
        right = sum(ok for ok, _ in outcomes)
        accuracy[name] = right / len(outcomes)
        ms = 1000 * sum(s for _, s in outcomes) / len(outcomes)
        print(f"{name:>28}: {right}/{len(outcomes)} right ({accuracy[name]:.0%}), {ms:.0f} ms/text")
    best = max(accuracy["unconstrained"], accuracy["unconstrained, question last"])
    gain = accuracy["calibrated"] - best
    print(f"calibrated label scoring against the better unconstrained prompt: {gain:+.0%} points")


if __name__ == "__main__":
    main()
