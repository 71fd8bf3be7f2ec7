"""A thousand states of 500 tokens at once: the memory budget holds, the least recently used
go to disk, and every one of them still continues exactly as it did when it was made."""

from __future__ import annotations

import asyncio
import random

import pytest
from helpers.server import tiny_settings

from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.sequence import SamplingParams
from glassbox.metrics import Metrics
from glassbox.principal import LOCAL
from glassbox.requests.generation import GenerationService
from glassbox.runtime import load_engine
from glassbox.states.service import StateService
from glassbox.store import Database

NUM_STATES = 1000
TOKENS = 500


async def _first_token(states: StateService, state_id: str) -> int:
    params = SamplingParams(max_tokens=1, temperature=1.0, seed=5)
    async for out, _ in states.generate(LOCAL, state_id, params):
        return out.token_ids[0]
    raise AssertionError("no output")


@pytest.mark.slow
def test_a_thousand_states_fit_the_budget_and_all_stay_usable(tiny_model_dir, tmp_path):
    settings = tiny_settings(tiny_model_dir, tmp_path)
    settings.max_model_len = 1024
    llm, resolved = load_engine(settings)
    engine = AsyncLLMEngine(lambda: llm)
    block_bytes = llm.model.config.kv_bytes_per_token() * llm.config.block_size
    budget = 64 * (TOKENS // llm.config.block_size + 1) * block_bytes  # ~64 states resident
    db = Database(f"sqlite:///{tmp_path / 'states.db'}")
    generation = GenerationService(engine, Metrics())
    states = StateService(generation, db, tmp_path / "states", resolved.fingerprint, budget)
    rng = random.Random(0)
    vocab = llm.tokenizer.hf.vocab_size

    async def run() -> None:
        ids: list[str] = []
        first: dict[str, int] = {}
        for _ in range(NUM_STATES):
            tokens = [rng.randrange(vocab) for _ in range(TOKENS)]
            s = await states.create(LOCAL, tokens, {})
            ids.append(s.state_id)
            first[s.state_id] = await _first_token(states, s.state_id)  # while in memory
            assert states.residency.bytes <= budget
            used, _ = llm.kv_usage()
            assert used * block_bytes <= budget
        on_disk = sum(states.location(i) == "disk" for i in ids)
        assert on_disk >= NUM_STATES - 64 and len(states.residency) <= 64
        for state_id in ids:  # every state comes back (most from disk) and continues as before
            assert await _first_token(states, state_id) == first[state_id], state_id
            assert states.residency.bytes <= budget
        assert len(list((tmp_path / "states").glob("*.gbstate"))) >= on_disk

    try:
        asyncio.run(run())
    finally:
        engine.shutdown()
        db.close()
