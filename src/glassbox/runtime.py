"""From settings to a loaded engine: the one place where `Settings` meet the loader and the
engine, which take plain parameters (they never import glassbox.config)."""

from __future__ import annotations

from glassbox.config import Settings
from glassbox.engine.llm_engine import LLMEngine
from glassbox.models.loader import ResolvedModel, choose_format, resolve_model


def resolve(settings: Settings) -> ResolvedModel:
    """The configured model, converted once into the cache directory if it is a GGUF."""
    return resolve_model(settings.model, settings.cache_dir, settings.served_model_name)


def load_engine(settings: Settings) -> tuple[LLMEngine, ResolvedModel]:
    """Resolve, convert (once) and load the configured model; size the KV pool."""
    resolved = resolve(settings)
    engine = LLMEngine.load(
        resolved.directory,
        choose_format(settings.dtype),
        block_size=settings.block_size,
        kv_cache_bytes=settings.kv_cache_bytes,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        max_model_len=settings.max_model_len,
        num_threads=settings.num_threads,
    )
    return engine, resolved
