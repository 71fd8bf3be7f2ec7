"""Features: the dictionaries of the served model, search, inspection, contrast, AutoSteer,
logits under a variant, and the resolution of variants into steering plans.

Every tensor computation runs on the engine thread (DESIGN.md: one thread runs torch):
`AsyncLLMEngine.call` for captures, dictionary builds, loading the embedding model (the one
`/v1/embeddings` serves, when the server shares it), embedding labels and queries, search;
`submit` for generation. Long builds (the concept vectors, once per model; the search index's
label embeddings) run one step per call (steps.py), so running generations are stepped in
between.

The dictionaries and the search index are built once: in the background at start-up
(`index()` from app.py's warm-up) or by the first request that needs them; a request that
arrives during the build awaits the same build. `stage` says how far it is (/health).
"""

from __future__ import annotations

import asyncio
import difflib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import torch

from glassbox.embeddings.embedder import LocalEmbedder, import_library
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.llm_engine import LLMEngine
from glassbox.engine.readout import Readout
from glassbox.errors import ContextLengthExceeded, InvalidRequest, NotFound
from glassbox.features.autosteer import autosteer
from glassbox.features.catalog import FeatureCatalog
from glassbox.features.concepts import concept_dictionary_steps
from glassbox.features.dictionary import Feature, FeatureDictionary
from glassbox.features.sae import load_sae
from glassbox.features.search import EmbedderEncoder, FeatureIndex, TextEncoder
from glassbox.features.steps import Steps, step
from glassbox.features.variant import Condition, ConditionGroup, Edit, FeatureRef, VariantSpec
from glassbox.features.vector_files import load_vector_folder
from glassbox.logs import get_logger
from glassbox.requests.builder import UNBOUNDED, RequestBounds, RequestBuilder, about
from glassbox.steering.plan import (
    Direction,
    ResolvedCondition,
    ResolvedEdit,
    ResolvedGroup,
    ResolvedScope,
    SteeringPlan,
)

log = get_logger(__name__)
T = TypeVar("T")

AGGREGATIONS = ("frequency", "mean", "max", "sum")
# Most features a generation's readout reports per token.
READOUT_MAX_FEATURES = 64

# How far the dictionaries and the search index are: "pending" until their build starts.
Stage = Literal["pending", "dictionaries", "encoder", "index", "ready", "failed"]


@dataclass
class Inspection:
    """Per-token activations of one conversation: tokens x features of one dictionary."""

    tokens: list[str]
    token_ids: list[int]
    dictionary: FeatureDictionary
    acts: torch.Tensor  # [T, n_features], positions after the first

    def top(self, k: int, aggregate_by: str = "frequency") -> list[tuple[Feature, float]]:
        if aggregate_by not in AGGREGATIONS:
            raise InvalidRequest(
                f"aggregate_by must be one of {', '.join(AGGREGATIONS)}", param="aggregate_by"
            )
        a = self.acts
        if aggregate_by == "frequency":
            score = (a > 0).float().sum(dim=0)
            # ties (common for frequency) are broken by the total activation
            score = score + a.sum(dim=0) / (a.sum() + 1.0)
        elif aggregate_by == "mean":
            score = a.mean(dim=0)
        elif aggregate_by == "max":
            score = a.amax(dim=0)
        else:
            score = a.sum(dim=0)
        k = min(max(k, 1), score.shape[0])
        values, idx = torch.topk(score, k)
        if aggregate_by == "frequency":
            values = (a[:, idx] > 0).float().sum(dim=0)
        features = self.dictionary.features
        return [(features[i], float(v)) for i, v in zip(idx.tolist(), values.tolist(), strict=True)]


