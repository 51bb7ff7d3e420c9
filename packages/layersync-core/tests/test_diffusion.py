"""layersync.diffusion: schedules, posteriors, predictions, objective, DDPM/DDIM samplers.

The reference fixture ``fixtures/guided_diffusion_reference.npz`` was made once from the official
openai/guided-diffusion code (gaussian_diffusion.py + respace.py, unchanged, torch 2.x CPU) with:

    T = 100; model(x, t) = 0.5 * tanh(x) + 0.001 * t   (t: integer original steps)
    for sched in (linear, cosine):
        d = GaussianDiffusion(betas=get_named_beta_schedule(sched, T), START_X, FIXED_SMALL, MSE)
        store betas, posterior_mean_coef1/2, posterior_variance, posterior_log_variance_clipped
        th.manual_seed(0); x0, xt = th.randn(4,3,5, float64), th.randn(4,3,5, float64)
        store q_posterior_mean_variance(x0, xt, [0, 1, 50, 99]) mean
        th.manual_seed(1); store d.p_sample_loop(model, (2,3,5), clip_denoised=False)
        sp = SpacedDiffusion(space_timesteps(T, "ddim10"), same args)
        for eta in (0, 0.5): th.manual_seed(2); store sp.ddim_sample_loop(model, (2,3,5), False, eta)
    store sorted(space_timesteps(1000, "ddim50")), sorted(space_timesteps(100, [7]))
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from layersync.diffusion import (
    DiffusionObjective,
    GaussianDiffusion,
    beta_schedule,
    ddim_sample,
    ddpm_sample,
    masked_mse,
    space_timesteps,
    step_model,
)
from layersync.flow import guided

REF = np.load(Path(__file__).parent / "fixtures" / "guided_diffusion_reference.npz")


def ref_model(x, steps):
    return 0.5 * torch.tanh(x) + 0.001 * steps.float().view(-1, 1, 1)


# -- schedules and posteriors ----------------------------------------------------------------


@pytest.mark.parametrize("sched", ["linear", "cosine"])
def test_tables_equal_guided_diffusion(sched):
    d = GaussianDiffusion.named(sched, 100, "x0")
    np.testing.assert_allclose(d.betas.numpy(), REF[f"{sched}_betas"], rtol=1e-12)
    for k in ("posterior_mean_coef1", "posterior_mean_coef2", "posterior_variance"):
        np.testing.assert_allclose(
            getattr(d, k).numpy(), REF[f"{sched}_{k}"], rtol=1e-10, atol=1e-15
        )
    np.testing.assert_allclose(
        d.posterior_log_variance_clipped.numpy(),
        REF[f"{sched}_posterior_log_variance_clipped"],
        rtol=1e-10,
    )
    x0, xt = torch.from_numpy(REF[f"{sched}_x0"]), torch.from_numpy(REF[f"{sched}_xt"])
    mean, _, _ = d.q_posterior(x0, xt, torch.tensor([0, 1, 50, 99]))
    # guided-diffusion looks its tables up in float32: agreement to float32 precision
    np.testing.assert_allclose(mean.numpy(), REF[f"{sched}_post_mean"], rtol=1e-6, atol=1e-7)


def test_cosine_betas_clipped_and_linear_scaled():
    cos = beta_schedule("cosine", 1000)
    assert float(cos.max()) == pytest.approx(0.999) and float(cos[0]) < 1e-4
    lin = beta_schedule("linear", 50)
    assert float(lin[0]) == pytest.approx(20 * 1e-4) and float(lin[-1]) == pytest.approx(20 * 0.02)
    with pytest.raises(ValueError, match="unknown beta schedule 'quadratic'"):
        beta_schedule("quadratic", 10)


@pytest.mark.parametrize("sched", ["linear", "cosine"])
def test_posterior_is_bayes_product_of_gaussians(sched):
    """q(x_{s-1}|x_s,x_0) ∝ N(x_{s-1}; √ᾱ_{s-1} x_0, 1-ᾱ_{s-1}) · N(x_s; √α_s x_{s-1}, β_s)."""
    d = GaussianDiffusion.named(sched, 1000)
    steps = torch.tensor([1, 10, 500, 999])
    g = torch.Generator().manual_seed(0)
    x0, xt = (
        torch.randn(4, 7, generator=g, dtype=torch.float64),
        torch.randn(4, 7, generator=g, dtype=torch.float64),
    )
    ab_prev, beta = d.alphas_cumprod_prev[steps, None], d.betas[steps, None]
    precision = 1 / (1 - ab_prev) + (1 - beta) / beta
    var = 1 / precision
    mean = var * (ab_prev.sqrt() * x0 / (1 - ab_prev) + (1 - beta).sqrt() * xt / beta)
    got_mean, got_var, _ = d.q_posterior(x0, xt, steps)
    torch.testing.assert_close(got_mean, mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_var.expand_as(mean), var.expand_as(mean), rtol=1e-9, atol=0)


def test_space_timesteps_equal_improved_diffusion():
    assert space_timesteps(1000, "ddim50") == REF["space_ddim50_of_1000"].tolist()
    assert space_timesteps(100, 7) == REF["space_7_of_100"].tolist()
    with pytest.raises(ValueError, match="exactly 30 of 100"):
        space_timesteps(100, "ddim30")


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_prediction_targets_invert(prediction):
    d = GaussianDiffusion.named("cosine", 1000, prediction)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g)
    steps = torch.tensor([0, 3, 250, 700, 998])
    x_t = d.q_sample(x0, steps, noise)
    ab = d.alphas_cumprod[steps].float().view(-1, 1, 1)
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    target = d.target(x0, noise, steps)
    torch.testing.assert_close(d.predict_x0(x_t, steps, target), x0, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(d.eps_from_x0(x_t, steps, x0), noise, rtol=1e-3, atol=2e-3)


def test_time_convention_round_trips():
    d = GaussianDiffusion.named("cosine", 1000)
    steps = torch.arange(1000)
    t = d.t_from_steps(steps)
    assert float(t[0]) == 1.0 and float(t[-1]) == pytest.approx(0.001, rel=1e-4)
    assert torch.equal(d.steps_from_t(t), steps)
    assert d.steps_from_t(torch.tensor([0.0, 1.0])).tolist() == [999, 0]
    sp = d.respaced("ddim50")
    assert sp.original_steps == 1000 and sp.kept_steps.tolist() == list(range(0, 1000, 20))
    torch.testing.assert_close(sp.alphas_cumprod, d.alphas_cumprod[::20])


# -- samplers against guided-diffusion ---------------------------------------------------------


@pytest.mark.parametrize("sched", ["linear", "cosine"])
def test_ddpm_and_ddim_equal_guided_diffusion(sched):
    d = GaussianDiffusion.named(sched, 100, "x0")
    fn = step_model(d, ref_model)
    torch.manual_seed(1)  # guided-diffusion draws from the global generator: same stream here
    x = ddpm_sample(d, fn, (2, 3, 5))
    np.testing.assert_allclose(x.numpy(), REF[f"{sched}_ddpm"], rtol=1e-4, atol=1e-5)
    for eta in (0.0, 0.5):
        torch.manual_seed(2)
        x = ddim_sample(d, fn, (2, 3, 5), steps="ddim10", eta=eta)
        np.testing.assert_allclose(x.numpy(), REF[f"{sched}_ddim10_eta{eta}"], rtol=1e-4, atol=1e-5)


def test_guided_doubles_batch_once_per_step():
    d = GaussianDiffusion.named("cosine", 20, "x0")
    calls = []

    def model(x, steps, y):
        calls.append((x.shape[0], steps.tolist()))
        return torch.tanh(x) * y.view(-1, 1)

    fn = guided(step_model(d, model), cfg_scale=3.0, null_cond=0.0)
    y = torch.ones(4)
    x = ddim_sample(d, fn, (4, 2), steps=5, model_kwargs={"y": y}, noise=torch.zeros(4, 2) + 0.3)
    assert len(calls) == 5 and all(b == 8 for b, _ in calls)
    assert [s[0] for _, s in calls] == [19, 14, 10, 5, 0]
    # uncond output is 0, so guided = 3 * cond: the same as the unguided model scaled by 3
    ref = ddim_sample(
        d,
        step_model(d, lambda x, s: 3 * torch.tanh(x)),
        (4, 2),
        steps=5,
        noise=torch.zeros(4, 2) + 0.3,
    )
    torch.testing.assert_close(x, ref)


# -- samplers recover a 1-D Gaussian mixture ---------------------------------------------------

PI, MU, SD = torch.tensor([0.3, 0.7]), torch.tensor([-2.0, 1.5]), torch.tensor([0.25, 0.5])


def mixture_x0(d: GaussianDiffusion):
    """The exact E[x_0 | x_s] of the mixture (the Bayes-optimal x0 denoiser)."""

    def fn(x, steps):
        ab = d.alphas_cumprod[steps].float().view(-1, 1)
        var = ab * SD**2 + 1 - ab  # marginal of x_s per component
        logw = torch.log(PI) - 0.5 * torch.log(var) - 0.5 * (x - ab.sqrt() * MU) ** 2 / var
        w = torch.softmax(logw, dim=-1)
        cond = MU + ab.sqrt() * SD**2 / var * (x - ab.sqrt() * MU)
        return (w * cond).sum(-1, keepdim=True)

    return fn


def mixture_moments():
    mean = float((PI * MU).sum())
    var = float((PI * (SD**2 + MU**2)).sum()) - mean**2
    return mean, var


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "ddim-eta1"])
def test_samplers_recover_mixture_moments(sampler):
    d = GaussianDiffusion.named("cosine", 200, "x0")
    fn = step_model(d, mixture_x0(d))
    g = torch.Generator().manual_seed(0)
    n = 20000
    if sampler == "ddpm":
        x = ddpm_sample(d, fn, (n, 1), generator=g)
    else:
        x = ddim_sample(
            d, fn, (n, 1), steps=100, eta=0.0 if sampler == "ddim" else 1.0, generator=g
        )
    mean, var = mixture_moments()
    assert float(x.mean()) == pytest.approx(mean, abs=0.04)
    assert float(x.var()) == pytest.approx(var, rel=0.04)
    assert float((x < 0).float().mean()) == pytest.approx(0.3, abs=0.015)
    left = x[x < 0]
    assert float(left.std()) == pytest.approx(0.25, rel=0.1)


# -- objective ---------------------------------------------------------------------------------


def test_masked_mse_counts_valid_frames_only():
    pred, target = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    target[0, 2:] = 100.0  # padding of sample 0: ignored
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert masked_mse(pred, target, mask).tolist() == [1.0, 1.0]
    assert masked_mse(pred, target).tolist()[1] == 1.0


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_objective_oracle_has_zero_loss_and_reports_core_time(prediction):
    d = GaussianDiffusion.named("cosine", 50, prediction)
    seen = {}

    def oracle(model, x_t, steps, batch, drop_cond, generator):
        seen["drop"] = drop_cond
        x0 = batch["x"]
        eps = d.eps_from_x0(x_t, steps, x0)
        return d.target(x0, eps, steps)

    obj = DiffusionObjective(d, forward=oracle)
    g = torch.Generator().manual_seed(3)
    batch = {"x": torch.randn(6, 5, 2, generator=g), "mask": torch.rand(6, 5, generator=g) > 0.3}
    out = obj(None, batch, torch.Generator().manual_seed(4))
    assert out.loss.shape == (6,) and float(out.loss.max()) < 1e-6 and seen["drop"] is True
    steps = torch.Generator().manual_seed(4)
    expect = torch.randint(50, (6,), generator=steps)
    torch.testing.assert_close(out.t, 1 - expect.float() / 50)
    assert torch.equal(out.token_mask, batch["mask"])

    noise = obj.noise_like(batch, torch.Generator().manual_seed(5))
    fixed = obj.loss_at(None, batch, torch.tensor([1.0, 0.0, 0.5, 0.52, 0.9, 0.26]), noise)
    torch.testing.assert_close(fixed.t, 1 - torch.tensor([0, 49, 25, 24, 5, 37.0]) / 50)
    assert seen["drop"] is False and float(fixed.loss.max()) < 1e-6


def test_objective_loss_equals_manual_x0_regression():
    d = GaussianDiffusion.named("linear", 100, "x0")
    model = torch.nn.Linear(2, 2)
    obj = DiffusionObjective(d, forward=lambda m, x, s, b, drop, g: m(x))
    batch = {"x": torch.randn(3, 4, 2), "mask": torch.tensor([[1, 1, 1, 0]] * 3, dtype=torch.bool)}
    t = torch.tensor([0.2, 0.6, 0.95])
    noise = torch.randn(3, 4, 2)
    out = obj.loss_at(model, batch, t, noise)
    steps = torch.round((1 - t) * 100).long()
    ab = d.alphas_cumprod[steps].float().view(-1, 1, 1)
    pred = model(ab.sqrt() * batch["x"] + (1 - ab).sqrt() * noise)
    manual = ((pred - batch["x"]) ** 2)[:, :3].mean((1, 2))
    torch.testing.assert_close(out.loss, manual)
    out.loss.sum().backward()
    assert model.weight.grad is not None and float(model.weight.grad.abs().sum()) > 0


def test_bad_prediction_and_betas():
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        GaussianDiffusion.named("cosine", 10, "score")
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(torch.tensor([0.0, 0.5]))
    assert math.isfinite(
        float(GaussianDiffusion.named("cosine", 1000).posterior_log_variance_clipped[0])
    )
