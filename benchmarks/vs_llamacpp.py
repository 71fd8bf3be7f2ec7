"""Serving throughput and time to first token: `glassbox serve` against llama.cpp's
`llama-server`, side by side, on the same GGUF, through their OpenAI APIs.

- llama-server is built once from the llama.cpp sources vendored in llama-cpp-python's sdist
  (pinned below; cmake, Release, native CPU, static, only the `llama-server` target, under
  `nice -n 19`; about 9 minutes on 2 cores) into --peers-dir (default
  ~/.cache/glassbox/peers/llama-server-<version>/, or $GLASSBOX_PEERS_DIR), and reused; it is
  rebuilt when the CPU's instruction-set flags differ from those it was built on.
- Both servers run at once on loopback ports with the bundled GGUF (glassbox's default model):
  `llama-server -t <cores> -np 16 -c <16 slots of prompt + new tokens>` and `glassbox serve`
  (its defaults; background feature warm-up off so that it does not run mid-measurement).
- At each --concurrency, that many distinct chat questions are sent at once to
  /v1/chat/completions (temperature 0.8, --new-tokens with ignore_eos, a seed per request);
  every request must report usage.completion_tokens == --new-tokens, or the run fails.
  Aggregate tokens/s = completion tokens of the batch / wall time of the batch.
- Requests stream (`stream: true` with `stream_options.include_usage`) on both servers: one
  request then gives both figures, the time to its first content chunk (TTFT) and its token
  count, and streaming is how chat clients use a server (so the per-token cost of SSE, which
  both servers pay, is part of the figure).
- Per concurrency: a warm-up batch on each server (same concurrency, 16 tokens), then --rounds
  of ABBA (glassbox, llama.cpp, llama.cpp, glassbox), so drift on the shared machine cancels.
  Every batch is printed (with the CPU the idle server used meanwhile); then a table of median
  tokens/s and median TTFT per server, and the median over rounds of the ratio glassbox /
  llama.cpp (each round: mean of its two glassbox batches / mean of its two llama.cpp
  batches). Targets: 1 stream >= 0.8; 16 streams >= 1.2 on AVX2, >= 1.5 where the CPU has
  AVX512-BF16.

    .venv/bin/python benchmarks/vs_llamacpp.py [--concurrency 1,4,16,32] [--new-tokens 128]
        [--rounds 3] [--peers-dir DIR] [--build-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prompts import QUESTIONS, WARMUP_QUESTIONS

from glassbox.models.kernels import cpu_signature, describe_cpu

LLAMA_CPP_PYTHON = "0.3.36"
SLOTS = 16  # llama-server -np
PROMPT_BUDGET = 256  # tokens of prompt per llama-server slot (the chat prompts are ~40)
TEMPERATURE = 0.8
CMAKE_ARGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",  # loopback only: no HTTPS
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # else the build downloads the web UI
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary to cache
    "-DGGML_NATIVE=ON",
]

WARMUP_TOKENS = 16


# --- the machine -----------------------------------------------------------------------------


def cpu_model() -> str:
    return cpu_signature()["model"]


def cpu_flags() -> list[str]:
    """The instruction-set flags the cached build is keyed by."""
    return cpu_signature()["flags"]


# --- building llama-server -------------------------------------------------------------------


def default_peers_dir() -> Path:
    env = os.environ.get("GLASSBOX_PEERS_DIR")
    base = Path(env) if env else Path.home() / ".cache" / "glassbox" / "peers"
    return base / f"llama-server-{LLAMA_CPP_PYTHON}"


def ensure_llama_server(peers_dir: Path) -> Path:
    """The cached llama-server binary, built first if it is missing or was built on a CPU with
    other flags (GGML_NATIVE: the binary uses this CPU's instructions)."""
    binary, info_file = peers_dir / "llama-server", peers_dir / "build.json"
    flags = cpu_flags()
    if binary.is_file() and info_file.is_file():
        info = json.loads(info_file.read_text())
        if info.get("cpu_flags") == flags:
            return binary
        print(
            f"llama-server in {peers_dir} was built for flags {info.get('cpu_flags')}; "
            f"this CPU has {flags}: rebuilding"
        )
    peers_dir.mkdir(parents=True, exist_ok=True)
    jobs = os.cpu_count() or 1
    print(
        f"building llama-server (llama-cpp-python {LLAMA_CPP_PYTHON} sdist, {jobs} jobs, "
        f"nice 19; ~9 min on 2 cores) into {peers_dir}",
        flush=True,
    )
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                "-d",
                str(work),
            ],
            check=True,
        )
        (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        source = work / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
        build = work / "build"
        nice = ["nice", "-n", "19"]
        subprocess.run(
            [*nice, "cmake", "-S", str(source), "-B", str(build), *CMAKE_ARGS],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [
                *nice,
                "cmake",
                "--build",
                str(build),
                "--config",
                "Release",
                "--target",
                "llama-server",
                "-j",
                str(jobs),
            ],
            check=True,
        )
        (built,) = build.rglob("bin/llama-server")
        shutil.copy2(built, binary)
    seconds = time.monotonic() - t0
    info = {
        "llama_cpp_python": LLAMA_CPP_PYTHON,
        "cpu_model": cpu_model(),
        "cpu_flags": flags,
        "cmake_args": CMAKE_ARGS,
        "build_seconds": round(seconds),
    }
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    print(f"built {binary} in {seconds / 60:.1f} min", flush=True)
    return binary


# --- the servers -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*self.command, "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C reaches us, we stop it
            )

    def wait_ready(self, timeout: float) -> None:
        t0 = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=5) as http:
            while time.monotonic() - t0 < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
                try:
                    if http.get("/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f} s")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (all its threads) so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


