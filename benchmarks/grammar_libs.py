"""llguidance against xgrammar on the bundled model's tokenizer: why glassbox uses llguidance.

For each of the five schemas of benchmarks/schemas.py (objects closed, compact JSON, as
glassbox compiles them), both libraries:

- compile the schema (fresh compiler each time; the tokenizer's preprocessing is timed
  once, apart);
- walk one valid answer token by token: fill the next-token bitmask, then accept the token;
  the mean and worst time per token are reported (the first mask of a matcher included).

Printed: each figure for both, and the ratio xgrammar / llguidance (above 1: llguidance is
faster). xgrammar is not a glassbox dependency (its wheel requires a CUDA torch): `make
bench` installs it with --no-deps beside the CPU torch.

    .venv/bin/python benchmarks/grammar_libs.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from schemas import (
    Address,
    LineItem,
    Order,
    Person,
    Reading,
    Recipe,
    Review,
    Step,
    Wind,
)

EXAMPLES = {
    "Person": Person(
        name="Ada Lovelace",
        age=36,
        email="ada@example.org",
        address=Address(street="12 St James's Square", city="London", postcode="10001"),
    ),
    "Order": Order(
        order_id="ORD-0042",
        items=[
            LineItem(product="Tea", quantity=2, unit_price=3.5),
            LineItem(product="Scones", quantity=6, unit_price=1.25),
        ],
        status="shipped",
        note=None,
    ),
    "Review": Review(
        title="Light and quick",
        rating=4,
        sentiment="positive",
        pros=["light", "good grip"],
        cons=["narrow"],
    ),
    "Recipe": Recipe(
        dish="Pancakes",
        servings=4,
        difficulty="easy",
        vegetarian=True,
        steps=[
            Step(number=1, action="Whisk flour, milk and eggs", minutes=5),
            Step(number=2, action="Fry in a hot pan", minutes=10),
        ],
    ),
    "Reading": Reading(
        station="Oslo Blindern",
        temperature_c=-3.5,
        humidity=81,
        condition="snow",
        wind=Wind(speed_kmh=12.0, direction="NW"),
    ),
}


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="the best of these counts")
    args = parser.parse_args()

    import llguidance
    import llguidance.hf
    import llguidance.torch as llt
    import torch
    import xgrammar as xgr

    from glassbox.config import Settings
    from glassbox.models.kernels import describe_cpu
    from glassbox.models.tokenizer import Tokenizer
    from glassbox.runtime import resolve
    from glassbox.structured.grammar import JSON_OPTIONS, closed_schema

    resolved = resolve(Settings())
    tokenizer = Tokenizer(resolved.directory)
    vocab = 49152
    print(describe_cpu())
    print(f"tokenizer: {resolved.name}, vocabulary {vocab}; torch {torch.__version__}")

    t_ll, ll_tok = timed(lambda: llguidance.hf.from_tokenizer(tokenizer.hf, n_vocab=vocab))
    t_xg, xg_info = timed(
        lambda: xgr.TokenizerInfo.from_huggingface(tokenizer.hf, vocab_size=vocab)
    )
    print(f"tokenizer preprocessing: llguidance {t_ll * 1e3:.0f} ms, xgrammar {t_xg * 1e3:.0f} ms")

    def llguidance_run(schema: dict, ids: list[int]) -> tuple[float, list[float]]:
        compile_s, matcher = timed(
            lambda: llguidance.LLMatcher(
                ll_tok,
                llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS),
                log_level=0,
            )
        )
        mask = llt.allocate_token_bitmask(1, vocab)
        per_token = []
        for t in ids:
            t0 = time.perf_counter()
            llt.fill_next_token_bitmask(matcher, mask, 0)
            assert matcher.consume_token(t), matcher.get_error()
            per_token.append(time.perf_counter() - t0)
        assert matcher.is_accepting()
        return compile_s, per_token

    def xgrammar_run(schema: dict, ids: list[int]) -> tuple[float, list[float]]:
        compiler = xgr.GrammarCompiler(xg_info, max_threads=1, cache_enabled=False)
        text = json.dumps(schema)
        compile_s, compiled = timed(
            lambda: compiler.compile_json_schema(
                text, any_whitespace=False, separators=(",", ":"), strict_mode=True
            )
        )
        matcher = xgr.GrammarMatcher(compiled)
        mask = xgr.allocate_token_bitmask(1, vocab)
        per_token = []
        for t in ids:
            t0 = time.perf_counter()
            matcher.fill_next_token_bitmask(mask)
            assert matcher.accept_token(t)
            per_token.append(time.perf_counter() - t0)
        return compile_s, per_token

    rows = []
    for name, example in EXAMPLES.items():
        schema = closed_schema(type(example).model_json_schema())
        ids = tokenizer.encode(example.model_dump_json(), add_special_tokens=False)
        results = {}
        for lib, run in (("llguidance", llguidance_run), ("xgrammar", xgrammar_run)):
            runs = [run(schema, ids) for _ in range(args.repeats)]
            compile_s = min(r[0] for r in runs)
            mean = min(statistics.fmean(r[1]) for r in runs)
            worst = min(max(r[1]) for r in runs)
            results[lib] = (compile_s, mean, worst)
        ll, xg = results["llguidance"], results["xgrammar"]
        rows.append((xg[0] / ll[0], xg[1] / ll[1]))
        print(
            f"{name:8s} ({len(ids):3d} tokens)  compile: llguidance {ll[0] * 1e3:7.2f} ms, "
            f"xgrammar {xg[0] * 1e3:7.2f} ms ({xg[0] / ll[0]:5.2f}x) | per token mean: "
            f"{ll[1] * 1e6:6.1f} us vs {xg[1] * 1e6:6.1f} us ({xg[1] / ll[1]:5.2f}x) | worst: "
            f"{ll[2] * 1e6:7.1f} us vs {xg[2] * 1e6:7.1f} us"
        )
    compile_ratio = statistics.geometric_mean(r[0] for r in rows)
    token_ratio = statistics.geometric_mean(r[1] for r in rows)
    print(f"geometric mean, xgrammar / llguidance: compile {compile_ratio:.2f}x, "
          f"per-token mask {token_ratio:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
