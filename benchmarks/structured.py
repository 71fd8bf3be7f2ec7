"""Constrained decoding in the continuous batch: what grammars cost the batch.

Loads the bundled SmolLM2-135M-Instruct into glassbox's LLMEngine (weights from --dtype,
default 'auto') and keeps --streams sequences running at all times (closed loop: a stream
whose answer ends starts the next one at once), sampling at temperature 1, for
--tokens generated tokens per run. Two kinds of run, alternated (A B A B ...):

- free:  every stream unconstrained (chat questions from benchmarks/prompts.py);
- mixed: half the streams unconstrained, half constrained, each by one of the five schemas
  of benchmarks/schemas.py (in turn), with its own prompt.

It prints the aggregate tokens/s of each, the ratio mixed / free (target >= 0.9), the
first-use compile time of each schema (compile + the first mask, fresh compiler), and the
per-token mask time (filled on the grammar thread) with the part of it the step waited for
after the forward pass (not hidden behind it).

    .venv/bin/python benchmarks/structured.py [--streams 16] [--tokens 2048] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from prompts import QUESTIONS
from schemas import SCHEMAS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=2048, help="generated tokens per run")
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs; the median counts")
    parser.add_argument("--max-tokens", type=int, default=128, help="per answer")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8", "int4", "q4"]
    )
    args = parser.parse_args()

    import torch

    from glassbox.config import Settings
    from glassbox.engine.sequence import SamplingParams
    from glassbox.models.kernels import describe_cpu
    from glassbox.runtime import load_engine
    from glassbox.structured.grammar import GrammarCompiler

    engine, resolved = load_engine(Settings(dtype=args.dtype, max_num_seqs=max(32, args.streams)))
    engine.warm_up()
    tok = engine.tokenizer
    vocab = engine.model.config.vocab_size
    print(describe_cpu())
    print(
        f"model: {resolved.name}; weights {engine.model.fmt}, prefill {engine.model.prefill}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.streams} streams, "
        f"{args.tokens} tokens per run, temperature 1"
    )

    print("first use of each schema (fresh compiler: compile + first mask):")
    fresh = GrammarCompiler(tok, vocab)
    fresh.ll_tokenizer  # noqa: B018 (built once per tokenizer, ~0.3 s; not a schema's cost)
    address = torch.zeros(1, (vocab + 31) // 32, dtype=torch.int32)
    for model, _ in SCHEMAS:
        t0 = time.perf_counter()
        grammar = fresh.json_schema(model.model_json_schema())
        compiled = time.perf_counter() - t0
        grammar.matcher().fill_bitmask(address.data_ptr(), address.numel() * 4)
        total = time.perf_counter() - t0
        print(f"  {model.__name__:8s} compile {compiled * 1e3:6.2f} ms, + first mask "
              f"{total * 1e3:6.2f} ms")  # fmt: skip

    grammars = GrammarCompiler(tok, vocab)
    constrained = [
        (tok.apply_chat_template([{"role": "user", "content": prompt}]),
         grammars.json_schema(model.model_json_schema()))
        for model, prompt in SCHEMAS
    ]  # fmt: skip
    free = [tok.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]

    def run(mixed: bool) -> float:
        """Aggregate tokens/s of `--streams` closed-loop streams."""
        counter = iter(range(10**9))

        def submit(stream: int) -> None:
            n = next(counter)
            seed = 1000 * stream + n
            if mixed and stream % 2:
                ids, grammar = constrained[n % len(constrained)]
            else:
                ids, grammar = free[n % len(free)], None
            params = SamplingParams(
                max_tokens=args.max_tokens, temperature=1.0, seed=seed, grammar=grammar
            )
            owner[engine.add_request(ids, params).seq_id] = stream

        owner: dict[int, int] = {}
        for s in range(args.streams):
            submit(s)
        generated = 0
        t0 = time.perf_counter()
        while generated < args.tokens:
            for out in engine.step():
                generated += len(out.token_ids)
                if out.finish_reason is not None:
                    submit(owner.pop(out.seq_id))
        elapsed = time.perf_counter() - t0
        for seq_id in list(owner):
            engine.abort(seq_id)
        return generated / elapsed

    run(True)  # warm-up: every schema's matcher and both kinds of batch
    free_tps, mixed_tps = [], []
    engine.masks.times.masks = 0
    engine.masks.times.fill_seconds = engine.masks.times.wait_seconds = 0.0
    for r in range(args.rounds):
        free_tps.append(run(False))
        mixed_tps.append(run(True))
        print(f"  round {r + 1}: free {free_tps[-1]:.1f} tok/s, mixed {mixed_tps[-1]:.1f} tok/s, "
              f"ratio {mixed_tps[-1] / free_tps[-1]:.3f}", flush=True)  # fmt: skip
    times = engine.masks.times
    print(f"per-token mask: {times.fill_seconds / times.masks * 1e6:.1f} us filled on the "
          f"grammar thread, {times.wait_seconds / times.masks * 1e6:.1f} us waited for after "
          f"the forward pass ({times.masks} masks)")  # fmt: skip
    a, b = statistics.median(free_tps), statistics.median(mixed_tps)
    print(f"glassbox {args.streams} streams: free {a:.1f} tok/s, half constrained {b:.1f} tok/s; "
          f"ratio {b / a:.3f} (target >= 0.9)")  # fmt: skip


if __name__ == "__main__":
    main()
