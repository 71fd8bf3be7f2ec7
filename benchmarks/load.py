"""Load test: many concurrent streaming clients against `glassbox serve` on loopback.

Starts `glassbox serve` (the bundled SmolLM2-135M-Instruct and all-MiniLM-L6-v2, as
`make serve` serves them) on a free loopback port, with its own temporary database, state
and file directories (the converted model, kernel choice and feature dictionaries are
read from the usual cache), waits for /health/ready, then runs --clients asyncio clients
(one httpx.AsyncClient) for --duration seconds. Each client loops over a fixed mix (--mix):

- chat: streamed /v1/chat/completions;
- steered: the same with an inline `variant` nudging the feature /features/search ranks
  first for "pirate" (made once at the start);
- structured: streamed chat with a `response_format` json_schema (an answer that finishes
  with "stop" must parse);
- states: POST /states from a prompt, streamed /generate/token from it, DELETE the state
  (its time to first token counts from the /generate/token request);
- embeddings: /v1/embeddings of a few fresh strings (no tokens: not in TTFT/ITL).

Per request: kind, status, time to first token (the first content-bearing SSE event),
the gaps between content-bearing events (inter-token latency), tokens (usage), and errors
by kind: HTTP status, connect error, timeout, broken stream (no [DONE]), an error event
inside an SSE stream, invalid JSON from a finished structured answer. A 429 or 503 with
Retry-After is intended back-pressure: counted apart, the client waits Retry-After and
goes on. The server's RSS is sampled every second: start, peak and end are printed, and
memory counts as unbounded when the peak of the last third of the run is more than
--growth-limit-mib above the peak of the first third.

The peer: no OpenAI-compatible server that takes 64 streams is installed here, so the
ratio printed is glassbox against itself: the p50 time to first token of streamed chat
under load over the p50 of lone streamed chat requests (--lone of them, one at a time)
measured at the start of the same run, "the load penalty".

--api-keys, --rate-limit-requests N and --rate-limit-tokens N run the server with
GLASSBOX_API_KEYS=required (the clients use a key from `glassbox keys create`) and those
per-minute limits, so that 429s are exercised.

Exits 1 on any unintended error or unbounded memory.

    .venv/bin/python benchmarks/load.py [--clients 64] [--duration 60] [--max-tokens 32]
        [--mix chat=3,steered=2,structured=2,states=2,embeddings=1]
        [--rate-limit-requests N] [--rate-limit-tokens N] [--api-keys]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prompts import QUESTIONS

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
KINDS = ("chat", "steered", "structured", "states", "embeddings")
STREAMED = KINDS[:4]
PET_SCHEMA = {
    "type": "object",
    "properties": {
        "species": {"enum": ["cat", "dog", "fish"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "name": {"type": "string", "maxLength": 20},
    },
    "required": ["species", "age", "name"],
}
STATE_OPENINGS = [
    "The lighthouse keeper climbed the stairs and",
    "On the first morning of the festival, the baker",
    "The old map showed a river that",
    "When the train stopped in the middle of the forest,",
]
WORDS = (
    "river bright cold market quietly engine garden reads music city old small quick slow "
    "bread chess volcano winter light paper story teacher ocean mountain coffee train"
).split()


@dataclass
class Result:
    kind: str
    start: float
    end: float = 0.0
    status: int | None = None
    outcome: str = "ok"  # ok | intended | error
    error: str | None = None  # the error's kind, e.g. "http 500", "broken stream"
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0


class Refused(Exception):
    """A response that ends the request: intended back-pressure or an error."""

    def __init__(self, response: httpx.Response, body: str) -> None:
        self.status = response.status_code
        self.retry_after = response.headers.get("retry-after")
        self.body = body


# --- the server --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(tmp: Path, args: argparse.Namespace) -> dict[str, str]:
    env = {**os.environ,
           "GLASSBOX_DATABASE_URL": f"sqlite:///{tmp / 'load.db'}",
           "GLASSBOX_STATES_DIR": str(tmp / "states"),
           "GLASSBOX_FILES_DIR": str(tmp / "files")}  # fmt: skip
    if args.api_keys:
        env.update(GLASSBOX_API_KEYS="required", GLASSBOX_AUTH_SECRET="load-" + "x" * 40)
        env.update(GLASSBOX_RATE_LIMIT_REQUESTS=str(args.rate_limit_requests))
        env.update(GLASSBOX_RATE_LIMIT_TOKENS=str(args.rate_limit_tokens))
    return env


def glassbox_command() -> list[str]:
    script = Path(sys.executable).parent / "glassbox"
    return [str(script)] if script.exists() else [sys.executable, "-m", "glassbox.cli"]


@contextmanager
def serving(port: int, env: dict[str, str], log_path: Path, serve_args: list[str]):
    """`glassbox serve` on loopback `port` with `env`, logging to `log_path`, until the block
    ends (SIGTERM to its process group; SIGKILL if it has not stopped within 60 s)."""
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [*glassbox_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
             *serve_args],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"glassbox serve exited with {server.returncode}")
        try:
            if httpx.get(url + "/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("glassbox serve was not ready in time")


def make_key(env: dict[str, str]) -> str:
    out = subprocess.run(
        [*glassbox_command(), "keys", "create", "--tenant", "load", "--name", "load test"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.splitlines()[0].strip()


def rss_bytes(pid: int) -> int:
    """Resident bytes of the process and its children."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


