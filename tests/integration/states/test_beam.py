"""/generate/beam against a live tiny server: HF's beams, a committed child state, diverse
groups, steering by a variant, other requests served meanwhile, errors, blocks returned."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import torch
from helpers.http import blocks_used, create_state, pirate_variant
from helpers.server import LiveServer
from helpers.waiting import async_wait_until

TEXT = "the quick brown fox jumps over the lazy dog"


def beam(http: httpx.Client, state_id: str, **kw) -> dict:
    r = http.post("/generate/beam", json={"state_id": state_id, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_beams_match_hf_and_give_their_blocks_back(
    tiny_server: LiveServer, http: httpx.Client, tiny_model_dir
) -> None:
    from transformers import LlamaForCausalLM

    s = create_state(http, TEXT)
    before = blocks_used(tiny_server)
    out = beam(http, s["id"], num_beams=4, max_length=8, num_return_sequences=3,
               length_penalty=0.5, no_repeat_ngram_size=2)  # fmt: skip
    assert tiny_server.wait_idle(before)["kv_blocks_used"] == before
    assert out["object"] == "beam_search" and out["child_state_id"] is None
    assert [b["index"] for b in out["beams"]] == [0, 1, 2]
    assert out["usage"] == {"prompt_tokens": s["num_tokens"], "completion_tokens": 24}

    hf = LlamaForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    ref = hf.generate(
        torch.tensor([s["token_ids"]]),
        attention_mask=torch.ones(1, s["num_tokens"], dtype=torch.long),
        do_sample=False, num_beams=4, max_new_tokens=8, num_return_sequences=3,
        length_penalty=0.5, no_repeat_ngram_size=2, output_scores=True,
        return_dict_in_generate=True,
    )  # fmt: skip
    for got, seq, score in zip(out["beams"], ref.sequences, ref.sequences_scores, strict=True):
        assert got["token_ids"] == seq[s["num_tokens"] :].tolist()
        assert got["score"] == pytest.approx(float(score), abs=1e-4)
        assert got["finish_reason"] == "length" and got["group"] == 0
    assert beam(http, s["id"], num_beams=4, max_length=8, num_return_sequences=3,
                length_penalty=0.5, no_repeat_ngram_size=2) == out  # fmt: skip


def test_commit_stores_the_best_beam_as_a_child_state(
    tiny_server: LiveServer, http: httpx.Client
) -> None:
    s = create_state(http, TEXT)
    out = beam(http, s["id"], num_beams=3, max_length=6, commit=True)
    best = out["beams"][0]
    child = http.get(f"/states/{out['child_state_id']}").json()
    assert child["parent_id"] == s["id"]
    assert child["token_ids"] == s["token_ids"] + best["token_ids"]
    assert child["location"] == "memory"
    # the child's KV is the beam's: it continues like its text read cold
    cold = create_state(http, child["text"])
    assert cold["token_ids"] == child["token_ids"]
    body = {"max_tokens": 6, "temperature": 0.0}
    warm = http.post("/generate/token", json={"state_id": child["id"], **body}).json()
    again = http.post("/generate/token", json={"state_id": cold["id"], **body}).json()
    assert warm["text"] == again["text"] and warm["finish_reason"] == "length"


def test_diverse_groups(http: httpx.Client) -> None:
    s = create_state(http, TEXT)
    plain = beam(http, s["id"], num_beams=2, max_length=6, num_return_sequences=2)
    out = beam(http, s["id"], num_beams=4, num_beam_groups=2, diversity_penalty=100.0,
               max_length=6, num_return_sequences=4)  # fmt: skip
    groups = {g: [b for b in out["beams"] if b["group"] == g] for g in (0, 1)}
    assert [b["token_ids"] for b in groups[0]] == [b["token_ids"] for b in plain["beams"]]
    firsts = [{b["token_ids"][0] for b in groups[g]} for g in (0, 1)]
    assert not firsts[0] & firsts[1]
    scores = [b["score"] for b in out["beams"]]
    assert scores == sorted(scores, reverse=True)


def test_a_variant_steers_every_beam(http: httpx.Client) -> None:
    variant = pirate_variant(http, "beam")
    s = create_state(http, TEXT)
    plain = beam(http, s["id"], num_beams=3, max_length=8)
    steered = beam(http, s["id"], num_beams=3, max_length=8, variant=variant)
    assert steered["beams"][0]["token_ids"] != plain["beams"][0]["token_ids"]


async def test_other_requests_run_between_search_steps(tiny_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=tiny_server.base_url, timeout=60) as http:
        r = await http.post("/states", json={"text": TEXT})
        state_id = r.json()["id"]
        finished: dict[str, float] = {}

        async def timed(name: str, path: str, body: dict) -> None:
            r = await http.post(path, json=body)
            assert r.status_code == 200, r.text
            finished[name] = time.monotonic()

        search = asyncio.create_task(timed("beam", "/generate/beam", {
            "state_id": state_id, "num_beams": 8, "max_length": 480,
            "early_stopping": "never", "length_penalty": 1.0,
        }))  # fmt: skip
        # The search is under way once its beams hold blocks beyond the state's.
        held = blocks_used(tiny_server)
        assert await async_wait_until(lambda: blocks_used(tiny_server) > held)
        await timed("token", "/generate/token", {"state_id": state_id, "max_tokens": 4})
        await search
        assert finished["token"] < finished["beam"]


def test_a_client_that_hangs_up_frees_the_search(
    tiny_server: LiveServer, http: httpx.Client
) -> None:
    s = create_state(http, TEXT)
    before = blocks_used(tiny_server)
    body = {"state_id": s["id"], "num_beams": 16, "max_length": 400, "early_stopping": "never"}
    with pytest.raises(httpx.ReadTimeout):
        http.post("/generate/beam", json=body, timeout=0.5)
    assert tiny_server.wait_idle(before, timeout=10)["kv_blocks_used"] == before


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"num_beams": 0}, 400, "num_beams"),
        ({"num_beams": 4, "num_beam_groups": 3}, 400, "num_beam_groups must divide"),
        ({"num_beams": 2, "num_return_sequences": 3}, 400, "num_return_sequences"),
        ({"diversity_penalty": 1.0}, 400, "num_beam_groups > 1"),
        ({"early_stopping": "sometimes"}, 400, "early_stopping"),
        ({"max_length": 0}, 400, "max_length"),
        ({"num_beams": 1000}, 400, "num_beams"),
        ({"top_k": 3}, 400, "top_k"),
        ({"variant": {}, "session_id": "x"}, 400, "either"),
    ],
)
def test_bad_requests_say_what_to_fix(http: httpx.Client, body, status, needle) -> None:
    s = create_state(http, "short")
    r = http.post("/generate/beam", json={"state_id": s["id"], **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"


def test_unknown_state_is_404(http: httpx.Client) -> None:
    r = http.post("/generate/beam", json={"state_id": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "state_not_found"
