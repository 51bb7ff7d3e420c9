"""The N-d SiT: shapes for 1-D/2-D/3-D, patchify/unpatchify, conditions, LayerSync gradient, and
equality with the official 2-D SiT forward on the same weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from layersync.flow import guided
from layersync.loss import LayerSync
from layersync.nn import (
    SIT_SIZES,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    SiT,
    SiTBlock,
    TagEmbedder,
    TimestepEmbedder,
    init_sit_weights,
    patchify,
    sincos_pos_embed,
    unpatchify,
)
from layersync.taps import FeatureTaps

CASES = [  # input_size, patch_size, tokens
    ((32,), 4, 8),
    ((8, 12), 2, 24),
    ((4, 8, 8), (2, 4, 4), 8),
]


def tiny(input_size, patch, **kw) -> SiT:
    torch.manual_seed(0)
    return SiT(input_size, patch, in_channels=3, hidden_size=32, depth=4, num_heads=4, **kw)


def randomize(model: nn.Module) -> nn.Module:
    """Official init zeroes adaLN and the output layer; give every weight a value."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize(("size", "patch", "tokens"), CASES)
def test_shapes_and_taps(size, patch, tokens):
    model = randomize(tiny(size, patch, condition="class", num_classes=5))
    assert model.ndim == len(size) and model.num_tokens == tokens
    x = torch.randn(2, 3, *size)
    with FeatureTaps(model, ["blocks.0", "blocks.3"]) as taps:
        out = model(x, torch.rand(2), torch.tensor([1, 4]))
    feats = taps.pop()
    assert out.shape == x.shape
    assert feats["blocks.0"].shape == feats["blocks.3"].shape == (2, tokens, 32)


@pytest.mark.parametrize(("size", "patch", "tokens"), CASES)
def test_unpatchify_inverts_patchify(size, patch, tokens):
    model = tiny(size, patch)
    x = torch.randn(2, 3, *size)
    p = model.patchify(x)
    assert p.shape == (2, tokens, math.prod(model.patch_size) * 3)
    assert torch.equal(model.unpatchify(p), x)
    # and the token order is the patch embedding's: token i is the patch the conv sees at i
    conv = model.x_embedder.proj
    via_conv = model.x_embedder(x)
    weight = conv.weight.permute(0, *range(2, 2 + model.ndim), 1).reshape(conv.out_channels, -1)
    torch.testing.assert_close(p @ weight.T + conv.bias, via_conv, atol=1e-5, rtol=1e-5)


def test_unpatchify_2d_is_dit_einsum():
    x = torch.randn(2, 6 * 8, 2 * 2 * 3)  # grid 6x8, patch 2, 3 channels
    ref = torch.einsum("nhwpqc->nchpwq", x.reshape(2, 6, 8, 2, 2, 3)).reshape(2, 3, 12, 16)
    assert torch.equal(unpatchify(x, (6, 8), (2, 2), 3), ref)
    assert torch.equal(patchify(ref, (2, 2)), x)


@pytest.mark.parametrize(("size", "patch", "tokens"), CASES)
def test_layersync_gradient_reaches_student_only_through_student(size, patch, tokens):
    model = randomize(tiny(size, patch))
    sync = LayerSync(model, pairs="2<-3", weight=1.0, warn=False)
    with sync:
        model(torch.randn(2, 3, *size), torch.rand(2))
    sync.loss().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["blocks.1.mlp.fc2.weight"].abs().sum() > 0  # the student block
    assert grads["blocks.0.attn.qkv.weight"].abs().sum() > 0  # feeds the student
    # the teacher is stop-gradient: block 3 (index 2) and later get nothing
    for name in (
        "blocks.2.mlp.fc2.weight",
        "blocks.3.attn.qkv.weight",
        "final_layer.linear.weight",
    ):
        assert grads[name] is None or grads[name].abs().sum() == 0, name