async def sample_rss(pid: int, samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append((time.perf_counter(), await asyncio.to_thread(rss_bytes, pid)))
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass


# --- one request of each kind ------------------------------------------------------------


def chat_body(ctx: dict, rng: random.Random) -> dict:
    question = rng.choice(QUESTIONS)
    return {
        "model": ctx["model"],
        "messages": [{"role": "user", "content": f"{question} ({rng.randrange(10**6)})"}],
        "max_tokens": ctx["max_tokens"],
        "temperature": 0.8,
        "seed": rng.randrange(2**31),
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def read_sse(response: httpx.Response, result: Result, t0: float) -> list[dict]:
    """The stream's JSON events until [DONE]; times the content-bearing ones into `result`.
    Raises ValueError for an error event or a stream that ends without [DONE]."""
    events, last = [], None
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return events
        event = json.loads(data)
        if "error" in event:
            err = event["error"] or {}
            raise ValueError(f"error event {err.get('code') or err.get('type')}")
        events.append(event)
        if content_bearing(event):
            now = time.perf_counter()
            if last is None:
                result.ttft = now - t0
            else:
                result.gaps.append(now - last)
            last = now
    raise ValueError("broken stream")


def content_bearing(event: dict) -> bool:
    if "choices" in event:  # chat chunk
        return any(c.get("delta", {}).get("content") for c in event["choices"])
    return "index" in event  # /generate/token: one event per token


async def post_stream(http: httpx.AsyncClient, path: str, body: dict, result: Result) -> list[dict]:
    t0 = time.perf_counter()
    async with http.stream("POST", path, json=body) as response:
        result.status = response.status_code
        if response.status_code != 200:
            raise Refused(response, (await response.aread()).decode(errors="replace"))
        return await read_sse(response, result, t0)


async def post_json(http: httpx.AsyncClient, path: str, body: dict, result: Result) -> dict:
    response = await http.post(path, json=body)
    result.status = response.status_code
    if response.status_code not in (200, 201):
        raise Refused(response, response.text)
    return response.json()


def chat_usage(events: list[dict]) -> int:
    usage = next((e["usage"] for e in reversed(events) if e.get("usage")), None)
    return usage["completion_tokens"] if usage else 0


async def run_chat(http, ctx: dict, result: Result, rng: random.Random) -> None:
    events = await post_stream(http, "/v1/chat/completions", chat_body(ctx, rng), result)
    result.tokens = chat_usage(events)


async def run_steered(http, ctx: dict, result: Result, rng: random.Random) -> None:
    body = {**chat_body(ctx, rng), "variant": VARIANT["variant"]}
    events = await post_stream(http, "/v1/chat/completions", body, result)
    result.tokens = chat_usage(events)


async def run_structured(http, ctx: dict, result: Result, rng: random.Random) -> None:
    body = chat_body(ctx, rng)
    body["messages"] = [{"role": "user", "content": f"Describe a pet, no. {rng.randrange(999)}."}]
    body["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "pet", "schema": PET_SCHEMA, "strict": True},
    }
    events = await post_stream(http, "/v1/chat/completions", body, result)
    result.tokens = chat_usage(events)
    text = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))
    finish = next(
        (c["finish_reason"] for e in events for c in e.get("choices", []) if c["finish_reason"]),
        None,
    )
    if finish == "stop":
        try:
            json.loads(text)
        except ValueError:
            raise ValueError("structured: invalid JSON") from None


