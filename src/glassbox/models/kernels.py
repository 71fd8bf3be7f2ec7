"""Choose the weight format by measurement, not by a CPU flag.

Which format decodes fastest depends on the CPU: with AVX512-BF16 the int8/int4 weight-only
kernels (bf16 activations) win by far; with AVX2 alone bf16 matmuls are slow at batch 16
while the quantized kernels still win at batch 1 (DESIGN.md, performance facts). So on the
first start for a CPU and a model, every candidate format is loaded and

- timed: the weight matmuls of one decode step (every decoder layer's qkv, o, gate_up and
  down, and the LM head) for the model's own shapes, at batch 1 and at a full batch;
- checked: perplexity of a held text (models/data/held_text.txt) within 2% of float32's,
  and the top-1 token equal to float32's on at least 97% of its positions.

The fastest format that keeps the quality is chosen (speed = the sum of the two batch
sizes' times, each relative to the fastest candidate there). For prefill the same
measurement decides between the quantized kernel itself and a bf16 copy of the
dequantized weights over a chunk of rows; the copy is kept only when it
is faster, so no weights are held twice for nothing. The choice is cached per CPU and
model in `<cache>/kernels/`; `glassbox bench kernels` measures again and prints the table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch

from glassbox.models.layers import Linear, PrefillWeights, WeightFormat, activation_dtype
from glassbox.models.llama import AttentionMetadata, LlamaModel

log = logging.getLogger(__name__)

CANDIDATES: tuple[WeightFormat, ...] = ("float32", "bfloat16", "int8", "q4", "int4")
MAX_PERPLEXITY_RATIO = 1.02
MIN_TOP1_AGREEMENT = 0.97
PREFILL_ROWS = 256
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
_VERSION = 1  # bump when what is measured changes: older cached choices are ignored


@dataclass(frozen=True)
class FormatResult:
    fmt: WeightFormat
    decode_ms: float  # one decode step's weight matmuls at batch 1
    batch_ms: float  # the same at the full batch
    perplexity: float
    top1: float  # agreement of the top-1 token with float32's
    prefill_ms: dict[str, float]  # PREFILL_ROWS rows through each prefill weights option

    def keeps_quality(self, reference_perplexity: float) -> bool:
        return (
            self.top1 >= MIN_TOP1_AGREEMENT
            and self.perplexity <= reference_perplexity * MAX_PERPLEXITY_RATIO
        )

    def prefill_choice(self) -> PrefillWeights:
        return min(self.prefill_ms, key=self.prefill_ms.__getitem__)  # type: ignore[return-value]


@dataclass(frozen=True)
class KernelChoice:
    fmt: WeightFormat
    prefill: PrefillWeights
    batch: int
    cpu: dict
    reference_perplexity: float
    results: tuple[FormatResult, ...]

    def result(self, fmt: WeightFormat) -> FormatResult:
        return next(r for r in self.results if r.fmt == fmt)

    def table(self) -> str:
        rows = [
            f"CPU: {self.cpu['model']}; torch {self.cpu['torch']}, capability "
            f"{self.cpu['capability']}, flags: {' '.join(self.cpu['flags']) or 'none'}, "
            f"{self.cpu['threads']} threads",
            f"{'format':<9} {'batch 1':>9} {f'batch {self.batch}':>9} {'tok/s 1':>8} "
            f"{f'tok/s {self.batch}':>9} {'ppl':>8} {'top-1':>7}  prefill {PREFILL_ROWS} rows",
        ]
        for r in self.results:
            kept = r.keeps_quality(self.reference_perplexity)
            quality = "" if kept else "  (quality: rejected)"
            prefill = ", ".join(f"{k} {v:.0f} ms" for k, v in r.prefill_ms.items())
            rows.append(
                f"{r.fmt:<9} {r.decode_ms:>7.1f}ms {r.batch_ms:>7.1f}ms "
                f"{1000 / r.decode_ms:>8.0f} {1000 * self.batch / r.batch_ms:>9.0f} "
                f"{r.perplexity:>8.3f} {r.top1:>7.3f}  {prefill}{quality}"
            )
        rows.append(
            f"chosen: {self.fmt}, prefill weights: {self.prefill} "
            f"(float32 perplexity {self.reference_perplexity:.3f})"
        )
        return "\n".join(rows)


def cpu_signature() -> dict:
    """What the choice depends on: the CPU model and flags, torch and its threads."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    model = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    words = set(info.split())
    return {
        "model": model,
        "flags": [f for f in CPU_FLAGS if f in words],
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        # ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA change the kernels as much as the CPU does
        "isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
    }


