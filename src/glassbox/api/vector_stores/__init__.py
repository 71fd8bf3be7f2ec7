"""OpenAI's Files and Vector Stores API (/v1/files, /v1/vector_stores)."""
