"""Embeddings: the sentence embedder (and, later, cache, providers, jobs, vector store)."""

from glassbox.embeddings.embedder import Embedder, default_model_path

__all__ = ["Embedder", "default_model_path"]
