"""Tests of layersync.flow: interpolant formulas, losses, conversions, samplers, guidance, NFE.

The samplers are checked on a 2-D Gaussian mixture whose exact velocity, score, noise and data
predictions are derived in closed form below (posterior over components given x_t).
"""

import itertools
import math

import pytest
import torch
from torch.quasirandom import SobolEngine

from layersync.flow import (
    CountingFn,
    Transport,
    guided,
    ode_nfe,
    sample_ode,
    sample_sde,
    sde_nfe,
)

DT = torch.float64


#################################################################################
#                     Hand formulas and the exact mixture                       #
#################################################################################


def coefs(path: str, t: torch.Tensor):
    """(alpha, d_alpha, sigma, d_sigma) written out by hand for each path."""
    if path == "linear":
        return t, torch.ones_like(t), 1 - t, -torch.ones_like(t)
    if path == "gvp":
        h = math.pi / 2
        return torch.sin(h * t), h * torch.cos(h * t), torch.cos(h * t), -h * torch.sin(h * t)
    # vp, sigma_min 0.1, sigma_max 20
    log_a = -0.25 * (1 - t) ** 2 * 19.9 - 0.5 * (1 - t) * 0.1
    d_log_a = 0.5 * (1 - t) * 19.9 + 0.05
    a = torch.exp(log_a)
    s = torch.sqrt(1 - a**2)
    return a, a * d_log_a, s, -(a**2) * d_log_a / s


MEANS = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.5, -2.0]], dtype=DT)
STDS = torch.tensor([[0.3, 0.3], [0.2, 0.4], [0.35, 0.25]], dtype=DT)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=DT)
TRUE_MEAN = (WEIGHTS[:, None] * MEANS).sum(0)
TRUE_VAR = (WEIGHTS[:, None] * (STDS**2 + MEANS**2)).sum(0) - TRUE_MEAN**2


def mixture_fields(x: torch.Tensor, t: torch.Tensor, path: str = "linear"):
    """Exact (velocity, score, E[x0 | x_t], E[x1 | x_t]) for x_t = alpha x1 + sigma x0."""
    a, da, s, ds = (c[:, None, None] for c in coefs(path, t))
    var = a**2 * STDS**2 + s**2  # (B, K, D): x_t | component k
    diff = x[:, None, :] - a * MEANS
    log_p = (-0.5 * torch.log(2 * math.pi * var) - 0.5 * diff**2 / var).sum(-1)
    post = (log_p + WEIGHTS.log()).softmax(-1)[..., None]
    e_x1 = MEANS + a * STDS**2 / var * diff
    e_x0 = s / var * diff
    velocity = (post * (da * e_x1 + ds * e_x0)).sum(1)
    score = (post * (-diff / var)).sum(1)
    noise = (post * e_x0).sum(1)
    data = (post * e_x1).sum(1)
    return velocity, score, noise, data


def exact_model(path: str, prediction: str):
    index = {"velocity": 0, "score": 1, "noise": 2, "data": 3}[prediction]
    return lambda x, t: mixture_fields(x, t, path)[index]


def mixture_stats(x: torch.Tensor):
    """Mean, variance and component weights (nearest component in Mahalanobis distance)."""
    comp = (((x[:, None, :] - MEANS) / STDS) ** 2).sum(-1).argmin(-1)
    weights = torch.bincount(comp, minlength=len(WEIGHTS)).to(DT) / len(x)
    return x.mean(0), x.var(0), weights


def assert_mixture(x, mean_tol, var_rtol, weight_tol):
    mean, var, weights = mixture_stats(x)
    assert torch.allclose(mean, TRUE_MEAN, atol=mean_tol), (mean, TRUE_MEAN)
    assert torch.allclose(var, TRUE_VAR, rtol=var_rtol), (var, TRUE_VAR)
    assert torch.allclose(weights, WEIGHTS, atol=weight_tol), (weights, WEIGHTS)


def sobol_normal(n: int, dim: int = 2) -> torch.Tensor:
    """Quasi-random standard normals: moments accurate to ~1e-3 with a few thousand points."""
    u = SobolEngine(dim, scramble=True, seed=0).draw(n).to(DT).clamp(1e-9, 1 - 1e-9)
    return math.sqrt(2) * torch.erfinv(2 * u - 1)


