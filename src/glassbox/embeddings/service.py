"""The embedding service: what `/v1/embeddings`, the job pipeline and the vector stores ask.

One request (`embed`):

    model name (the default when absent) -> allowed for the caller? (`allowlist`)
      -> the cache (`cache.EmbeddingCache`: memory, then Redis when configured), keyed by
         (model, text, dimensions)
      -> the texts it misses, once each, to the providers (`providers.ProviderChain`: the
         local model first when it serves the name, then the remote providers in the
         order of GLASSBOX_EMBEDDINGS_FALLBACK, skipping open circuits)
      -> the dimension policy, when `dimensions` differs from the model's:
           reduce: the first `dimensions` components, renormalized (what models trained
                   for shortening, like OpenAI's text-embedding-3, do natively);
                   more dimensions than the model has is a 400;
           pad:    as reduce when shorter; zeros appended when longer (the norm is kept);
           ignore: the model's own vectors, whatever was asked
      -> into the cache, and back in the request's order

Vectors are float32 unit rows (a dot product is the cosine). Usage counts the input's
tokens with the local model's tokenizer (the provider's own count for what a remote
provider embedded).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from glassbox.embeddings.cache import CacheKey, EmbeddingCache
from glassbox.embeddings.embedder import LocalEmbedder
from glassbox.embeddings.providers import ProviderChain
from glassbox.errors import InvalidRequest, ModelNotFound
from glassbox.principal import Principal

DimensionPolicy = Literal["reduce", "pad", "ignore"]
POLICIES: tuple[str, ...] = ("reduce", "pad", "ignore")
MAX_INPUTS = 2048  # OpenAI's limit per request
MAX_DIMENSIONS = 8192


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 (n, d), unit rows (zero-padded ones keep their unit norm)
    model: str
    prompt_tokens: int


@dataclass
class ServiceStats:
    requests: int = 0
    inputs: int = 0
    cached: int = 0  # inputs answered by the cache
    seconds: float = 0.0
    by_provider: dict[str, int] = field(default_factory=dict)  # inputs each one embedded


class EmbeddingService:
    def __init__(
        self,
        local: LocalEmbedder,
        chain: ProviderChain,
        cache: EmbeddingCache,
        *,
        remote_models: Sequence[str] = (),
        dimension_policy: DimensionPolicy = "reduce",
        allowlist: Mapping[str, Sequence[str]] | None = None,
    ):
        """`chain` holds every provider, the local one among them; `remote_models` are the
        names only remote providers serve. `allowlist`: tenant -> the models it may use
        (a tenant not in it may use every model; None: no allowlist)."""
        if dimension_policy not in POLICIES:
            raise ValueError(f"dimension policy must be one of {POLICIES}, not {dimension_policy}")
        self.local = local
        self.chain = chain
        self.cache = cache
        self.default_model = local.model_name
        self.remote_models = tuple(m for m in remote_models if not local.serves(m))
        self.dimension_policy: DimensionPolicy = dimension_policy
        self.allowlist = {t: frozenset(m) for t, m in (allowlist or {}).items()}
        self.stats = ServiceStats()

    # --- models -----------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Every embedding model name this server answers to, the default first."""
        return [self.default_model, *sorted(self.local.names - {self.default_model}),
                *self.remote_models]  # fmt: skip

    def check_model(self, owner: Principal, model: str | None) -> str:
        """The model's name (the default when absent); 404 for a model this server does not
        serve, or one the caller may not use (which is not told apart: the caller learns
        nothing of models it may not use)."""
        name = model or self.default_model
        allowed = self.allowlist.get(owner.tenant)
        if name not in self.models() or (allowed is not None and name not in allowed):
            usable = [m for m in self.models() if allowed is None or m in allowed]
            raise ModelNotFound(
                name,
                f"The embedding model '{name}' does not exist or is not available to you; "
                f"use one of: {', '.join(repr(m) for m in usable)}",
            )
        return name

    def tokenizer(self, model: str | None = None) -> Any:
        """The local model's tokenizer (chunking counts tokens with it; for a remote model it
        is an estimate)."""
        return self.local.tokenizer

    def max_tokens(self, model: str | None = None) -> int:
        """The longest text the model reads (the local model's; an estimate for a remote)."""
        return self.local.max_tokens

    async def load(self) -> None:
        await self.local.load()

    async def aclose(self) -> None:
        """Close the remote providers' clients (the local model belongs to the engine)."""
        for provider in self.chain.providers:
            close = getattr(provider, "aclose", None)
            if close is not None:
                await close()

    def metrics(self) -> dict[str, Any]:
        """The counters /metrics reads (glassbox.metrics' embeddings collector)."""
        batches = self.local.stats
        return {
            "requests": self.stats.requests,
            "inputs": self.stats.inputs,
            "cached": self.stats.cached,
            "batches": batches.batches,
            "batch_rows": batches.rows,
            "padded_tokens": batches.padded_tokens,
            "tokens": batches.tokens,
            "cache": self.cache.stats(),
            "providers": self.chain.health(),
        }

    def health(self) -> dict[str, Any]:
        """For /health: the local model, the cache, each provider's circuit."""
        return {
            "model": {"name": self.default_model, "loaded": self.local.loaded},
            "cache": self.cache.stats(),
            "providers": self.chain.health(),
        }

    # --- embedding --------------------------------------------------------------------------

    async def decode(
        self, owner: Principal, inputs: list[list[int]], model: str | None
    ) -> list[str]:
        """Token-id inputs as text, decoded with the model's tokenizer (only the local
        model's is known)."""
        name = self.check_model(owner, model)
        if not self.local.serves(name):
            raise InvalidRequest(
                f"token ids can only be given for '{self.default_model}' (its tokenizer is "
                f"known); send text for '{name}'",
                param="input",
            )
        await self.local.load()
        vocab = self.local.tokenizer.vocab_size
        for ids in inputs:
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise InvalidRequest(
                    f"token id {bad[0]} is outside the vocabulary of '{name}' (0 to {vocab - 1})",
                    param="input",
                )
        return [self.local.decode(ids) for ids in inputs]

    async def embed(
        self,
        owner: Principal,
        texts: list[str],
        model: str | None = None,
        dimensions: int | None = None,
        policy: DimensionPolicy | None = None,
    ) -> Embeddings:
        t0 = time.perf_counter()
        name = self.check_model(owner, model)
        _check_inputs(texts, dimensions)
        policy = policy or self.dimension_policy
        key = _cache_key(name, dimensions, policy)
        keys = [key(t) for t in texts]
        found = await self.cache.get_many(keys)
        missing = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
        computed: dict[str, np.ndarray] = {}
        remote_tokens = 0
        if missing:
            result, provider = await self.chain.embed(missing, name)
            vectors = _fit(result.vectors, dimensions, policy)
            computed = dict(zip(missing, vectors, strict=True))
            await self.cache.put_many([(key(t), computed[t]) for t in missing])
            by = self.stats.by_provider
            by[provider] = by.get(provider, 0) + len(missing)
            if provider != self.local.name:
                remote_tokens = result.prompt_tokens
        rows = [v if v is not None else computed[t] for t, v in zip(texts, found, strict=True)]
        width = max((len(r) for r in rows), default=self._width(dimensions, policy))
        vectors = np.stack(rows) if rows else np.zeros((0, width), np.float32)
        tokens = await self._tokens(name, texts, missing, remote_tokens)
        self.stats.requests += 1
        self.stats.inputs += len(texts)
        self.stats.cached += sum(v is not None for v in found)
        self.stats.seconds += time.perf_counter() - t0
        return Embeddings(vectors, name, tokens)

    async def _tokens(
        self, name: str, texts: list[str], missing: list[str], remote_tokens: int
    ) -> int:
        """The input's tokens: the local tokenizer's count, or for a remote model the
        provider's count of what it embedded plus the local estimate of the cached rest."""
        await self.local.load()
        if self.local.serves(name):
            counted = texts
        else:
            embedded = set(missing)
            counted = [t for t in texts if t not in embedded]
        if not counted:
            return remote_tokens
        return remote_tokens + sum(len(ids) for ids in self.local.tokenize(counted))

    def _width(self, dimensions: int | None, policy: str) -> int:
        if dimensions is not None and policy != "ignore":
            return dimensions
        return self.local.dimensions if self.local.loaded else 0


