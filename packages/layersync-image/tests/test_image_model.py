"""Tests of the SiT backbone: official compatibility, presets, shapes, checkpoints."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from layersync_image.model import SIT_CONFIGS, SiT, block_names, build_sit, load_sit_checkpoint

FIXTURE = Path(__file__).parent / "data" / "sit_official_tiny.safetensors"


def load_fixture() -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Returns (config, decoded state dict, all fixture tensors)."""
    with safe_open(str(FIXTURE), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    state = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            name = key.removeprefix("state.")
            if value.dtype == torch.int8:  # int8 code * power-of-two scale: exact in float32
                value = value.float() * tensors[f"scale.{name}"]
            state[name] = value
    return cfg, state, tensors


def perturbed_tiny() -> SiT:
    cfg, state, _ = load_fixture()
    model = SiT(**cfg)
    model.load_state_dict(state, strict=True)
    return model


# -----------------------------------------------------------------------------
# Official compatibility


def test_matches_official_sit():
    """Our SiT reproduces the official willisma/SiT outputs for the same weights.

    Fixture ``data/sit_official_tiny.safetensors`` was made by a throwaway script (not in the
    repo) with willisma/SiT ``models.py`` at commit 947f95bd3a510e9af441d38c1e9f72e0eee873c5,
    timm 1.0.31, torch 2.14.1 (CPU): ``torch.manual_seed(0)``; ``SiT(input_size=8, patch_size=2,
    in_channels=4, hidden_size=64, depth=3, num_heads=4, num_classes=10, learn_sigma=True,
    class_dropout_prob=0.1)``; ``init_stats.*`` = (sum, sum|.|, sum of squares) of each init tensor;
    then every parameter but ``pos_embed`` got ``+= 0.05 * randn`` and was rounded to an int8 code
    times a power-of-two scale (stored as ``state.*`` + ``scale.*``, so it decodes exactly);
    ``input.x`` = randn(3, 4, 8, 8), ``input.t`` = [0, 0.37, 1], ``input.y`` = [3, 7, 10] (10 is
    the null label); ``output`` = official forward in eval mode, ``feature.blocks.N`` = the outputs
    of the official blocks (forward hooks). The file metadata repeats these facts.
    """
    _, _, tensors = load_fixture()
    model = perturbed_tiny().eval()
    feats = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: feats.append(o))
    with torch.no_grad():
        out = model(tensors["input.x"], tensors["input.t"], tensors["input.y"])
    assert out.shape == tensors["output"].shape == (3, 4, 8, 8)
    torch.testing.assert_close(out, tensors["output"], atol=1e-5, rtol=0)
    for n, feat in enumerate(feats):
        torch.testing.assert_close(feat, tensors[f"feature.blocks.{n}"], atol=1e-5, rtol=0)
    # the fixture is meaningful: every block changes the tokens and the output is far from zero
    for n in (1, 2):
        delta = tensors[f"feature.blocks.{n}"] - tensors[f"feature.blocks.{n - 1}"]
        assert delta.abs().mean() > 1e-2
    assert tensors["output"].abs().mean() > 0.1


def test_pos_embed_and_init_match_official():
    cfg, state, tensors = load_fixture()
    torch.manual_seed(0)
    model = SiT(**cfg)
    # the fixed 2-D sin-cos table equals the official (MAE) one
    torch.testing.assert_close(model.pos_embed, state["pos_embed"], atol=1e-7, rtol=0)
    # same seed, same random draws: per-tensor statistics of the official init
    for key, value in model.state_dict().items():
        v = value.double()
        stats = torch.stack([v.sum(), v.abs().sum(), (v**2).sum()])
        torch.testing.assert_close(stats, tensors[f"init_stats.{key}"], atol=1e-6, rtol=1e-6)


# -----------------------------------------------------------------------------
# Presets


def test_preset_table():
    assert len(SIT_CONFIGS) == 12
    expected = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    for size, (depth, hidden, heads) in expected.items():
        for patch in (2, 4, 8):
            cfg = SIT_CONFIGS[f"SiT-{size}/{patch}"]
            assert cfg == {
                "depth": depth,
                "hidden_size": hidden,
                "num_heads": heads,
                "patch_size": patch,
            }


