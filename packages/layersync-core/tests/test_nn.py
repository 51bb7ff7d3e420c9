"""Tests of the shared transformer parts against independent re-derivations of their formulas."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from layersync.nn import (
    Attention,
    FinalLayer,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    SiTBlock,
    TimestepEmbedder,
    default_axis_dims,
    init_sit_weights,
    modulate,
    sincos_pos_embed,
)

# -----------------------------------------------------------------------------
# Reference formulas, written from the math (no code shared with the package)


def ref_1d(dim: int, p: float) -> list[float]:
    """[sin(p w_0) .. sin(p w_{m-1}), cos(p w_0) .. cos(p w_{m-1})], w_k = 10000^(-k/m), m = dim/2."""
    m = dim // 2
    w = [10000.0 ** (-k / m) for k in range(m)]
    return [math.sin(p * wk) for wk in w] + [math.cos(p * wk) for wk in w]


def ref_mae_2d(dim: int, height: int, width: int) -> np.ndarray:
    """MAE's 2-D table: token n = row * width + col; channels [1-D(col), 1-D(row)], dim/2 each."""
    rows = []
    for r in range(height):
        for c in range(width):
            rows.append(ref_1d(dim // 2, c) + ref_1d(dim // 2, r))
    return np.array(rows)


# -----------------------------------------------------------------------------
# Timestep embedding


@pytest.mark.parametrize("dim", [256, 17])
def test_timestep_embedding_matches_formula(dim):
    t = torch.tensor([0.0, 0.25, 0.999, 1.0, 3.5, 500.0])
    emb = TimestepEmbedder.timestep_embedding(t, dim)
    half = dim // 2
    expected = torch.zeros(len(t), dim, dtype=torch.float64)
    for i, ti in enumerate(t.tolist()):
        for k in range(half):
            f = math.exp(-math.log(10000) * k / half)
            expected[i, k] = math.cos(ti * f)
            expected[i, half + k] = math.sin(ti * f)
    assert emb.shape == (len(t), dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.double(), expected, atol=2e-5, rtol=0)
    if dim % 2:
        assert torch.all(emb[:, -1] == 0)


def test_timestep_embedder_keys_and_max_period():
    emb = TimestepEmbedder(32)
    assert sorted(emb.state_dict()) == ["mlp.0.bias", "mlp.0.weight", "mlp.2.bias", "mlp.2.weight"]
    assert emb.mlp[0].in_features == 256
    assert emb(torch.rand(5)).shape == (5, 32)
    t = torch.tensor([2.0])
    e = TimestepEmbedder.timestep_embedding(t, 4, max_period=100)
    expected = [math.cos(2.0), math.cos(2.0 / 10), math.sin(2.0), math.sin(2.0 / 10)]
    torch.testing.assert_close(e[0].double(), torch.tensor(expected, dtype=torch.float64))


# -----------------------------------------------------------------------------
# Sin-cos position embeddings


@pytest.mark.parametrize(("dim", "grid"), [(16, 4), (64, 3), (1152, 16)])
def test_2d_sincos_equals_mae(dim, grid):
    pe = sincos_pos_embed(dim, grid)
    assert pe.shape == (grid * grid, dim) and pe.dtype == np.float64
    np.testing.assert_allclose(pe, ref_mae_2d(dim, grid, grid), rtol=0, atol=1e-12)


def test_2d_sincos_rectangular_grid_and_tuple():
    pe = sincos_pos_embed(32, (2, 5))
    np.testing.assert_allclose(pe, ref_mae_2d(32, 2, 5), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sincos_pos_embed(32, 4), sincos_pos_embed(32, (4, 4)))


def test_1d_sincos():
    pe = sincos_pos_embed(10, (7,))
    assert pe.shape == (7, 10)
    np.testing.assert_allclose(pe, np.array([ref_1d(10, p) for p in range(7)]), atol=1e-12)
    assert len(np.unique(pe.round(8), axis=0)) == 7


def test_3d_sincos_layout():
    dim, (T, H, W) = 64, (3, 4, 5)
    dims = default_axis_dims(dim, 3)
    assert dims == (22, 22, 20) and sum(dims) == dim
    pe = sincos_pos_embed(dim, (T, H, W))
    assert pe.shape == (T * H * W, dim)
    assert len(np.unique(pe.round(8), axis=0)) == T * H * W  # every token distinct
    # token n = (t * H + h) * W + w; chunks encode w, h, t (fastest axis first), like MAE's 2-D
    for n in [0, 7, 23, 59]:
        t, rem = divmod(n, H * W)
        h, w = divmod(rem, W)
        expected = ref_1d(22, w) + ref_1d(22, h) + ref_1d(20, t)
        np.testing.assert_allclose(pe[n], expected, rtol=0, atol=1e-12)
    # explicit split; the 2-D default is MAE's equal halves
    pe2 = sincos_pos_embed(dim, (T, H, W), axis_dims=(16, 16, 32))
    np.testing.assert_allclose(pe2[23], ref_1d(16, 3) + ref_1d(16, 0) + ref_1d(32, 1), atol=1e-12)
    assert default_axis_dims(64, 2) == (32, 32)


def test_sincos_rejects_bad_dims():
    with pytest.raises(ValueError):
        sincos_pos_embed(63, 4)
    with pytest.raises(ValueError):
        sincos_pos_embed(64, (2, 2, 2), axis_dims=(20, 20, 20))
    with pytest.raises(ValueError):
        sincos_pos_embed(64, (2, 2, 2, 2))
    with pytest.raises(ValueError):
        sincos_pos_embed(64, (4, 4), axis_dims=(31, 33))


# -----------------------------------------------------------------------------
# modulate, attention, MLP


def test_modulate():
    g = torch.Generator().manual_seed(0)
    x, shift, scale = (
        torch.randn(2, 5, 8, generator=g),
        torch.randn(2, 8, generator=g),
        torch.randn(2, 8, generator=g),
    )
    out = modulate(x, shift, scale)
    for b in range(2):
        for i in range(5):
            torch.testing.assert_close(out[b, i], x[b, i] * (1 + scale[b]) + shift[b])


def naive_attention(attn: Attention, x: torch.Tensor, mask: torch.Tensor | None = None):
    D = x.shape[-1]
    H, hd = attn.num_heads, D // attn.num_heads
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]
    out = torch.zeros_like(x)
    for h in range(H):
        sl = slice(h * hd, (h + 1) * hd)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out[..., sl] = torch.softmax(scores, dim=-1) @ v[..., sl]
    return out @ attn.proj.weight.T + attn.proj.bias


def test_attention_equals_naive_softmax():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4)
    x = torch.randn(3, 7, 32)
    torch.testing.assert_close(attn(x), naive_attention(attn, x), atol=1e-5, rtol=1e-5)
    mask = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    mask[:, :, :, 5:] = False  # last two tokens are padding
    torch.testing.assert_close(
        attn(x, attn_mask=mask), naive_attention(attn, x, mask[:, 0]), atol=1e-5, rtol=1e-5
    )
    assert sorted(attn.state_dict()) == ["proj.bias", "proj.weight", "qkv.bias", "qkv.weight"]


