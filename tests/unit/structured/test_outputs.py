"""Pydantic models as answers: the strict schema, the JSON taken out of an answer, and the
validate-and-retry loop of `generate_model` (over a backend that answers from a script)."""

from __future__ import annotations

import copy
import json
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

import jsonschema
import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field, field_validator

from glassbox.backends.base import InferenceEngine
from glassbox.errors import InvalidOutput
from glassbox.structured.grammar import GrammarCompiler
from glassbox.structured.outputs import (
    generate_model,
    json_text,
    response_format,
    strict_json_schema,
)

T = TypeVar("T")


class Color(StrEnum):
    red = "red"
    green = "green"


class Item(BaseModel):
    name: str = Field(max_length=6)
    qty: int = Field(1, ge=0, le=9)


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool = True


class Tree(BaseModel):
    value: int
    children: list[Tree] = []


class Order(BaseModel):
    color: Color = Field(description="the colour")
    note: str | None = None
    items: list[Item] = Field(max_length=2)
    best: Item | None = Field(None, description="the best one")
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    tree: Tree
    pair: tuple[int, str] | None = None
    counts: dict[str, int] = {}


class City(BaseModel):
    name: str
    population: int = Field(ge=0)


def _objects(node: Any):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


# --- the strict schema --------------------------------------------------------------------


@pytest.mark.parametrize("model", [Item, Tree, City, Order])
def test_strict_schema_is_the_one_the_openai_package_makes(model):
    schema = model.model_json_schema()
    before = copy.deepcopy(schema)
    strict = strict_json_schema(schema)
    assert strict == to_strict_json_schema(model)
    assert schema == before  # a copy: the model's own schema is left as it was


def test_strict_schema_closes_every_object_and_requires_every_field():
    strict = strict_json_schema(Order.model_json_schema())
    objects = list(_objects(strict))
    assert len(objects) >= 5  # Order, Item, Cat, Dog, Tree
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    note = strict["properties"]["note"]
    assert "default" not in note and {"type": "null"} in note["anyOf"]
    # a $ref with a description beside it is inlined: the enum itself, with the description
    assert strict["properties"]["color"] == {
        "enum": ["red", "green"],
        "title": "Color",
        "type": "string",
        "description": "the colour",
    }
    # optional fields are still written (as null or a value) and validate with Pydantic
    answer = {
        "color": "red",
        "note": None,
        "items": [{"name": "pen", "qty": 2}],
        "best": None,
        "pet": {"kind": "dog", "good": False},
        "tree": {"value": 1, "children": [{"value": 2, "children": []}]},
        "pair": [3, "x"],
        "counts": {"a": 1},
    }
    jsonschema.validate(answer, strict)
    assert Order.model_validate(answer).pet == Dog(kind="dog", good=False)
    with pytest.raises(jsonschema.ValidationError, match="'note' is a required property"):
        jsonschema.validate({k: v for k, v in answer.items() if k != "note"}, strict)
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        jsonschema.validate({**answer, "extra": 1}, strict)


def test_response_format_compiles_into_a_grammar(tiny_tokenizer, tiny_model):
    fmt = response_format(Order)
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Order" and fmt["json_schema"]["strict"] is True
    grammars = GrammarCompiler(tiny_tokenizer, tiny_model.config.vocab_size)
    grammar = grammars.json_schema(fmt["json_schema"]["schema"])
    matcher = grammar.matcher()
    text = '{"color":"green","note":null,"items":[],"best":null,"pet":{"kind":"cat","lives":9},'
    text += '"tree":{"value":0,"children":[]},"pair":null,"counts":{}}'
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert all(matcher.consume(t) for t in ids) and matcher.is_accepting()
    refused = grammar.matcher()  # "kind": "cow" is outside the discriminated union
    cow = '{"color":"green","note":null,"items":[],"best":null,"pet":{"kind":"cow"'
    bad = tiny_tokenizer.encode(cow, add_special_tokens=False)
    assert not all(refused.consume(t) for t in bad)


def test_a_generic_models_name_fits_openais_pattern():
    class Page(BaseModel, Generic[T]):
        items: list[T]

    assert response_format(Page[int])["json_schema"]["name"] == "Page_int_"


# --- the JSON in an unconstrained answer --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('Sure! Here it is:\n```json\n{"a": 1}\n```\nAnything else?', '{"a": 1}'),
        ('```\n{"a": {"b": 2}}\n```', '{"a": {"b": 2}}'),
        ('The answer is {"a": {"b": 2}}. Done.', '{"a": {"b": 2}}'),
        ("  no JSON here  ", "no JSON here"),
    ],
)
def test_json_text(text, expected):
    assert json_text(text) == expected