def test_learn_sigma_and_condition_checks():
    model = tiny((16,), 2, learn_sigma=True)
    assert model.final_layer.linear.out_features == 2 * 3 * 2
    assert model(torch.randn(2, 3, 16), torch.rand(2)).shape == (2, 3, 16)
    with pytest.raises(ValueError, match="condition='none' but was given"):
        model(torch.randn(2, 3, 16), torch.rand(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expects input \(B, 3, 16\)"):
        model(torch.randn(2, 3, 18), torch.rand(2))
    with pytest.raises(ValueError, match="condition must be one of"):
        tiny((16,), 2, condition="text")
    assert set(SIT_SIZES) == {"S", "B", "L", "XL"}
    assert SIT_SIZES["XL"] == {"depth": 28, "hidden_size": 1152, "num_heads": 16}


def test_token_mask_keeps_padding_out():
    model = randomize(tiny((16,), 2))
    x, t = torch.randn(1, 3, 16), torch.rand(1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    out = model(x, t, token_mask=mask)
    x2 = x.clone()
    x2[..., 10:] = torch.randn(1, 3, 6)  # change only the padded tokens (5..7)
    out2 = model(x2, t, token_mask=mask)
    torch.testing.assert_close(out[..., :10], out2[..., :10])
    assert not torch.allclose(model(x2, t)[..., :10], out[..., :10])


def test_tag_condition_null_is_zero_and_dropout():
    emb = TagEmbedder(6, 8, dropout_prob=0.5)
    assert emb.proj.bias is None
    tags = (torch.rand(64, 6) > 0.5).float()
    assert torch.equal(emb(torch.zeros(3, 6), train=False), torch.zeros(3, 8))
    forced = emb(tags[:2], train=False, force_drop_ids=torch.tensor([1, 0]))
    assert torch.equal(forced[0], torch.zeros(8))
    torch.testing.assert_close(forced[1], emb.proj(tags[1]))
    dropped = emb(tags, train=True, generator=torch.Generator().manual_seed(0))
    zero_rows = (dropped.abs().sum(1) == 0) & (tags.sum(1) > 0)
    assert 15 < int(zero_rows.sum()) < 49  # about half of 64
    with pytest.raises(ValueError, match=r"tags must be \(B, 6\)"):
        emb(torch.zeros(2, 5), train=False)

    model = randomize(tiny((8, 8), 2, condition="tags", num_tags=6)).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    # zero tags == a model without condition, i.e. the null condition of guided()
    ref = randomize(tiny((8, 8), 2)).eval()
    ref.load_state_dict({k: v for k, v in model.state_dict().items() if "y_embedder" not in k})
    torch.testing.assert_close(model(x, t, torch.zeros(2, 6)), ref(x, t))
    fn = guided(model, cfg_scale=3.0, null_cond=0.0)
    cond = model(x, t, tags[:2])
    uncond = model(x, t, torch.zeros(2, 6))
    torch.testing.assert_close(fn(x, t, y=tags[:2]), uncond + 3.0 * (cond - uncond))


# -----------------------------------------------------------------------------
# The 2-D case equals the official SiT forward (written here from the official code's structure)


class OfficialSiT2D(nn.Module):
    """willisma/SiT's model, module for module (key names, init order, forward)."""

    def __init__(self, input_size, patch, in_ch, hidden, depth, heads, num_classes, drop, sigma):
        super().__init__()
        self.p, self.out_ch = patch, in_ch * 2 if sigma else in_ch
        self.x_embedder = PatchEmbed(input_size, patch, in_ch, hidden, ndim=2)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden, drop)
        n = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, n, hidden), requires_grad=False)
        self.blocks = nn.ModuleList([SiTBlock(hidden, heads) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden, patch * patch, self.out_ch)
        init_sit_weights(self)
        pe = sincos_pos_embed(hidden, self.x_embedder.grid_size)
        self.pos_embed.data.copy_(torch.from_numpy(pe).float().unsqueeze(0))
        self.sigma = sigma

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        for block in self.blocks:
            x = block(x, c)
        x = self.final_layer(x, c)
        h, w = self.x_embedder.grid_size
        x = x.reshape(x.shape[0], h, w, self.p, self.p, self.out_ch)
        x = torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], self.out_ch, h * self.p, -1)
        return x.chunk(2, dim=1)[0] if self.sigma else x


def test_2d_equals_official_forward_and_init():
    args = dict(in_channels=4, hidden_size=64, depth=3, num_heads=4, num_classes=10)
    torch.manual_seed(3)
    ours = SiT(16, 2, condition="class", class_dropout_prob=0.1, learn_sigma=True, **args)
    torch.manual_seed(3)
    ref = OfficialSiT2D(16, 2, 4, 64, 3, 4, 10, 0.1, True)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)  # same keys, same order
    for k in ref_sd:  # same seed, same init draws
        assert torch.equal(ours_sd[k], ref_sd[k]), k
    randomize(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval(), ref.eval()
    x, t, y = torch.randn(3, 4, 16, 16), torch.rand(3), torch.tensor([0, 9, 10])
    assert torch.equal(ours(x, t, y), ref(x, t, y))
