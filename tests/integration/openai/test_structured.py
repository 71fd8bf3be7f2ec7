"""response_format and guided_* through the official openai client against a live server:
every answer follows its constraint, together with the other sampling fields."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pytest
from helpers.http import new_namespace, pirate_variant
from helpers.server import TINY_NAME
from pydantic import BaseModel, Field

MESSAGES = [{"role": "user", "content": "Describe a pet as JSON."}]


class Toy(BaseModel):
    kind: Literal["ball", "rope", "bone"]
    squeaks: bool


class Pet(BaseModel):
    species: Literal["cat", "dog", "fish"]
    age: int = Field(ge=0, le=30)
    name: str = Field(max_length=12)
    toys: list[Toy] = Field(max_length=3)
    nickname: str | None = Field(max_length=8)


SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "pet", "schema": Pet.model_json_schema(), "strict": True},
}


def test_parse_returns_a_validated_model_for_every_choice(client: openai.OpenAI) -> None:
    r = client.chat.completions.parse(
        model=TINY_NAME, messages=MESSAGES, response_format=Pet, n=4, seed=7, max_tokens=200
    )
    assert len(r.choices) == 4
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Pet)
    assert len({c.message.content for c in r.choices}) > 1  # seed + i: the choices differ


def test_a_seed_reproduces_the_constrained_answer(client: openai.OpenAI) -> None:
    kw = {"model": TINY_NAME, "messages": MESSAGES, "response_format": SCHEMA, "max_tokens": 200}
    a = client.chat.completions.create(seed=3, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=3, **kw).choices[0].message.content
    assert a == b
    Pet.model_validate_json(a)


def test_json_object_is_a_json_object(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=TINY_NAME, messages=MESSAGES, response_format={"type": "json_object"},
        max_tokens=300, seed=1,
    )  # fmt: skip
    choice = r.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:  # an object the random model had not closed within max_tokens
        assert choice.finish_reason == "length"
        assert choice.message.content.startswith("{")


def test_length_before_the_grammar_closes_is_reported(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=TINY_NAME, messages=MESSAGES, response_format=SCHEMA, max_tokens=4
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 4


def test_the_stream_follows_the_schema_with_logprobs(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=TINY_NAME, messages=MESSAGES, response_format=SCHEMA, max_tokens=200,
            stream=True, seed=5, logprobs=True, top_logprobs=2,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    Pet.model_validate_json(text)
    logprobs = [t for c in chunks if c.choices and c.choices[0].logprobs for t in
                c.choices[0].logprobs.content]  # fmt: skip
    assert len(logprobs) == chunks[-1].usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_penalties_and_logit_bias_do_not_break_the_constraint(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=TINY_NAME, messages=MESSAGES, response_format=SCHEMA, max_tokens=200, seed=2,
        presence_penalty=1.5, frequency_penalty=1.0, logit_bias={"5": 50, "7": -100},
        extra_body={"repetition_penalty": 1.3, "top_k": 20},
    )  # fmt: skip
    assert r.choices[0].finish_reason == "stop"
    Pet.model_validate_json(r.choices[0].message.content)


def test_a_variant_and_a_schema_both_apply(client: openai.OpenAI, http) -> None:
    # The first feature search may wait for the dictionaries' build (tens of seconds).
    with httpx.Client(base_url=http.base_url, timeout=300) as patient:
        variant = pirate_variant(patient, new_namespace(), value=1.0)
    kw = {"model": TINY_NAME, "messages": MESSAGES, "response_format": SCHEMA,
          "max_tokens": 200, "seed": 4}  # fmt: skip
    plain = client.chat.completions.create(**kw).choices[0].message.content
    steered = client.chat.completions.create(**kw, extra_body={"variant": variant})
    content = steered.choices[0].message.content
    Pet.model_validate_json(content)
    assert content != plain


def test_guided_fields_on_completions(client: openai.OpenAI) -> None:
    def complete(**extra) -> str:
        r = client.completions.create(
            model=TINY_NAME, prompt="the quick brown fox", max_tokens=40, seed=1, extra_body=extra
        )
        assert r.choices[0].finish_reason == "stop", extra
        return r.choices[0].text

    assert complete(guided_choice=["jumps", "sleeps"]) in ("jumps", "sleeps")
    code = complete(guided_regex=r"[A-Z]{2}-\d{3}")
    assert len(code) == 6 and code[:2].isupper() and code[2] == "-" and code[3:].isdigit()
    assert complete(guided_grammar='start: "yes" | "no" | "maybe"') in ("yes", "no", "maybe")
    schema = {"type": "object", "properties": {"n": {"enum": [1, 2]}}, "required": ["n"]}
    schema["additionalProperties"] = False
    assert json.loads(complete(guided_json=json.dumps(schema)))["n"] in (1, 2)
    r = client.completions.create(
        model=TINY_NAME, prompt="a pet:", max_tokens=200, seed=1,
        extra_body={"response_format": SCHEMA},
    )  # fmt: skip
    Pet.model_validate_json(r.choices[0].text)


def test_constraints_that_cannot_start_are_400s_up_front(client: openai.OpenAI) -> None:
    # each used to be a 503 mid-generation, or a 200 with an empty text
    cycle = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": cycle}}
    cases = [
        ({"guided_regex": "a{99999999}"}, "guided_regex", "too large or complex"),
        ({"guided_regex": "\\"}, "guided_regex", "lone"),
        ({"guided_grammar": "start: start"}, "guided_grammar", "matches no text"),
        ({"guided_json": {"$ref": "#"}}, "guided_json", "$ref cycle"),
        ({"response_format": fmt}, "response_format", "$ref cycle"),
        ({"guided_choice": ["x" * 1_000_000]}, "guided_choice", "limit"),
    ]
    for extra, param, says in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(
                model=TINY_NAME, messages=MESSAGES, max_tokens=2, extra_body=extra
            )
        error = exc.value.body
        assert error["param"] == param and says in error["message"], (extra, error)
        assert "backtrace" not in error["message"]