#################################################################################
#                         Interpolants, intervals, losses                       #
#################################################################################


@pytest.mark.parametrize("path", ["linear", "gvp", "vp"])
@pytest.mark.parametrize("shape", [(5, 4, 3, 3), (5, 7, 6), (5, 3, 2, 4, 4)])
def test_interpolate_matches_hand_formulas(path, shape):
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(shape, generator=g, dtype=DT), torch.randn(shape, generator=g, dtype=DT)
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.97], dtype=DT)
    tr = Transport(path)
    x_t, target = tr.interpolate(x1, t, x0)
    a, _, s, _ = (c.view(-1, *[1] * (len(shape) - 1)) for c in coefs(path, t))
    torch.testing.assert_close(x_t, a * x1 + s * x0)
    # the target is d x_t / dt: check it against a central finite difference of the path
    h = 1e-6
    fd = (tr.interpolate(x1, t + h, x0)[0] - tr.interpolate(x1, t - h, x0)[0]) / (2 * h)
    torch.testing.assert_close(target, fd, rtol=1e-6, atol=1e-6)
    if path == "linear":
        torch.testing.assert_close(target, x1 - x0)
    loss = tr.loss(lambda x, t: 0.5 * x, x1, t=t, noise=x0)
    assert loss.loss.shape == (shape[0],)


@pytest.mark.parametrize(
    "path, prediction, eps, ode, sde_mean, sde_sbdm",
    [
        ("linear", "velocity", (0.0, 0.0), (0.0, 1.0), (0.0, 0.96), (0.0, 1.0)),
        ("gvp", "velocity", (0.0, 0.0), (0.0, 1.0), (0.0, 0.96), (0.0, 1.0)),
        ("linear", "data", (0.0, 0.0), (0.0, 1.0), (0.0, 0.96), (0.0, 1.0)),
        ("linear", "noise", (1e-3, 1e-3), (1e-3, 1 - 1e-3), (1e-3, 0.96), (1e-3, 1 - 1e-3)),
        ("gvp", "score", (1e-3, 1e-3), (1e-3, 1 - 1e-3), (1e-3, 0.96), (1e-3, 1 - 1e-3)),
        ("vp", "velocity", (1e-5, 1e-3), (0.0, 1 - 1e-3), (0.0, 0.96), (0.0, 1 - 1e-3)),
    ],
)
def test_default_eps_and_intervals_follow_sit(path, prediction, eps, ode, sde_mean, sde_sbdm):
    tr = Transport(path, prediction)
    assert (tr.train_eps, tr.sample_eps) == pytest.approx(eps)
    assert tr.ode_interval() == pytest.approx(ode)
    assert tr.sde_interval("sigma", last_step_size=0.04) == pytest.approx(sde_mean)
    assert tr.sde_interval("SBDM", last_step_size=0.0) == pytest.approx(sde_sbdm)


def test_sample_time_respects_train_interval():
    g = torch.Generator().manual_seed(0)
    t = Transport("linear", "noise", train_eps=0.1).sample_time(20000, "cpu", g)
    assert t.shape == (20000,) and t.min() >= 0.1 and t.max() <= 0.9
    assert t.min() < 0.101 and t.max() > 0.899 and abs(t.mean().item() - 0.5) < 0.01
    t = Transport("vp").sample_time(20000, generator=g)
    assert t.min() >= 0 and t.max() <= 1 - 1e-5
    t = Transport("linear").sample_time(20000, generator=g)
    assert t.min() < 1e-3 and t.max() > 1 - 1e-3