# --- measuring -------------------------------------------------------------------------------


@dataclass
class Batch:
    tokens_per_s: float
    wall: float
    ttfts: list[float]
    prompt_tokens: list[int]


async def one_request(
    http: httpx.AsyncClient, server: Server, question: str, new_tokens: int, seed: int
) -> tuple[float, int, int]:
    """Streams one chat completion; returns (seconds to its first content chunk, completion
    tokens, prompt tokens)."""
    body = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": new_tokens,
        "temperature": TEMPERATURE,
        "ignore_eos": True,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft, usage = None, None
    async with http.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            text = (await r.aread()).decode(errors="replace")
            raise RuntimeError(f"{server.name} answered {r.status_code}: {text}")
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"{server.name} streamed an error: {chunk['error']}")
            if ttft is None and any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                usage = chunk["usage"]
    if usage is None:
        raise RuntimeError(f"{server.name} sent no usage in its stream (include_usage)")
    if usage["completion_tokens"] != new_tokens:
        raise RuntimeError(
            f"{server.name} produced {usage['completion_tokens']} completion tokens "
            f"for {question!r}, not {new_tokens}: ignore_eos not honoured?"
        )
    if ttft is None:
        raise RuntimeError(f"{server.name} streamed no content for {question!r}")
    return ttft, usage["completion_tokens"], usage["prompt_tokens"]


async def run_batch(
    http: httpx.AsyncClient, server: Server, questions: list[str], concurrency: int, n: int
) -> Batch:
    qs = [
        questions[i % len(questions)] + ("" if i < len(questions) else f" ({i})")
        for i in range(concurrency)
    ]
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(one_request(http, server, q, n, seed) for seed, q in enumerate(qs))
    )
    wall = time.perf_counter() - t0
    ttfts, completion_tokens, prompt_tokens = zip(*results, strict=True)
    return Batch(sum(completion_tokens) / wall, wall, list(ttfts), list(prompt_tokens))


async def measure(servers: dict[str, Server], args: argparse.Namespace) -> dict:
    """{concurrency: {"batches": {name: [Batch]}, "ratios": [per-round ratio]}}"""
    results: dict[int, dict] = {}
    glassbox, llama = servers["glassbox"], servers["llama.cpp"]
    limits = httpx.Limits(max_connections=max(args.concurrency) * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10), limits=limits) as http:
        for c in args.concurrency:
            for server in (glassbox, llama):
                await run_batch(http, server, WARMUP_QUESTIONS, c, WARMUP_TOKENS)
            batches: dict[str, list[Batch]] = {"glassbox": [], "llama.cpp": []}
            ratios = []
            for rnd in range(1, args.rounds + 1):
                this_round: dict[str, list[float]] = {"glassbox": [], "llama.cpp": []}
                for server, other in (
                    (glassbox, llama),
                    (llama, glassbox),
                    (llama, glassbox),
                    (glassbox, llama),
                ):
                    other_cpu = other.cpu_seconds()
                    batch = await run_batch(http, server, QUESTIONS, c, args.new_tokens)
                    idle = (other.cpu_seconds() - other_cpu) / batch.wall
                    batches[server.name].append(batch)
                    this_round[server.name].append(batch.tokens_per_s)
                    print(
                        f"c={c:<3} round {rnd} {server.name:<9} {batch.tokens_per_s:7.1f} tok/s"
                        f"  wall {batch.wall:6.2f} s  TTFT median "
                        f"{statistics.median(batch.ttfts) * 1000:7.1f} ms"
                        f"  ({other.name} idle used {idle:.0%} of a core)",
                        flush=True,
                    )
                ratios.append(
                    statistics.mean(this_round["glassbox"])
                    / statistics.mean(this_round["llama.cpp"])
                )
            results[c] = {"batches": batches, "ratios": ratios}
    return results


