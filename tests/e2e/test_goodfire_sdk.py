"""The public `goodfire` 0.3.5 SDK, unmodified, against a live glassbox: only `base_url` changes
and the model is a glassbox alias. The wire format is checked on the tiny model (its concept
vectors build in seconds); one slow test runs the whole flow on the bundled SmolLM2."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import goodfire
import httpx
import numpy as np
import pytest
from goodfire.api.chat.client import DEFAULT_SYSTEM_PROMPT
from goodfire.api.exceptions import InvalidRequestException, NotFoundException
from helpers.live_server import serve_in_thread
from helpers.server import TINY_NAME, LiveServer, live, tiny_settings

import glassbox
from glassbox.api.ember.adapter import sse_event
from glassbox.app import create_app
from glassbox.config import Settings
from glassbox.features.autosteer import AUTOSTEER_TOTAL
from glassbox.runtime import resolve

ALIAS = "meta-llama/Llama-3.3-70B-Instruct"
SAE_SIZE_70B = 131072  # the SDK's array size for exactly this model name
API = "/api/inference/v1"
MESSAGES = [{"role": "user", "content": "Tell me about your day."}]


def _ensure_main_thread_loop() -> None:
    """The SDK's sync client calls asyncio.get_event_loop() on the calling thread. An async
    test or asyncio.run that ran before on the main thread leaves it with no loop at all
    (set_event_loop(None)), and that call then raises: give it one. An existing loop is kept
    (the SDK's HTTP client stays bound to the loop of its first call)."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


@pytest.fixture(scope="module", autouse=True)
def main_thread_loop_for_module() -> None:
    _ensure_main_thread_loop()


@pytest.fixture(autouse=True)
def main_thread_loop() -> None:
    _ensure_main_thread_loop()


@pytest.fixture(scope="module")
def ember_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache"))
    settings = settings.model_copy(update={"model_aliases": {ALIAS: TINY_NAME}})
    for server in live(settings):
        warm_up(server.base_url)
        yield server


def warm_up(base_url: str) -> None:
    """Features build on first use (concept vectors, the search index): longer than the
    SDK's 10 s timeout for search on a cold server, so build them before the SDK calls."""
    params = {"query": "pirate", "perPage": 1}
    r = httpx.get(base_url + API + "/features/search", params=params, timeout=900)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def gf(ember_server: LiveServer) -> Iterator[goodfire.Client]:
    """The SDK's sync client runs its coroutines on the thread's current event loop
    (`asyncio.get_event_loop()`); any earlier `asyncio.run` in this thread (another test
    module) leaves none, so this module's tests get one of their own."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield goodfire.Client(api_key="anything", base_url=ember_server.base_url)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture(scope="module")
def pirate(gf: goodfire.Client) -> goodfire.Feature:
    return gf.features.search("pirate", model=ALIAS, top_k=1)[0]


@pytest.fixture
def http(ember_server: LiveServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer whatever"}
    with httpx.Client(base_url=ember_server.base_url + API, timeout=60, headers=headers) as c:
        yield c


def run_async(coro):
    """asyncio.run on another thread: in the main thread it would leave no current event loop,
    and the SDK's sync client (asyncio.get_event_loop()) then fails."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def chat(gf: goodfire.Client, model, stream: bool = False, **kw):
    kw = {"max_completion_tokens": 12, "seed": 7, **kw}
    out = gf.chat.completions.create(MESSAGES, model=model, stream=stream, **kw)
    if not stream:
        return out.choices[0].message["content"]
    return "".join(c.choices[0].delta.content for c in out)


# --- features --------------------------------------------------------------------------


def test_search_finds_the_pirate_concept_first(gf: goodfire.Client) -> None:
    found = gf.features.search("pirate", model=ALIAS, top_k=5)
    assert len(found) == 5
    assert "pirate" in found[0].label.lower()
    assert all(isinstance(f.uuid, uuid.UUID) for f in found)
    assert len({f.index_in_sae for f in found}) == 5


def test_search_accepts_a_variant_as_model(gf: goodfire.Client) -> None:
    variant = goodfire.Variant(ALIAS)
    assert len(gf.features.search("ocean", model=variant, top_k=3)) == 3


def test_rerank_orders_given_features_by_the_query(gf: goodfire.Client) -> None:
    pool = gf.features.search("pirate", model=ALIAS, top_k=3)
    pool = goodfire.FeatureGroup([*pool, *gf.features.search("cooking", model=ALIAS, top_k=3)])
    ranked = gf.features.rerank(pool, "recipes and food", model=ALIAS, top_k=2)
    assert len(ranked) == 2
    assert {f.uuid for f in ranked} <= {f.uuid for f in pool}
    assert "pirate" not in ranked[0].label.lower()
    # semantic_similarity (async only) reads the same endpoint's relevances
    scores = run_async(gf.features._async_client.semantic_similarity(pool, "pirates", model=ALIAS))
    assert len(scores) == len(pool) and scores == sorted(scores, reverse=True)


def test_neighbors_exclude_the_inputs(gf: goodfire.Client, pirate: goodfire.Feature) -> None:
    near = gf.features.neighbors(pirate, model=ALIAS, top_k=4)
    assert len(near) == 4
    assert pirate.index_in_sae not in {f.index_in_sae for f in near}
    # neighbor ids come back dashed and resolve through lookup by index
    looked = gf.features.lookup([f.index_in_sae for f in near], model=ALIAS)
    assert {str(uuid.UUID(str(f.uuid))) for f in looked.values()} == {str(f.uuid) for f in near}


def test_lookup_by_index(gf: goodfire.Client, pirate: goodfire.Feature) -> None:
    got = gf.features.lookup([pirate.index_in_sae], model=ALIAS)
    assert got[pirate.index_in_sae].label == pirate.label
    assert uuid.UUID(str(got[pirate.index_in_sae].uuid)) == pirate.uuid
    with pytest.raises(NotFoundException):
        gf.features.lookup([SAE_SIZE_70B - 1], model=ALIAS)


def test_inspect_top_and_tokens(gf: goodfire.Client) -> None:
    messages = [
        {"role": "user", "content": "Arr matey, where be the treasure?"},
        {"role": "assistant", "content": "Buried on the island, ye scallywag!"},
    ]
    context = gf.features.inspect(messages, model=ALIAS)
    assert len(context.tokens) > 10
    top = context.top(k=5)
    assert len(top) == 5
    acts = [a.activation for a in top]
    assert acts == sorted(acts, reverse=True) and acts[0] >= 1
    token = context.tokens[3].inspect(k=3)
    assert len(token) == 3
    token_acts = [a.activation for a in token]
    assert token_acts == sorted(token_acts, reverse=True)
    for agg in ("mean", "max", "sum"):
        assert len(gf.features.inspect(messages, model=ALIAS, aggregate_by=agg).top(k=3)) == 3


def test_inspect_given_features_and_activations_matrix(
    gf: goodfire.Client, pirate: goodfire.Feature
) -> None:
    context = gf.features.inspect(MESSAGES, model=ALIAS, features=pirate)
    assert all([a["id"] for a in t._feature_acts] == [str(pirate.uuid)] for t in context.tokens)
    matrix = gf.features.activations(MESSAGES, model=ALIAS)
    assert matrix.shape == (len(context.tokens), SAE_SIZE_70B)
    assert np.count_nonzero(matrix) > 0


def test_inspect_under_a_variant_sees_the_steered_feature(
    gf: goodfire.Client, pirate: goodfire.Feature
) -> None:
    plain = gf.features.activations(MESSAGES, model=ALIAS, features=pirate)
    variant = goodfire.Variant(ALIAS)
    variant.set(pirate, 5.0)  # well above the feature's neutral noise
    steered = gf.features.activations(MESSAGES, model=variant, features=pirate)
    column = pirate.index_in_sae
    assert steered[-1, column] > plain[-1, column]


def test_contrast(gf: goodfire.Client) -> None:
    calm = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": t}]
            for t in ("Hello, how can I help you today?", "Good morning to you.")]  # fmt: skip
    pirate = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": t}]
              for t in ("Arr matey, ahoy there!", "Yo ho ho, me hearty, to the ship!")]  # fmt: skip
    one, two = gf.features.contrast(dataset_1=calm, dataset_2=pirate, model=ALIAS, top_k=3)
    assert len(one) == 3 and len(two) == 3
    assert not {f.uuid for f in one} & {f.uuid for f in two}
    with pytest.raises(ValueError):
        gf.features.contrast(dataset_1=calm, dataset_2=pirate[:1], model=ALIAS)