def test_mlp_is_tanh_gelu():
    torch.manual_seed(0)
    mlp = Mlp(8, 32)
    x = torch.randn(4, 8)
    h = x @ mlp.fc1.weight.T + mlp.fc1.bias
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    torch.testing.assert_close(mlp(x), h @ mlp.fc2.weight.T + mlp.fc2.bias, atol=1e-6, rtol=1e-5)
    assert sorted(mlp.state_dict()) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]


# -----------------------------------------------------------------------------
# Block, final layer, embedders


def test_sit_block_identity_at_init():
    torch.manual_seed(0)
    block = init_sit_weights(SiTBlock(32, 4))
    x, c = torch.randn(2, 6, 32), torch.randn(2, 32)
    assert torch.equal(block(x, c), x)


def test_sit_block_chunk_order():
    """adaLN output order: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp."""
    torch.manual_seed(0)
    D = 16
    block = init_sit_weights(SiTBlock(D, 2))
    for m in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
        nn.init.normal_(m.bias, std=0.1)
    x, c = torch.randn(2, 5, D), torch.randn(2, D)
    ln = nn.functional.layer_norm
    with torch.no_grad():
        b = block.adaLN_modulation[1].bias.view(6, D)
        b[0], b[1], b[2] = 0.3, -0.5, 2.0  # only the attention branch is open
    expected = x + 2.0 * block.attn(ln(x, (D,), eps=1e-6) * 0.5 + 0.3)
    torch.testing.assert_close(block(x, c), expected)
    with torch.no_grad():
        b.zero_()
        b[3], b[4], b[5] = -0.2, 1.0, 0.5  # only the MLP branch is open
    expected = x + 0.5 * block.mlp(ln(x, (D,), eps=1e-6) * 2.0 - 0.2)
    torch.testing.assert_close(block(x, c), expected)


