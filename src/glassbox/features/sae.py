"""Sparse autoencoders in SAELens format as feature dictionaries.

A SAELens SAE is a directory with `cfg.json` and `sae_weights.safetensors` holding
`W_enc` [d_in, d_sae], `b_enc` [d_sae], `W_dec` [d_sae, d_in], `b_dec` [d_in] and, for
jumprelu, `threshold` [d_sae]. SAELens encodes

    pre = (h - b_dec * apply_b_dec_to_input) @ W_enc + b_enc
    acts = relu(pre) | relu(pre) * (pre > threshold) | relu(topk(pre, k))

which is linear up to the activation function, so it folds into the dictionary's
`read`/`read_bias`: read = W_enc.T, read_bias = b_enc - b_dec @ W_enc. `write` = W_dec, the
residual vector one unit of the feature adds when decoding.

Layers: SAELens names hooks after TransformerLens, where `blocks.L.hook_resid_post` is the
output of decoder layer L (glassbox layer L) and `blocks.L.hook_resid_pre` its input (the
output of layer L - 1). SAEs trained elsewhere in a block (hook_mlp_out, attn.hook_z,
hook_resid_mid) do not read the residual stream after a layer and are refused.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from glassbox.engine.readout import FeatureEncoder
from glassbox.features.dictionary import FeatureDictionary

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
LABELS_FILE = "labels.json"
ARCHITECTURES = ("standard", "jumprelu", "topk")
# "expected_average_only_in" is folded into the weights by SAELens before saving (at run time
# SAELens applies nothing for it); the two per-token normalisations are not linear in h.
_LINEAR_NORMALIZATIONS = (None, "none", "expected_average_only_in", False)

_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_HOOK_ANY_LAYER = re.compile(r"(?:^|\.)(?:blocks|layers)\.(\d+)(?:\.|$)")


class SAEDictionary(FeatureDictionary):
    """A FeatureDictionary whose activations apply the SAE's activation function.

    `read_linear` gives the SAE's pre-activation; `activations` gives what the SAE's
    encoder outputs (relu, jumprelu or top-k of the pre-activation)."""

    def __init__(
        self,
        name: str,
        layer: int,
        labels: list[str],
        write: torch.Tensor,
        read: torch.Tensor,
        read_bias: torch.Tensor,
        architecture: str,
        threshold: torch.Tensor | None = None,
        k: int | None = None,
        model_fingerprint: str = "",
        descriptions: list[str] | None = None,
        hook_name: str | None = None,
    ):
        super().__init__(
            name, layer, labels, write, read, read_bias, model_fingerprint, descriptions
        )
        if architecture not in ARCHITECTURES:
            raise ValueError(f"SAE {name!r}: unknown architecture {architecture!r}")
        if architecture == "jumprelu" and threshold is None:
            raise ValueError(f"SAE {name!r}: a jumprelu SAE needs a threshold")
        if architecture == "topk" and (k is None or k < 1):
            raise ValueError(f"SAE {name!r}: a topk SAE needs k >= 1")
        self.architecture = architecture
        self.threshold = None if threshold is None else threshold.float().reshape(len(labels))
        self.k = None if k is None else min(int(k), len(labels))
        self.hook_name = hook_name

    def activations(self, h: torch.Tensor) -> torch.Tensor:
        """[T, hidden] -> [T, d_sae]: the SAE encoder's output."""
        pre = self.read_linear(h)
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        top = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))

    @cached_property
    def encoder(self) -> FeatureEncoder:
        activation = "relu" if self.architecture == "standard" else self.architecture
        return FeatureEncoder(
            self.name, self.layer, self.read, self.read_bias, activation, self.threshold, self.k
        )