def describe_cpu() -> str:
    """One line for benchmark output."""
    cpu = cpu_signature()
    flags = " ".join(cpu["flags"]) or "none of " + ", ".join(CPU_FLAGS)
    return (
        f"CPU: {cpu['model']}, {os.cpu_count()} cores; torch {cpu['torch']}, capability "
        f"{cpu['capability']}, {cpu['threads']} threads; flags: {flags}"
    )


def cache_file(cache_dir: Path, fingerprint: str, batch: int) -> Path:
    key = json.dumps([_VERSION, cpu_signature(), fingerprint, batch], sort_keys=True)
    return Path(cache_dir) / "kernels" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def cached(cache_dir: Path, fingerprint: str, batch: int) -> KernelChoice | None:
    path = cache_file(cache_dir, fingerprint, batch)
    try:
        raw = json.loads(path.read_text())
        results = tuple(FormatResult(**r) for r in raw.pop("results"))
        return KernelChoice(results=results, **raw)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def save(choice: KernelChoice, cache_dir: Path, fingerprint: str) -> Path:
    path = cache_file(cache_dir, fingerprint, choice.batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(choice), indent=1))
    os.replace(tmp, path)
    return path


def choose(
    model_dir: Path, fingerprint: str, cache_dir: Path, batch: int, measure_again: bool = False
) -> KernelChoice:
    """The cached choice for this CPU and model, or a new measurement (saved)."""
    if not measure_again:
        choice = cached(cache_dir, fingerprint, batch)
        if choice is not None:
            return choice
    log.warning("measuring the weight formats for this CPU and model once (cached after)")
    t0 = time.perf_counter()
    choice = measure(model_dir, batch)
    save(choice, cache_dir, fingerprint)
    log.warning(
        "weight format %s, prefill weights %s (measured in %.1f s)\n%s",
        choice.fmt, choice.prefill, time.perf_counter() - t0, choice.table(),
    )  # fmt: skip
    return choice


def measure(
    model_dir: Path, batch: int, candidates: tuple[WeightFormat, ...] = CANDIDATES
) -> KernelChoice:
    """Build each candidate in turn (one at a time: memory), time it and check its quality
    against the first candidate, float32."""
    if candidates[0] != "float32":
        raise ValueError("the first candidate must be float32 (the reference)")
    config, weights = LlamaModel.read(model_dir)
    ids = _held_ids(model_dir)
    reference: torch.Tensor | None = None
    results: list[FormatResult] = []
    for fmt in candidates:
        model = LlamaModel(config, weights, fmt, prefill="bfloat16")
        logits = _logits(model, ids)
        if reference is None:
            reference = logits
        results.append(
            FormatResult(
                fmt=fmt,
                decode_ms=_decode_ms(model, 1),
                batch_ms=_decode_ms(model, batch),
                perplexity=_perplexity(logits, ids),
                top1=(logits.argmax(-1) == reference.argmax(-1)).float().mean().item(),
                prefill_ms=_prefill_ms(model),
            )
        )
        del model
    winner = pick(results, results[0].perplexity)
    return KernelChoice(
        fmt=winner.fmt,
        prefill=winner.prefill_choice(),
        batch=batch,
        cpu=cpu_signature(),
        reference_perplexity=results[0].perplexity,
        results=tuple(results),
    )