def test_final_layer():
    torch.manual_seed(0)
    layer = FinalLayer(16, 4, 3)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 16)
    shift, scale = layer.adaLN_modulation(c).chunk(2, dim=1)
    h = nn.functional.layer_norm(x, (16,), eps=1e-6)
    expected = layer.linear(h * (1 + scale[:, None]) + shift[:, None])
    out = layer(x, c)
    assert out.shape == (2, 5, 12)
    torch.testing.assert_close(out, expected)
    init_sit_weights(layer)
    assert torch.equal(layer(x, c), torch.zeros(2, 5, 12))


def test_label_embedder_null_row_and_drop():
    emb = LabelEmbedder(10, 8, dropout_prob=0.5)
    assert emb.embedding_table.num_embeddings == 11
    assert LabelEmbedder(10, 8, dropout_prob=0.0).embedding_table.num_embeddings == 10
    labels = torch.arange(10)
    forced = emb.token_drop(labels, force_drop_ids=(labels % 2 == 0).long())
    assert forced.tolist() == [10, 1, 10, 3, 10, 5, 10, 7, 10, 9]
    dropped = emb.token_drop(labels, generator=torch.Generator().manual_seed(3))
    draws = torch.rand(10, generator=torch.Generator().manual_seed(3))
    assert dropped.tolist() == torch.where(draws < 0.5, 10, labels).tolist()
    assert 0 < (dropped == 10).sum() < 10
    # eval mode (train=False) never drops; train=True with a generator is reproducible
    torch.testing.assert_close(emb(labels, train=False), emb.embedding_table.weight[:10])
    a = emb(labels, train=True, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, emb.embedding_table.weight[dropped])


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_patch_embed_token_order(ndim):
    """Token n is the patch at row-major grid position n, its projection = Linear on the patch."""
    torch.manual_seed(0)
    size, patch = (8, 6, 4)[:ndim], (2, 3, 2)[:ndim]
    pe = PatchEmbed(size, patch, in_channels=3, embed_dim=5, ndim=ndim)
    assert pe.grid_size == tuple(s // p for s, p in zip(size, patch, strict=True))
    x = torch.randn(2, 3, *size)
    tokens = pe(x)
    assert tokens.shape == (2, pe.num_patches, 5)
    w = pe.proj.weight.reshape(5, -1)
    for n in [0, 1, pe.num_patches - 1]:
        idx = np.unravel_index(n, pe.grid_size)
        sl = tuple(slice(i * p, (i + 1) * p) for i, p in zip(idx, patch, strict=True))
        expected = x[(slice(None), slice(None), *sl)].reshape(2, -1) @ w.T + pe.proj.bias
        torch.testing.assert_close(tokens[:, n], expected, atol=1e-5, rtol=1e-5)


def test_init_sit_weights():
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "x": PatchEmbed(8, 2, 4, 64),
            "t": TimestepEmbedder(64),
            "y": LabelEmbedder(1000, 64, 0.1),
            "block": SiTBlock(64, 4),
            "final": FinalLayer(64, 4, 8),
        }
    )
    init_sit_weights(model)
    qkv = model["block"].attn.qkv.weight
    bound = math.sqrt(6 / (64 + 192))  # xavier-uniform bound
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    assert torch.all(model["block"].attn.qkv.bias == 0)
    xw = model["x"].proj.weight
    assert xw.abs().max() <= math.sqrt(6 / (16 + 64)) and torch.all(model["x"].proj.bias == 0)
    assert abs(model["y"].embedding_table.weight.std().item() - 0.02) < 0.001
    assert abs(model["t"].mlp[0].weight.std().item() - 0.02) < 0.002
    for m in (model["block"].adaLN_modulation[1], model["final"].adaLN_modulation[1]):
        assert torch.all(m.weight == 0) and torch.all(m.bias == 0)
    assert torch.all(model["final"].linear.weight == 0)
