"""Cold start: seconds from launching a process to its first answer, glassbox against a plain
transformers script in the same run.

- glassbox: `glassbox serve` on a free loopback port, polled with a chat request (greedy, 10
  new tokens) until it answers;
- transformers: a fresh Python process that loads the same converted model directory with
  AutoModelForCausalLM (fp32, its default), applies the chat template and generates the
  same 10 tokens.

Both read the bundled model converted once into the cache (the conversion itself is not
timed: it is done before the first run). Prints the median of --runs runs of each, the CPU
flags, and the ratio. The target is a first answer within 10 s of launching glassbox.

    .venv/bin/python benchmarks/startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TARGET_SECONDS = 10.0

TRANSFORMERS_SCRIPT = """
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
directory = sys.argv[1]
tok = AutoTokenizer.from_pretrained(directory)
model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
ids = tok.apply_chat_template(
    [{"role": "user", "content": "What is the capital of France?"}],
    add_generation_prompt=True, return_tensors="pt", return_dict=True,
)
out = model.generate(**ids, max_new_tokens=10, do_sample=False)
print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _glassbox() -> list[str]:
    return [str(Path(sys.executable).with_name("glassbox"))]


def glassbox_first_answer(timeout: float = 120.0) -> float:
    port = _free_port()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*_glassbox(), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            while time.monotonic() - t0 < timeout:
                if proc.poll() is not None:
                    raise RuntimeError(f"glassbox serve exited with {proc.returncode}")
                try:
                    r = http.post(
                        "/v1/chat/completions",
                        json={"messages": QUESTION, "temperature": 0, "max_tokens": 10},
                    )
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                r.raise_for_status()
                return time.monotonic() - t0
        raise RuntimeError(f"no answer within {timeout} s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def transformers_first_answer(directory: Path) -> float:
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", TRANSFORMERS_SCRIPT, str(directory)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    from glassbox.config import Settings
    from glassbox.models.kernels import describe_cpu
    from glassbox.runtime import resolve

    directory = resolve(Settings()).directory  # converts the bundled GGUF once, untimed
    print(describe_cpu())
    glassbox, peer = [], []
    for _ in range(args.runs):  # interleaved, so both see the same machine
        glassbox.append(glassbox_first_answer())
        peer.append(transformers_first_answer(directory))
    g, p = statistics.median(glassbox), statistics.median(peer)

    def runs(xs: list[float]) -> str:
        return ", ".join(f"{x:.1f}" for x in xs)

    print(f"glassbox serve -> first answer: {g:.1f} s (runs: {runs(glassbox)})")
    print(f"transformers script -> answer:  {p:.1f} s (runs: {runs(peer)})")
    print(f"ratio glassbox / transformers: {g / p:.2f}")
    verdict = "PASS" if g <= TARGET_SECONDS else "FAIL"
    print(f"{verdict}: first answer {g:.1f} s after launch (target <= {TARGET_SECONDS:.0f} s)")


if __name__ == "__main__":
    main()