def load_sae(
    directory: str | Path,
    model_fingerprint: str = "",
    name: str | None = None,
    labels: list[str] | dict | str | Path | None = None,
    expected_hidden_size: int | None = None,
    layer: int | None = None,
) -> SAEDictionary:
    """Load a SAELens SAE directory as an SAEDictionary.

    labels: a list of labels, a {index: label} mapping, or a path to a JSON file holding
    either; without it `labels.json` in the directory is used if present, else "feature i".
    layer: overrides the layer read from cfg.json (for hook names it cannot parse).
    Raises FileNotFoundError for missing files and ValueError for anything malformed,
    each naming the file and what is wrong."""
    directory = Path(directory)
    cfg_path = directory / CFG_FILE
    weights_path = directory / WEIGHTS_FILE
    if not directory.is_dir():
        raise FileNotFoundError(f"SAE directory {directory} does not exist")
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (a SAELens SAE needs {path.name})")

    cfg = _read_json(cfg_path, "the SAE config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    meta = {**(cfg.get("meta") or {}), **(cfg.get("metadata") or {})}

    architecture, k = _architecture(cfg, cfg_path)
    d_in = _int_field(cfg, "d_in", cfg_path)
    d_sae = _int_field(cfg, "d_sae", cfg_path)
    if expected_hidden_size is not None and d_in != expected_hidden_size:
        raise ValueError(
            f"{cfg_path}: d_in is {d_in} but the model's hidden size is "
            f"{expected_hidden_size}; this SAE was trained on another model"
        )
    normalization = cfg.get("normalize_activations")
    if normalization not in _LINEAR_NORMALIZATIONS:
        raise ValueError(
            f"{cfg_path}: normalize_activations={normalization!r} rescales each token "
            "before encoding, which glassbox's linear read cannot express; supported: 'none'"
        )
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(
            f"{cfg_path}: reshape_activations={cfg['reshape_activations']!r} is an "
            "attention-head SAE, not a residual-stream one"
        )
    hook_name = cfg.get("hook_name") or cfg.get("hook_point") or meta.get("hook_name")
    sae_layer = _layer(cfg, meta, hook_name, cfg_path) if layer is None else layer

    weights = _read_weights(weights_path)
    expected = {
        "W_enc": (d_in, d_sae),
        "b_enc": (d_sae,),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
    }
    if architecture == "jumprelu":
        expected["threshold"] = (d_sae,)
    for key, shape in expected.items():
        if key not in weights:
            raise ValueError(
                f"{weights_path}: missing tensor {key!r} (a {architecture} SAE needs "
                f"{', '.join(expected)}; found {', '.join(sorted(weights)) or 'none'})"
            )
        if tuple(weights[key].shape) != shape:
            raise ValueError(
                f"{weights_path}: {key} has shape {list(weights[key].shape)}, expected "
                f"{list(shape)} from d_in={d_in}, d_sae={d_sae} in {CFG_FILE}"
            )
    used = [*expected, "finetuning_scaling_factor", "scaling_factor"]
    for key in (key for key in used if key in weights):
        if not weights[key].is_floating_point():
            raise ValueError(
                f"{weights_path}: {key} has dtype {weights[key].dtype}, expected floating point"
            )
        weights[key] = weights[key].float()
        if not torch.isfinite(weights[key]).all():
            raise ValueError(f"{weights_path}: {key} contains NaN or infinite values")

    W_enc, b_enc, W_dec, b_dec = (weights[key] for key in ("W_enc", "b_enc", "W_dec", "b_dec"))
    threshold = weights.get("threshold") if architecture == "jumprelu" else None
    read, read_bias, write = W_enc.T, b_enc, W_dec
    if cfg.get("apply_b_dec_to_input", True):
        read_bias = b_enc - b_dec @ W_enc
    # Decoder scaling SAELens applies at decode time: fold it into write (and, where it
    # also scales the pre-activation, into read) so that write stays "one unit of the
    # feature's activation".
    scale = weights.get("finetuning_scaling_factor", weights.get("scaling_factor"))
    if scale is not None:
        if tuple(scale.shape) != (d_sae,):
            raise ValueError(f"{weights_path}: scaling factor has shape {list(scale.shape)}")
        write = write * scale[:, None]
    if cfg.get("rescale_acts_by_decoder_norm", False):
        norms = W_dec.norm(dim=-1)
        if (norms == 0).any():
            raise ValueError(f"{weights_path}: W_dec has zero rows, cannot rescale by its norm")
        read, read_bias, write = read * norms[:, None], read_bias * norms, write / norms[:, None]

    label_list = _labels(labels, directory, d_sae)
    return SAEDictionary(
        name=name or directory.name,
        layer=sae_layer,
        labels=label_list,
        write=write,
        read=read,
        read_bias=read_bias,
        architecture=architecture,
        threshold=threshold,
        k=k,
        model_fingerprint=model_fingerprint,
        hook_name=hook_name,
    )


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read {what} as JSON ({e})") from None


def _int_field(cfg: dict, key: str, path: Path) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: {key} must be a positive integer, got {value!r}")
    return value


def _architecture(cfg: dict, path: Path) -> tuple[str, int | None]:
    """(architecture, k) from either config generation: SAELens >= 6 writes
    architecture "topk" and a top-level k; older configs write architecture "standard"
    with activation_fn_str "topk" and activation_fn_kwargs {"k": ...}."""
    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
    if architecture == "standard" and activation == "topk":
        architecture = "topk"
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"{path}: unknown SAE architecture {architecture!r}; supported: "
            f"{', '.join(ARCHITECTURES)}"
        )
    if architecture == "standard" and activation not in ("relu", None):
        raise ValueError(f"{path}: unsupported activation function {activation!r}")
    if architecture != "topk":
        return architecture, None
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(
            f"{path}: a topk SAE needs a positive integer k (top-level 'k' or "
            f"activation_fn_kwargs.k), got {k!r}"
        )
    return architecture, k


