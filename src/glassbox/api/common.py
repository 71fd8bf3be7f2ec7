"""What every glassbox request schema shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictRequest(BaseModel):
    """A request body: unknown fields are a 400 (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")