def test_logit_normal_time_has_the_logit_normal_law():
    """sigmoid(N(m, s)): logit(t) must be N(m, s) (KS test) and the median sigmoid(m)."""
    from scipy import stats

    g = torch.Generator().manual_seed(0)
    tr = Transport("linear", time_dist="logit-normal", time_mean=-0.8, time_std=0.8)
    t = tr.sample_time(20000, generator=g).double()
    assert t.min() > 0 and t.max() < 1
    logit = torch.log(t / (1 - t)).numpy()
    assert stats.kstest(logit, "norm", args=(-0.8, 0.8)).pvalue > 0.01
    assert t.median().item() == pytest.approx(1 / (1 + math.exp(0.8)), abs=0.01)
    # scaled into a narrower training interval, as uniform times are
    t = Transport("linear", "noise", time_dist="logit-normal").sample_time(2000, generator=g)
    assert t.min() >= 1e-3 and t.max() <= 1 - 1e-3
    with pytest.raises(ValueError, match="time_dist"):
        Transport("linear", time_dist="beta")


def test_velocity_loss_is_hand_mse_and_reproducible():
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(6, 4, 5, 5, generator=g)
    y = torch.arange(6.0)

    def model(x, t, y):
        return 0.7 * x + t.view(-1, 1, 1, 1) + y.view(-1, 1, 1, 1) * 0.01

    out = Transport("linear").loss(model, x1, model_kwargs={"y": y}, generator=g)
    expected = ((model(out.x_t, out.t, y) - (x1 - out.noise)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.loss, expected)
    tt = out.t.view(-1, 1, 1, 1)
    torch.testing.assert_close(out.x_t, tt * x1 + (1 - tt) * out.noise)
    # the same generator seed gives the same t, noise and loss
    again = [
        Transport("linear")
        .loss(model, x1, model_kwargs={"y": y}, generator=torch.Generator().manual_seed(s))
        .loss
        for s in (5, 5)
    ]
    torch.testing.assert_close(again[0], again[1])


@pytest.mark.parametrize("prediction", ["noise", "score"])
@pytest.mark.parametrize("weight", [None, "velocity", "likelihood"])
def test_noise_and_score_losses_with_weights(prediction, weight):
    g = torch.Generator().manual_seed(2)
    x1, x0 = (
        torch.randn(4, 3, 8, generator=g, dtype=DT),
        torch.randn(4, 3, 8, generator=g, dtype=DT),
    )
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=DT)
    out = Transport("linear", prediction, loss_weight=weight).loss(
        lambda x, t: 0.3 * x, x1, t=t, noise=x0
    )
    tt = t.view(-1, 1, 1)
    # linear path: drift_var = (1-t)/t, so the weights are 1/t^2 and 1/(t (1-t))
    w = {None: 1.0, "velocity": 1 / tt**2, "likelihood": 1 / (tt * (1 - tt))}[weight]
    x_t = tt * x1 + (1 - tt) * x0
    err = 0.3 * x_t - x0 if prediction == "noise" else 0.3 * x_t * (1 - tt) + x0
    torch.testing.assert_close(out.loss, (w * err**2).mean(dim=(1, 2)))


@pytest.mark.parametrize("path", ["linear", "gvp"])
def test_data_loss_is_the_velocity_loss_it_implies(path):
    # JiT's v-loss: on the linear path (out - x1)^2 / (1 - t)^2, 1 - t clamped at 0.05; below
    # the clamp it is the velocity loss of the converted output against the converted target
    g = torch.Generator().manual_seed(4)
    x1, x0 = (torch.randn(5, 3, 8, generator=g, dtype=DT) for _ in range(2))
    t = torch.tensor([0.0, 0.1, 0.4, 0.9, 0.97], dtype=DT)
    tr = Transport(path, "data")
    out = tr.loss(lambda x, t: 0.3 * x, x1, t=t, noise=x0)
    tt = t.view(-1, 1, 1)
    a, da, s, ds = coefs(path, tt)
    x_t = a * x1 + s * x0
    pred = 0.3 * x_t
    if path == "linear":
        w = (1 + tt / (1 - tt).clamp_min(0.05)) ** 2
        torch.testing.assert_close(out.loss, (w * (pred - x1) ** 2).mean(dim=(1, 2)))
        torch.testing.assert_close(out.loss[:4], (((pred - x1) / (1 - tt)) ** 2).mean((1, 2))[:4])
    v_pred = tr.velocity_from_output(pred, x_t, t)
    v_true = tr.velocity_from_output(x1, x_t, t)  # = da x1 + ds x0 where sigma >= 0.05
    torch.testing.assert_close(out.loss, ((v_pred - v_true) ** 2).mean(dim=(1, 2)))
    torch.testing.assert_close(v_true[:4], (da * x1 + ds * x0)[:4])
    assert torch.equal(out.target, x1)


