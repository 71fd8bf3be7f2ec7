"""Five response schemas of glassbox's own (nested objects, arrays of objects, enums,
optional fields, bounded numbers), each with a prompt: shared by benchmarks/structured.py,
benchmarks/grammar_libs.py and the bundled-model test of structured output
(tests/e2e/test_structured_output.py).

Every string has a maxLength and every fractional number a multipleOf: a grammar bounds a
value, not its length, and a 135M model at temperature 1 otherwise writes a price with 300
digits or a string that never closes before max_tokens (4 of 100 answers did)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field


class Address(BaseModel):
    street: str = Field(max_length=40)
    city: str = Field(max_length=30)
    postcode: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=120)
    email: str | None = Field(default=None, max_length=40)
    address: Address


class LineItem(BaseModel):
    product: str = Field(max_length=30)
    quantity: int = Field(ge=1, le=100)
    unit_price: float = Field(ge=0, le=10000, multiple_of=0.01)


class Order(BaseModel):
    order_id: str = Field(pattern=r"^ORD-[0-9]{4}$")
    items: list[LineItem] = Field(min_length=1, max_length=4)
    status: Literal["pending", "shipped", "delivered", "cancelled"]
    note: str | None = Field(default=None, max_length=60)


class Review(BaseModel):
    title: str = Field(max_length=50)
    rating: int = Field(ge=1, le=5)
    sentiment: Literal["positive", "neutral", "negative"]
    pros: list[Annotated[str, Field(max_length=40)]] = Field(max_length=3)
    cons: list[Annotated[str, Field(max_length=40)]] = Field(max_length=3)


class Step(BaseModel):
    number: int = Field(ge=1, le=20)
    action: str = Field(max_length=60)
    minutes: float | None = Field(default=None, ge=0, le=240, multiple_of=0.5)


class Recipe(BaseModel):
    dish: str = Field(max_length=40)
    servings: int = Field(ge=1, le=12)
    difficulty: Literal["easy", "medium", "hard"]
    vegetarian: bool
    steps: list[Step] = Field(min_length=1, max_length=5)


class Wind(BaseModel):
    speed_kmh: float = Field(ge=0, le=300, multiple_of=0.1)
    direction: Literal["N", "NE", "E", "SE", "S", "SW", "W", "NW"]


class Reading(BaseModel):
    station: str = Field(max_length=30)
    temperature_c: float = Field(ge=-60, le=60, multiple_of=0.1)
    humidity: int = Field(ge=0, le=100)
    condition: Literal["sunny", "cloudy", "rain", "snow", "fog"]
    wind: Wind | None = None


SCHEMAS: list[tuple[type[BaseModel], str]] = [
    (Person, "Invent a person with a home address. Answer in JSON."),
    (Order, "Write a small shop order with a few items. Answer in JSON."),
    (Review, "Review a pair of running shoes. Answer in JSON."),
    (Recipe, "Give a simple recipe for pancakes. Answer in JSON."),
    (Reading, "Report the weather at a station in Oslo. Answer in JSON."),
]


def response_format(model: type[BaseModel]) -> dict:
    """OpenAI's `json_schema` response_format for a Pydantic model (non-strict: optional
    fields may be left out)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": model.model_json_schema()},
    }
