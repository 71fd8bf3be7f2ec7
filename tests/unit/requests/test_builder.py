"""The one request path (requests/builder.py): prompts, the context check, sampling fields."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from glassbox.engine.sequence import SamplingParams
from glassbox.errors import ContextLengthExceeded, InvalidRequest
from glassbox.requests.builder import EngineRequest, RequestBounds, RequestBuilder, about
from glassbox.steering.plan import Direction, ResolvedEdit, SteeringPlan

LIMIT = 64
MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def build(tiny_tokenizer) -> RequestBuilder:
    return RequestBuilder(tiny_tokenizer, vocab_size=tiny_tokenizer.vocab_size, max_model_len=LIMIT)


def test_chat_applies_the_models_template(build, tiny_tokenizer):
    expected = tiny_tokenizer.hf.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert build.chat(MESSAGES) == list(expected)
    without = build.chat(MESSAGES, add_generation_prompt=False)
    assert without != build.chat(MESSAGES) and build.chat(MESSAGES)[: len(without)] == without


def test_a_template_that_refuses_the_messages_is_a_400_on_the_field(build, monkeypatch):
    monkeypatch.setattr(build.tokenizer.hf, "chat_template", None)
    with pytest.raises(InvalidRequest, match="no chat template") as info:
        build.chat(MESSAGES, param="conversation")
    assert info.value.param == "conversation"


def test_token_ids_outside_the_vocabulary_name_the_field(build):
    vocab = build.vocab_size
    assert build.token_ids([0, vocab - 1], "prompt") == [0, vocab - 1]
    with pytest.raises(InvalidRequest, match=f"token id {vocab}, outside") as info:
        build.token_ids([1, vocab], "prompt")
    assert info.value.param == "prompt"
    with pytest.raises(InvalidRequest, match="token id -1") as info:
        build.token_ids([-1], "tokens")
    assert info.value.param == "tokens"


def test_the_context_check_has_one_wording(build):
    assert build.max_tokens(10, None, prompt_param="prompt") == LIMIT - 10
    assert build.max_tokens(10, 54, prompt_param="prompt") == 54
    with pytest.raises(ContextLengthExceeded) as full:
        build.max_tokens(LIMIT, None, prompt_param="messages")
    assert full.value.param == "messages" and full.value.code == "context_length_exceeded"
    assert str(full.value) == (
        f"This model's maximum context length is {LIMIT} tokens, but the prompt has {LIMIT} "
        f"tokens. Shorten the prompt to fewer than {LIMIT} tokens."
    )
    with pytest.raises(ContextLengthExceeded) as over:
        build.max_tokens(10, 55, prompt_param="messages")
    assert over.value.param == "max_tokens"
    assert "65 were requested (10 in the prompt, 55 for the completion)" in str(over.value)
    assert "at most 54" in str(over.value)
    assert build.max_tokens(10, 55, prompt_param="messages", cap=True) == 54
    with pytest.raises(InvalidRequest, match="empty") as empty:
        build.max_tokens(0, 5, prompt_param="prompt")
    assert empty.value.param == "prompt"


def test_params_check_token_ids_and_stop_strings(build):
    vocab = build.vocab_size
    with pytest.raises(InvalidRequest) as bias:
        build.params(max_tokens=4, logit_bias={vocab + 3: 1.0})
    assert bias.value.param == "logit_bias"
    with pytest.raises(InvalidRequest) as stops:
        build.params(max_tokens=4, stop_token_ids=[vocab])
    assert stops.value.param == "stop_token_ids"
    with pytest.raises(InvalidRequest, match="must not be empty") as empty:
        build.params(max_tokens=4, stop=["end", ""])
    assert empty.value.param == "stop"
    params = build.params(max_tokens=4, top_k=-1, logit_bias={"5": "2.5"}, stop=("x",))
    assert params.top_k == 0 and params.logit_bias == {5: 2.5} and params.stop == ["x"]


def test_an_empty_steering_plan_is_no_plan(build):
    assert build.params(max_tokens=1, steering=SteeringPlan([], [])).steering is None
    w = torch.ones(8)
    plan = SteeringPlan([ResolvedEdit(Direction("d", 0, w, 0.0, w), "nudge", 1.0)], [])
    assert build.params(max_tokens=1, steering=plan).steering is plan


def test_built_requests_cannot_change(build):
    request = build.request(build.chat(MESSAGES), prompt_param="messages", max_tokens=3, seed=7)
    assert isinstance(request, EngineRequest) and request.params.max_tokens == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.params.seed = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.prompt_ids = []


def test_engine_refusals_are_about_the_field_the_prompt_came_from():
    with pytest.raises(InvalidRequest) as info:
        with about("text"):
            raise InvalidRequest("the prompt is empty", param="prompt")
    assert info.value.param == "text"


class RecordingTokenizer:
    """Records what the builder asks of the tokenizer (beside the tests above, which use the
    real one): the arguments must reach it as given."""

    max_token_chars = 4

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.calls.append(("encode", text, add_special_tokens))
        return [len(text)]

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        self.calls.append(("decode", list(token_ids), skip_special_tokens))
        return "text"


def test_text_and_decode_pass_their_arguments_to_the_tokenizer():
    tok = RecordingTokenizer()
    build = RequestBuilder(tok, vocab_size=10, max_model_len=LIMIT)
    assert build.text("abc") == [3]
    assert build.text("abcd", add_special_tokens=False) == [4]
    assert build.decode([1, 2]) == "text"
    assert build.decode([3], skip_special_tokens=False) == "text"
    assert tok.calls == [
        ("encode", "abc", True),
        ("encode", "abcd", False),
        ("decode", [1, 2], True),
        ("decode", [3], False),
    ]
    with pytest.raises(InvalidRequest) as bad:
        build.decode([1, 10])
    assert bad.value.param == "tokens" and tok.calls[-1] == ("decode", [3], False)


def test_decode_keeps_or_drops_special_tokens(build, tiny_tokenizer):
    end = tiny_tokenizer.hf.convert_tokens_to_ids("<|im_end|>")
    ids = build.text("Hello") + [end]
    assert build.decode(ids) == tiny_tokenizer.decode(ids, skip_special_tokens=True)
    assert build.decode(ids, skip_special_tokens=False).endswith("<|im_end|>")
    assert "<|im_end|>" not in build.decode(ids)


def test_for_engine_takes_the_engines_tokenizer_and_sizes():
    engine = SimpleNamespace(tokenizer=RecordingTokenizer(), vocab_size=77, max_model_len=99)
    build = RequestBuilder.for_engine(engine)
    assert (build.tokenizer, build.vocab_size, build.max_model_len) == (
        engine.tokenizer, 77, 99,
    )  # fmt: skip


def test_a_template_error_names_messages_by_default(build, monkeypatch):
    monkeypatch.setattr(build.tokenizer.hf, "chat_template", None)
    with pytest.raises(InvalidRequest) as info:
        build.chat(MESSAGES)
    assert info.value.param == "messages"


def test_a_one_token_prompt_is_a_prompt(build):
    assert build.max_tokens(1, None, prompt_param="prompt") == LIMIT - 1
    with pytest.raises(InvalidRequest) as empty:
        build.max_tokens(0, None, prompt_param="prompt")
    assert str(empty.value) == "the prompt is empty; send at least one token"
    with pytest.raises(InvalidRequest) as stop:
        build.params(max_tokens=1, stop=[""])
    assert str(stop.value) == "stop strings must not be empty"


def test_params_defaults_are_the_engines_and_every_field_gets_through(build):
    assert build.params(max_tokens=5) == SamplingParams(max_tokens=5)
    w = torch.ones(8)
    plan = SteeringPlan([ResolvedEdit(Direction("d", 0, w, 0.0, w), "nudge", 1.0)], [])
    given = {
        "temperature": 0.3, "top_p": 0.7, "top_k": 4, "min_p": 0.2, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "repetition_penalty": 1.3, "logit_bias": {2: -1.5},
        "stop": ["x", "yz"], "stop_token_ids": [3, 4], "ignore_eos": True, "seed": 11,
        "logprobs": 2, "skip_special_tokens": False, "steering": plan, "keep_kv": True,
    }  # fmt: skip
    assert build.params(max_tokens=6, **given) == SamplingParams(max_tokens=6, **given)


def test_request_checks_the_context_then_builds_the_params(build):
    prompt = [5] * 10
    request = build.request(prompt, prompt_param="messages", max_tokens=4, seed=9, top_k=2)
    assert request.prompt_ids == prompt and request.prompt_ids is not prompt
    assert request.params == SamplingParams(max_tokens=4, seed=9, top_k=2)
    assert build.request(prompt, prompt_param="messages").params.max_tokens == LIMIT - 10
    with pytest.raises(ContextLengthExceeded) as over:  # not capped unless asked
        build.request(prompt, prompt_param="messages", max_tokens=LIMIT)
    assert over.value.param == "max_tokens"
    capped = build.request(prompt, prompt_param="messages", max_tokens=LIMIT, cap=True)
    assert capped.params.max_tokens == LIMIT - 10
    with pytest.raises(ContextLengthExceeded) as full:
        build.request([5] * LIMIT, prompt_param="text")
    assert full.value.param == "text"


CONVERSATION = [
    {"role": "user", "content": "the quick brown fox"},
    {"role": "assistant", "content": "jumps over"},
    {"role": "user", "content": "the lazy dog"},
]


def test_chat_after_keeps_the_prefix_tokens_as_the_model_wrote_them(build, tiny_tokenizer):
    asked = build.chat(CONVERSATION[:1])
    # The reply as generated: its characters one token each, not as the tokenizer splits them.
    reply = [t for ch in "jumps over" for t in tiny_tokenizer.encode(ch, add_special_tokens=False)]
    state = asked + reply
    ids = build.chat_after(state, CONVERSATION)
    assert ids[: len(state)] == state
    assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == tiny_tokenizer.hf.decode(
        build.chat(CONVERSATION), skip_special_tokens=False
    )
    assert ids != build.chat(CONVERSATION)  # re-tokenizing would have split the reply anew


def test_chat_after_another_history_tokenizes_the_whole_conversation(build):
    other = build.chat([{"role": "user", "content": "something else entirely"}])
    assert build.chat_after(other, CONVERSATION) == build.chat(CONVERSATION)


def test_chat_after_drops_a_reply_cut_inside_a_character(build, tiny_tokenizer):
    asked = build.chat(CONVERSATION[:1])
    reply = tiny_tokenizer.encode("jumps over", add_special_tokens=False)
    e_acute = tiny_tokenizer.encode("é", add_special_tokens=False)
    assert len(e_acute) == 2  # one token per UTF-8 byte
    cut = e_acute[:1]  # half of the character
    ids = build.chat_after(asked + reply + cut, CONVERSATION)
    assert ids[: len(asked + reply)] == asked + reply
    assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == tiny_tokenizer.decode(
        build.chat(CONVERSATION), skip_special_tokens=False
    )


def test_a_text_no_tokenization_could_fit_is_refused_before_it_is_tokenized():
    tok = RecordingTokenizer()
    build = RequestBuilder(tok, vocab_size=10, max_model_len=LIMIT)
    most = LIMIT * tok.max_token_chars  # characters LIMIT tokens of 4 characters hold
    assert build.text("a" * most) == [most]
    with pytest.raises(ContextLengthExceeded) as long:
        build.text("a" * (most + 1), param="text")
    assert long.value.param == "text" and f"{most + 1} characters" in long.value.message
    assert [c[1] for c in tok.calls] == ["a" * most]  # the refused text was never tokenized


def test_a_conversation_no_tokenization_could_fit_is_refused_before_the_template(
    build, tiny_tokenizer, monkeypatch
):
    def no_template(*args, **kwargs):
        raise AssertionError("the template ran on a conversation that cannot fit")

    monkeypatch.setattr(tiny_tokenizer, "apply_chat_template", no_template)
    monkeypatch.setattr(tiny_tokenizer, "chat_text", no_template)
    many = [{"role": "user", "content": "x"}] * (LIMIT + 1)
    with pytest.raises(ContextLengthExceeded) as refused:
        build.chat(many)
    assert refused.value.param == "messages" and "messages" in refused.value.message
    huge = "word " * (LIMIT * tiny_tokenizer.max_token_chars)
    parts = [{"role": "user", "content": [{"type": "text", "text": huge}]}]
    with pytest.raises(ContextLengthExceeded):
        build.chat(parts, param="prompt")
    with pytest.raises(ContextLengthExceeded):
        build.chat_after([1, 2], [{"role": "user", "content": huge}])


def test_bounds_refuse_prompts_max_tokens_n_and_stops_past_them(tiny_tokenizer):
    bounds = RequestBounds(
        max_prompt_tokens=10, max_generated_tokens=5, max_choices=2, max_stop_strings=1,
        max_stop_chars=3, timeout_seconds=7.0,
    )  # fmt: skip
    build = RequestBuilder(tiny_tokenizer, tiny_tokenizer.vocab_size, LIMIT, bounds)
    assert build.context_limit == 10
    with pytest.raises(ContextLengthExceeded) as long:
        build.max_tokens(11, 1, prompt_param="messages")
    assert long.value.param == "messages" and "at most 10 tokens" in long.value.message
    with pytest.raises(InvalidRequest) as many:
        build.max_tokens(3, 6, prompt_param="prompt")
    assert many.value.param == "max_tokens"
    assert build.max_tokens(3, 6, prompt_param="prompt", cap=True) == 5
    assert build.max_tokens(3, None, prompt_param="prompt") == 5
    assert build.choices(2) == 2
    with pytest.raises(InvalidRequest) as n:
        build.choices(3)
    assert n.value.param == "n"
    with pytest.raises(InvalidRequest):
        build.params(max_tokens=1, stop=["a", "b"])
    with pytest.raises(InvalidRequest) as stop:
        build.params(max_tokens=1, stop=["abcd"])
    assert stop.value.param == "stop"
    assert build.params(max_tokens=1, stop=["abc"]).timeout == 7.0
