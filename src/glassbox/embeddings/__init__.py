"""Embeddings: the embedder and its cache and providers, the job pipeline (chunk -> embed ->
store), files and vector stores (OpenAI's API)."""