async def run_states(http, ctx: dict, result: Result, rng: random.Random) -> None:
    text = f"{rng.choice(STATE_OPENINGS)} (story {rng.randrange(10**6)})"
    state = await post_json(http, "/states", {"text": text, "config": {"temperature": 0.8}}, result)
    body = {"state_id": state["id"], "max_tokens": ctx["max_tokens"], "stream": True,
            "seed": rng.randrange(2**31)}  # fmt: skip
    try:
        events = await post_stream(http, "/generate/token", body, result)
    except BaseException:
        await asyncio.shield(http.delete(f"/states/{state['id']}"))  # best effort
        raise
    result.tokens = next(
        (e["usage"]["completion_tokens"] for e in reversed(events) if "usage" in e), 0
    )
    response = await http.delete(f"/states/{state['id']}")
    result.status = response.status_code
    if response.status_code != 200:
        raise Refused(response, response.text)


async def run_embeddings(http, ctx: dict, result: Result, rng: random.Random) -> None:
    texts = [
        " ".join(rng.choices(WORDS, k=rng.randint(4, 12))) + f" ({rng.randrange(10**9)})"
        for _ in range(rng.randint(2, 6))
    ]
    t0 = time.perf_counter()
    reply = await post_json(http, "/v1/embeddings", {"model": EMBEDDING_MODEL, "input": texts},
                            result)  # fmt: skip
    result.ttft = time.perf_counter() - t0  # the whole reply: kept apart from the streams
    if len(reply["data"]) != len(texts):
        raise ValueError("embeddings: wrong number of vectors")


RUNNERS = {
    "chat": run_chat,
    "steered": run_steered,
    "structured": run_structured,
    "states": run_states,
    "embeddings": run_embeddings,
}
VARIANT: dict = {}


async def one_request(http, kind: str, ctx: dict, rng: random.Random) -> tuple[Result, float]:
    """Runs one request; the result, and how long to back off (Retry-After) after it."""
    result = Result(kind, time.perf_counter())
    backoff = 0.0
    try:
        await RUNNERS[kind](http, ctx, result, rng)
    except Refused as exc:
        if exc.status in (429, 503) and exc.retry_after is not None:
            result.outcome, result.error = "intended", f"http {exc.status}"
            try:
                backoff = float(exc.retry_after)
            except ValueError:
                backoff = 1.0
        else:
            result.outcome, result.error = "error", f"http {exc.status}"
            ctx["samples"].setdefault(result.error, f"{kind}: {exc.body[:300]}")
    except httpx.ConnectError:
        result.outcome, result.error = "error", "connect error"
    except httpx.TimeoutException as exc:
        result.outcome, result.error = "error", f"timeout ({type(exc).__name__})"
    except (httpx.RemoteProtocolError, httpx.ReadError):
        result.outcome, result.error = "error", "broken stream"
    except json.JSONDecodeError:
        result.outcome, result.error = "error", "not JSON (a reply or an SSE event)"
    except ValueError as exc:  # error event, broken stream, invalid structured answer
        result.outcome, result.error = "error", str(exc) or type(exc).__name__
    except httpx.HTTPError as exc:
        result.outcome, result.error = "error", type(exc).__name__
    except (KeyError, TypeError, IndexError) as exc:
        result.outcome, result.error = "error", f"unexpected reply ({type(exc).__name__}: {exc})"
    if result.outcome == "error":
        ctx["samples"].setdefault(result.error, kind)
    result.end = time.perf_counter()
    return result, backoff


