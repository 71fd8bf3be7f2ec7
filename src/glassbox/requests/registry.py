"""The names this server answers to: every served model (the local engine's and those of
other backends, see `glassbox.backends`), their aliases, and what each backend can do.

A request's `model` field is resolved here, on every surface: `resolve` gives the name to
report back, `served` the model behind it, and `require` refuses a capability the model's
backend does not have (steering on an upstream, say) with a 400 that names both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from glassbox.errors import ModelNotFound, NotCapable

LOCAL = "local"

# What only the local engine does: its activations, its KV and its tokenizer are in reach.
STEERING = "steering"  # variants, emotion vectors (other backends modulate sampling instead)
FEATURES = "features"  # search, inspect, contrast, the Ember surface
STATES = "states"  # KV states and their analysis
TOKENIZE = "tokenize"
LOCAL_CAPABILITIES = frozenset({STEERING, FEATURES, STATES, TOKENIZE})


@dataclass(frozen=True)
class ServedModel:
    name: str  # the served name (aliases resolve to it)
    backend: str  # "local", "openai-upstream", "llama-cpp"
    max_model_len: int | None
    capabilities: frozenset[str]
    aliases: tuple[str, ...] = ()

    @property
    def local(self) -> bool:
        return self.backend == LOCAL


class ModelRegistry:
    def __init__(
        self,
        served_name: str,
        aliases: dict[str, str],
        max_model_len: int,
        others: list[ServedModel] | tuple[ServedModel, ...] = (),
    ):
        """`served_name` is the local engine's model, `aliases` (alias -> served name) its
        other names; `others` are the models of other backends, with their aliases."""
        local = ServedModel(
            served_name,
            LOCAL,
            max_model_len,
            LOCAL_CAPABILITIES,
            tuple(a for a, t in aliases.items() if t == served_name),
        )
        self.models: dict[str, ServedModel] = {}
        self._names: dict[str, ServedModel] = {}
        for model in (local, *others):
            for name in (model.name, *model.aliases):
                if name in self._names:
                    raise ValueError(f"model name {name!r} is served twice; give each one name")
                self._names[name] = model
            self.models[model.name] = model
        wrong = {a: t for a, t in aliases.items() if t not in self.models}
        if wrong:
            alias, target = next(iter(wrong.items()))
            raise ValueError(
                f"model alias {alias!r} points to {target!r}, which this server does not "
                f"serve; point aliases at one of {', '.join(map(repr, self.models))}"
            )
        for alias, target in aliases.items():
            if target != served_name:
                self._names[alias] = self.models[target]
        self.served_name = served_name
        self.max_model_len = max_model_len
        self.created = int(time.time())

    def names(self) -> list[str]:
        """Every name a request may use, the served names first."""
        return [*self.models, *(n for n in self._names if n not in self.models)]

    def served(self, name: str | None) -> ServedModel:
        """The model behind `name` (the local model when absent); 404 for an unknown one."""
        if name is None:
            return self.models[self.served_name]
        model = self._names.get(name)
        if model is None:
            raise ModelNotFound(
                name,
                f"The model '{name}' does not exist; this server serves: "
                + ", ".join(repr(n) for n in self.names()),
            )
        return model

    def resolve(self, name: str | None) -> str:
        """The name to report back for a request's `model` (the served name when absent)."""
        self.served(name)
        return name or self.served_name

    def require(self, name: str | None, capability: str, param: str = "model") -> ServedModel:
        """The model behind `name`, refused with a 400 when its backend cannot do
        `capability`."""
        model = self.served(name)
        if capability not in model.capabilities:
            raise NotCapable(
                f"model '{name}' is served by the '{model.backend}' backend, which cannot do "
                f"'{capability}' (only the local engine reaches a model's activations, KV and "
                f"tokenizer); use one of: {', '.join(self.capable(capability))}",
                param=param,
            )
        return model

    def capable(self, capability: str) -> list[str]:
        return [repr(m.name) for m in self.models.values() if capability in m.capabilities]
