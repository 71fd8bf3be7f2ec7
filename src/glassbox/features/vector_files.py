"""Steering vectors from files as feature dictionaries.

A vector folder holds one vector per file, labelled by the file's stem: `.safetensors`,
`.pt`/`.pth` (read with `torch.load(weights_only=True)`, never a full unpickle) or `.npy`
(`allow_pickle=False`). A steering vector is meant to be added as it is, so its feature has
write = v and read = v / ||v||², which makes reading h = v give exactly 1.0.

Control vectors (repeng, llama.cpp's cvector-generator) are GGUF files with
`general.architecture = controlvector` and one F32 tensor `direction.N` per layer. llama.cpp
(`common_control_vector_load_one`, `llama_adapter_cvec::apply`, `build_cvec`) adds
`direction.N` to the output of decoder block N counted from 0 — the block's `l_out` — and
rejects `direction.0`. glassbox's layer i is also the output of decoder layer i (0-based),
so direction.N is glassbox layer N, with no shift. repeng agrees: it keys directions by the
index of the decoder layer whose output it reads and writes.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from glassbox.features.dictionary import FeatureDictionary

VECTOR_SUFFIXES = (".safetensors", ".pt", ".pth", ".npy")
_TENSOR_NAMES = ("vector", "direction")
_DIRECTION = re.compile(r"^direction\.(\d+)$")


def load_vector_folder(
    directory: str | Path,
    layer: int,
    hidden_size: int,
    model_fingerprint: str = "",
    name: str | None = None,
) -> FeatureDictionary:
    """One feature per vector file in `directory` (sorted by file name), at `layer`.

    Files with other suffixes are ignored. Raises FileNotFoundError if the directory does
    not exist and ValueError (naming the file) for any unreadable or malformed vector."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"vector folder {directory} does not exist")
    paths = sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() in VECTOR_SUFFIXES and not p.name.startswith(".")
    )
    if not paths:
        raise ValueError(
            f"{directory}: no vector files ({', '.join(VECTOR_SUFFIXES)}) in the folder"
        )
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise ValueError(
                f"{path}: label {path.stem!r} is also the stem of {seen[path.stem].name}; "
                "each label needs one file"
            )
        seen[path.stem] = path
    vectors = torch.stack([read_vector_file(path, hidden_size) for path in paths])
    return vector_dictionary(
        name or directory.name,
        layer,
        [p.stem for p in paths],
        vectors,
        model_fingerprint,
    )


def vector_dictionary(
    name: str,
    layer: int,
    labels: list[str],
    vectors: torch.Tensor,
    model_fingerprint: str = "",
) -> FeatureDictionary:
    """Steering vectors [n, hidden] as a dictionary: write = v, read = v / ||v||²."""
    vectors = vectors.float()
    return FeatureDictionary(
        name=name,
        layer=layer,
        labels=labels,
        write=vectors,
        read=vectors / vectors.pow(2).sum(dim=-1, keepdim=True),
        model_fingerprint=model_fingerprint,
    )