async def client(
    i: int, http, cycle: list[str], ctx: dict, deadline: float, results: list[Result]
) -> None:
    rng = random.Random(i)
    await asyncio.sleep(rng.random() * 0.5)  # do not all start in the same millisecond
    j = i
    while time.perf_counter() < deadline:
        kind = cycle[j % len(cycle)]
        j += 1
        result, backoff = await one_request(http, kind, ctx, rng)
        results.append(result)
        if backoff:
            await asyncio.sleep(max(0.0, min(backoff, deadline - time.perf_counter())))


# --- the run -----------------------------------------------------------------------------


def parse_mix(text: str) -> list[str]:
    """The cycle of kinds each client runs, e.g. chat=2,states=1 -> chat, states, chat: the
    kinds interleaved, each as often as its weight."""
    ranked = []
    for part in text.split(","):
        kind, _, weight = part.strip().partition("=")
        if kind not in KINDS:
            raise SystemExit(f"--mix: unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
        ranked += [(rank, KINDS.index(kind), kind) for rank in range(int(weight or 1))]
    return [kind for *_, kind in sorted(ranked)]


async def set_up(http: httpx.AsyncClient, ctx: dict) -> None:
    """The variant, and one request of each kind (grammar compiled, model paths warm)."""
    namespace = f"load-{os.getpid()}"
    r = await http.post("/features/search", json={"query": "pirate", "session_id": namespace})
    r.raise_for_status()
    feature = r.json()[0]
    VARIANT["label"] = feature["label"]
    VARIANT["variant"] = {
        "base_model": ctx["model"],
        "edits": [{"feature_id": feature["uuid"], "feature_label": feature["label"],
                   "index_in_sae": feature["index_in_sae"], "value": 0.3}],
        "scopes": [],
    }  # fmt: skip
    rng = random.Random(-1)
    for kind in KINDS:
        await served(http, kind, ctx, rng)


async def served(http: httpx.AsyncClient, kind: str, ctx: dict, rng: random.Random) -> Result:
    """One request before the load, tried again after a 429/503; an error stops the run."""
    while True:
        result, backoff = await one_request(http, kind, ctx, rng)
        if result.outcome == "ok":
            return result
        if result.outcome == "error":
            raise RuntimeError(f"{kind} before the load: {result.error} {ctx['samples']}")
        print(f"  {kind} before the load: {result.error}, trying again in {backoff:.0f} s")
        await asyncio.sleep(backoff)


async def lone_chat(http: httpx.AsyncClient, ctx: dict, n: int) -> list[Result]:
    """Streamed chat requests one at a time (the first, a warm-up, not counted)."""
    rng = random.Random(-2)
    return [await served(http, "chat", ctx, rng) for _ in range(n + 1)][1:]


async def load(url: str, pid: int, key: str | None, args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients)
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=timeout
    ) as http:
        models = (await http.get("/v1/models")).json()["data"]
        ctx = {"model": models[0]["id"], "max_tokens": args.max_tokens, "samples": {}}
        await set_up(http, ctx)
        lone = await lone_chat(http, ctx, args.lone)
        ctx["samples"] = {}
        rss: list[tuple[float, int]] = []
        rss_before = rss_bytes(pid)
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(pid, rss, stop))
        results: list[Result] = []
        cycle = parse_mix(args.mix)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        deadline = t0 + args.duration
        await asyncio.gather(
            *(client(i, http, cycle, ctx, deadline, results) for i in range(args.clients))
        )
        elapsed = time.perf_counter() - t0
        stop.set()
        await sampler
        rss_after = rss_bytes(pid)
    return {
        "model": ctx["model"],
        "lone": lone,
        "results": results,
        "samples": ctx["samples"],
        "rss": rss,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "t0": t0,
        "elapsed": elapsed,
        "cycle": cycle,
        "load": (load_before, os.getloadavg()[0]),
    }