#################################################################################
#                         Prediction-type conversions                           #
#################################################################################


@pytest.mark.parametrize("path", ["linear", "gvp", "vp"])
@pytest.mark.parametrize("prediction", ["velocity", "noise", "score", "data"])
def test_conversions_give_back_exact_fields(path, prediction):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 2, generator=g, dtype=DT) * 1.5
    t = torch.linspace(0.05, 0.95, 64, dtype=DT)
    v, s, *_ = mixture_fields(x, t, path)
    tr = Transport(path, prediction)
    model = exact_model(path, prediction)
    torch.testing.assert_close(tr.velocity(model)(x, t), v, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(tr.score(model)(x, t), s, rtol=1e-9, atol=1e-9)


def test_velocity_to_score_is_finite_at_t0():
    # at t = 0 the linear path is N(0, I): the score is -x
    x = torch.randn(8, 2, dtype=DT)
    tr = Transport("linear")
    torch.testing.assert_close(
        tr.score(exact_model("linear", "velocity"))(x, torch.zeros(8, dtype=DT)), -x
    )


#################################################################################
#                                  ODE samplers                                 #
#################################################################################


@pytest.mark.parametrize("method, steps", [("euler", 200), ("heun", 50)])
def test_ode_recovers_mixture(method, steps):
    x = sample_ode(
        exact_model("linear", "velocity"), sobol_normal(4096), steps=steps, method=method
    )
    assert_mixture(x, mean_tol=0.02, var_rtol=0.03, weight_tol=0.01)


def test_ode_gvp_noise_prediction_recovers_mixture():
    tr = Transport("gvp", "noise")
    t0, t1 = tr.ode_interval()
    vel = tr.velocity(exact_model("gvp", "noise"))
    x = sample_ode(vel, sobol_normal(4096), steps=60, method="heun", t0=t0, t1=t1)
    assert_mixture(x, mean_tol=0.02, var_rtol=0.03, weight_tol=0.01)


def test_ode_data_prediction_recovers_mixture():
    # the clamp (sigma >= 0.05) changes the field only in the last 5% of time
    tr = Transport("linear", "data")
    vel = tr.velocity(exact_model("linear", "data"))
    t0, t1 = tr.ode_interval()
    x = sample_ode(vel, sobol_normal(4096), steps=50, method="heun", t0=t0, t1=t1)
    assert_mixture(x, mean_tol=0.02, var_rtol=0.03, weight_tol=0.01)


def test_ode_convergence_orders():
    vel = exact_model("linear", "velocity")
    x0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(4), dtype=DT)
    ref = sample_ode(vel, x0, steps=2000, method="heun")

    def err(method, steps):  # median over particles: robust to the rare mode switchers
        return (sample_ode(vel, x0, steps=steps, method=method) - ref).norm(dim=-1).median()

    euler = [err("euler", n) for n in (32, 64, 128)]
    heun = [err("heun", n) for n in (16, 32, 64)]
    assert euler[0] / euler[1] > 1.6 and euler[1] / euler[2] > 1.6, euler  # first order (~2)
    assert heun[0] / heun[1] > 3.0 and heun[1] / heun[2] > 3.0, heun  # second order (~4)
    assert heun[1] < euler[0] / 10  # same 32 steps: Heun is far more accurate


def test_ode_backward_returns_to_noise():
    vel = exact_model("linear", "velocity")
    x0 = torch.randn(128, 2, generator=torch.Generator().manual_seed(5), dtype=DT)
    x1 = sample_ode(vel, x0, steps=400, method="heun")
    back, traj = sample_ode(
        vel, x1, steps=400, method="heun", t0=1.0, t1=0.0, return_trajectory=True
    )
    assert len(traj) == 401 and traj[0] is x1
    assert (back - x0).norm(dim=-1).median() < 1e-3


#################################################################################
#                                  SDE samplers                                 #
#################################################################################