@pytest.mark.parametrize(
    ("name", "millions"), [("SiT-XL/2", 675), ("SiT-L/2", 458), ("SiT-B/2", 130), ("SiT-S/2", 33)]
)
def test_param_counts(name, millions):
    """Parameter counts of the SiT/DiT papers (meta device: no memory, fast)."""
    with torch.device("meta"):
        model = build_sit(name)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e6 - millions) / millions < 0.01
    assert model.depth == len(model.blocks) == SIT_CONFIGS[name]["depth"]
    assert model.num_tokens == (32 // SIT_CONFIGS[name]["patch_size"]) ** 2


def test_build_sit_bad_name_and_overrides():
    with pytest.raises(ValueError, match=r"unknown SiT preset 'SiT-M/2'.*SiT-XL/2.*SiT-S/8"):
        build_sit("SiT-M/2")
    model = build_sit("SiT-S/8", input_size=16, num_classes=7, depth=2)
    assert model.depth == 2 and model.y_embedder.embedding_table.num_embeddings == 8


# -----------------------------------------------------------------------------
# Shapes and behaviour


@pytest.mark.parametrize("patch", [2, 4, 8])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_forward_shapes(patch, learn_sigma):
    model = SiT(
        input_size=16,
        patch_size=patch,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=5,
        learn_sigma=learn_sigma,
    )
    assert model.num_tokens == (16 // patch) ** 2
    assert model.pos_embed.shape == (1, model.num_tokens, 32)
    assert model.final_layer.linear.out_features == patch * patch * 4 * (2 if learn_sigma else 1)
    out = model(torch.randn(2, 4, 16, 16), torch.rand(2), torch.tensor([0, 5]))
    assert out.shape == (2, 4, 16, 16)


def test_unpatchify_inverts_patchify():
    model = SiT(input_size=8, patch_size=2, hidden_size=16, depth=1, num_heads=2, learn_sigma=False)
    img = torch.randn(2, 4, 8, 8)
    # patchify: token (h, w) holds its p x p x C patch laid out as (p, q, c)
    tokens = img.reshape(2, 4, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 16)
    assert torch.equal(model.unpatchify(tokens), img)


def test_learn_sigma_drops_second_half():
    model = perturbed_tiny().eval()
    _, _, tensors = load_fixture()
    with torch.no_grad():
        out = model(tensors["input.x"], tensors["input.t"], tensors["input.y"])
        model.learn_sigma = False  # now the full 2C prediction comes out
        full = model(tensors["input.x"], tensors["input.t"], tensors["input.y"])
    assert full.shape == (3, 8, 8, 8)
    assert torch.equal(full[:, :4], out)


def test_pos_embed_frozen():
    model = perturbed_tiny()
    assert not model.pos_embed.requires_grad
    assert "pos_embed" in model.state_dict()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "pos_embed" not in trainable and len(trainable) == len(model.state_dict()) - 1


def test_gradients_reach_every_block():
    _, _, tensors = load_fixture()
    x, t, y = tensors["input.x"], tensors["input.t"], tensors["input.y"]
    # at init (adaLN-Zero) the adaLN modulation of every block gets a gradient
    torch.manual_seed(0)
    model = SiT(input_size=8, hidden_size=64, depth=3, num_heads=4, num_classes=10)
    model.final_layer.linear.weight.data.normal_(std=0.02)  # else nothing flows back at all
    model(x, t, y).square().mean().backward()
    for block in model.blocks:
        assert block.adaLN_modulation[1].weight.grad.abs().sum() > 0
    # with non-zero modulation, every trainable parameter gets a gradient
    model = perturbed_tiny()
    model(x, t, y).square().mean().backward()
    for name, p in model.named_parameters():
        if name == "pos_embed":
            assert p.grad is None
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_label_dropout_uses_null_row():
    model = perturbed_tiny()
    _, _, tensors = load_fixture()
    x, t, y = tensors["input.x"], tensors["input.t"], torch.tensor([3, 7, 2])
    null = torch.full_like(y, 10)
    model.eval()
    with torch.no_grad():
        uncond = model(x, t, null)
        cond = model(x, t, y)
        forced = model(x, t, y, force_drop_ids=torch.tensor([1, 0, 1]))
    torch.testing.assert_close(forced[[0, 2]], uncond[[0, 2]])
    torch.testing.assert_close(forced[1], cond[1])
    # training mode: random drop with probability class_dropout_prob, reproducible by generator
    model.train()
    model.y_embedder.dropout_prob = 0.5
    with torch.no_grad():
        out = model(x, t, y, generator=torch.Generator().manual_seed(1))
    drop = torch.rand(3, generator=torch.Generator().manual_seed(1)) < 0.5
    assert 0 < drop.sum() < 3
    expected = torch.where(drop[:, None, None, None], uncond, cond)
    torch.testing.assert_close(out, expected)


def test_block_names():
    model = SiT(input_size=8, hidden_size=16, depth=4, num_heads=2)
    names = block_names(model)
    assert names == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    modules = dict(model.named_modules())
    assert all(modules[n] is model.blocks[i] for i, n in enumerate(names))


# -----------------------------------------------------------------------------
# Checkpoint loading


def test_load_safetensors_with_prefixes(tmp_path):
    cfg, state, tensors = load_fixture()
    path = tmp_path / "model.safetensors"
    save_file({f"module._orig_mod.{k}": v.contiguous() for k, v in state.items()}, str(path))
    model = SiT(**cfg).eval()
    loaded = load_sit_checkpoint(path, model)
    assert sorted(loaded) == sorted(state)
    with torch.no_grad():
        out = model(tensors["input.x"], tensors["input.t"], tensors["input.y"])
    torch.testing.assert_close(out, tensors["output"], atol=1e-5, rtol=0)


def test_load_official_pt_formats(tmp_path):
    cfg, state, _ = load_fixture()
    # released format: a raw state dict
    raw = tmp_path / "SiT-tiny.pt"
    torch.save(state, raw)
    model = SiT(**cfg)
    load_sit_checkpoint(raw, model)
    torch.testing.assert_close(model.blocks[2].mlp.fc2.weight, state["blocks.2.mlp.fc2.weight"])
    # training format of the official train.py (DDP "module." keys in "model")
    other = {k: v + 1 for k, v in state.items()}
    ckpt = {
        "model": {f"module.{k}": v for k, v in other.items()},
        "ema": state,
        "opt": torch.optim.AdamW(SiT(**cfg).parameters()).state_dict(),
        "args": argparse.Namespace(model="SiT-XL/2", image_size=256, global_seed=0),
    }
    train_pt = tmp_path / "0010000.pt"
    torch.save(ckpt, train_pt)
    ema = load_sit_checkpoint(train_pt)
    torch.testing.assert_close(ema["pos_embed"], state["pos_embed"])
    raw_model = load_sit_checkpoint(train_pt, SiT(**cfg), prefer_ema=False)
    torch.testing.assert_close(
        raw_model["final_layer.linear.bias"], other["final_layer.linear.bias"]
    )


def test_load_mismatch_is_one_clear_line(tmp_path):
    cfg, state, _ = load_fixture()
    bad = dict(state)
    del bad["blocks.0.attn.qkv.weight"]
    bad["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in bad.items()}, str(path))
    with pytest.raises(ValueError) as err:
        load_sit_checkpoint(path, SiT(**cfg))
    msg = str(err.value)
    assert "\n" not in msg and "bad.safetensors" in msg
    assert (
        "missing keys [blocks.0.attn.qkv.weight]" in msg and "unexpected keys [extra.weight]" in msg
    )
    # another size: shape mismatches are named
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(good))
    with pytest.raises(ValueError, match=r"shape mismatches \[pos_embed \(1, 16, 64\) vs model"):
        load_sit_checkpoint(good, SiT(**{**cfg, "hidden_size": 32}))
    with pytest.raises(FileNotFoundError):
        load_sit_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"step": 3}, junk)
    with pytest.raises(ValueError, match="not a state dict"):
        load_sit_checkpoint(junk)
