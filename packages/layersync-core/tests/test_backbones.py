"""LayerSync on diffusers transformers (tiny random configs): the block spec, the loss equal to
the formula on hand-captured block outputs, and a gradient that reaches only the student side."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from layersync.backbones import diffusers_blocks
from layersync.loss import LayerSync

diffusers = pytest.importorskip("diffusers")


def tiny_dit():
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=6,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=2,
    )  # fmt: skip
    inputs = {
        "hidden_states": torch.randn(2, 4, 8, 8),
        "timestep": torch.tensor([10, 500]),
        "class_labels": torch.tensor([1, 7]),
    }
    return model, inputs, lambda out: out  # blocks return (B, T, D) tensors


def tiny_flux():
    torch.manual_seed(0)
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=3, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=6,
        axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    img_tokens, txt_tokens = 16, 5
    inputs = {
        "hidden_states": torch.randn(2, img_tokens, 4),
        "encoder_hidden_states": torch.randn(2, txt_tokens, 12),
        "pooled_projections": torch.randn(2, 6),
        "timestep": torch.tensor([0.2, 0.9]),
        "img_ids": torch.randn(img_tokens, 3),
        "txt_ids": torch.zeros(txt_tokens, 3),
    }
    return model, inputs, lambda out: out[1]  # (encoder_hidden_states, hidden_states)


def randomize(model):
    """diffusers zero-initialises some output and modulation layers; give every weight a value."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_block_specs():
    dit = diffusers_blocks(tiny_dit()[0])
    assert dit.names == [f"transformer_blocks.{i}" for i in range(6)] and dit.view is None
    flux = diffusers_blocks(tiny_flux()[0])
    assert flux.names == [
        "transformer_blocks.0", "transformer_blocks.1", "single_transformer_blocks.0",
        "single_transformer_blocks.1", "single_transformer_blocks.2",
    ]  # fmt: skip
    assert flux.lists == ("transformer_blocks", "single_transformer_blocks")
    assert flux.view((torch.zeros(1), torch.ones(2, 3, 4))).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="Linear has no diffusers block list"):
        diffusers_blocks(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("build", "pair", "student", "teacher"),
    [
        (tiny_dit, "2<-4", "transformer_blocks.1", "transformer_blocks.3"),
        # student in the double stream, teacher in the single stream
        (tiny_flux, "2<-4", "transformer_blocks.1", "single_transformer_blocks.1"),
    ],
)
def test_loss_equals_formula_and_gradient_only_reaches_student_side(build, pair, student, teacher):
    model, inputs, image_stream = build()
    randomize(model)
    spec = diffusers_blocks(model)

    # by hand: capture the two blocks' image-stream outputs with our own hooks
    captured = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda m, a, out, name=name: captured.__setitem__(name, image_stream(out))
        )
        for name in (student, teacher)
    ]
    with torch.no_grad():
        model(**inputs)
    for h in hooks:
        h.remove()
    s, t = captured[student], captured[teacher]
    assert s.shape == t.shape and s.shape[:2] == (2, 16)  # image tokens only
    expected = -F.cosine_similarity(s.float(), t.float(), dim=-1).mean()

    sync = LayerSync(model, pairs=pair, weight=1.0, blocks="diffusers", warn=False)
    assert sync.block_names == spec.names
    model.zero_grad(set_to_none=True)
    with sync:
        model(**inputs)
    loss = sync.loss()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=1e-5)
    loss.backward()

    def grad_sum(name):
        return sum(
            float(p.grad.abs().sum()) for p in model.get_submodule(name).parameters()
            if p.grad is not None
        )  # fmt: skip

    assert grad_sum(student) > 0
    index = spec.names.index(student)
    for name in spec.names[index + 1 :]:  # everything after the student: teacher side, no gradient
        assert grad_sum(name) == 0, name
    assert grad_sum(spec.names[0]) > 0  # the student's inputs are trained through it
