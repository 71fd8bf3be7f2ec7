"""Vector folders (.safetensors / .pt / .npy) and llama.cpp control-vector GGUFs."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from glassbox.features.vector_files import (
    load_control_vector_gguf,
    load_vector_folder,
    read_control_vector_gguf,
)

H = 8


def _vec(seed: int) -> torch.Tensor:
    return torch.randn(H, generator=torch.Generator().manual_seed(seed))


def _folder(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    d = tmp_path / "vectors"
    d.mkdir()
    vs = {"angry": _vec(1), "bored": _vec(2), "calm": _vec(3), "dreamy": _vec(4), "eager": _vec(5)}
    save_file({"angry": vs["angry"]}, d / "angry.safetensors")  # named by the stem
    save_file({"direction": vs["bored"], "mean": _vec(9)}, d / "bored.safetensors")
    torch.save(vs["calm"], d / "calm.pt")
    torch.save({"vector": vs["dreamy"][None], "layer": 3}, d / "dreamy.pth")  # [1, H]
    np.save(d / "eager.npy", vs["eager"].numpy().astype(np.float16).astype(np.float32))
    (d / "README.md").write_text("not a vector")
    return d, vs


def test_folder_loads_all_formats_with_labels_from_stems(tmp_path):
    d, vs = _folder(tmp_path)
    fd = load_vector_folder(d, layer=5, hidden_size=H, model_fingerprint="fp")
    assert fd.labels == ["angry", "bored", "calm", "dreamy", "eager"]
    assert fd.layer == 5 and fd.name == "vectors" and fd.hidden_size == H
    for i, label in enumerate(fd.labels):
        torch.testing.assert_close(fd.write[i], vs[label], atol=1e-3, rtol=1e-3)
    # Reading a vector's own direction gives 1.0; nudge by 1.0 adds the vector as given.
    reads = fd.read_linear(fd.write)
    torch.testing.assert_close(reads.diagonal(), torch.ones(len(fd)))
    assert torch.allclose(fd.activations(fd.write), reads)


def test_folder_name_override(tmp_path):
    d, _ = _folder(tmp_path)
    assert load_vector_folder(d, 0, H, name="moods").name == "moods"


def _one(tmp_path: Path, filename: str, write) -> Path:
    d = tmp_path / "one"
    d.mkdir(exist_ok=True)
    write(d / filename)
    return d


class _NotATensor:
    pass


BAD_FILES = [
    ("wrong.npy", lambda p: np.save(p, np.ones(H + 1, np.float32)), r"shape \[9\]"),
    ("wrong2d.pt", lambda p: torch.save(torch.ones(2, H), p), r"shape \[2, 8\]"),
    ("ints.npy", lambda p: np.save(p, np.arange(H)), "dtype int64"),
    ("ints.pt", lambda p: torch.save(torch.arange(H), p), "dtype torch.int64"),
    ("ints.safetensors", lambda p: save_file({"v": torch.arange(H)}, p), "dtype torch.int64"),
    ("nan.npy", lambda p: np.save(p, np.full(H, np.nan, np.float32)), "NaN"),
    (
        "inf.safetensors",
        lambda p: save_file({"v": torch.full((H,), float("inf"))}, p),
        "NaN or infinite",
    ),
    ("zero.pt", lambda p: torch.save(torch.zeros(H), p), "all zeros"),
    (
        "pickled.pt",
        lambda p: torch.save({"v": torch.ones(H), "o": _NotATensor()}, p),
        "cannot read",
    ),
    ("obj.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "cannot read"),
    ("random.safetensors", lambda p: p.write_bytes(np.random.bytes(200)), "cannot read"),
    ("random.pt", lambda p: p.write_bytes(np.random.bytes(200)), "cannot read"),
    ("random.npy", lambda p: p.write_bytes(np.random.bytes(200)), "cannot read"),
    ("empty.npy", lambda p: p.write_bytes(b""), "cannot read"),
    (
        "many.safetensors",
        lambda p: save_file({"a": torch.ones(H), "b": torch.ones(H)}, p),
        "holds 2 tensors",
    ),
    ("list.pt", lambda p: torch.save([1, 2, 3], p), "holds a list"),
]


@pytest.mark.parametrize(("filename", "write", "problem"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_vector_file_is_a_value_error_naming_the_file(tmp_path, filename, write, problem):
    d = _one(tmp_path, filename, write)
    with pytest.raises(ValueError, match=problem) as info:
        load_vector_folder(d, 0, H)
    assert filename in str(info.value)


def test_pickle_payload_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    d = _one(tmp_path, "evil.pt", lambda p: torch.save({"v": Evil()}, p))
    with pytest.raises(ValueError, match="evil.pt"):
        load_vector_folder(d, 0, H)
    assert not marker.exists()


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no vector files"):
        load_vector_folder(tmp_path / "empty", 0, H)
    with pytest.raises(FileNotFoundError):
        load_vector_folder(tmp_path / "missing", 0, H)


def test_duplicate_stems(tmp_path):
    d = tmp_path / "dup"
    d.mkdir()
    torch.save(_vec(1), d / "same.pt")
    np.save(d / "same.npy", _vec(2).numpy())
    with pytest.raises(ValueError, match="same"):
        load_vector_folder(d, 0, H)


# --- control-vector GGUF ---------------------------------------------------------------------


def _write_gguf(path: Path, directions: dict, arch: str = "controlvector") -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string(f"{arch}.model_hint", "llama")
    w.add_uint32(f"{arch}.layer_count", len(directions))
    for name, array in directions.items():
        w.add_tensor(name, np.asarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_control_vector_round_trip(tmp_path):
    vs = {n: _vec(n).numpy() for n in (1, 2, 5)}
    path = _write_gguf(tmp_path / "happy.gguf", {f"direction.{n}": v for n, v in vs.items()})
    pairs = read_control_vector_gguf(path, H, num_layers=6)
    assert [layer for layer, _ in pairs] == [1, 2, 5]  # direction.N is glassbox layer N
    for layer, vector in pairs:
        torch.testing.assert_close(vector, torch.from_numpy(vs[layer]))

    dicts = load_control_vector_gguf(path, H, model_fingerprint="fp")
    assert [d.layer for d in dicts] == [1, 2, 5]
    assert all(d.labels == ["happy"] for d in dicts)
    assert len({d.features[0].uuid for d in dicts}) == 3
    torch.testing.assert_close(dicts[0].read_linear(dicts[0].write), torch.ones(1, 1))


def test_control_vector_hidden_size_mismatch(tmp_path):
    path = _write_gguf(tmp_path / "cv.gguf", {"direction.1": np.ones(H + 4, np.float32)})
    with pytest.raises(ValueError, match=r"cv.gguf: direction.1: shape \[12\], expected \[8\]"):
        read_control_vector_gguf(path, H)


@pytest.mark.parametrize(
    ("tensors", "arch", "problem"),
    [
        ({"direction.0": np.ones(H, np.float32)}, "controlvector", "direction.0 is invalid"),
        ({"token_embd.weight": np.ones(H, np.float32)}, "controlvector", "not named direction"),
        ({"direction.1": np.ones(H, np.float32)}, "llama", "not 'controlvector'"),
        ({"direction.9": np.ones(H, np.float32)}, "controlvector", "model has layers 0..5"),
        ({"direction.1": np.full(H, np.nan, np.float32)}, "controlvector", "NaN"),
        ({}, "controlvector", "no direction"),
    ],
)
def test_control_vector_errors(tmp_path, tensors, arch, problem):
    path = _write_gguf(tmp_path / "bad.gguf", tensors, arch)
    with pytest.raises(ValueError, match=problem) as info:
        read_control_vector_gguf(path, H, num_layers=6)
    assert "bad.gguf" in str(info.value)


def test_control_vector_unreadable(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(np.random.bytes(300))
    with pytest.raises(ValueError, match="junk.gguf"):
        read_control_vector_gguf(path, H)
    with pytest.raises(FileNotFoundError):
        read_control_vector_gguf(tmp_path / "absent.gguf", H)