def read_vector_file(path: str | Path, hidden_size: int) -> torch.Tensor:
    """The float32 vector [hidden_size] stored in one file; ValueError naming the file if it
    cannot be read or is not one finite, non-zero, floating-point vector of that size."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            raw = _read_safetensors(path)
        elif suffix in (".pt", ".pth"):
            raw = _read_torch(path)
        elif suffix == ".npy":
            raw = _read_numpy(path)
        else:
            raise _FileProblem(f"unsupported suffix {path.suffix!r}; use {VECTOR_SUFFIXES}")
    except _FileProblem as e:
        raise ValueError(f"{path}: {e}") from None
    except Exception as e:  # each reader raises its own zoo of types on corrupt input
        raise ValueError(f"{path}: cannot read the file ({type(e).__name__}: {e})") from None
    return _check_vector(raw, hidden_size, str(path))


def read_control_vector_gguf(
    path: str | Path, hidden_size: int, num_layers: int | None = None
) -> list[tuple[int, torch.Tensor]]:
    """[(glassbox layer, vector [hidden_size])] from a llama.cpp/repeng control-vector GGUF,
    sorted by layer. direction.N becomes layer N (see the module docstring); several
    tensors for one layer are summed, as llama.cpp does."""
    from gguf import GGMLQuantizationType, GGUFReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: control vector file does not exist")
    try:
        reader = GGUFReader(path)
    except Exception as e:
        raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None

    field = reader.fields.get("general.architecture")
    architecture = field.contents() if field is not None else None
    if architecture not in (None, "controlvector"):
        raise ValueError(
            f"{path}: general.architecture is {architecture!r}, not 'controlvector' "
            "(is this a model file?)"
        )
    if not reader.tensors:
        raise ValueError(f"{path}: no direction.N tensors in the file")

    by_layer: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        m = _DIRECTION.match(tensor.name)
        if not m:
            raise ValueError(f"{path}: tensor {tensor.name!r} is not named direction.N (N = layer)")
        n = int(m.group(1))
        if n == 0:
            raise ValueError(
                f"{path}: direction.0 is invalid (llama.cpp numbers control-vector layers "
                "from 1 and never steers layer 0)"
            )
        if num_layers is not None and n >= num_layers:
            raise ValueError(
                f"{path}: {tensor.name} is for layer {n} but the model has layers "
                f"0..{num_layers - 1}"
            )
        if tensor.tensor_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            raise ValueError(
                f"{path}: {tensor.name} has type {tensor.tensor_type.name}, expected F32"
            )
        vector = _check_vector(
            torch.from_numpy(np.array(tensor.data)), hidden_size, f"{path}: {tensor.name}"
        )
        by_layer[n] = by_layer[n] + vector if n in by_layer else vector
    return sorted(by_layer.items())


def load_control_vector_gguf(
    path: str | Path,
    hidden_size: int,
    model_fingerprint: str = "",
    name: str | None = None,
    num_layers: int | None = None,
) -> list[FeatureDictionary]:
    """One single-feature dictionary per layer the control vector steers, sorted by layer.

    The feature is labelled with the file's stem (or `name`); each dictionary is named
    "{name}@layer{N}" so feature ids differ between layers."""
    path = Path(path)
    label = name or path.stem
    return [
        vector_dictionary(f"{label}@layer{layer}", layer, [label], vector[None], model_fingerprint)
        for layer, vector in read_control_vector_gguf(path, hidden_size, num_layers)
    ]


class _FileProblem(Exception):
    """A readable file whose content is not what a vector file should hold."""


def _read_safetensors(path: Path) -> torch.Tensor:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        keys = list(f.keys())  # noqa: SIM118
        return f.get_tensor(_pick(keys, path.stem))


def _read_torch(path: Path) -> torch.Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which glassbox never does.
        raise _FileProblem(
            "cannot read the file: it is corrupt or holds objects other than tensors, "
            "which would need a full unpickle (refused); save a tensor or use .safetensors"
        ) from None
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        return tensors[_pick(list(tensors), path.stem)]
    raise _FileProblem(f"holds a {type(obj).__name__}, expected a tensor or a dict of tensors")


def _read_numpy(path: Path) -> torch.Tensor:
    array = np.load(path, allow_pickle=False)
    if not isinstance(array, np.ndarray):
        raise _FileProblem(f"holds a {type(array).__name__}, expected one array (.npy)")
    if not np.issubdtype(array.dtype, np.floating):
        raise _FileProblem(f"has dtype {array.dtype}, expected floating point")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _pick(keys: list[str], stem: str) -> str:
    """The one tensor of a file, or the one named by the stem / "vector" / "direction"."""
    if len(keys) == 1:
        return keys[0]
    for key in (stem, *_TENSOR_NAMES):
        if key in keys:
            return key
    raise _FileProblem(
        f"holds {len(keys)} tensors ({', '.join(keys[:8]) or 'none'}); expected one, or one "
        f"named {stem!r}, 'vector' or 'direction'"
    )


def _check_vector(raw: torch.Tensor, hidden_size: int, where: str) -> torch.Tensor:
    if not raw.is_floating_point():
        raise ValueError(f"{where}: dtype {raw.dtype}, expected floating point")
    shape = list(raw.shape)
    if shape == [1, hidden_size]:
        raw = raw[0]
    elif shape != [hidden_size]:
        raise ValueError(
            f"{where}: shape {shape}, expected [{hidden_size}] (or [1, {hidden_size}]) "
            "for this model's hidden size"
        )
    vector = raw.float().contiguous()
    if not torch.isfinite(vector).all():
        raise ValueError(f"{where}: contains NaN or infinite values")
    if not vector.any():
        raise ValueError(f"{where}: is all zeros, a direction needs a non-zero vector")
    return vector
