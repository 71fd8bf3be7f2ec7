"""Concept vectors: a feature dictionary built by DiffMean from contrast sets shipped with
the package (features/data/concepts.json).

For each concept, the direction is the mean residual stream (after one decoder layer, over
every position but the first) of its example sentences minus that of the neutral sentences.
The first position carries a massive activation (norm ~100x the others on SmolLM2) and is
left out of means and norms, or it would dominate the vector.

Scale: value 1.0 of a concept adds STEER_FRACTION x r along its unit direction, where r is the
median residual norm at that layer (positions but the first, neutral texts). DESIGN.md's
measurement on SmolLM2: 0.25 r steered fluently, 0.5 r broke words, 0.75 r was gibberish; so
Ember's "typically -1 to 1" maps onto the coherent window.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from glassbox.engine.llm_engine import LLMEngine
from glassbox.engine.readout import FeatureEncoder
from glassbox.features.dictionary import FeatureDictionary
from glassbox.features.steps import Steps, run_steps

STEER_FRACTION = 0.25
NOISE_Z = 2.0
# Nudges are spread over the layers within this distance of the dictionary's layer. On the
# bundled model, steering_quality.py (temperature 0.7, AutoSteer toward held-out concepts,
# one seed) measured for layers 13-17 a similarity gain of +0.072 at perplexity x1.42
# (budget 1.0) against +0.070 at x1.64 for layer 15 alone. (Those runs steered the prompt
# only partly: a steered request then reused the prefix cache's unsteered prompt blocks.)
STEER_SPREAD = 2
# Bumped when what is cached changes, so older caches are rebuilt rather than misread.
CACHE_FORMAT = 3
DICTIONARY_NAME = "concepts"


@dataclass(frozen=True)
class Concept:
    id: str
    label: str
    category: str
    description: str
    examples: tuple[str, ...]
    queries: tuple[str, ...]
    split: str


@dataclass(frozen=True)
class ConceptData:
    neutral: tuple[str, ...]
    concepts: tuple[Concept, ...]
    digest: str  # of the data file: a cached dictionary is rebuilt when the data changes


def load_concept_data() -> ConceptData:
    raw = (resources.files("glassbox.features") / "data" / "concepts.json").read_bytes()
    data = json.loads(raw)
    concepts = tuple(
        Concept(
            c["id"],
            c["label"],
            c["category"],
            c["description"],
            tuple(c["examples"]),
            tuple(c.get("queries", ())),
            c.get("split", "train"),
        )  # fmt: skip
        for c in data["concepts"]
    )
    return ConceptData(tuple(data["neutral"]), concepts, hashlib.sha256(raw).hexdigest()[:16])


class ConceptDictionary(FeatureDictionary):
    """Concept activations are centred on the neutral texts (read_bias), so 0 is "as much as
    ordinary text" and 1.0 is one steering unit more.

    Concept directions are dense: every token projects a little on every one of them. So
    inspection reports, like an SAE's sparse non-negative latents, only what stands out:
    the part of a token's reading above NOISE_Z standard deviations of that feature's
    per-token readings on neutral text (`noise`)."""

    def __init__(self, *args, noise: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.noise = torch.zeros(len(self)) if noise is None else noise.float().reshape(-1)

    def activations(self, h: torch.Tensor) -> torch.Tensor:
        return (self.read_linear(h) - NOISE_Z * self.noise).clamp(min=0.0)

    @cached_property
    def encoder(self) -> FeatureEncoder:
        bias = self.read_bias - NOISE_Z * self.noise
        return FeatureEncoder(self.name, self.layer, self.read, bias, "relu")


def default_layer(engine: LLMEngine) -> int:
    return engine.model.config.num_layers // 2


def _mean_residuals(
    engine: LLMEngine, texts: list[str], layer: int, batch: int, bar: tqdm | None
) -> Steps[tuple[torch.Tensor, torch.Tensor]]:
    """Per text: the mean residual over positions 1.. at `layer`; and all those positions'
    residuals [positions, hidden]. Yields after each batch of `batch` texts."""
    means, positions = [], []
    for start in range(0, len(texts), batch):
        chunk = [engine.tokenizer.encode(t) for t in texts[start : start + batch]]
        captured, _ = engine.capture(chunk, {layer})
        for c in captured:
            h = c[layer][1:] if c[layer].shape[0] > 1 else c[layer]
            means.append(h.mean(dim=0))
            positions.append(h)
        if bar is not None:
            bar.update(len(chunk))
        yield
    return torch.stack(means), torch.cat(positions)


def build_concept_dictionary(
    engine: LLMEngine,
    data: ConceptData | None = None,
    layer: int | None = None,
    model_fingerprint: str = "",
    progress: bool = True,
    batch: int = 16,
) -> FeatureDictionary:
    return run_steps(build_concept_steps(engine, data, layer, model_fingerprint, progress, batch))


def build_concept_steps(
    engine: LLMEngine,
    data: ConceptData | None = None,
    layer: int | None = None,
    model_fingerprint: str = "",
    progress: bool = True,
    batch: int = 16,
) -> Steps[FeatureDictionary]:
    """`build_concept_dictionary` in steps of one forward pass over `batch` texts each: the
    server runs each step in an engine call of its own, so that running generations are
    stepped in between (a whole build takes minutes on CPU)."""
    data = data or load_concept_data()
    layer = default_layer(engine) if layer is None else layer
    examples = [e for c in data.concepts for e in c.examples]
    total = len(data.neutral) + len(examples)
    with tqdm(total=total, desc="building concept vectors", disable=not progress) as bar:
        neutral, neutral_h = yield from _mean_residuals(
            engine, list(data.neutral), layer, batch, bar
        )
        per_example, _ = yield from _mean_residuals(engine, examples, layer, batch, bar)
    r = float(neutral_h.norm(dim=-1).median())
    baseline = neutral.mean(dim=0)
    directions, start = [], 0
    for c in data.concepts:
        diff = per_example[start : start + len(c.examples)].mean(dim=0) - baseline
        directions.append(diff / diff.norm().clamp(min=1e-8))
        start += len(c.examples)
    write = torch.stack(directions) * (STEER_FRACTION * r)
    read = write / (STEER_FRACTION * r) ** 2
    read_bias = -(read @ baseline)
    noise = (neutral_h @ read.T + read_bias).std(dim=0)
    last = engine.model.config.num_layers - 1
    window = range(max(0, layer - STEER_SPREAD), min(last, layer + STEER_SPREAD) + 1)
    return ConceptDictionary(
        DICTIONARY_NAME,
        layer,
        [c.label for c in data.concepts],
        write,
        read,
        read_bias=read_bias,
        noise=noise,
        model_fingerprint=model_fingerprint,
        descriptions=[c.description for c in data.concepts],
        steer_layers=tuple(window),
    )


def cache_path(cache_dir: Path, model_fingerprint: str, layer: int, digest: str) -> Path:
    name = f"{model_fingerprint}-concepts-L{layer}-{digest}-v{CACHE_FORMAT}.safetensors"
    return Path(cache_dir) / "features" / name


def save_dictionary(dictionary: ConceptDictionary, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": dictionary.name,
        "layer": str(dictionary.layer),
        "labels": json.dumps(dictionary.labels),
        "descriptions": json.dumps(dictionary.descriptions),
        "steer_layers": json.dumps(list(dictionary.steer_layers)),
    }
    tmp = path.with_suffix(".tmp")
    tensors = {
        "write": dictionary.write,
        "read": dictionary.read,
        "read_bias": dictionary.read_bias,
        "noise": dictionary.noise,
    }
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def load_dictionary(path: Path, model_fingerprint: str) -> ConceptDictionary:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    return ConceptDictionary(
        meta["name"],
        int(meta["layer"]),
        json.loads(meta["labels"]),
        tensors["write"],
        tensors["read"],
        read_bias=tensors["read_bias"],
        noise=tensors["noise"],
        model_fingerprint=model_fingerprint,
        descriptions=json.loads(meta["descriptions"]),
        steer_layers=tuple(json.loads(meta["steer_layers"])),
    )


def concept_dictionary(
    engine: LLMEngine,
    cache_dir: Path,
    model_fingerprint: str,
    layer: int | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> FeatureDictionary:
    """The concept dictionary from the cache, built (and cached) on first use."""
    return run_steps(
        concept_dictionary_steps(engine, cache_dir, model_fingerprint, layer, rebuild, progress)
    )


def concept_dictionary_steps(
    engine: LLMEngine,
    cache_dir: Path,
    model_fingerprint: str,
    layer: int | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> Steps[FeatureDictionary]:
    """`concept_dictionary` in steps: none when it loads from the cache, the build's steps
    (`build_concept_steps`) when it builds."""
    data = load_concept_data()
    layer = default_layer(engine) if layer is None else layer
    path = cache_path(cache_dir, model_fingerprint, layer, data.digest)
    if path.is_file() and not rebuild:
        return load_dictionary(path, model_fingerprint)
    dictionary = yield from build_concept_steps(engine, data, layer, model_fingerprint, progress)
    save_dictionary(dictionary, path)
    return dictionary
