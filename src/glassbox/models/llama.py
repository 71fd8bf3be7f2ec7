"""Our own forward pass for the Llama family (llama, mistral, qwen2, SmolLM).

Plain tensors and functions, no nn.Module machinery: RMSNorm, RoPE, grouped-query attention
over the engine's paged KV pool, SwiGLU. After every decoder layer there is an explicit hook
point (`LayerHook`): steering and activation capture plug in there, so the hot path carries
no `register_forward_hook` callbacks. transformers stays the loader's config parser and the
reference the tests compare logits against.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors import safe_open

from glassbox.models.layers import Linear, PrefillWeights, WeightFormat, activation_dtype

SUPPORTED_ARCHITECTURES = {"llama", "mistral", "qwen2"}
# Logits recomputed in float32 per row when the LM head's kernel returns bf16 (see `logits`).
REFINED_LOGITS = 16


class LayerHook(Protocol):
    """Called with the residual stream [tokens, hidden] after decoder layer `layer`."""

    def __call__(self, layer: int, hidden: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dir(cls, model_dir: Path) -> ModelConfig:
        raw = json.loads((Path(model_dir) / "config.json").read_text())
        arch = raw.get("model_type", "")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"model_type {arch!r} is not supported; glassbox runs "
                f"{sorted(SUPPORTED_ARCHITECTURES)}"
            )
        heads = raw["num_attention_heads"]
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        return cls(
            architecture=arch,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            attention_bias=raw.get("attention_bias", arch == "qwen2"),
            eos_token_ids=eos_ids,
            bos_token_id=raw.get("bos_token_id"),
            raw=raw,
        )

    def kv_bytes_per_token(self) -> int:
        """The KV pool is float32 (see LlamaModel.forward)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 4


@dataclass
class AttentionMetadata:
    """Where each scheduled token's K/V goes and which cached K/V each query reads.

    The pool of each layer is [num_blocks, block_size, 2 * kv_heads, head_dim]: a token's
    keys then its values. `slot_mapping` [T] is the flat slot (block * block_size + offset)
    each new token's K/V is written to.
    Decode steps: one query per sequence; `block_table` [B, max_blocks] (padded) and
    `kv_mask` [B, 1, 1, max_blocks * block_size]: 0 at each sequence's real keys, -inf at
    the padding.
    Prefill steps: `prefill_spans` lists, per sequence, its query range in the flattened
    token batch, its block ids, its total length and the position its queries start at.
    """

    slot_mapping: torch.Tensor
    block_table: torch.Tensor | None = None
    kv_mask: torch.Tensor | None = None
    # Decode of one sequence whose blocks are consecutive in the pool: the first of them
    # (attention reads the pool in place instead of gathering a copy; same values).
    first_block: int | None = None
    prefill_spans: list[tuple[int, int, torch.Tensor, int, int]] | None = None


@dataclass
class DecoderLayer:
    input_norm: torch.Tensor
    qkv: Linear
    o: Linear
    post_norm: torch.Tensor
    gate_up: Linear
    down: Linear


