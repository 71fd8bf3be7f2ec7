"""SAELens-format SAE loading: activations against hand-computed references, layer
parsing, and clear errors for broken directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from glassbox.features.sae import SAEDictionary, load_sae

D_IN, D_SAE = 4, 6


def _weights(seed: int = 0, jumprelu: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g),
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g),
    }
    if jumprelu:
        w["threshold"] = torch.rand(D_SAE, generator=g)
    return w


def _write_sae(
    directory: Path, cfg: dict | None = None, weights: dict | None = None, **overrides
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    base = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "hook_name": "blocks.3.hook_resid_post",
        "hook_layer": 3,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
    }
    cfg = {**base, **(cfg or {}), **overrides}
    (directory / "cfg.json").write_text(json.dumps(cfg))
    if weights is None:
        weights = _weights(jumprelu=cfg.get("architecture") == "jumprelu")
    save_file(
        {k: v.contiguous() for k, v in weights.items()}, directory / "sae_weights.safetensors"
    )
    return directory


def _pre(h: torch.Tensor, w: dict, apply_b_dec: bool = True) -> torch.Tensor:
    x = h - w["b_dec"] if apply_b_dec else h
    return x @ w["W_enc"] + w["b_enc"]


def test_relu_activations_and_linear_read_match_saelens_encoder(tmp_path):
    w = _weights()
    sae = load_sae(_write_sae(tmp_path / "sae", weights=w), model_fingerprint="fp")
    h = torch.randn(5, D_IN)
    assert isinstance(sae, SAEDictionary)
    assert sae.architecture == "standard" and len(sae) == D_SAE and sae.hidden_size == D_IN
    torch.testing.assert_close(sae.read_linear(h), _pre(h, w))
    torch.testing.assert_close(sae.activations(h), torch.relu(_pre(h, w)))
    torch.testing.assert_close(sae.write, w["W_dec"])
    idx = torch.tensor([4, 1])
    torch.testing.assert_close(sae.read_linear(h, idx), _pre(h, w)[:, idx])
    assert sae.labels == [f"feature {i}" for i in range(D_SAE)]
    assert sae.name == "sae" and sae.layer == 3


def test_apply_b_dec_to_input_false_reads_without_centering(tmp_path):
    w = _weights()
    sae = load_sae(_write_sae(tmp_path / "s", weights=w, apply_b_dec_to_input=False))
    h = torch.randn(3, D_IN)
    torch.testing.assert_close(sae.read_linear(h), _pre(h, w, apply_b_dec=False))


def test_jumprelu_activations(tmp_path):
    w = _weights(jumprelu=True)
    sae = load_sae(_write_sae(tmp_path / "s", {"architecture": "jumprelu"}, weights=w))
    h = torch.randn(7, D_IN) * 2
    pre = _pre(h, w)
    expected = torch.where(pre > w["threshold"], pre, torch.zeros_like(pre))
    assert (expected != 0).any() and (expected == 0).any()
    torch.testing.assert_close(sae.activations(h), expected)
    torch.testing.assert_close(sae.read_linear(h), pre)


def test_jumprelu_by_hand():
    # One feature per column; threshold 0.5: 0.4 is cut, 0.6 passes, -1 is cut.
    eye = torch.eye(3)
    sae = SAEDictionary(
        "t",
        0,
        ["a", "b", "c"],
        eye,
        eye,
        torch.zeros(3),
        "jumprelu",
        threshold=torch.full((3,), 0.5),
    )
    out = sae.activations(torch.tensor([[0.4, 0.6, -1.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.6, 0.0]]))


@pytest.mark.parametrize(
    "cfg",
    [
        {"architecture": "topk", "k": 2},  # SAELens >= 6
        {"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2}},
        {"architecture": "topk", "activation_fn_kwargs": {"k": 2}},
    ],
)
def test_topk_activations(tmp_path, cfg):
    w = _weights()
    sae = load_sae(_write_sae(tmp_path / "s", cfg, weights=w))
    assert sae.architecture == "topk" and sae.k == 2
    h = torch.randn(6, D_IN)
    pre = _pre(h, w)
    expected = torch.zeros_like(pre)
    for t in range(pre.shape[0]):
        order = sorted(range(D_SAE), key=lambda f: -pre[t, f].item())[:2]
        for f in order:
            expected[t, f] = max(pre[t, f].item(), 0.0)
    torch.testing.assert_close(sae.activations(h), expected)


def test_topk_by_hand_relus_the_kept_values():
    eye = torch.eye(4)
    sae = SAEDictionary("t", 0, list("abcd"), eye, eye, torch.zeros(4), "topk", k=2)
    out = sae.activations(torch.tensor([[3.0, -1.0, 2.0, 1.0], [-3.0, -1.0, -2.0, 0.5]]))
    expected = torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.5]])
    torch.testing.assert_close(out, expected)


def test_topk_rescale_acts_by_decoder_norm_folds_into_read_and_write(tmp_path):
    w = _weights()
    cfg = {"architecture": "topk", "k": 3, "rescale_acts_by_decoder_norm": True}
    sae = load_sae(_write_sae(tmp_path / "s", cfg, weights=w))
    h = torch.randn(4, D_IN)
    norms = w["W_dec"].norm(dim=-1)
    # SAELens: hidden_pre * ||W_dec||, decode with acts / ||W_dec|| @ W_dec.
    torch.testing.assert_close(sae.read_linear(h), _pre(h, w) * norms)
    acts = sae.activations(h)
    torch.testing.assert_close(acts @ sae.write, (acts / norms) @ w["W_dec"])


@pytest.mark.parametrize(
    ("cfg", "layer"),
    [
        ({"hook_name": "blocks.15.hook_resid_post", "hook_layer": None}, 15),
        ({"hook_name": "blocks.15.hook_resid_pre", "hook_layer": 15}, 14),
        ({"hook_name": None, "hook_layer": 7}, 7),
        (
            {
                "hook_name": None,
                "hook_layer": None,
                "metadata": {"hook_name": "blocks.9.hook_resid_post"},
            },
            9,
        ),
        ({"hook_name": "model.layers.11", "hook_layer": None}, 11),
    ],
)
def test_layer_from_cfg(tmp_path, cfg, layer):
    directory = _write_sae(tmp_path / "s", cfg)
    raw = json.loads((directory / "cfg.json").read_text())
    (directory / "cfg.json").write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    assert load_sae(directory).layer == layer


def test_layer_override_and_labels(tmp_path):
    directory = _write_sae(tmp_path / "s", hook_name="something.custom", hook_layer=None)
    (directory / "labels.json").write_text(json.dumps({"2": "pirates", "5": "cats"}))
    sae = load_sae(directory, layer=4, name="my-sae")
    assert sae.layer == 4 and sae.name == "my-sae"
    assert sae.labels[2] == "pirates" and sae.labels[5] == "cats" and sae.labels[0] == "feature 0"
    assert load_sae(directory, layer=4, labels=list("abcdef")).labels == list("abcdef")
    entries = [{"index": 1, "description": "one"}]
    assert load_sae(directory, layer=4, labels=entries).labels[1] == "one"


def test_feature_ids_are_stable_and_depend_on_the_fingerprint(tmp_path):
    directory = _write_sae(tmp_path / "s")
    a, b, c = load_sae(directory, "fp1"), load_sae(directory, "fp1"), load_sae(directory, "fp2")
    assert [f.uuid for f in a.features] == [f.uuid for f in b.features]
    assert a.features[0].uuid != c.features[0].uuid


# --- errors: always ValueError / FileNotFoundError naming the file ---------------------------


def test_missing_cfg(tmp_path):
    directory = _write_sae(tmp_path / "s")
    (directory / "cfg.json").unlink()
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(directory)


def test_missing_weights(tmp_path):
    directory = _write_sae(tmp_path / "s")
    (directory / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        load_sae(directory)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_sae(tmp_path / "nope")


def test_cfg_not_json(tmp_path):
    directory = _write_sae(tmp_path / "s")
    (directory / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="cfg.json"):
        load_sae(directory)


def test_weights_not_safetensors(tmp_path):
    directory = _write_sae(tmp_path / "s")
    (directory / "sae_weights.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ValueError, match="sae_weights.safetensors"):
        load_sae(directory)


def test_unknown_architecture(tmp_path):
    directory = _write_sae(tmp_path / "s", architecture="gated")
    with pytest.raises(ValueError, match=r"cfg.json.*unknown SAE architecture 'gated'"):
        load_sae(directory)


def test_d_in_mismatch(tmp_path):
    directory = _write_sae(tmp_path / "s")
    with pytest.raises(ValueError, match=r"cfg.json: d_in is 4 but the model's hidden size is 8"):
        load_sae(directory, expected_hidden_size=8)
    assert len(load_sae(directory, expected_hidden_size=D_IN)) == D_SAE


def test_wrong_shape(tmp_path):
    w = _weights()
    w["W_enc"] = w["W_enc"].T  # [d_sae, d_in] instead of [d_in, d_sae]
    directory = _write_sae(tmp_path / "s", weights=w)
    with pytest.raises(ValueError, match=r"sae_weights.safetensors: W_enc has shape \[6, 4\]"):
        load_sae(directory)


def test_cfg_sizes_disagree_with_weights(tmp_path):
    directory = _write_sae(tmp_path / "s", d_sae=8)
    with pytest.raises(ValueError, match="sae_weights.safetensors: W_enc has shape"):
        load_sae(directory)


def test_missing_tensor_and_missing_threshold(tmp_path):
    w = _weights()
    del w["b_enc"]
    with pytest.raises(ValueError, match="missing tensor 'b_enc'"):
        load_sae(_write_sae(tmp_path / "a", weights=w))
    with pytest.raises(ValueError, match="missing tensor 'threshold'"):
        load_sae(_write_sae(tmp_path / "b", {"architecture": "jumprelu"}, weights=_weights()))


def test_topk_without_k(tmp_path):
    with pytest.raises(ValueError, match="cfg.json: a topk SAE needs a positive integer k"):
        load_sae(_write_sae(tmp_path / "s", architecture="topk"))


def test_non_residual_hook_is_refused(tmp_path):
    directory = _write_sae(tmp_path / "s", hook_name="blocks.3.hook_mlp_out")
    with pytest.raises(ValueError, match="hook_mlp_out"):
        load_sae(directory)


def test_per_token_normalization_is_refused(tmp_path):
    directory = _write_sae(tmp_path / "s", normalize_activations="constant_norm_rescale")
    with pytest.raises(ValueError, match="cfg.json: normalize_activations"):
        load_sae(directory)


def test_nan_weights_and_integer_weights(tmp_path):
    w = _weights()
    w["W_dec"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="W_dec contains NaN"):
        load_sae(_write_sae(tmp_path / "a", weights=w))
    w = _weights()
    w["b_enc"] = torch.arange(D_SAE)
    with pytest.raises(ValueError, match="b_enc has dtype torch.int64"):
        load_sae(_write_sae(tmp_path / "b", weights=w))


def test_bad_labels(tmp_path):
    directory = _write_sae(tmp_path / "s")
    (directory / "labels.json").write_text(json.dumps(["only", "three", "labels"]))
    with pytest.raises(ValueError, match="labels.json: expected a list of 6 strings"):
        load_sae(directory)
    (directory / "labels.json").write_text(json.dumps({"9": "out of range"}))
    with pytest.raises(ValueError, match="labels.json: feature index 9"):
        load_sae(directory)
