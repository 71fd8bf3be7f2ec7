"""The names this server answers to: the served model name and its aliases."""

from __future__ import annotations

import time

from glassbox.api.openai.schemas import ModelCard, ModelList
from glassbox.errors import ModelNotFound


class ModelRegistry:
    def __init__(self, served_name: str, aliases: dict[str, str], max_model_len: int):
        wrong = {a: t for a, t in aliases.items() if t != served_name}
        if wrong:
            alias, target = next(iter(wrong.items()))
            raise ValueError(
                f"model alias {alias!r} points to {target!r}, but this server serves "
                f"{served_name!r}; point aliases at {served_name!r}"
            )
        self.served_name = served_name
        self.aliases = dict(aliases)
        self.max_model_len = max_model_len
        self.created = int(time.time())

    def names(self) -> list[str]:
        return [self.served_name, *self.aliases]

    def resolve(self, name: str | None) -> str:
        """The name to report back for a request's `model` (the served name when absent)."""
        if name is None or name == self.served_name or name in self.aliases:
            return name or self.served_name
        raise ModelNotFound(
            name,
            f"The model '{name}' does not exist; this server serves: "
            + ", ".join(repr(n) for n in self.names()),
        )

    def card(self, name: str) -> ModelCard:
        self.resolve(name)
        return ModelCard(
            id=name,
            created=self.created,
            root=self.served_name,
            max_model_len=self.max_model_len,
        )

    def list(self) -> ModelList:
        return ModelList(data=[self.card(n) for n in self.names()])
