"""glassbox: a self-hosted LLM server you can look inside and steer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("glassbox")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