# --- the retry loop -----------------------------------------------------------------------


class Scripted(InferenceEngine):
    """Answers from a script, in order; records what it was asked."""

    MODULATION_TYPE = "sampling"

    def __init__(self, answers: list[str], constrained: bool):
        super().__init__()
        self.answers = list(answers)
        self.SUPPORTS_JSON_SCHEMA = constrained
        self.asked: list[dict[str, Any]] = []

    async def chat_completion_stream(
        self,
        messages,
        max_tokens=None,
        temperature=None,
        top_p=None,
        emotion_coefficients=None,
        *,
        response_format=None,
    ):
        fmt = self.json_format(response_format)
        self.asked.append({"messages": messages, "response_format": fmt, "max_tokens": max_tokens})
        yield self.answers.pop(0)


QUESTION = [{"role": "user", "content": "The largest city of France?"}]


async def test_unconstrained_the_schema_is_asked_for_and_errors_are_fed_back():
    backend = Scripted(
        [
            "Paris, of course.",
            '{"name": "Paris", "population": -1}',
            'Here:\n```json\n{"name": "Paris", "population": 2100000}\n```',
        ],
        constrained=False,
    )
    city = await generate_model(backend, QUESTION, City, max_tokens=50)
    assert city == City(name="Paris", population=2_100_000)
    assert len(backend.asked) == 3 and not backend.answers
    assert all(a["response_format"] is None and a["max_tokens"] == 50 for a in backend.asked)

    first = backend.asked[0]["messages"]
    assert first[1:] == QUESTION and first[0]["role"] == "system"
    assert (
        json.dumps(response_format(City)["json_schema"]["schema"], separators=(",", ":"))
        in (first[0]["content"])
    )
    second = backend.asked[1]["messages"]
    assert second[:2] == first
    assert second[2] == {"role": "assistant", "content": "Paris, of course."}
    assert second[3]["role"] == "user" and "Invalid JSON" in second[3]["content"]
    third = backend.asked[2]["messages"]
    assert third[:4] == second
    assert "population: Input should be greater than or equal to 0" in third[5]["content"]


async def test_an_existing_system_message_is_extended():
    backend = Scripted(['{"name": "Lyon", "population": 500000}'], constrained=False)
    messages = [{"role": "system", "content": "Be brief."}, *QUESTION]
    await generate_model(backend, messages, City)
    sent = backend.asked[0]["messages"]
    assert len(sent) == 2 and sent[0]["content"].startswith("Be brief.\n\nAnswer with one JSON")


async def test_constrained_the_response_format_is_sent_and_the_prompt_left_alone():
    backend = Scripted(['{"name":"Paris","population":2100000}'], constrained=True)
    city = await generate_model(backend, QUESTION, City, temperature=0.0)
    assert city.name == "Paris"
    assert backend.asked == [
        {"messages": QUESTION, "response_format": response_format(City), "max_tokens": None}
    ]


class Even(BaseModel):
    n: int

    @field_validator("n")
    @classmethod
    def _even(cls, n: int) -> int:
        if n % 2:
            raise ValueError("n must be even")
        return n


async def test_constrained_a_rule_only_pydantic_checks_is_fed_back():
    backend = Scripted(['{"n":3}', '{"n":4}'], constrained=True)
    assert await generate_model(backend, QUESTION, Even) == Even(n=4)
    retry = backend.asked[1]
    assert retry["response_format"] == response_format(Even)
    assert retry["messages"][-2] == {"role": "assistant", "content": '{"n":3}'}
    assert "n: Value error, n must be even" in retry["messages"][-1]["content"]


async def test_retries_are_bounded_then_a_clear_error():
    answers = ["nope", '{"name": "Paris"}', "never asked"]
    backend = Scripted(answers, constrained=False)
    with pytest.raises(InvalidOutput) as caught:
        await generate_model(backend, QUESTION, City, max_retries=1)
    error = caught.value
    assert len(backend.asked) == 2 and backend.answers == ["never asked"]
    assert error.attempts == 2 and error.output == '{"name": "Paris"}'
    assert error.code == "invalid_model_output"
    assert str(error) == (
        "the model's answer did not validate against City after 2 attempts; "
        "the last one: population: Field required"
    )


async def test_no_retries():
    backend = Scripted(["nope"], constrained=True)
    with pytest.raises(InvalidOutput, match="after 1 attempt;") as caught:
        await generate_model(backend, QUESTION, City, max_retries=0)
    assert caught.value.attempts == 1 and len(backend.asked) == 1
    with pytest.raises(ValueError, match="max_retries"):
        await generate_model(backend, QUESTION, City, max_retries=-1)