class FeatureService:
    def __init__(
        self,
        engine: AsyncLLMEngine,
        cache_dir: Path,
        model_fingerprint: str,
        base_model: str,
        sae_paths: list[Path] | None = None,
        vector_dirs: list[Path] | None = None,
        layer: int | None = None,
        *,
        embedder: LocalEmbedder | None = None,
        bounds: RequestBounds = UNBOUNDED,
    ):
        """`embedder`: the embedding model that embeds the labels and queries (the server's,
        shared with /v1/embeddings); without it the service makes its own when it first needs
        it. `bounds`: the server's bounds on one request (prompts read for features too)."""
        self.engine = engine
        self.requests = RequestBuilder.for_engine(engine, bounds)
        self.cache_dir = Path(cache_dir)
        self.fingerprint = model_fingerprint
        self.base_model = base_model
        self.sae_paths = list(sae_paths or [])
        self.vector_dirs = list(vector_dirs or [])
        self.layer = layer
        self._embedder = embedder
        self._encoder: TextEncoder | None = None
        self._lock = asyncio.Lock()
        self._loading: asyncio.Task[list[FeatureDictionary]] | None = None
        self._dictionaries: list[FeatureDictionary] | None = None
        self._index: FeatureIndex | None = None
        self._build: asyncio.Task[FeatureIndex] | None = None
        self.stage: Stage = "pending"
        self.calls: Counter[str] = Counter()  # searches, inspections, ... (for /metrics)

    def stats(self) -> dict:
        """For /metrics: {"ready", "dictionaries": {name: features}, "calls": {kind: n}}."""
        return {
            "ready": self.is_ready,
            "dictionaries": {d.name: len(d) for d in self._dictionaries or []},
            "calls": dict(self.calls),
        }

    @property
    def is_ready(self) -> bool:
        """Dictionaries and search index loaded (features requests answer without delay)."""
        return self._index is not None

    def close(self) -> None:
        """Stop a build under way (at shutdown)."""
        for task in (self._build, self._loading):
            if task is not None:
                task.cancel()

    async def _run_steps(self, steps: Steps[T]) -> tuple[T, int]:
        """A stepped build run one step per engine call; its result and how many steps ran."""
        count = 0
        while True:
            done, result = await self.engine.call(lambda _: step(steps))
            if done:
                return result, count
            count += 1

    # --- dictionaries -------------------------------------------------------------------

    async def dictionaries(self) -> list[FeatureDictionary]:
        """The dictionaries, built or loaded once: the first caller starts it, later ones
        await the same task, and a caller that goes away (a client timeout) does not stop
        a build that may take a minute, which the next caller would start from zero."""
        if self._dictionaries is not None:
            return self._dictionaries
        async with self._lock:
            if self._loading is None or self._loading.done():  # none yet, or it failed
                self._loading = asyncio.create_task(self._load_dictionaries())
        return await asyncio.shield(self._loading)

    async def _load_dictionaries(self) -> list[FeatureDictionary]:
        t0 = time.perf_counter()
        concepts, steps = await self._concepts()
        files = await self.engine.call(self._load_files)
        self._dictionaries = [concepts, *files]
        log.info(
            "feature dictionaries built" if steps else "feature dictionaries loaded",
            dictionaries=[d.name for d in self._dictionaries],
            features=sum(len(d) for d in self._dictionaries),
            duration_ms=_ms_since(t0),
        )
        return self._dictionaries

    async def _concepts(self) -> tuple[FeatureDictionary, int]:
        """The concept dictionary (from the cache, else built) and the build's step count."""

        def steps(engine: LLMEngine) -> Steps[FeatureDictionary]:
            return concept_dictionary_steps(engine, self.cache_dir, self.fingerprint, self.layer)

        return await self._run_steps(await self.engine.call(steps))

    def _load_files(self, engine: LLMEngine) -> list[FeatureDictionary]:
        c = engine.model.config
        out = []
        for path in self.sae_paths:
            out.append(load_sae(path, self.fingerprint, expected_hidden_size=c.hidden_size))
        for folder in self.vector_dirs:
            layer = self.layer if self.layer is not None else c.num_layers // 2
            out.append(load_vector_folder(folder, layer, c.hidden_size, self.fingerprint))
        return out

    async def catalog(self) -> FeatureCatalog:
        """Model-wide indices of the dictionaries' features."""
        return FeatureCatalog.of(await self.dictionaries())

    async def dictionary(self, name: str | None, param: str = "dictionary") -> FeatureDictionary:
        """The dictionary called `name`; None: the first (the concept vectors)."""
        dictionaries = await self.dictionaries()
        if name is None:
            return dictionaries[0]
        for d in dictionaries:
            if d.name == name:
                return d
        names = ", ".join(repr(d.name) for d in dictionaries)
        raise NotFound(
            "dictionary", name, f"'{param}': no dictionary named {name!r}; this model has {names}",
            param=param,
        )  # fmt: skip

    async def readout(
        self, features: int, dictionary: str | None = None, param: str = "readout"
    ) -> tuple[Readout, FeatureDictionary]:
        """What a generation carries to report each token's `features` strongest features of
        `dictionary` (indices into it: the dictionary maps them to features)."""
        if not 1 <= features <= READOUT_MAX_FEATURES:
            raise InvalidRequest(
                f"'{param}.features' must be between 1 and {READOUT_MAX_FEATURES}",
                param=f"{param}.features",
            )
        d = await self.dictionary(dictionary, f"{param}.dictionary")
        self.calls["readout"] += 1
        return Readout(d.encoder, min(features, len(d))), d

    async def index(self) -> FeatureIndex:
        """The search index (with the dictionaries), built once: the first caller starts the
        build, later ones await the same build (a caller that goes away does not stop it)."""
        if self._index is not None:
            return self._index
        if self._build is None or self._build.done():  # none yet, or the last one failed
            self._build = asyncio.create_task(self._build_index())
        return await asyncio.shield(self._build)

    async def _build_index(self) -> FeatureIndex:
        t0 = time.perf_counter()
        try:
            self.stage = "dictionaries"
            dictionaries = await self.dictionaries()
            if self._encoder is None:
                self.stage = "encoder"
                self._encoder = await self._load_encoder()
            self.stage = "index"
            t1 = time.perf_counter()
            steps = FeatureIndex.build_in_steps(
                dictionaries, self._encoder, cache_dir=self.cache_dir
            )
            index, chunks = await self._run_steps(steps)
            log.info(
                "feature index built" if chunks else "feature index loaded",
                features=len(index),
                engine_calls=chunks + 1,
                duration_ms=_ms_since(t1),
            )
        except asyncio.CancelledError:
            self.stage = "pending"
            raise
        except Exception:
            self.stage = "failed"
            log.exception("feature index build failed")
            raise
        self._index = index
        self.stage = "ready"
        log.info("features ready", duration_ms=_ms_since(t0))
        return index

    async def _load_encoder(self) -> TextEncoder:
        """The search's encoder over the embedding model: its library imported on a worker
        thread (Python only, no tensors), the model loaded on the engine thread (`load`; at
        once if /v1/embeddings loaded it already). Made here, not in __init__, when none was
        given: a missing model package fails the features build, not the server's start."""
        if self._embedder is None:
            self._embedder = LocalEmbedder(self.engine.call)
        t0 = time.perf_counter()
        await asyncio.to_thread(import_library)  # what `load` does first, timed on its own
        t1 = time.perf_counter()
        await self._embedder.load()
        log.info(
            "feature encoder loaded",
            import_ms=round((t1 - t0) * 1000, 1),
            load_ms=_ms_since(t1),
        )
        return EmbedderEncoder(self._embedder)

    async def feature(self, uuid: str) -> tuple[FeatureDictionary, Feature]:
        for d in await self.dictionaries():
            f = d.by_uuid(uuid)
            if f is not None:
                return d, f
        raise NotFound(
            "feature", uuid, f"no feature with id {uuid!r} in this model's dictionaries",
            param="feature",
        )  # fmt: skip

    async def feature_by_label(self, label: str) -> tuple[FeatureDictionary, Feature]:
        wanted = label.strip().lower()
        for d in await self.dictionaries():
            for f in d.features:
                if f.label.lower() == wanted:
                    return d, f
        hits = await self.search(label, 1)
        if not hits:
            raise NotFound("feature", label, f"no feature matches {label!r}", param="label")
        return await self.feature(hits[0][0].uuid)

    # --- search -------------------------------------------------------------------------

    async def search(self, query: str, top_k: int = 10) -> list[tuple[Feature, float]]:
        self.calls["search"] += 1
        index = await self.index()
        try:
            return await self.engine.call(lambda _: index.search(query, top_k))
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="query") from exc

    async def rerank(self, uuids: list[str], query: str, top_k: int) -> list[tuple[Feature, float]]:
        self.calls["rerank"] += 1
        features = [(await self.feature(u))[1] for u in uuids]
        index = await self.index()
        try:
            return await self.engine.call(lambda _: index.rerank(features, query, top_k))
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="query") from exc

    async def neighbors(self, uuid: str, top_k: int) -> list[tuple[Feature, float]]:
        self.calls["neighbors"] += 1
        _, feature = await self.feature(uuid)
        index = await self.index()
        try:
            return await self.engine.call(lambda _: index.neighbors(feature, top_k))
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="top_k") from exc

    async def lookup(self, indices: list[int]) -> dict[int, Feature]:
        concepts = (await self.dictionaries())[0]
        bad = [i for i in indices if not 0 <= i < len(concepts)]
        if bad:
            raise InvalidRequest(
                f"feature index {bad[0]} is out of range [0, {len(concepts)})", param="indices"
            )
        return {i: concepts.features[i] for i in indices}

    # --- variants -> steering plans -----------------------------------------------------

    async def resolve(self, spec: VariantSpec | None) -> SteeringPlan | None:
        if spec is None or spec.is_empty:
            return None
        directions: dict[str, Direction] = {}

        async def direction(ref: FeatureRef) -> Direction:
            if ref.uuid not in directions:
                d, f = await self.feature(ref.uuid)
                directions[ref.uuid] = d.direction(f.index)
            return directions[ref.uuid]

        async def edit(e: Edit) -> ResolvedEdit:
            return ResolvedEdit(await direction(e.feature), e.mode, e.value)

        async def group(g: ConditionGroup) -> ResolvedGroup:
            items = []
            for item in g.items:
                if isinstance(item, Condition):
                    items.append(
                        ResolvedCondition(await direction(item.feature), item.operator, item.value)
                    )
                else:
                    items.append(await group(item))
            return ResolvedGroup(g.join, tuple(items))

        # Unconditional nudges are spread over the dictionary's steering layers; pins, muls,
        # ablations and scopes act where the feature is read, at its own layer.
        edits: list[ResolvedEdit] = []
        for e in spec.edits:
            if e.mode == "nudge":
                d, f = await self.feature(e.feature.uuid)
                edits.extend(d.nudge(f.index, e.value))
            else:
                edits.append(await edit(e))
        scopes = []
        for s in spec.scopes:
            when = await group(s.when)
            layers = {d.layer for d in when.directions()}
            scoped = tuple([await edit(e) for e in s.edits])
            layers |= {e.direction.layer for e in scoped}
            if len(layers) != 1:
                raise InvalidRequest(
                    "a conditional scope's condition and edits must use features of one layer",
                    param="scopes",
                )
            scopes.append(ResolvedScope(layers.pop(), when, scoped, s.abort))
        return SteeringPlan(edits, scopes)

    # --- running the model --------------------------------------------------------------

    def _prompt(self, messages: list[dict]) -> list[int]:
        """The conversation's token ids, refused when they do not fit the context: the model
        could not read them, and what comes next (`_content_positions`) is quadratic."""
        ids = self.requests.chat(messages, add_generation_prompt=False)
        limit = self.requests.context_limit
        if len(ids) > limit:
            raise ContextLengthExceeded(
                f"The messages have {len(ids)} tokens; this model reads at most {limit}. "
                "Send fewer or shorter messages.",
                param="messages",
            )
        return ids

    async def _capture(
        self, prompts: list[list[int]], layers: set[int], plan: SteeringPlan | None
    ) -> tuple[list[dict[int, torch.Tensor]], torch.Tensor]:
        with about("messages"):
            return await self.engine.call(lambda e: e.capture(prompts, layers, plan))

    async def next_token_ranking(
        self, prompt_ids: list[int], spec: VariantSpec | None, candidates: list[int] | None = None
    ) -> tuple[list[int], list[float]]:
        """The tokens that may follow `prompt_ids` under the variant, most likely first, and
        their logits: every token of the tokenizer's vocabulary, or only `candidates`.
        Ranked inside the engine call: a sort over the vocabulary on another thread would
        start an OpenMP team there."""
        self.calls["logits"] += 1
        plan = await self.resolve(spec)
        vocab = self.engine.tokenizer.vocab_size

        def rank(engine: LLMEngine) -> tuple[list[int], list[float]]:
            _, logits = engine.capture([prompt_ids], set(), plan)
            ids = (
                torch.arange(vocab)
                if candidates is None
                else torch.tensor(candidates, dtype=torch.long)
            )
            values = logits[0, :vocab].float()[ids]
            order = torch.argsort(values, descending=True)
            return ids[order].tolist(), values[order].tolist()

        with about("messages"):
            return await self.engine.call(rank)

    async def inspect(
        self, messages: list[dict], spec: VariantSpec | None = None, dictionary: str | None = None
    ) -> Inspection:
        self.calls["inspect"] += 1
        d = await self.dictionary(dictionary)
        ids = self._prompt(messages)
        plan = await self.resolve(spec)
        # Report the messages' own tokens: the chat template's role markers and default
        # system prompt light up format-like features on every conversation alike.
        keep = [i for i in self._content_positions(messages, ids) if i > 0]
        if not keep:
            keep = list(range(1, len(ids))) or [0]

        def read(h: torch.Tensor) -> torch.Tensor:
            return d.activations(h)[keep]

        acts = await self._read([ids], d, read, plan)
        tok = self.engine.tokenizer
        return Inspection(
            tokens=[tok.token_str(ids[i]) for i in keep],
            token_ids=[ids[i] for i in keep],
            dictionary=d,
            acts=acts[0],
        )

    async def _read(
        self,
        prompts: list[list[int]],
        d: FeatureDictionary,
        read: Callable[[torch.Tensor], torch.Tensor],
        plan: SteeringPlan | None,
    ) -> list[torch.Tensor]:
        """Per prompt, `read` of its residuals [T, hidden] at `d`'s layer: computed with the
        capture, on the engine thread (a matmul elsewhere would start an OpenMP team there)."""

        def run(engine: LLMEngine) -> list[torch.Tensor]:
            captured, _ = engine.capture(prompts, {d.layer}, plan)
            return [read(c[d.layer]) for c in captured]

        with about("messages"):
            return await self.engine.call(run)

    def _content_positions(self, messages: list[dict], ids: list[int]) -> list[int]:
        """Positions of `ids` that come from the messages' contents: those not matched by
        the same conversation with every content emptied (the template's skeleton)."""
        skeleton_messages = [{**m, "content": ""} for m in messages]
        try:
            skeleton = self._prompt(skeleton_messages)
        except InvalidRequest:  # a template that refuses empty contents: keep every position
            return list(range(len(ids)))
        in_skeleton = set()
        matcher = difflib.SequenceMatcher(a=ids, b=skeleton, autojunk=False)
        for block in matcher.get_matching_blocks():
            in_skeleton.update(range(block.a, block.a + block.size))
        return [i for i in range(len(ids)) if i not in in_skeleton]

    async def mean_activations(self, conversations: list[list[dict]]) -> torch.Tensor:
        """[N, n_features] mean activation of each conversation over its tokens."""
        d = (await self.dictionaries())[0]
        prompts = [self._prompt(m) for m in conversations]

        def read(h: torch.Tensor) -> torch.Tensor:
            return d.activations(h[1:] if h.shape[0] > 1 else h).mean(dim=0)

        rows = []
        for start in range(0, len(prompts), 16):
            rows += await self._read(prompts[start : start + 16], d, read, None)
        return torch.stack(rows)

    async def contrast(
        self, dataset_1: list[list[dict]], dataset_2: list[list[dict]], top_k: int
    ) -> tuple[list[tuple[Feature, float]], list[tuple[Feature, float]]]:
        """Features that separate two paired datasets: the mean activation difference,
        strongest toward dataset 1 first, then strongest toward dataset 2."""
        self.calls["contrast"] += 1
        if not dataset_1 or len(dataset_1) != len(dataset_2):
            raise InvalidRequest(
                "dataset_1 and dataset_2 must be non-empty and of the same length (pairs)",
                param="dataset_2",
            )
        d = (await self.dictionaries())[0]
        a = await self.mean_activations(dataset_1)
        b = await self.mean_activations(dataset_2)
        diff = (a - b).mean(dim=0)
        k = min(max(top_k, 1), diff.shape[0])
        up, up_idx = torch.topk(diff, k)
        down, down_idx = torch.topk(-diff, k)
        f = d.features
        return (
            [(f[i], float(v)) for i, v in zip(up_idx.tolist(), up.tolist(), strict=True)],
            [(f[i], float(v)) for i, v in zip(down_idx.tolist(), down.tolist(), strict=True)],
        )

    async def autosteer(self, description: str, top_k: int = 3) -> list[Edit]:
        """A description in words -> nudges of the features that match it best."""
        self.calls["autosteer"] += 1
        index = await self.index()
        try:
            chosen = await self.engine.call(lambda _: autosteer(index, description, top_k))
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="specification") from exc
        return [
            Edit(
                feature=FeatureRef(uuid=f.uuid, label=f.label, index_in_sae=f.index),
                mode="nudge",
                value=value,
            )
            for f, value in chosen
        ]


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)
