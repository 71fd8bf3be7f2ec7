"""Feature search: find features by meaning, order them by a query, find their neighbours.

Search is the cosine similarity between the query's embedding and each feature's text
embedding, computed once when the index is built. A feature's text is its label plus its
description when the dictionary has one ("label: description").

Neighbours are decoder-space neighbours, as in Ember: the cosine of the features' write
directions within one dictionary.

Embedding the texts takes ~5 ms a text on 2 cores (about 1 s for the 215 concepts, minutes
for an SAE's tens of thousands), so `build_in_steps` keeps them in a cache directory, keyed
by the encoder (its `cache_key`, when it has one) and the texts.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from safetensors.torch import load_file, save_file

from glassbox.features.dictionary import Feature, FeatureDictionary
from glassbox.features.steps import Steps

if TYPE_CHECKING:
    from glassbox.embeddings.embedder import LocalEmbedder

MAX_TOP_K = 1000


class TextEncoder(Protocol):
    """Also read, when an encoder has it: `cache_key`, a string that names the model (its
    embeddings are cached under it)."""

    def embed(self, texts: list[str]) -> torch.Tensor:
        """[n, dim] L2-normalized rows."""
        ...


class EmbedderEncoder:
    """The `TextEncoder` of the search: the embedding service's local model (`LocalEmbedder`,
    loaded), its `encode` run in the calling thread, which must be the one that runs torch
    (the server calls the index inside engine calls)."""

    def __init__(self, embedder: LocalEmbedder) -> None:
        self.embedder = embedder

    @property
    def cache_key(self) -> str:
        return self.embedder.cache_key

    def embed(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.embedder.encode(texts))


def feature_text(label: str, description: str) -> str:
    """The text embedded for a feature: its label, and its description when it adds one."""
    label, description = label.strip(), description.strip()
    if not description or description.lower() == label.lower():
        return label
    return f"{label}: {description}"


def _check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be an integer from 1 to {MAX_TOP_K}; got {top_k!r}")


def _check_query(query: str) -> str:
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query must be a non-empty string")
    return query.strip()


# Label texts embedded per step when the index is built in steps: ~170 ms on 2 cores with
# all-MiniLM-L6-v2, a pause that running generations barely notice.
EMBED_CHUNK = 32


def index_texts(dictionaries: list[FeatureDictionary]) -> list[str]:
    """The texts embedded for the index: one per feature, dictionary after dictionary."""
    return [
        feature_text(label, description)
        for d in dictionaries
        for label, description in zip(d.labels, d.descriptions, strict=True)
    ]


def embeddings_path(cache_dir: Path, encoder_key: str, texts: list[str]) -> Path:
    """Where the embeddings of `texts` by the encoder named `encoder_key` are cached."""
    digest = hashlib.sha256("\0".join([encoder_key, *texts]).encode()).hexdigest()[:16]
    return Path(cache_dir) / "features" / f"label-embeddings-{digest}.safetensors"


def _load_embeddings(path: Path, rows: int) -> torch.Tensor | None:
    """The cached embeddings, or None (then they are computed again) if the file is missing,
    damaged or of another shape."""
    try:
        embeddings = load_file(str(path))["embeddings"]
    except Exception:  # missing, or safetensors' several errors for a damaged file
        return None
    return embeddings if embeddings.dim() == 2 and embeddings.shape[0] == rows else None


def _save_embeddings(embeddings: torch.Tensor, path: Path) -> None:
    with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"embeddings": embeddings.contiguous()}, str(tmp))
        tmp.replace(path)


def _check_dictionaries(dictionaries: list[FeatureDictionary]) -> None:
    if not dictionaries:
        raise ValueError("a feature index needs at least one dictionary")
    names = [d.name for d in dictionaries]
    if len(set(names)) != len(names):
        raise ValueError(f"dictionary names must be unique; got {names}")


class FeatureIndex:
    """Search, rerank, neighbours and lookups over one or more feature dictionaries.

    The first dictionary is the default one for `lookup` by index. `embeddings`: the rows of
    `index_texts(dictionaries)` if already computed (`build_in_steps`), else embedded here.
    """

    def __init__(
        self,
        dictionaries: list[FeatureDictionary],
        embedder: TextEncoder,
        embeddings: torch.Tensor | None = None,
    ):
        _check_dictionaries(dictionaries)
        self.embedder = embedder
        self.dictionaries = {d.name: d for d in dictionaries}
        self.features: list[Feature] = [f for d in dictionaries for f in d.features]
        self._row = {f.uuid: i for i, f in enumerate(self.features)}
        if embeddings is None:
            embeddings = embedder.embed(index_texts(dictionaries))
        if embeddings.shape[0] != len(self.features):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(self.features)} features")
        self.embeddings = embeddings.float()  # [n_features, dim], unit rows
        self._by_label: dict[str, Feature] = {}
        for f in self.features:
            self._by_label.setdefault(f.label.strip().lower(), f)
        self._write_norms: dict[str, torch.Tensor] = {}

    @classmethod
    def build_in_steps(
        cls,
        dictionaries: list[FeatureDictionary],
        embedder: TextEncoder,
        chunk: int = EMBED_CHUNK,
        cache_dir: Path | None = None,
    ) -> Steps[FeatureIndex]:
        """The index, its texts embedded `chunk` at a time, one chunk per step (steps.py);
        no step at all when `cache_dir` holds their embeddings already."""
        _check_dictionaries(dictionaries)
        texts = index_texts(dictionaries)
        key = getattr(embedder, "cache_key", None)
        path = None if cache_dir is None or not key else embeddings_path(cache_dir, key, texts)
        cached = None if path is None else _load_embeddings(path, len(texts))
        if cached is not None:
            return cls(dictionaries, embedder, cached)
        parts = []
        for start in range(0, len(texts), chunk):
            parts.append(embedder.embed(texts[start : start + chunk]))
            yield
        index = cls(dictionaries, embedder, torch.cat(parts) if parts else None)
        if path is not None:
            _save_embeddings(index.embeddings, path)
        return index

    def __len__(self) -> int:
        return len(self.features)

    def search(self, query: str, top_k: int = 10) -> list[tuple[Feature, float]]:
        """The features whose text is closest in meaning to `query`, best first."""
        query = _check_query(query)
        _check_top_k(top_k)
        sims = self.embeddings @ self._embed_query(query)
        return self._top(sims, top_k, self.features)

    def rerank(
        self, features: list[Feature], query: str, top_k: int = 10
    ) -> list[tuple[Feature, float]]:
        """`features` ordered by similarity to `query`, best first, at most `top_k`."""
        query = _check_query(query)
        _check_top_k(top_k)
        if not features:
            return []
        rows = torch.tensor([self._row_of(f) for f in features])
        sims = self.embeddings[rows] @ self._embed_query(query)
        return self._top(sims, top_k, [self.features[r] for r in rows.tolist()])

    def neighbors(self, feature: Feature, top_k: int = 10) -> list[tuple[Feature, float]]:
        """The features of the same dictionary whose write directions are closest (cosine)
        to `feature`'s, best first, without `feature` itself."""
        _check_top_k(top_k)
        feature = self.features[self._row_of(feature)]
        d = self.dictionaries[feature.dictionary]
        norms = self._norms(d)
        sims = (d.write @ d.write[feature.index]) / (norms * norms[feature.index])
        sims[feature.index] = float("-inf")
        return self._top(sims, min(top_k, len(d) - 1), d.features)

    def lookup(self, indices: list[int], dictionary: str | None = None) -> dict[int, Feature]:
        """Features by index in `dictionary` (default: the index's first dictionary)."""
        if dictionary is None:
            d = next(iter(self.dictionaries.values()))
        elif dictionary in self.dictionaries:
            d = self.dictionaries[dictionary]
        else:
            raise ValueError(
                f"unknown dictionary {dictionary!r}; known: {sorted(self.dictionaries)}"
            )
        bad = [
            i
            for i in indices
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(d)
        ]
        if bad:
            raise ValueError(
                f"feature indices {bad} are not in dictionary {d.name!r} "
                f"(valid indices: 0 to {len(d) - 1})"
            )
        return {i: d.features[i] for i in indices}

    def by_uuid(self, feature_uuid: str) -> Feature:
        """The feature with this id (dashes and case ignored)."""
        key = feature_uuid.replace("-", "").lower() if isinstance(feature_uuid, str) else None
        if key not in self._row:
            raise ValueError(f"unknown feature id {feature_uuid!r}")
        return self.features[self._row[key]]

    def by_label(self, label: str) -> Feature:
        """The feature with this label (case-insensitive), else the best search hit."""
        label = _check_query(label)
        exact = self._by_label.get(label.lower())
        if exact is not None:
            return exact
        return self.search(label, top_k=1)[0][0]

    def _embed_query(self, query: str) -> torch.Tensor:
        return self.embedder.embed([query])[0].float()

    def _row_of(self, feature: Feature) -> int:
        row = self._row.get(feature.uuid) if isinstance(feature, Feature) else None
        if row is None:
            raise ValueError(f"feature {feature!r} is not in this index")
        return row

    def _norms(self, d: FeatureDictionary) -> torch.Tensor:
        norms = self._write_norms.get(d.name)
        if norms is None:
            norms = self._write_norms[d.name] = d.write.norm(dim=1).clamp_min(1e-12)
        return norms

    @staticmethod
    def _top(
        sims: torch.Tensor, top_k: int, features: list[Feature]
    ) -> list[tuple[Feature, float]]:
        k = min(top_k, sims.shape[0])
        if k <= 0:
            return []
        values, idx = torch.topk(sims, k)
        return [(features[i], float(v)) for v, i in zip(values.tolist(), idx.tolist(), strict=True)]
