"""Analysis of a state against transformers (fp32, tiny model): token logprobs, attention
weights (eager attention, output_attentions=True), the PNG heatmap and the cache summary."""

from __future__ import annotations

import io
import math

import pytest
import torch
from PIL import Image

from glassbox.states.analysis import attention, attention_png, cache_summary, token_analysis

IDS = [5, 17, 3, 99, 42, 7, 8, 61, 23, 11, 150, 2, 77]
ATOL = 1e-4


@pytest.fixture(scope="module")
def hf_eager(tiny_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(
        str(tiny_dir), dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def hf_attentions(hf_eager) -> tuple[torch.Tensor, ...]:
    """Per layer [heads, T, T]."""
    with torch.inference_mode():
        out = hf_eager(torch.tensor([IDS]), output_attentions=True)
    return tuple(a[0] for a in out.attentions)


def test_token_logprobs_match_hf(engine, hf_tiny, tiny_tokenizer):
    result = token_analysis(engine, IDS, top_k=5)
    with torch.inference_mode():
        ref = torch.log_softmax(hf_tiny(torch.tensor([IDS])).logits[0].float(), dim=-1)
    assert [t.position for t in result.tokens] == list(range(1, len(IDS)))
    for t in result.tokens:
        row = ref[t.position - 1]
        assert t.token_id == IDS[t.position]
        assert t.text == tiny_tokenizer.token_str(t.token_id)
        assert t.logprob == pytest.approx(float(row[t.token_id]), abs=ATOL)
        assert t.rank == int((row > row[t.token_id]).sum()) + 1
        assert t.entropy == pytest.approx(float(-(row.exp() * row).sum()), abs=ATOL)
        assert [a.token_id for a in t.top] == row.topk(5).indices.tolist()
        for a in t.top:
            assert a.logprob == pytest.approx(float(row[a.token_id]), abs=ATOL)
    chosen = ref[:-1].gather(1, torch.tensor(IDS[1:])[:, None])
    assert result.mean_logprob == pytest.approx(float(chosen.mean()), abs=ATOL)
    assert result.perplexity == pytest.approx(math.exp(-float(chosen.mean())), rel=1e-4)


def test_token_analysis_of_one_token_has_no_predictions(engine):
    result = token_analysis(engine, [5], top_k=3)
    assert result.tokens == [] and result.perplexity is None and result.mean_logprob is None


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("head", [0, 3])
def test_attention_of_one_head_matches_hf(engine, hf_attentions, layer, head):
    result = attention(engine, IDS, layer, head)
    assert result.weights.shape == (len(IDS), len(IDS))
    torch.testing.assert_close(result.weights, hf_attentions[layer][head], atol=ATOL, rtol=0)
    assert len(result.entries) == len(IDS) * (len(IDS) + 1) // 2  # the causal triangle


def test_attention_averaged_over_heads_matches_hf(engine, hf_attentions):
    result = attention(engine, IDS, 1)
    assert result.head is None
    torch.testing.assert_close(result.weights, hf_attentions[1].mean(0), atol=ATOL, rtol=0)
    torch.testing.assert_close(result.weights.sum(1), torch.ones(len(IDS)))


def test_attention_normalized_and_thresholded(engine, hf_attentions):
    ref = hf_attentions[0][2]
    ref = ref / ref.amax(1, keepdim=True)
    result = attention(engine, IDS, 0, 2, threshold=0.5, normalized=True)
    kept = ref >= 0.5
    torch.testing.assert_close(result.weights, ref * kept, atol=ATOL, rtol=0)
    assert torch.allclose(result.weights.amax(1), torch.ones(len(IDS)))
    assert {(q, k) for q, k, _ in result.entries} == set(map(tuple, kept.nonzero().tolist()))
    for q, k, w in result.entries:
        assert w == pytest.approx(float(result.weights[q, k])) and w >= 0.5


def test_attention_png_is_a_heatmap_of_the_right_size(engine):
    weights = attention(engine, IDS, 1, 0).weights
    t = len(IDS)
    image = Image.open(io.BytesIO(attention_png(weights, cell=3)))
    assert image.format == "PNG" and image.size == (3 * t, 3 * t)
    default = Image.open(io.BytesIO(attention_png(weights)))
    assert default.size == (512 // t * t, 512 // t * t)
    rgb = default.convert("RGB")
    cell = 512 // t
    assert rgb.getpixel((cell * (t - 1), 0)) == (255, 255, 255)  # above the diagonal: 0
    assert rgb.getpixel((0, 0)) != (255, 255, 255)  # the first token attends to itself


def test_cache_summary_matches_read_kv(engine, tiny_model):
    c = tiny_model.config
    handle = engine.prefill_kv(IDS)
    kv = engine.read_kv(handle)
    summary = cache_summary(kv, (1, c.num_layers))
    n = len(IDS) - 1
    assert summary.num_tokens == n
    assert [layer.layer for layer in summary.layers] == list(range(1, c.num_layers))
    layer = summary.layers[0]
    assert layer.k_shape == layer.v_shape == [n, c.num_kv_heads, c.head_dim]
    assert layer.k_bytes == layer.v_bytes == n * c.num_kv_heads * c.head_dim * 4
    keys, values = kv[1, :, : c.num_kv_heads], kv[1, :, c.num_kv_heads :]
    assert layer.k_norms.mean == pytest.approx(keys.norm(dim=-1).mean(0).tolist())
    assert layer.k_norms.max == pytest.approx(keys.norm(dim=-1).amax(0).tolist())
    assert layer.v_norms.mean == pytest.approx(values.norm(dim=-1).mean(0).tolist())
    assert layer.v_norms.max == pytest.approx(values.norm(dim=-1).amax(0).tolist())
    assert summary.total_bytes == (c.num_layers - 1) * 2 * layer.k_bytes
    # The cached keys are the keys `attention` recomputes from the tokens.
    with torch.inference_mode():
        h = torch.nn.functional.embedding(torch.tensor(IDS[:-1]), tiny_model.embed)
        _, k = tiny_model.queries_keys(0, h)
    torch.testing.assert_close(kv[0, :, : c.num_kv_heads], k, atol=ATOL, rtol=0)
    engine.block_manager.release(handle)


def test_cache_summary_of_a_single_token_state(engine):
    handle = engine.prefill_kv([5])
    summary = cache_summary(engine.read_kv(handle), (0, 2))
    assert summary.num_tokens == 0 and summary.total_bytes == 0
    assert all(layer.k_norms is None and layer.v_norms is None for layer in summary.layers)