@pytest.mark.parametrize("method, steps", [("euler", 250), ("heun", 125)])
def test_sde_recovers_mixture(method, steps):
    x0 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(6), dtype=DT)
    x = sample_sde(
        Transport("linear"),
        exact_model("linear", "velocity"),
        x0,
        steps=steps,
        method=method,
        generator=torch.Generator().manual_seed(7),
    )
    assert_mixture(x, mean_tol=0.08, var_rtol=0.06, weight_tol=0.03)


def test_sde_vp_score_prediction_recovers_mixture():
    tr = Transport("vp", "score")
    x0 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(8), dtype=DT)
    x = sample_sde(
        tr,
        exact_model("vp", "score"),
        x0,
        steps=250,
        last_step="Tweedie",
        generator=torch.Generator().manual_seed(9),
    )
    assert_mixture(x, mean_tol=0.08, var_rtol=0.06, weight_tol=0.03)


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("last_step", ["Mean", "Euler", "Tweedie", None])
def test_sde_without_noise_is_the_ode_plus_last_step(method, last_step):
    # diffusion_norm = 0 removes noise and score term: the loop is the ODE on the SiT grid
    tr = Transport("linear")
    vel = exact_model("linear", "velocity")
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(10), dtype=DT)
    steps, size = 11, 0.04
    x = sample_sde(tr, vel, x0, steps=steps, method=method, diffusion_norm=0.0, last_step=last_step)
    t1 = 1.0 if last_step is None else 1 - size
    y = sample_ode(vel, x0, steps=steps - 1, method=method, t0=0.0, t1=t1)
    t = torch.full((32,), t1, dtype=DT)
    if last_step in ("Mean", "Euler"):  # no diffusion: both are an Euler step of the velocity
        y = y + size * vel(y, t)
    elif last_step == "Tweedie":
        y = (y + (1 - t1) ** 2 * mixture_fields(y, t)[1]) / t1
    torch.testing.assert_close(x, y)


#################################################################################
#                           Classifier-free guidance                            #
#################################################################################


def label_model(x, t, y, mask=None):
    """Toy conditional model: a different affine map per label and per channel."""
    if mask is not None:
        assert mask.shape[0] == x.shape[0]
    scale = (1 + 0.1 * y.to(x.dtype)).view(-1, 1, 1, 1)
    chan = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1, 1)
    return scale * chan * x + t.view(-1, 1, 1, 1)


def _inputs(batch=3):
    g = torch.Generator().manual_seed(11)
    return torch.randn(batch, 4, 2, 2, generator=g, dtype=DT), torch.tensor([3, 7, 1])


def test_cfg_formula_and_one_doubled_forward():
    x, y = _inputs()
    t = torch.full((3,), 0.5, dtype=DT)
    counted = CountingFn(label_model)
    out = guided(counted, cfg_scale=4.0, null_cond=torch.tensor(10))(x, t, y=y)
    cond, uncond = label_model(x, t, y), label_model(x, t, torch.full_like(y, 10))
    torch.testing.assert_close(out, uncond + 4.0 * (cond - uncond))
    assert counted.nfe == 1 and counted.batch_sizes == [6]


def test_cfg_scale_one_is_conditional():
    x, y = _inputs()
    t = torch.full((3,), 0.5, dtype=DT)
    counted = CountingFn(label_model)
    out = guided(counted, cfg_scale=1.0, null_cond=10)(x, t, y=y)
    torch.testing.assert_close(out, label_model(x, t, y))
    assert counted.batch_sizes == [3]


def test_cfg_interval_per_sample():
    x, y = _inputs()
    fn = guided(label_model, cfg_scale=3.0, null_cond=10, interval=(0.3, 0.7))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=DT)
    out = fn(x, t, y=y)
    cond, uncond = label_model(x, t, y), label_model(x, t, torch.full_like(y, 10))
    torch.testing.assert_close(out[[0, 2]], cond[[0, 2]])  # outside: conditional
    torch.testing.assert_close(out[1], (uncond + 3.0 * (cond - uncond))[1])
    counted = CountingFn(label_model)
    t_out = torch.full((3,), 0.9, dtype=DT)
    out = guided(counted, cfg_scale=3.0, null_cond=10, interval=(0.3, 0.7))(x, t_out, y=y)
    torch.testing.assert_close(out, label_model(x, t_out, y))
    assert counted.batch_sizes == [3]  # no sample inside: only the conditional batch runs


