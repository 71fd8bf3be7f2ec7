"""From settings to a loaded engine: the one place where `Settings` meet the loader and the
engine, which take plain parameters (they never import glassbox.config)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from glassbox.backends import InferenceEngine, create_backend
from glassbox.backends.openai_upstream import Upstream
from glassbox.config import ModelSpec, Settings
from glassbox.embeddings.cache import EmbeddingCache
from glassbox.embeddings.embedder import LocalEmbedder
from glassbox.embeddings.providers import CircuitBreaker, ProviderChain, RemoteProvider
from glassbox.embeddings.service import EmbeddingService
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.llm_engine import LLMEngine
from glassbox.models import BUNDLED_MODEL, kernels
from glassbox.models.layers import PrefillWeights, WeightFormat
from glassbox.models.loader import ResolvedModel, bundled_gguf, resolve_model
from glassbox.requests.builder import RequestBounds
from glassbox.requests.registry import ServedModel

LLAMA_CPP_CONTEXT = 4096


def resolve(settings: Settings) -> ResolvedModel:
    """The configured model, converted once into the cache directory if it is a GGUF."""
    return resolve_model(settings.model, settings.cache_dir, settings.served_model_name)


def weight_formats(settings: Settings, model: ResolvedModel) -> tuple[WeightFormat, PrefillWeights]:
    """The weight format and prefill weights: as set, or measured (once per CPU and model,
    models/kernels.py) for what is 'auto'. A dense format has no prefill copy to choose."""
    fmt, prefill = settings.dtype, settings.prefill_weights
    if fmt == "auto" or (prefill == "auto" and fmt not in ("float32", "bfloat16")):
        choice = kernels.choose(
            model.directory, model.fingerprint, settings.cache_dir, settings.max_num_seqs
        )
        if fmt == "auto":
            fmt = choice.fmt
        if prefill == "auto":
            prefill = choice.result(fmt).prefill_choice()
    return fmt, "kernel" if prefill == "auto" else prefill


def request_bounds(settings: Settings) -> RequestBounds:
    """The operator's bounds on what one request may ask for (GLASSBOX_MAX_*)."""
    return RequestBounds(
        max_prompt_tokens=settings.max_prompt_tokens,
        max_generated_tokens=settings.max_generated_tokens,
        max_choices=settings.max_choices,
        max_stop_strings=settings.max_stop_strings,
        max_stop_chars=settings.max_stop_chars,
        timeout_seconds=settings.generation_timeout_seconds or None,
    )


def load_engine(settings: Settings) -> tuple[LLMEngine, ResolvedModel]:
    """Resolve, convert (once) and load the configured model; size the KV pool."""
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    resolved = resolve(settings)
    fmt, prefill = weight_formats(settings, resolved)
    engine = LLMEngine.load(
        resolved.directory,
        fmt,
        prefill_weights=prefill,
        block_size=settings.block_size,
        kv_cache_bytes=settings.kv_cache_bytes,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        max_model_len=settings.max_model_len,
    )
    return engine, resolved


def start_engine(settings: Settings) -> tuple[AsyncLLMEngine, ResolvedModel]:
    """The server's engine: resolved, converted, loaded and warmed up on the engine thread
    (async_engine.py says why the thread matters)."""
    resolved: list[ResolvedModel] = []

    def load() -> LLMEngine:
        engine, model = load_engine(settings)
        engine.warm_up()
        resolved.append(model)
        return engine

    return AsyncLLMEngine(load), resolved[0]


def served_models(settings: Settings) -> list[ServedModel]:
    """The models of `settings.models` as the registry lists them: other backends reach no
    activations, KV or tokenizer, so they have none of the local capabilities."""
    return [
        ServedModel(
            spec.name,
            spec.backend,
            spec.max_model_len or (LLAMA_CPP_CONTEXT if spec.backend == "llama-cpp" else None),
            frozenset(),
            tuple(spec.aliases),
        )
        for spec in settings.models
    ]


def build_backend(spec: ModelSpec, settings: Settings) -> InferenceEngine:
    """The backend of one model of `settings.models` (a llama-cpp model is loaded here)."""
    if spec.backend == "llama-cpp":
        path = bundled_gguf() if str(spec.path) == BUNDLED_MODEL else spec.path
        return create_backend(
            "llama-cpp",
            model_path=path,
            n_ctx=spec.max_model_len or LLAMA_CPP_CONTEXT,
            n_threads=settings.num_threads,
        )
    first, *rest = spec.upstreams
    return create_backend(
        "openai-upstream",
        base_url=first.base_url,
        model=first.model or spec.name,
        api_key=first.api_key,
        timeout=spec.timeout,
        supports_json_schema=spec.supports_json_schema,
        supports_tools=spec.supports_tools,
        fallbacks=[Upstream(u.base_url, u.model or spec.name, u.api_key) for u in rest],
        retries=spec.retries,
        backoff=spec.backoff,
        connect_timeout=spec.connect_timeout,
        max_connections=spec.max_connections,
        served_name=spec.name,
    )


def build_embeddings(
    settings: Settings, call: Callable[[Callable[[Any], Any]], Any], redis: Any = None
) -> EmbeddingService:
    """The embedding service: the local model (run through `call` on the engine thread),
    the remote providers in their fallback order, and the cache (over `redis`, a client
    that returns bytes, when given)."""
    model = settings.embeddings_model
    local = LocalEmbedder(
        call,
        None if model == BUNDLED_MODEL else model,
        settings.embeddings_model_name,
        aliases=settings.embeddings_aliases,
        max_batch_tokens=settings.embeddings_max_batch_tokens,
        max_batch_size=settings.embeddings_max_batch_size,
        dtype=settings.embeddings_dtype,
        choice_dir=settings.cache_dir / "kernels",
    )
    specs = settings.embeddings_providers
    available = {
        s.name: RemoteProvider(
            s.name,
            s.base_url,
            s.models,
            s.api_key,
            timeout=s.timeout,
            connect_timeout=s.connect_timeout,
            retries=s.retries,
            backoff=s.backoff,
            max_connections=s.max_connections,
        )  # fmt: skip
        for s in specs
    }
    if local.name in available:
        raise ValueError(f"embedding provider name {local.name!r} is the local model's")
    available[local.name] = local
    order = settings.embeddings_fallback or [local.name, *(s.name for s in specs)]
    breakers = {s.name: CircuitBreaker(s.failure_threshold, s.recovery_seconds) for s in specs}
    chain = ProviderChain.from_names(order, available, breakers)
    cache = EmbeddingCache(
        settings.embeddings_cache_entries, settings.embeddings_cache_ttl, redis=redis
    )
    remote_models = [name for s in specs for name in (s.models or {})]
    return EmbeddingService(
        local, chain, cache, remote_models=remote_models,
        dimension_policy=settings.embeddings_dimension_policy,
        allowlist=settings.embeddings_allowlist,
    )  # fmt: skip
