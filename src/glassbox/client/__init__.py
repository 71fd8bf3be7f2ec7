"""glassbox's Python SDK: `from glassbox.client import Client`."""

from glassbox.client.client import Client
from glassbox.client.errors import GlassboxError, NotFoundError

__all__ = ["Client", "GlassboxError", "NotFoundError"]