def test_cfg_guided_channels_rest_is_conditional():
    x, y = _inputs()
    t = torch.full((3,), 0.5, dtype=DT)
    out = guided(label_model, cfg_scale=4.0, null_cond=10, guided_channels=3)(x, t, y=y)
    cond, uncond = label_model(x, t, y), label_model(x, t, torch.full_like(y, 10))
    torch.testing.assert_close(out[:, :3], (uncond + 4.0 * (cond - uncond))[:, :3])
    torch.testing.assert_close(out[:, 3:], cond[:, 3:])
    assert not torch.allclose(out[:, 3:], (uncond + 4.0 * (cond - uncond))[:, 3:])


def test_cfg_embedding_condition_and_batched_kwargs():
    g = torch.Generator().manual_seed(12)
    x, emb = torch.randn(2, 5, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    null = torch.zeros(6, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)

    def seq_model(x, t, c, mask):
        assert mask.shape[0] == x.shape[0] == c.shape[0]
        return x * c.mean(1, keepdim=True) + t.view(-1, 1, 1)

    t = torch.full((2,), 0.5)
    out = guided(seq_model, cfg_scale=2.0, null_cond=null, cond_key="c")(x, t, c=emb, mask=mask)
    cond = seq_model(x, t, emb, mask)
    uncond = seq_model(x, t, null.expand_as(emb), mask)
    torch.testing.assert_close(out, uncond + 2.0 * (cond - uncond))


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_cfg_in_sampler_one_call_per_evaluation(method):
    x, y = _inputs()
    counted = CountingFn(label_model)
    fn = guided(counted, cfg_scale=2.0, null_cond=10, interval=(0.0, 0.5))
    sample_ode(fn, x * 0.1, steps=6, method=method, model_kwargs={"y": y})
    assert counted.nfe == ode_nfe(6, method)
    times = torch.linspace(0, 1, 7).tolist()
    evals = (
        times[:-1]
        if method == "euler"
        else [s for a, b in itertools.pairwise(times) for s in (a, b)]
    )
    assert counted.batch_sizes == [6 if s <= 0.5 else 3 for s in evals]


#################################################################################
#                                  NFE counts                                   #
#################################################################################


@pytest.mark.parametrize(
    "method, last_step_euler, expected",
    [("euler", False, 7), ("heun", False, 14), ("heun", True, 13)],
)
def test_ode_nfe(method, last_step_euler, expected):
    counted = CountingFn(exact_model("linear", "velocity"))
    sample_ode(
        counted,
        torch.randn(4, 2, dtype=DT),
        steps=7,
        method=method,
        last_step_euler=last_step_euler,
    )
    assert counted.nfe == expected == ode_nfe(7, method, last_step_euler)


@pytest.mark.parametrize(
    "method, last_step, expected",
    [("euler", "Mean", 10), ("euler", None, 9), ("heun", "Tweedie", 19), ("heun", None, 18)],
)
def test_sde_nfe(method, last_step, expected):
    counted = CountingFn(exact_model("linear", "velocity"))
    _, traj = sample_sde(
        Transport("linear"),
        counted,
        torch.randn(4, 2, dtype=DT),
        steps=10,
        method=method,
        last_step=last_step,
        return_trajectory=True,
    )
    assert counted.nfe == expected == sde_nfe(10, method, last_step)
    assert len(traj) == 10 + (last_step is not None)  # x0, 9 loop states, last step


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        Transport("cosine")
    with pytest.raises(ValueError):
        Transport(prediction="x0")
    with pytest.raises(ValueError):
        sample_ode(lambda x, t: x, torch.zeros(1, 2), method="rk4")
    with pytest.raises(ValueError):
        sample_sde(Transport(), lambda x, t: x, torch.zeros(1, 2), last_step="median")
    with pytest.raises(ValueError):
        Transport().loss(lambda x, t: x[:, :1], torch.zeros(2, 3))
