"""Pydantic models as a model's answer, from any backend.

    city = await generate_model(backend, messages, City)    # a validated City

- A backend that can constrain its decoding (`SUPPORTS_JSON_SCHEMA`: the local engine, an
  OpenAI-compatible upstream that takes `response_format`) is asked for JSON constrained to
  the model's schema made strict (`strict_json_schema`, the transformation the `openai`
  package applies for `chat.completions.parse`), sent as OpenAI's `response_format`.
- A backend that cannot gets the schema in a system message, and the JSON object is taken
  out of its answer (a code fence or words around it are dropped).

Either way Pydantic validates the answer. One that does not validate (not JSON, a value out
of bounds, a rule only Pydantic checks, JSON cut short by `max_tokens`) goes back to the
model with the validation errors, at most `max_retries` times; then `InvalidOutput`.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from glassbox.errors import InvalidOutput

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

MAX_ERRORS_SHOWN = 10  # validation errors fed back per retry (a long list floods the context)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class JsonBackend(Protocol):
    """What `generate_model` needs of a backend (`glassbox.backends.InferenceEngine`)."""

    SUPPORTS_JSON_SCHEMA: bool

    async def chat_completion(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        emotion_coefficients: Mapping[str, float] | None = None,
        *,
        response_format: Mapping[str, Any] | None = None,
    ) -> str: ...


async def generate_model(
    backend: JsonBackend,
    messages: list[dict[str, Any]],
    model: type[M],
    *,
    max_retries: int = 2,
    **sampling: Any,
) -> M:
    """An instance of `model` from the backend's answer to `messages`, validated by Pydantic.

    `sampling` goes to `chat_completion` as it is (`max_tokens`, `temperature`, `top_p`,
    `emotion_coefficients`). Raises `InvalidOutput` when the first answer and its
    `max_retries` retries all fail to validate."""
    if max_retries < 0:
        raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
    fmt = response_format(model)
    constrained = backend.SUPPORTS_JSON_SCHEMA
    conversation = list(messages)
    if not constrained:
        conversation = with_schema(conversation, fmt["json_schema"]["schema"])
    attempts = max_retries + 1
    for attempt in range(1, attempts + 1):
        if constrained:
            text = await backend.chat_completion(conversation, response_format=fmt, **sampling)
        else:
            text = await backend.chat_completion(conversation, **sampling)
        try:
            return model.model_validate_json(text if constrained else json_text(text))
        except ValidationError as exc:
            errors = describe(exc)
        # the errors quote the model's answer: message content, for DEBUG only
        log.info("the answer did not validate", extra={"model": model.__name__, "attempt": attempt})
        log.debug("validation errors", extra={"model": model.__name__, "errors": errors})
        conversation = [
            *conversation,
            {"role": "assistant", "content": text},
            {"role": "user", "content": feedback(errors)},
        ]
    raise InvalidOutput(
        f"the model's answer did not validate against {model.__name__} after {attempts} "
        f"attempt{'s' if attempts > 1 else ''}; the last one: {'; '.join(errors)}",
        attempts=attempts,
        output=text,
    )


def response_format(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAI's `response_format` for `model`: its strict JSON schema."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64]
    schema = strict_json_schema(model.model_json_schema())
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def strict_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `schema` in the form OpenAI's strict mode asks for, as the `openai` package
    makes it from a Pydantic model: every object closed (`additionalProperties: false`) with
    all its properties required (an optional field is still written, as null or its
    default's value), `default: null` dropped, a one-member `allOf` unwrapped and a `$ref`
    with other keys beside it inlined."""
    root = copy.deepcopy(dict(schema))
    return _strict(root, root)


def _strict(node: Any, root: dict[str, Any]) -> Any:
    if not isinstance(node, dict):
        return node
    for key in ("$defs", "definitions"):
        defs = node.get(key)
        if isinstance(defs, dict):
            node[key] = {name: _strict(sub, root) for name, sub in defs.items()}
    if node.get("type") == "object" and "additionalProperties" not in node:
        node["additionalProperties"] = False
    properties = node.get("properties")
    if isinstance(properties, dict):
        node["required"] = list(properties)
        node["properties"] = {name: _strict(sub, root) for name, sub in properties.items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _strict(node[key], root)
    for key in ("anyOf", "oneOf", "prefixItems"):
        if isinstance(node.get(key), list):
            node[key] = [_strict(sub, root) for sub in node[key]]
    all_of = node.get("allOf")
    if isinstance(all_of, list):
        if len(all_of) == 1:
            node.pop("allOf")
            node.update(_strict(all_of[0], root))
        else:
            node["allOf"] = [_strict(sub, root) for sub in all_of]
    if "default" in node and node["default"] is None:
        node.pop("default")
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1:
        merged = {**_resolve(root, ref), **node}  # the node's own keys win
        merged.pop("$ref")
        return _strict(merged, root)
    return node


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs ('#/...') can be inlined, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    if not isinstance(node, dict):
        raise ValueError(f"$ref {ref!r} does not point to a schema")
    return copy.deepcopy(node)


def with_schema(messages: list[dict[str, Any]], schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation with the schema asked for in its system message (the first system
    message is extended, or one is put first)."""
    ask = (
        "Answer with one JSON object and nothing else: no code fence, no text around it. "
        "It must validate against this JSON Schema:\n"
        + json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    )
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        return [{**first, "content": f"{first.get('content') or ''}\n\n{ask}"}, *messages[1:]]
    return [{"role": "system", "content": ask}, *messages]


def json_text(text: str) -> str:
    """The JSON object in an unconstrained answer: inside its code fence if it has one, else
    from its first "{" to its last "}" (the answer as it is when there is none)."""
    fenced = _FENCE.search(text)
    if fenced:
        return fenced.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text.strip()


def describe(exc: ValidationError) -> list[str]:
    """One line per validation error: where in the answer, and what is wrong."""
    lines = []
    for error in exc.errors(include_url=False)[:MAX_ERRORS_SHOWN]:
        where = ".".join(str(part) for part in error["loc"]) or "the answer"
        lines.append(f"{where}: {error['msg']}")
    return lines


def feedback(errors: list[str]) -> str:
    """The message that sends the validation errors back to the model."""
    listed = "\n".join(f"- {e}" for e in errors)
    return f"That answer is not valid:\n{listed}\nAnswer again with only the corrected JSON object."