def pick(results: list[FormatResult], reference_perplexity: float) -> FormatResult:
    """The fastest result that keeps the quality: the least sum of its batch-1 and full-batch
    times, each relative to the fastest quality-keeping result at that batch size."""
    good = [r for r in results if r.keeps_quality(reference_perplexity)]
    best_one = min(r.decode_ms for r in good)
    best_batch = min(r.batch_ms for r in good)
    return min(good, key=lambda r: r.decode_ms / best_one + r.batch_ms / best_batch)


def _held_ids(model_dir: Path) -> list[int]:
    from glassbox.models.tokenizer import Tokenizer

    text = resources.files("glassbox.models").joinpath("data/held_text.txt").read_text()
    return Tokenizer(model_dir).hf.encode(text)


@torch.inference_mode()
def _logits(model: LlamaModel, ids: list[int]) -> torch.Tensor:
    """Next-token logits at every position of `ids` (one prefill over a scratch KV pool),
    through the decode kernels: the quality measured is the format's own, not that of its
    bf16 prefill copy (whose rounding is the 'bfloat16' format's)."""
    c = model.config
    linears = model.linears()
    copies = [lin.dense for lin in linears]
    for lin in linears:
        lin.dense = None
    block = 16
    blocks = (len(ids) + block - 1) // block
    pool = [torch.zeros(blocks, block, 2 * c.num_kv_heads, c.head_dim) for _ in range(c.num_layers)]
    n = len(ids)
    attn = AttentionMetadata(
        slot_mapping=torch.arange(n),
        prefill_spans=[(0, n, torch.arange(blocks), n, 0)],
    )
    try:
        hidden = model.forward(torch.tensor(ids), torch.arange(n), attn, pool)
    finally:
        for lin, copy in zip(linears, copies, strict=True):
            lin.dense = copy
    return model.logits(hidden)


def _perplexity(logits: torch.Tensor, ids: list[int]) -> float:
    loss = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    return float(torch.exp(loss))


def _best_ms(run, repeats: int) -> float:
    """The fastest of `repeats` timed calls of `run()` in ms, after one untimed call. The
    fastest, not the median: another process on the same cores only ever slows a run down,
    so the fastest run is the nearest to what the kernel costs."""
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


@torch.inference_mode()
def _decode_ms(model: LlamaModel, rows: int, repeats: int = 7) -> float:
    """One pass over every weight matmul of a decode step at `rows` rows."""
    linears = model.linears()
    dtype = activation_dtype(model.fmt)
    inputs = {n: torch.randn(rows, n, dtype=dtype) for n in {lin.in_features for lin in linears}}
    return _best_ms(lambda: _run(linears, inputs, False), repeats)


@torch.inference_mode()
def _prefill_ms(model: LlamaModel) -> dict[str, float]:
    """PREFILL_ROWS rows through one decoder layer's matmuls (scaled to all layers) with
    each prefill option: the quantized kernel, or the dense bf16 copy."""
    layer = model.layers[0]
    linears = [layer.qkv, layer.o, layer.gate_up, layer.down]
    dtype = activation_dtype(model.fmt)
    x = {n: torch.randn(PREFILL_ROWS, n, dtype=dtype) for n in {lin.in_features for lin in linears}}
    out = {"kernel": len(model.layers) * _best_ms(lambda: _run(linears, x, False), 3)}
    if layer.qkv.dense is not None:  # quantized: its bf16 copy is the other option
        out["bfloat16"] = len(model.layers) * _best_ms(lambda: _run(linears, x, True), 3)
    return out


def _run(linears: list[Linear], inputs: dict[int, torch.Tensor], dense: bool) -> None:
    for lin in linears:
        lin(inputs[lin.in_features], dense=dense)
