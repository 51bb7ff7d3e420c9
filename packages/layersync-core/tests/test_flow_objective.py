"""layersync.flow.FlowObjective: the one flow-matching objective of the SiT plugins."""

from __future__ import annotations

import torch

from layersync.flow import FlowObjective, Transport
from layersync.nn import SiT


def _sit(condition: str) -> SiT:
    torch.manual_seed(0)
    model = SiT(
        input_size=(8,),
        patch_size=2,
        in_channels=3,
        hidden_size=32,
        depth=2,
        num_heads=2,
        condition=condition,
        num_classes=4,
        class_dropout_prob=0.5,
    )
    with torch.no_grad():  # leave adaLN-Zero's identity init, so the label reaches the output
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def test_loss_at_is_the_linear_flow_formula_without_condition_dropout() -> None:
    model = _sit("class").train()  # training mode: only force_drop_ids may stop dropout
    x, y = torch.randn(6, 3, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    t, noise = torch.linspace(0.1, 0.9, 6), torch.randn(6, 3, 8)
    out = FlowObjective(Transport("linear", "velocity")).loss_at(model, (x, y), t, noise)
    xt = t[:, None, None] * x + (1 - t[:, None, None]) * noise
    keep = torch.zeros(6, dtype=torch.long)
    pred = model(xt, t, y, force_drop_ids=keep)
    expected = (pred - (x - noise)).pow(2).mean(dim=(1, 2))
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.t, t)


def test_unconditional_objective_does_not_pass_the_batch_labels() -> None:
    model = _sit("none")
    x, y = torch.randn(4, 3, 8), torch.arange(4)
    g = torch.Generator().manual_seed(3)
    out = FlowObjective(Transport("linear", "velocity"), conditional=False)(model, (x, y), g)
    assert out.loss.shape == (4,) and torch.isfinite(out.loss).all()


def test_noise_like_draws_from_a_cpu_generator_with_the_data_dtype() -> None:
    objective = FlowObjective(Transport("linear", "velocity"))
    batch = (torch.zeros(2, 3, 8, dtype=torch.float64), torch.zeros(2, dtype=torch.long))
    a = objective.noise_like(batch, torch.Generator().manual_seed(1))
    b = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert a.dtype == torch.float64
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sample_sit_batches_guidance_and_determinism() -> None:
    """Batches of sampler.batch_size (5 = 3 + 2), the doubled batch of classifier-free guidance
    only when there is a condition, the null label in its second half, same seed = same
    samples, and a different label = different samples."""
    from layersync.flow import SamplerConfig, sample_sit

    model = _sit("class")
    sizes: list[int] = []
    nulls: list[bool] = []

    def record(module, args, kwargs):
        x, y = args[0], args[2] if len(args) > 2 else kwargs.get("y")
        sizes.append(len(x))
        nulls.append(bool(y is not None and (y == model.num_classes).any()))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    sc = SamplerConfig(mode="ode", method="euler", steps=3, cfg_scale=2.0, batch_size=3)
    labels = torch.tensor([0, 1, 2, 3, 0])
    a = sample_sit(model, sc, Transport(), 5, labels, torch.Generator().manual_seed(1), 4)
    assert a.shape == (5, 3, 8) and sizes == [6, 6, 6, 4, 4, 4] and all(nulls)
    sizes.clear()
    nulls.clear()
    b = sample_sit(model, sc, Transport(), 5, labels, torch.Generator().manual_seed(1), 4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = sample_sit(
        model, sc, Transport(), 5, labels.flip(0), torch.Generator().manual_seed(1), 4
    )
    assert not torch.allclose(a[1:4], other[1:4])  # labels 1, 2, 3 -> 3, 2, 1: row 2 alike
    hook.remove()

    uncond = _sit("none")
    sizes.clear()
    uncond.register_forward_pre_hook(record, with_kwargs=True)
    out = sample_sit(uncond, sc, Transport(), 5, None, torch.Generator().manual_seed(1), 4)
    assert out.shape == (5, 3, 8) and sizes == [3, 3, 3, 2, 2, 2]  # no guidance without y