def _layer(cfg: dict, meta: dict, hook_name: str | None, path: Path) -> int:
    """The glassbox layer (output of decoder layer i) the SAE reads."""
    if hook_name:
        m = _HOOK.match(hook_name)
        if m:
            block, where = int(m.group(1)), m.group(2)
            if where == "post":
                return block
            if block == 0:
                raise ValueError(
                    f"{path}: hook {hook_name!r} reads the embeddings, before any decoder "
                    "layer; glassbox hooks after a decoder layer"
                )
            return block - 1
        if "hook_" in hook_name:
            raise ValueError(
                f"{path}: hook {hook_name!r} is not the residual stream after a decoder "
                "layer (blocks.L.hook_resid_post or blocks.L.hook_resid_pre)"
            )
        m = _HOOK_ANY_LAYER.search(hook_name)  # HF-style module names: model.layers.15
        if m:
            return int(m.group(1))
    hook_layer = cfg.get("hook_layer", cfg.get("hook_point_layer", meta.get("hook_layer")))
    if isinstance(hook_layer, int) and not isinstance(hook_layer, bool) and hook_layer >= 0:
        return hook_layer
    raise ValueError(
        f"{path}: cannot tell the layer: hook_name {hook_name!r} has no layer and there is "
        "no hook_layer; pass layer= explicitly"
    )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            weights = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises several types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    return weights


def _labels(labels: list[str] | dict | str | Path | None, directory: Path, n: int) -> list[str]:
    source = "labels"
    if labels is None:
        path = directory / LABELS_FILE
        if not path.is_file():
            return [f"feature {i}" for i in range(n)]
        labels, source = _read_json(path, "the labels"), str(path)
    elif isinstance(labels, str | Path):
        path = Path(labels)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: labels file does not exist")
        labels, source = _read_json(path, "the labels"), str(path)

    out = [f"feature {i}" for i in range(n)]
    if isinstance(labels, list) and all(isinstance(x, dict) for x in labels):
        # Neuronpedia-style exports: [{"index": 3, "description": "..."}]
        labels = {_entry_index(x, source): _entry_label(x, source) for x in labels}
    if isinstance(labels, list):
        if len(labels) != n or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"{source}: expected a list of {n} strings (one per feature)")
        return list(labels)
    if isinstance(labels, dict):
        for key, label in labels.items():
            try:
                i = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: key {key!r} is not a feature index") from None
            if not 0 <= i < n:
                raise ValueError(f"{source}: feature index {i} is outside 0..{n - 1}")
            if not isinstance(label, str):
                raise ValueError(f"{source}: label of feature {i} is not a string")
            out[i] = label
        return out
    raise ValueError(f"{source}: expected a list of labels or an {{index: label}} object")


def _entry_index(entry: dict, source: str) -> int:
    index = entry.get("index", entry.get("feature"))
    if index is None:
        raise ValueError(f"{source}: entry {entry!r} has no index")
    return index


def _entry_label(entry: dict, source: str) -> str:
    for key in ("label", "description", "explanation"):
        if isinstance(entry.get(key), str):
            return entry[key]
    raise ValueError(f"{source}: entry {entry!r} has no label/description")