def report(results: dict, flags: list[str]) -> None:
    print()
    print(
        f"{'streams':>7}  {'glassbox tok/s':>14}  {'llama.cpp tok/s':>15}  {'ratio':>6}  "
        f"{'glassbox TTFT':>13}  {'llama.cpp TTFT':>14}"
    )
    for c, r in results.items():
        tps = {n: statistics.median(b.tokens_per_s for b in bs) for n, bs in r["batches"].items()}
        ttft = {
            n: statistics.median(t for b in bs for t in b.ttfts) * 1000
            for n, bs in r["batches"].items()
        }
        print(
            f"{c:>7}  {tps['glassbox']:>14.1f}  {tps['llama.cpp']:>15.1f}  "
            f"{statistics.median(r['ratios']):>6.2f}  {ttft['glassbox']:>10.0f} ms  "
            f"{ttft['llama.cpp']:>11.0f} ms"
        )
    prompts = {
        n: statistics.mean(
            p for r in results.values() for b in r["batches"][n] for p in b.prompt_tokens
        )
        for n in ("glassbox", "llama.cpp")
    }
    print(
        f"mean prompt tokens per request (chat template applied by each server): "
        f"glassbox {prompts['glassbox']:.1f}, llama.cpp {prompts['llama.cpp']:.1f}"
    )
    bf16 = "avx512_bf16" in flags
    targets = {1: 0.8, 16: 1.5 if bf16 else 1.2}
    for c, target in targets.items():
        if c not in results:
            continue
        ratio = statistics.median(results[c]["ratios"])
        verdict = "PASS" if ratio >= target else "FAIL"
        where = "" if c == 1 else (" (AVX512-BF16)" if bf16 else " (AVX2)")
        print(
            f"{verdict}: {c} stream{'s' if c > 1 else ''}: glassbox / llama.cpp = {ratio:.2f} "
            f"(target >= {target}{where})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,4,16,32", help="comma-separated list")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="ABBA rounds per concurrency")
    ap.add_argument(
        "--peers-dir",
        type=Path,
        default=None,
        help="where llama-server is built and cached (default: "
        "$GLASSBOX_PEERS_DIR or ~/.cache/glassbox/peers, + /llama-server-"
        f"{LLAMA_CPP_PYTHON})",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="llama-server -t")
    ap.add_argument(
        "--llama-args",
        default="",
        help="extra llama-server arguments, e.g. '--no-repack' where its AMX kernels crash",
    )
    ap.add_argument("--build-only", action="store_true", help="build/cache llama-server, stop")
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]

    flags = cpu_flags()
    print(describe_cpu())
    binary = ensure_llama_server(args.peers_dir or default_peers_dir())
    if args.build_only:
        return

    from glassbox.models.loader import bundled_gguf

    gguf = bundled_gguf()
    context = SLOTS * (PROMPT_BUDGET + args.new_tokens)
    # SIGTERM ends the run like Ctrl-C does: through the finally below, which stops the servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="vs-llamacpp-") as tmp:
        servers = {
            "glassbox": Server(
                "glassbox",
                [str(Path(sys.executable).with_name("glassbox")), "serve"],
                {**os.environ, "GLASSBOX_WARM_FEATURES": "false"},
                Path(tmp) / "glassbox.log",
            ),
            "llama.cpp": Server(
                "llama.cpp",
                [
                    str(binary),
                    "-m",
                    str(gguf),
                    "-t",
                    str(args.threads),
                    "-np",
                    str(SLOTS),
                    "-c",
                    str(context),
                    "--no-webui",
                    *shlex.split(args.llama_args),
                ],
                dict(os.environ),
                Path(tmp) / "llama-server.log",
            ),
        }
        try:
            for server in servers.values():
                server.start()
            for server in servers.values():
                server.wait_ready(timeout=600)
            print(
                f"model {gguf.name}; glassbox on :{servers['glassbox'].port}, llama-server "
                f"-t {args.threads} -np {SLOTS} -c {context} on :{servers['llama.cpp'].port}; "
                f"{args.new_tokens} new tokens, temperature {TEMPERATURE}, streaming, "
                f"{args.rounds} ABBA round(s)",
                flush=True,
            )
            results = asyncio.run(measure(servers, args))
        except Exception:
            for server in servers.values():
                print(f"--- {server.name} log (last lines):\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            for server in servers.values():
                server.stop()
    report(results, flags)


if __name__ == "__main__":
    main()
