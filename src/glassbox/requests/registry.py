"""The names this server answers to: the served model name and its aliases (a request's
`model` field is resolved here, on every surface)."""

from __future__ import annotations

import time

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