class LlamaModel:
    def __init__(
        self,
        config: ModelConfig,
        weights: Mapping[str, torch.Tensor],
        fmt: WeightFormat,
        prefill: PrefillWeights = "bfloat16",
    ):
        self.config = config
        self.fmt = fmt
        self.prefill = prefill
        self.dtype = activation_dtype(fmt)
        c = config
        if c.tie_word_embeddings:
            # Tied checkpoints may store the shared matrix under either name.
            stored = next(
                n for n in ("model.embed_tokens.weight", "lm_head.weight") if n in weights
            )
            weights = _Renamed(
                weights, {"model.embed_tokens.weight": stored, "lm_head.weight": stored}
            )
        self.embed = _owned(weights["model.embed_tokens.weight"])
        self.layers: list[DecoderLayer] = []
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            qkv_w = torch.cat([weights[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
            qkv_b = None
            if c.attention_bias:
                qkv_b = torch.cat([weights[p + f"self_attn.{n}_proj.bias"] for n in "qkv"])
            gate_up = torch.cat(
                [weights[p + "mlp.gate_proj.weight"], weights[p + "mlp.up_proj.weight"]]
            )
            self.layers.append(
                DecoderLayer(
                    input_norm=_owned(weights[p + "input_layernorm.weight"]),
                    qkv=Linear(qkv_w, qkv_b, fmt, prefill),
                    o=Linear(weights[p + "self_attn.o_proj.weight"], None, fmt, prefill),
                    post_norm=_owned(weights[p + "post_attention_layernorm.weight"]),
                    gate_up=Linear(gate_up, None, fmt, prefill),
                    down=Linear(weights[p + "mlp.down_proj.weight"], None, fmt, prefill),
                )
            )
        self.norm = _owned(weights["model.norm.weight"])
        self.lm_head = Linear(weights["lm_head.weight"], None, fmt, prefill)
        # float32 rows of the LM head for `logits`' refinement (the embedding table itself
        # when the two are tied: no second copy)
        self.head_rows = self.embed if c.tie_word_embeddings else _owned(weights["lm_head.weight"])
        self.inv_freq, self.rope_scale = _rope_parameters(config)
        self._rope_cache = torch.empty(0)

    @classmethod
    def load(
        cls, model_dir: Path, fmt: WeightFormat, prefill: PrefillWeights = "bfloat16"
    ) -> LlamaModel:
        return cls(*cls.read(model_dir), fmt, prefill)

    @staticmethod
    def read(model_dir: Path) -> tuple[ModelConfig, Mapping[str, torch.Tensor]]:
        """The config and the weights as stored (before any format conversion), each read
        from its file when it is looked up."""
        config = ModelConfig.from_dir(model_dir)
        files = sorted(Path(model_dir).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors weights in {model_dir}")
        return config, _WeightFiles(files)

    def linears(self) -> list[Linear]:
        """Every weight matmul of a step: each layer's qkv, o, gate_up and down, the LM head."""
        out = [m for layer in self.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        return [*out, self.lm_head]

    def weight_bytes(self) -> int:
        """Bytes the weights hold: the linears in their format, the embedding table and the
        head rows (once when tied), the norms."""
        tables = {id(t): t for t in (self.embed, self.head_rows, self.norm)}
        tables.update(
            {id(t): t for layer in self.layers for t in (layer.input_norm, layer.post_norm)}
        )
        held = sum(t.numel() * t.element_size() for t in tables.values())
        return held + sum(lin.weight_bytes() for lin in self.linears())

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for every head of the fused qkv output, [T, heads, D].

        rotate_half(x) = (-x2, x1) is computed as flip(x) * (-1, 1); the value heads get
        cos = 1 and sin = 0, so one rotation covers q, k and v and the new keys and values
        stay one contiguous slice to write into the pool.
        """
        need = int(positions.max()) + 1
        if self._rope_cache.shape[0] < need:
            size = max(need, 2 * self._rope_cache.shape[0], 1024)
            freqs = torch.outer(torch.arange(size, dtype=torch.float32), self.inv_freq)
            emb = torch.cat([freqs, freqs], dim=-1)
            half = emb.shape[-1] // 2
            sign = torch.cat([-torch.ones(half), torch.ones(half)])
            self._rope_cache = torch.stack([emb.cos(), emb.sin() * sign], dim=1) * self.rope_scale
        c = self.config
        cs = self._rope_cache[positions]  # [T, 2, D]
        t, rotated, plain = cs.shape[0], c.num_heads + c.num_kv_heads, c.num_kv_heads
        cos = torch.cat([cs[:, :1].expand(t, rotated, -1), torch.ones(t, plain, c.head_dim)], 1)
        sin = torch.cat([cs[:, 1:].expand(t, rotated, -1), torch.zeros(t, plain, c.head_dim)], 1)
        return cos, sin

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        kv_cache: list[torch.Tensor],
        hook: LayerHook | None = None,
    ) -> torch.Tensor:
        """Residual stream after the final norm, [tokens, hidden] in float32.

        The residual stream, norms, RoPE and attention run in float32 (bf16 attention is
        several times slower on CPU); only the linear layers see the weight format's
        activation dtype.
        """
        c = self.config
        h = F.embedding(input_ids, self.embed)
        cos, sin = self._rope(positions)
        dense = attn.prefill_spans is not None  # see Linear.dense
        for i, layer in enumerate(self.layers):
            qkv = self._rotated_qkv(layer, h, cos, sin, dense)
            pool = kv_cache[i]
            pool.view(-1, 2 * c.num_kv_heads, c.head_dim).index_copy_(
                0, attn.slot_mapping, qkv[:, c.num_heads :]
            )
            o = _attention(qkv[:, : c.num_heads], pool, attn)
            h = h + layer.o(o.to(self.dtype), dense)  # promoted to h's float32
            x = _rms_norm(h, layer.post_norm, c.rms_norm_eps).to(self.dtype)
            gate, up = layer.gate_up(x, dense).chunk(2, dim=-1)
            h = h + layer.down(F.silu(gate) * up, dense)
            if hook is not None:
                h = hook(i, h)
        return _rms_norm(h, self.norm, c.rms_norm_eps)

    def _rotated_qkv(
        self,
        layer: DecoderLayer,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        dense: bool,
    ) -> torch.Tensor:
        """Input norm, fused q/k/v projection and RoPE: [T, heads + 2 * kv_heads, D]."""
        c = self.config
        t, heads, half = h.shape[0], c.num_heads + 2 * c.num_kv_heads, c.head_dim // 2
        x = _rms_norm(h, layer.input_norm, c.rms_norm_eps).to(self.dtype)
        # bf16 outputs are promoted to float32 by the products with cos and sin (exactly,
        # and without a separate conversion op)
        qkv = layer.qkv(x, dense).view(t, heads, c.head_dim)
        flipped = qkv.view(t, heads, 2, half).flip(2).view(t, heads, c.head_dim)
        return torch.addcmul(qkv * cos, flipped, sin)

    def queries_keys(self, layer: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries [T, heads, D] and keys [T, kv_heads, D] of decoder layer `layer` for one
        sequence at positions 0..T-1, from the residual stream entering that layer: what
        `forward` computes there (prefill's dense weights), for attention analysis."""
        c = self.config
        cos, sin = self._rope(torch.arange(h.shape[0]))
        qkv = self._rotated_qkv(self.layers[layer], h, cos, sin, dense=True)
        return qkv[:, : c.num_heads], qkv[:, c.num_heads : c.num_heads + c.num_kv_heads]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [T, vocab] in float32 from the output of `forward` (the final norm already
        applied).

        With bf16 activations the LM head's kernel returns bf16 logits, whose step near a
        logit of 20 is 0.125: enough to swap near-tied tokens (on the held text of
        models/kernels.py the top-1 token agreed with float32's on 96.0% of positions). The
        REFINED_LOGITS largest are therefore recomputed in float32 from float32 head rows
        (98.8%); the rest of the vocabulary keeps the kernel's values. Per row, so a row's
        logits do not depend on its batch."""
        out = self.lm_head(hidden.to(self.dtype)).float()
        if self.dtype == torch.float32:
            return out
        top = out.topk(min(REFINED_LOGITS, out.shape[-1]), dim=-1).indices  # [T, k]
        # a product and a sum over the hidden size, not bmm: bmm's summation order depends
        # on how many rows it is given, and a row's logits must not
        exact = (self.head_rows[top] * hidden.float().unsqueeze(1)).sum(-1)
        return out.scatter_(1, top, exact)

    def logits_from_residual(self, h_last_layer: torch.Tensor) -> torch.Tensor:
        """Logits from the residual stream after the last decoder layer (as the hook sees
        it, before the final norm): per-position logits from an activation capture."""
        return self.logits(_rms_norm(h_last_layer, self.norm, self.config.rms_norm_eps))


def _owned(stored: torch.Tensor) -> torch.Tensor:
    """A float32 copy of a stored tensor. safetensors hands out tensors backed by its
    memory map of the file: keeping one (a norm weight is float32 already, `.float()` would
    return it as is) kept the whole mapping resident, 513 MB for the bundled model."""
    return stored.to(torch.float32, copy=True)


class _WeightFiles(Mapping[str, torch.Tensor]):
    """Tensors of safetensors files, read on each lookup: building the model then holds
    one stored (float32) tensor at a time besides what it keeps, instead of all of them
    (540 MB for the bundled model, its own size again at peak)."""

    def __init__(self, files: list[Path]):
        self._files = {}
        for f in files:
            handle = safe_open(str(f), framework="pt")
            self._files.update(dict.fromkeys(handle.keys(), handle))

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._files[name].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


class _Renamed(Mapping[str, torch.Tensor]):
    """Another mapping with some names looked up under other names."""

    def __init__(self, weights: Mapping[str, torch.Tensor], names: dict[str, str]):
        self._weights, self._names = weights, names

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._weights[self._names.get(name, name)]

    def __iter__(self) -> Iterator[str]:
        return iter({*self._weights, *self._names})

    def __len__(self) -> int:
        return len({*self._weights, *self._names})


def _rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm. With torch 2.13 F.rms_norm gives the same values as its
    op-by-op formula and takes 13 instead of 15 us at decode sizes (one dispatch, not six)."""
    return F.rms_norm(h, weight.shape, weight, eps)


def _attention(q: torch.Tensor, pool: torch.Tensor, attn: AttentionMetadata) -> torch.Tensor:
    """q [T, H, D] -> [T, H*D], reading keys and values from the layer's block pool."""
    heads, dim = q.shape[1], q.shape[2]
    kv_heads = pool.shape[2] // 2
    block_size = pool.shape[1]
    if attn.prefill_spans is None:
        # Decode: one query per sequence. Gathering whole blocks is a few large copies; the
        # query heads sharing a KV head are laid out as that head's "query positions", so
        # K/V are never repeated for GQA.
        b, n = attn.block_table.shape
        if attn.first_block is not None:  # one sequence, its blocks side by side: in place
            kv = pool[attn.first_block : attn.first_block + n]
        else:
            kv = pool.index_select(0, attn.block_table.view(-1))
        kv = kv.view(b, n * block_size, 2 * kv_heads, dim)
        k = kv[:, :, :kv_heads].transpose(1, 2)  # [B, KVH, L, D]
        v = kv[:, :, kv_heads:].transpose(1, 2)
        qg = q.view(b, kv_heads, heads // kv_heads, dim)
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=attn.kv_mask)
        return out.reshape(b, heads * dim)
    outs = []
    for q_start, q_end, blocks, length, start_pos in attn.prefill_spans:
        # 4-D [1, heads, L, D] inputs: with 3-D ones CPU SDPA takes its slow math path.
        kv = pool.index_select(0, blocks).view(-1, 2 * kv_heads, dim)[:length]
        k = kv[:, :kv_heads].transpose(0, 1)[None]  # [1, KVH, Lk, D]
        v = kv[:, kv_heads:].transpose(0, 1)[None]
        qs = q[q_start:q_end].transpose(0, 1)[None]  # [1, H, Lq, D]
        if start_pos == 0:
            out = F.scaled_dot_product_attention(qs, k, v, is_causal=True, enable_gqa=True)
        else:
            q_pos = torch.arange(start_pos, start_pos + q_end - q_start)
            mask = torch.arange(length)[None, :] <= q_pos[:, None]
            out = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask, enable_gqa=True)
        outs.append(out[0].transpose(0, 1).reshape(q_end - q_start, heads * dim))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def _rope_parameters(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """inv_freq and attention scaling. Plain RoPE is computed here; scaled variants (llama3,
    yarn, linear, ...) come from transformers, imported only then: importing its config
    machinery costs seconds of start-up time."""
    raw = config.raw
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        base = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        idx = torch.arange(0, config.head_dim, 2, dtype=torch.float32)
        return 1.0 / (base ** (idx / config.head_dim)), 1.0
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = AutoConfig.for_model(
        config.architecture, **{k: v for k, v in raw.items() if k != "model_type"}
    )
    inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](hf, "cpu")
    return inv_freq.float(), float(scale)
