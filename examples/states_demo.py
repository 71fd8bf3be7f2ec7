"""A walk through glassbox's KV states with the Python client.

    .venv/bin/python examples/states_demo.py --url http://127.0.0.1:8000

create → fork → generate twice with one seed (same text) → commit a child → diff →
analyse (token logprobs and perplexity, the KV cache, an attention heatmap PNG) →
export and import → clean up. Every state it creates is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from glassbox.client import Client

PROMPT = "The lighthouse keeper climbed the stairs at dusk and"


async def main(url: str, png: Path, api_key: str | None = None) -> None:
    created: list[str] = []
    async with Client(url, api_key=api_key) as c:
        try:
            await _walk(c, png, created)
        finally:
            for state_id in reversed(created):
                await c.delete_state(state_id)
            print(f"cleanup: deleted {len(created)} states")


async def _walk(c: Client, png: Path, created: list[str]) -> None:
    root = await c.create_state(text=PROMPT, config={"temperature": 0.8})
    created.append(root["id"])
    print(f"create: {root['id']} holds {root['num_tokens']} tokens ({root['bytes']} bytes of KV)")

    fork = await c.fork_state(root["id"])
    created.append(fork["id"])
    print(f"fork: {fork['id']} shares the KV of its parent {fork['parent_id']}")

    first = await c.generate(fork["id"], max_tokens=12, seed=7)
    again = await c.generate(fork["id"], max_tokens=12, seed=7)
    print(f"generate (seed 7): {first['text']!r}")
    print(f"generate (seed 7): {again['text']!r} (same text: {first['text'] == again['text']})")
    usage = first["usage"]
    print(
        f"  {usage['cached_tokens']} of {usage['prompt_tokens']} prompt tokens came from the state"
    )

    print("stream (seed 8): ", end="", flush=True)
    async for event in c.stream(fork["id"], max_tokens=12, seed=8, commit=True):
        print(event.get("text", ""), end="", flush=True)  # the last event: finish and usage
    print()
    child_id = event["child_state_id"]
    created.append(child_id)
    child = await c.get_state(child_id)
    print(f"commit: child {child_id} holds {child['num_tokens']} tokens")

    diff = await c.diff(root["id"], child_id)
    print(
        f"diff: {diff['common_prefix_tokens']} tokens in common; "
        f"the child adds {diff['b']['text']!r}"
    )
    print(f"history: {' <- '.join(s['id'] for s in await c.history(child_id))}")

    tokens = await c.token_analysis(child_id, top_k=3)
    worst = min(tokens["tokens"], key=lambda t: t["logprob"])
    print(
        f"tokens: perplexity {tokens['perplexity']:.2f}, mean logprob "
        f"{tokens['mean_logprob']:.2f}; least expected: {worst['text']!r} (rank {worst['rank']})"
    )
    cache = await c.cache_analysis(child_id)
    start, end = cache["layer_range"]
    layers = f"layers {start}..{end - 1}"
    print(f"cache: {cache['num_tokens']} tokens over {layers}, {cache['total_bytes']} bytes")
    png.write_bytes(await c.attention_png(child_id, layer=0, normalized=True))
    print(f"attention: layer 0 (mean of heads) heatmap written to {png}")

    exported = await c.export_state(child_id)
    by_name = await c.import_state(name=exported["name"])
    created.append(by_name["id"])
    by_bytes = await c.import_state(data=await c.download_state(child_id))
    created.append(by_bytes["id"])
    print(f"export: {exported['name']} ({exported['bytes']} bytes)")
    print(f"import: by name as {by_name['id']}, from downloaded bytes as {by_bytes['id']}")
    await c.delete_export(exported["name"])
    texts = {
        (await c.generate(s, max_tokens=8, temperature=0.0))["text"]
        for s in (child_id, by_name["id"], by_bytes["id"])
    }
    print(f"import: the copies continue like the original: {len(texts) == 1}")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="glassbox server")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--png", type=Path, default=Path("attention.png"), help="heatmap file")
    return parser.parse_args()


if __name__ == "__main__":
    args = _args()
    asyncio.run(main(args.url, args.png, args.api_key))
