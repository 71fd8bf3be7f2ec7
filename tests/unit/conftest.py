"""Fixtures for the fast unit tests: one tiny seeded Llama per session (ours and HF's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from glassbox.engine.llm_engine import EngineConfig, LLMEngine
from glassbox.models.llama import LlamaModel
from glassbox.models.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tiny_dir(tiny_model_dir: Path) -> Path:
    """The suite's one tiny model (tests/conftest.py builds it once per session)."""
    return tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model(tiny_dir) -> LlamaModel:
    return LlamaModel.load(tiny_dir, "float32")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir) -> Tokenizer:
    return Tokenizer(tiny_dir)


@pytest.fixture(scope="session")
def hf_tiny(tiny_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()


@pytest.fixture
def make_engine(tiny_model, tiny_tokenizer) -> Callable[..., LLMEngine]:
    """A fresh engine (own KV pool and block manager) over the shared tiny model."""

    def make(**overrides) -> LLMEngine:
        cfg = {
            "block_size": 4,
            "num_blocks": 256,
            "max_num_seqs": 16,
            "max_num_batched_tokens": 1024,
            "max_model_len": 512,
        }
        cfg.update(overrides)
        return LLMEngine(tiny_model, tiny_tokenizer, EngineConfig(**cfg))

    return make


@pytest.fixture
def engine(make_engine) -> LLMEngine:
    return make_engine()