def test_autosteer_edits_set_on_a_variant(gf: goodfire.Client) -> None:
    edits = gf.features.AutoSteer(specification="talk like a pirate", model=ALIAS)
    assert len(edits) >= 1
    feature, value = next(iter(edits._edits.items()))
    assert "pirate" in feature.label.lower() and 0 < value <= AUTOSTEER_TOTAL
    variant = goodfire.Variant(ALIAS)
    variant.set(edits)
    steered = chat(gf, variant)
    assert steered != chat(gf, ALIAS)  # the edits steer: same seed, another answer
    assert steered == chat(gf, variant, stream=True)


# --- chat ------------------------------------------------------------------------------


def test_chat_with_a_variant_stream_and_not(gf: goodfire.Client, pirate) -> None:
    plain = chat(gf, ALIAS)
    assert plain == chat(gf, ALIAS, stream=True)  # same seed, same text
    variant = goodfire.Variant(ALIAS)
    variant.set(pirate, 1.0)
    steered = chat(gf, variant)
    assert steered != plain
    assert steered == chat(gf, variant, stream=True)


def test_chat_response_fields(gf: goodfire.Client) -> None:
    # The SDK seeds every request (seed 42): this one runs its 5 tokens without an EOS.
    r = gf.chat.completions.create(MESSAGES, model=ALIAS, max_completion_tokens=5)
    assert r.model == ALIAS and r.object == "chat.completion"
    assert r.system_fingerprint.startswith(f"glassbox-{glassbox.__version__}-")
    assert r.choices[0].finish_reason == "length"
    assert r.gf_event_names is None
    chunks = list(
        gf.chat.completions.create(MESSAGES, model=ALIAS, stream=True, max_completion_tokens=5)
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    assert [c.choices[0].gf_token_index for c in chunks] == list(range(len(chunks)))
    assert "".join(c.choices[0].delta.content for c in chunks) == r.choices[0].message["content"]


def test_abort_when_raises_inference_aborted(gf: goodfire.Client, pirate) -> None:
    variant = goodfire.Variant(ALIAS)
    variant.abort_when(pirate > -1000.0)  # holds on every token
    with pytest.raises(goodfire.InferenceAbortedException):
        chat(gf, variant)
    with pytest.raises(goodfire.InferenceAbortedException):
        chat(gf, variant, stream=True)
    never = goodfire.Variant(ALIAS)
    never.abort_when(pirate > 1000.0)
    assert chat(gf, never) == chat(gf, ALIAS)  # a condition that never holds changes nothing


def test_async_client_chat_and_search(
    ember_server: LiveServer, gf: goodfire.Client, http: httpx.Client
) -> None:
    messages = [{"role": "system", "content": "Be short."}, *MESSAGES]

    async def run() -> tuple[str, list]:
        client = goodfire.AsyncClient(api_key="x", base_url=ember_server.base_url)
        found = await client.features.search("pirate", model=ALIAS, top_k=2)
        r = await client.chat.completions.create(messages, model=ALIAS, max_completion_tokens=4)
        return r.choices[0].message["content"], [f.uuid for f in found]

    text, found = run_async(run())
    assert found == [f.uuid for f in gf.features.search("pirate", model=ALIAS, top_k=2)]
    # What the async client sends: its system prompt before ours (two system messages) and
    # its default sampling, seed 42 included; the server's answer to that is the client's.
    body = {"messages": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, *messages],
            "model": ALIAS, "max_completion_tokens": 4, "top_p": 0.9, "temperature": 0.6,
            "stop": ["<|eot_id|>", "<|begin_of_text|>"], "seed": 42}  # fmt: skip
    r = http.post("/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert text == r.json()["choices"][0]["message"]["content"] != ""


def test_logits(gf: goodfire.Client, pirate) -> None:
    r = gf.chat.logits(MESSAGES, model=ALIAS, top_k=5)
    assert len(r.logits) == 5
    values = list(r.logits.values())
    assert values == sorted(values, reverse=True)
    variant = goodfire.Variant(ALIAS)
    variant.set(pirate, 1.0)
    assert gf.chat.logits(MESSAGES, model=variant, top_k=5).logits != r.logits
    some = list(r.logits)[:2]
    filtered = gf.chat.logits(MESSAGES, model=ALIAS, top_k=None, filter_vocabulary=some)
    assert set(filtered.logits) == set(some)


# --- errors and wire format --------------------------------------------------------------


def test_errors_map_to_sdk_exceptions(gf: goodfire.Client) -> None:
    with pytest.raises(NotFoundException, match="does not exist"):
        gf.features.search("pirate", model="no-such-model")
    with pytest.raises(NotFoundException):
        gf.chat.completions.create(MESSAGES, model="no-such-model")
    with pytest.raises(InvalidRequestException):
        gf.chat.completions.create(MESSAGES, model=ALIAS, temperature=-1.0)
    bad = goodfire.Variant(ALIAS)
    bad.set(goodfire.Feature(uuid=uuid.uuid4().hex, label="x", index_in_sae=0), 0.5)
    with pytest.raises(NotFoundException):
        gf.chat.completions.create(MESSAGES, model=bad)


def test_features_list_has_its_trailing_slash(http: httpx.Client, pirate) -> None:
    hex_id = pirate.uuid.hex
    r = http.get("/features/", params={"feature_id": [hex_id, str(pirate.uuid)]})
    assert r.status_code == 200
    assert [f["id"] for f in r.json()["features"]] == [str(pirate.uuid)] * 2
    assert http.get("/features/", params={"feature_id": "nope"}).status_code == 400


def test_stream_is_data_events_only(http: httpx.Client) -> None:
    body = {"messages": MESSAGES, "model": ALIAS, "stream": True, "max_completion_tokens": 8}
    with http.stream("POST", "/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == ""
    assert all(e.startswith("data: {") for e in events[:-1])
    assert "[DONE]" not in raw


def test_sse_event_escapes_data_prefix() -> None:
    payload = {"choices": [{"delta": {"content": "x data: y é"}}]}
    event = sse_event(payload)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert event.count(b"data: ") == 1
    assert json.loads(event[6:]) == payload


def test_tokenize(http: httpx.Client, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    r = http.post("/chat/tokenize", json={"messages": MESSAGES, "model": ALIAS})
    assert r.status_code == 200
    tokens = [t["value"] for t in r.json()["tokens"]]
    # The tiny model's chat template, without a generation prompt, token by token.
    text = "<|im_start|>user\nTell me about your day.<|im_end|>\n"
    assert "".join(tokens) == text
    hf = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert len(tokens) == len(hf(text, add_special_tokens=False)["input_ids"])


# --- the whole flow on the bundled model ---------------------------------------------------


@pytest.mark.slow
def test_issue_flow_on_the_bundled_model(tmp_path_factory: pytest.TempPathFactory) -> None:
    resolve(Settings(model="bundled"))  # convert the GGUF once, outside the timeout
    settings = Settings(model="bundled", model_aliases={ALIAS: "SmolLM2-135M-Instruct"})
    with serve_in_thread(create_app(settings), startup_timeout=600) as url:
        warm_up(url)  # builds the concept vectors once per cache (minutes on CPU)
        client = goodfire.Client(api_key="anything", base_url=url)
        variant = goodfire.Variant(ALIAS)

        found = client.features.search("pirate", model=variant)
        assert any("pirate" in f.label.lower() for f in found[:3])
        pirate = next(f for f in found if "pirate" in f.label.lower())

        messages = [{"role": "user", "content": "Arr, where did ye bury the treasure, matey?"}]
        top = client.features.inspect(messages, model=variant).top(k=5)
        assert len(top) == 5

        question = [{"role": "user", "content": "Tell me about your day."}]
        kw = {"max_completion_tokens": 40, "seed": 1}
        plain = client.chat.completions.create(question, model=variant, **kw)
        variant.set(pirate, 0.5)
        steered = client.chat.completions.create(question, model=variant, **kw)
        streamed = "".join(
            c.choices[0].delta.content
            for c in client.chat.completions.create(question, model=variant, stream=True, **kw)
        )
        assert steered.choices[0].message["content"] != plain.choices[0].message["content"]
        assert streamed == steered.choices[0].message["content"]

        hi = {"role": "user", "content": "Hi"}
        calm = [[hi, {"role": "assistant", "content": "Hello! How can I help you today?"}]]
        arr = [[hi, {"role": "assistant", "content": "Ahoy matey! Arr, what be ye wantin'?"}]]
        _, toward_pirate = client.features.contrast(calm, arr, model=variant, top_k=5)
        assert len(toward_pirate) == 5

        edits = client.features.AutoSteer(specification="talk like a pirate", model=variant)
        assert len(edits) >= 1
        variant.reset()
        variant.set(edits)
        autosteered = client.chat.completions.create(question, model=variant, **kw)
        assert autosteered.choices[0].message["content"] != plain.choices[0].message["content"]

        logits = client.chat.logits(question, model=variant, top_k=7)
        assert len(logits.logits) == 7


def test_gf_event_names_name_the_abort_scope_that_fired(
    gf: goodfire.Client, http: httpx.Client, pirate
) -> None:
    variant = goodfire.Variant(ALIAS)
    variant.abort_when(pirate > 1000.0)  # never holds
    variant.abort_when(pirate > -1000.0)  # holds on every token
    never, always = list(variant._handlers)  # event names, in the order of the scopes
    body = {"messages": MESSAGES, "model": ALIAS, "max_completion_tokens": 8,
            "controller": variant.controller.json()}  # fmt: skip
    r = http.post("/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["gf_event_names"] == [always]
    with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as s:
        events = [json.loads(e[6:]) for e in s.read().decode().split("\n\n") if e]
    assert [e["gf_event_names"] for e in events if e.get("gf_event_names")] == [[always]]
    assert never != always