# --- the report --------------------------------------------------------------------------


def pct(xs: list[float], q: int) -> float:
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


def ms(xs: list[float]) -> str:
    if not xs:
        return f"{'-':>9} {'-':>9}"
    return f"{pct(xs, 50) * 1e3:7.0f}ms {pct(xs, 99) * 1e3:7.0f}ms"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def report(run: dict, args: argparse.Namespace) -> bool:
    """Prints the figures; True when the run passes."""
    results: list[Result] = run["results"]
    elapsed = run["elapsed"]
    by_kind = {k: [r for r in results if r.kind == k] for k in KINDS}
    print(f"\n{args.clients} clients for {args.duration:.0f} s ({elapsed:.1f} s with the last "
          f"requests finishing); max_tokens {args.max_tokens}; mix {args.mix}; model "
          f"{run['model']}; steered with '{VARIANT['label']}'; 1-min load average "
          f"{run['load'][0]:.2f} before, {run['load'][1]:.2f} after")  # fmt: skip
    if args.api_keys:
        print(f"API keys required; rate limits: {args.rate_limit_requests} requests, "
              f"{args.rate_limit_tokens} tokens per minute (0: none)")  # fmt: skip

    header = (f"{'kind':<11} {'tried':>6} {'ok':>6} {'429/503':>8} {'errors':>7} "
              f"{'TTFT p50':>9} {'p99':>9} {'ITL p50':>9} {'p99':>9} {'tok/s':>7}")  # fmt: skip
    print("\n" + header + "\n" + "-" * len(header))
    rows = [*KINDS, "streamed", "all"]
    for name in rows:
        if name == "all":
            rs = results
        elif name == "streamed":
            rs = [r for r in results if r.kind in STREAMED]
        else:
            rs = by_kind[name]
        ok = [r for r in rs if r.outcome == "ok"]
        ttft = [r.ttft for r in ok if r.ttft is not None]
        gaps = [g for r in ok for g in r.gaps]
        tokens = sum(r.tokens for r in ok)
        if name == "embeddings":  # not streamed: its "TTFT" is the whole reply
            gaps, tokens = [], 0
        if name == "all":
            ttft = []
        print(f"{name:<11} {len(rs):6d} {len(ok):6d} "
              f"{sum(r.outcome == 'intended' for r in rs):8d} "
              f"{sum(r.outcome == 'error' for r in rs):7d} {ms(ttft)} {ms(gaps)} "
              f"{tokens / elapsed:7.1f}")  # fmt: skip
    print(
        "(embeddings: the TTFT columns are the whole reply's latency; ITL is between "
        "content-bearing SSE events; tok/s from usage.completion_tokens)"
    )

    intended = Counter(r.error for r in results if r.outcome == "intended")
    errors = Counter((r.error, r.kind) for r in results if r.outcome == "error")
    print(f"\nintended refusals: {dict(intended) or 'none'}")
    if errors:
        print("ERRORS by kind:")
        for (error, kind), n in errors.most_common():
            print(f"  {n:5d}  {error}  ({kind})")
        for error, sample in run["samples"].items():
            print(f"  e.g. {error}: {sample}")
    else:
        print("errors: none")

    lone_ttft = [r.ttft for r in run["lone"]]
    chat_ttft = [r.ttft for r in by_kind["chat"] if r.outcome == "ok" and r.ttft is not None]
    lone_gaps = [g for r in run["lone"] for g in r.gaps]
    print(f"\nlone streamed chat ({len(lone_ttft)} requests, one at a time, before the load): "
          f"TTFT p50 {pct(lone_ttft, 50) * 1e3:.0f} ms, ITL p50 "
          f"{pct(lone_gaps, 50) * 1e3:.0f} ms")  # fmt: skip
    if chat_ttft:
        penalty = pct(chat_ttft, 50) / pct(lone_ttft, 50)
        print(f"load penalty (peer: glassbox alone): chat TTFT p50 under load / alone = "
              f"{penalty:.1f}x")  # fmt: skip

    rss = run["rss"]
    values = [v for _, v in rss]
    third = max(1, len(values) // 3)
    first, last = max(values[:third]), max(values[-third:])
    growth = last - first
    bounded = growth <= args.growth_limit_mib * 2**20
    print(f"\nserver RSS: {mib(run['rss_before'])} before the load, {mib(values[0])} at its "
          f"start, peak {mib(max(values))}, {mib(values[-1])} at its end, "
          f"{mib(run['rss_after'])} after; {len(values)} samples")  # fmt: skip
    print(
        f"peak of the first third {mib(first)}, of the last third {mib(last)}: "
        f"{'+' if growth >= 0 else '-'}{mib(abs(growth))} "
        f"({'bounded' if bounded else 'UNBOUNDED'}: limit +{args.growth_limit_mib} MiB)"
    )

    passed = not errors and bounded
    print(f"\n{'PASS' if passed else 'FAIL'}: {len(results)} requests tried, "
          f"{sum(r.outcome == 'ok' for r in results)} completed, "
          f"{sum(intended.values())} intended 429/503, {sum(errors.values())} errors; "
          f"memory {'bounded' if bounded else 'unbounded'}")  # fmt: skip
    return passed


def server_problems(log_path: Path, limit: int = 60) -> list[str]:
    """The server log's error lines and tracebacks (the last `limit` of them)."""
    lines = log_path.read_text(errors="replace").splitlines()
    keep = [
        line
        for line in lines
        if '"level": "error"' in line or '"level":"error"' in line or "Traceback" in line
        or "Error" in line and not line.startswith("{")
    ]  # fmt: skip
    return keep[-limit:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--mix",
        default="chat=3,steered=2,structured=2,states=2,embeddings=1",
        help="kind=weight,...: each client cycles through it",
    )
    parser.add_argument("--lone", type=int, default=5, help="lone chat requests for the ratio")
    parser.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    parser.add_argument(
        "--growth-limit-mib",
        type=int,
        default=256,
        help="most RSS growth (last third's peak over the first third's)",
    )
    parser.add_argument("--api-keys", action="store_true", help="GLASSBOX_API_KEYS=required")
    parser.add_argument("--rate-limit-requests", type=int, default=0,
                        help="requests per minute for the tenant (implies --api-keys)")  # fmt: skip
    parser.add_argument("--rate-limit-tokens", type=int, default=0,
                        help="tokens per minute for the tenant (implies --api-keys)")  # fmt: skip
    parser.add_argument("--server-log", type=Path, help="keep the server's log here")
    parser.add_argument("serve_args", nargs="*", help="after --: more `glassbox serve` options")
    args = parser.parse_args()
    args.api_keys |= bool(args.rate_limit_requests or args.rate_limit_tokens)

    from glassbox.models.kernels import describe_cpu

    print(describe_cpu())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = server_env(tmp, args)
        log_path = tmp / "server.log"
        try:
            with serving(port, env, log_path, args.serve_args) as server:
                t0 = time.perf_counter()
                wait_ready(url, server)
                print(f"server ready in {time.perf_counter() - t0:.1f} s (pid {server.pid})")
                key = make_key(env) if args.api_keys else None
                run = asyncio.run(load(url, server.pid, key, args))
        finally:
            if args.server_log:
                shutil.copy(log_path, args.server_log)
        passed = report(run, args)
        problems = server_problems(log_path)
        if problems:
            print(f"\nthe server log's errors (last {len(problems)}):")
            print("\n".join(line[:400] for line in problems))
    raise SystemExit(0 if passed else 1)


if __name__ == "__main__":
    main()