def _cache_key(name: str, dimensions: int | None, policy: str) -> Callable[[str], CacheKey]:
    """What a text's vector is cached under: the policy changes the vector only by
    `ignore` (the model's own, whatever was asked) and `pad` (zeros where reduce refuses)."""
    if policy == "ignore":
        dimensions = None
    model = f"{name}+pad" if policy == "pad" and dimensions is not None else name
    return lambda text: CacheKey(model, text, dimensions)


def _check_inputs(texts: list[str], dimensions: int | None) -> None:
    if not texts:
        raise InvalidRequest("'input' is empty; send at least one text", param="input")
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(
            f"'input' has {len(texts)} items; send at most {MAX_INPUTS} per request",
            param="input",
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise InvalidRequest(f"input[{i}] is empty; every input needs text", param="input")
    if dimensions is not None and not 1 <= dimensions <= MAX_DIMENSIONS:
        raise InvalidRequest(
            f"'dimensions' must be between 1 and {MAX_DIMENSIONS}, got {dimensions}",
            param="dimensions",
        )


def _fit(vectors: np.ndarray, dimensions: int | None, policy: str) -> np.ndarray:
    """The rows under the dimension policy (see the module's docstring)."""
    vectors = np.asarray(vectors, np.float32)
    native = vectors.shape[1]
    if dimensions is None or dimensions == native or policy == "ignore":
        return vectors
    if dimensions > native:
        if policy == "reduce":
            raise InvalidRequest(
                f"the model gives {native} dimensions and 'reduce' cannot add any; ask for at "
                f"most {native}, or use the dimension policy 'pad'",
                param="dimensions",
            )
        padded = np.zeros((len(vectors), dimensions), np.float32)
        padded[:, :native] = vectors
        return padded
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return (cut / np.where(norms > 0, norms, 1.0)).astype(np.float32)
