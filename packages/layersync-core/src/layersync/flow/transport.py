"""Stochastic-interpolant objective: paths, prediction types, training loss, time sampling.

Conventions (as in SiT): time t in [0, 1], t = 1 is data and t = 0 is noise,
x_t = alpha_t * x1 + sigma_t * x0 with x1 the data and x0 ~ N(0, I), and the velocity target
u_t = d_alpha_t * x1 + d_sigma_t * x0. All formulas broadcast over any trailing dims (B, ...),
so the same object serves images (B, C, H, W), sequences (B, T, D) and video (B, C, F, H, W).

Paths (the official SiT coupling plans):
- "linear": alpha = t, sigma = 1 - t (target x1 - x0).
- "gvp":    alpha = sin(pi t / 2), sigma = cos(pi t / 2).
- "vp":     alpha = exp(m(t)), m(t) = -1/4 (1-t)^2 (s_max - s_min) - 1/2 (1-t) s_min,
            sigma = sqrt(1 - alpha^2), with s_min = 0.1, s_max = 20 (VPCPlan).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

ModelFn = Callable[..., Tensor]

PATHS = ("linear", "gvp", "vp")
PREDICTIONS = ("velocity", "noise", "score", "data")
DATA_SIGMA_MIN = 0.05
"""Data prediction divides by sigma_t; below this it is clamped (JiT's ``t_eps`` on 1 - t)."""
LOSS_WEIGHTS = (None, "velocity", "likelihood")
TIME_DISTS = ("uniform", "logit-normal")
DIFFUSION_FORMS = (
    "constant",
    "SBDM",
    "sigma",
    "linear",
    "decreasing",
    "increasing-decreasing",
)


def expand_t_like_x(t: Tensor | float, x: Tensor) -> Tensor:
    """Reshape a (B,) (or scalar) time to (B, 1, ..., 1) so it broadcasts against x."""
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all non-batch dimensions."""
    return x.mean(dim=tuple(range(1, x.ndim)))


#################################################################################
#                                    Paths                                      #
#################################################################################
# Every method takes t already shaped like x (see expand_t_like_x) and returns
# tensors that broadcast against x.


class LinearPath:
    """alpha = t, sigma = 1 - t (SiT ICPlan)."""

    def alpha(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, d alpha_t / dt)."""
        return t, torch.ones_like(t)

    def sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(sigma_t, d sigma_t / dt)."""
        return 1 - t, -torch.ones_like(t)

    def alpha_ratio(self, t: Tensor) -> Tensor:
        """d_alpha / alpha (written in a numerically stable form per path)."""
        return 1 / t

    def inv_alpha_ratio(self, t: Tensor) -> Tensor:
        """alpha / d_alpha (finite at t = 0, used for velocity -> score)."""
        return t

    def drift_var(self, t: Tensor) -> Tensor:
        """Coefficient of the score in the probability-flow velocity:
        v = (d_alpha / alpha) x + drift_var * score, drift_var = (d_alpha/alpha) sigma^2 - sigma d_sigma.
        """
        sigma, d_sigma = self.sigma(t)
        return self.alpha_ratio(t) * sigma**2 - sigma * d_sigma


class GVPPath(LinearPath):
    """alpha = sin(pi t / 2), sigma = cos(pi t / 2) (SiT GVPCPlan)."""

    def alpha(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sin(t * math.pi / 2), math.pi / 2 * torch.cos(t * math.pi / 2)

    def sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.cos(t * math.pi / 2), -math.pi / 2 * torch.sin(t * math.pi / 2)

    def alpha_ratio(self, t: Tensor) -> Tensor:
        return math.pi / (2 * torch.tan(t * math.pi / 2))

    def inv_alpha_ratio(self, t: Tensor) -> Tensor:
        alpha, d_alpha = self.alpha(t)
        return alpha / d_alpha


class VPPath(LinearPath):
    """Variance preserving path of score-based diffusion in flow time (SiT VPCPlan)."""

    def __init__(self, sigma_min: float = 0.1, sigma_max: float = 20.0) -> None:
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def _log_mean(self, t: Tensor) -> Tensor:
        s = 1 - t
        return -0.25 * s**2 * (self.sigma_max - self.sigma_min) - 0.5 * s * self.sigma_min

    def _d_log_mean(self, t: Tensor) -> Tensor:
        return 0.5 * (1 - t) * (self.sigma_max - self.sigma_min) + 0.5 * self.sigma_min

    def alpha(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha = torch.exp(self._log_mean(t))
        return alpha, alpha * self._d_log_mean(t)

    def sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a2 = torch.exp(2 * self._log_mean(t))
        sigma = torch.sqrt(1 - a2)
        return sigma, -a2 * self._d_log_mean(t) / sigma

    def alpha_ratio(self, t: Tensor) -> Tensor:
        return self._d_log_mean(t)

    def inv_alpha_ratio(self, t: Tensor) -> Tensor:
        return 1 / self._d_log_mean(t)

    def drift_var(self, t: Tensor) -> Tensor:
        # beta_t / 2, beta_t = s_min + (1 - t)(s_max - s_min); equals the generic formula.
        return 0.5 * (self.sigma_min + (1 - t) * (self.sigma_max - self.sigma_min))


def make_path(name: str) -> LinearPath:
    """Path object from its name ("linear", "gvp", "vp"; case-insensitive)."""
    key = name.lower()
    if key == "linear":
        return LinearPath()
    if key == "gvp":
        return GVPPath()
    if key == "vp":
        return VPPath()
    raise ValueError(f"unknown path {name!r}; choose one of {PATHS}")


#################################################################################
#                                 Transport                                     #
#################################################################################


@dataclass
class TransportLoss:
    """Output of Transport.loss: per-sample loss and what produced it."""

    loss: Tensor  # (B,) mean over non-batch dims, loss weighting applied
    t: Tensor  # (B,) times used
    x_t: Tensor  # the model input
    target: Tensor  # regression target: velocity, noise, -noise/sigma or the data
    prediction: Tensor  # raw model output
    noise: Tensor  # x0


class Transport:
    """Stochastic-interpolant training objective and the fields its samplers need.

    Args:
        path: "linear" | "gvp" | "vp".
        prediction: what the model outputs: "velocity" | "noise" | "score" | "data". "data" is
            JiT's x-prediction (Li & He 2025, "Back to Basics: Let Denoising Generative Models
            Denoise"): the model outputs the clean x1, trained with the velocity loss it implies
            (with sigma_t clamped at ``DATA_SIGMA_MIN``), meant for tokens wider than the model.
        loss_weight: None | "velocity" | "likelihood"; as in SiT it weights only the noise/score
            losses ((drift_var/sigma)^2 and drift_var/sigma^2); velocity and data losses are
            weighted by their own velocity form.
        train_eps, sample_eps: None picks SiT's create_transport defaults: VP 1e-5 / 1e-3,
            Linear/GVP with noise or score prediction 1e-3 / 1e-3, Linear/GVP velocity 0 / 0.
            An explicit value is kept (SiT's create_transport overwrote it with 0 for
            velocity + Linear/GVP; there it only matters for SDE intervals).
    """

    def __init__(
        self,
        path: str = "linear",
        prediction: str = "velocity",
        loss_weight: str | None = None,
        train_eps: float | None = None,
        sample_eps: float | None = None,
        time_dist: str = "uniform",
        time_mean: float = 0.0,
        time_std: float = 1.0,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        if loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"unknown loss_weight {loss_weight!r}; choose one of {LOSS_WEIGHTS}")
        if time_dist not in TIME_DISTS:
            raise ValueError(f"unknown time_dist {time_dist!r}; choose one of {TIME_DISTS}")
        if time_std <= 0:
            raise ValueError(f"time_std must be > 0, got {time_std}")
        self.time_dist, self.time_mean, self.time_std = time_dist, float(time_mean), float(time_std)
        self.path_name = path.lower()
        self.path = make_path(path)
        self.prediction = prediction
        self.loss_weight = loss_weight
        if self.path_name == "vp":
            default_train, default_sample = 1e-5, 1e-3
        elif not self._regular:
            default_train, default_sample = 1e-3, 1e-3
        else:  # velocity (and clamped data) on Linear/GVP is stable on the closed interval
            default_train, default_sample = 0.0, 0.0
        self.train_eps = default_train if train_eps is None else float(train_eps)
        self.sample_eps = default_sample if sample_eps is None else float(sample_eps)

    @property
    def _regular(self) -> bool:
        """Whether the model output is finite on all of [0, 1] (velocity; data, clamped)."""
        return self.prediction in ("velocity", "data")

    def __repr__(self) -> str:
        return (
            f"Transport(path={self.path_name!r}, prediction={self.prediction!r}, "
            f"loss_weight={self.loss_weight!r}, train_eps={self.train_eps}, "
            f"sample_eps={self.sample_eps}, time_dist={self.time_dist!r})"
        )

    # ---- time intervals (SiT check_interval) --------------------------------

    def _interval(
        self, eps: float, *, sde: bool, diffusion_form: str = "SBDM", last_step_size: float = 0.0
    ) -> tuple[float, float]:
        t0, t1 = 0.0, 1.0
        end = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        if self.path_name == "vp":
            t1 = end
        elif not self._regular or sde:
            # avoid the singular ends: noise/score models are undefined at t = 0 and t = 1
            singular_start = (diffusion_form == "SBDM" and sde) or not self._regular
            t0 = eps if singular_start else 0.0
            t1 = end
        return t0, t1

    def train_interval(self) -> tuple[float, float]:
        """[t0, t1] that training times are drawn from."""
        return self._interval(self.train_eps, sde=False)

    def ode_interval(self) -> tuple[float, float]:
        """[t0, t1] for ODE sampling from noise to data."""
        return self._interval(self.sample_eps, sde=False)

    def sde_interval(
        self, diffusion_form: str = "sigma", last_step_size: float = 0.0
    ) -> tuple[float, float]:
        """[t0, t1] of the SDE loop; the optional last step then goes from t1 to t1 + size."""
        return self._interval(
            self.sample_eps, sde=True, diffusion_form=diffusion_form, last_step_size=last_step_size
        )

    # ---- training -----------------------------------------------------------

    def sample_time(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """(B,) training times in the training interval: uniform (SiT), or logit-normal
        (SD3, JiT): sigmoid(N(time_mean, time_std)), a negative mean favouring noise (t = 0)."""
        t0, t1 = self.train_interval()
        if self.time_dist == "uniform":
            u = torch.rand(batch_size, device=device, generator=generator, dtype=dtype)
        else:
            n = torch.randn(batch_size, device=device, generator=generator, dtype=dtype)
            u = torch.sigmoid(n * self.time_std + self.time_mean)
        return u * (t1 - t0) + t0

    def interpolate(self, x1: Tensor, t: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        """(x_t, velocity target u_t) for data x1, noise x0 and (B,) times t."""
        tt = expand_t_like_x(t, x1)
        alpha, d_alpha = self.path.alpha(tt)
        sigma, d_sigma = self.path.sigma(tt)
        return alpha * x1 + sigma * x0, d_alpha * x1 + d_sigma * x0

    def loss(
        self,
        model_fn: ModelFn,
        x1: Tensor,
        *,
        model_kwargs: dict | None = None,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> TransportLoss:
        """Per-sample training loss; model_fn(x_t, t, **model_kwargs) returns the prediction."""
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        if t is None:
            t = self.sample_time(x1.shape[0], x1.device, generator, dtype=x1.dtype)
        t = torch.as_tensor(t, device=x1.device, dtype=x1.dtype)
        x_t, u_t = self.interpolate(x1, t, noise)
        out = model_fn(x_t, t, **model_kwargs)
        if out.shape != x_t.shape:
            raise ValueError(f"model output {tuple(out.shape)} != input {tuple(x_t.shape)}")

        if self.prediction == "velocity":
            return TransportLoss(mean_flat((out - u_t) ** 2), t, x_t, u_t, out, noise)

        tt = expand_t_like_x(t, x_t)
        if self.prediction == "data":
            # v(out) - v(x1) with the clamped sigma in both = (d_alpha - d_sigma alpha / sigma) *
            # (out - x1): JiT's v-loss, (out - x1)^2 / (1 - t)^2 on the linear path
            alpha, d_alpha = self.path.alpha(tt)
            sigma, d_sigma = self.path.sigma(tt)
            weight = (d_alpha - d_sigma * alpha / sigma.clamp_min(DATA_SIGMA_MIN)) ** 2
            return TransportLoss(mean_flat(weight * (out - x1) ** 2), t, x_t, x1, out, noise)
        sigma, _ = self.path.sigma(tt)
        drift_var = self.path.drift_var(tt)
        if self.loss_weight == "velocity":
            weight = (drift_var / sigma) ** 2
        elif self.loss_weight == "likelihood":
            weight = drift_var / sigma**2
        else:
            weight = torch.ones_like(tt)
        if self.prediction == "noise":
            target = noise
            err = out - noise
        else:  # score: the target is -x0 / sigma; SiT writes the error as sigma * out + x0
            target = -noise / sigma
            err = out * sigma + noise
        return TransportLoss(mean_flat(weight * err**2), t, x_t, target, out, noise)

    # ---- prediction conversions ---------------------------------------------

    def score_from_output(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Score grad log p_t(x) from a model output of this transport's prediction type."""
        tt = expand_t_like_x(t, x)
        if self.prediction == "score":
            return out
        if self.prediction == "data":
            return -self._noise_from_data(out, x, tt) / self.path.sigma(tt)[0].clamp_min(
                DATA_SIGMA_MIN
            )
        if self.prediction == "noise":
            return -out / self.path.sigma(tt)[0]
        # velocity: invert v = (d_alpha/alpha) x + drift_var * s, scaled by alpha/d_alpha so it
        # stays finite at t = 0 (SiT get_score_from_velocity)
        rho = self.path.inv_alpha_ratio(tt)
        sigma, d_sigma = self.path.sigma(tt)
        return (rho * out - x) / (sigma**2 - rho * d_sigma * sigma)

    def velocity_from_output(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Probability-flow velocity from a model output of this transport's prediction type."""
        if self.prediction == "velocity":
            return out
        tt = expand_t_like_x(t, x)
        if self.prediction == "data":  # v = d_alpha x1 + d_sigma x0, x0 implied by x and x1
            d_alpha, d_sigma = self.path.alpha(tt)[1], self.path.sigma(tt)[1]
            return d_alpha * out + d_sigma * self._noise_from_data(out, x, tt)
        score = self.score_from_output(out, x, t)
        return self.path.alpha_ratio(tt) * x + self.path.drift_var(tt) * score

    def _noise_from_data(self, out: Tensor, x: Tensor, tt: Tensor) -> Tensor:
        """x0 = (x - alpha x1) / sigma for a data prediction ``out`` (sigma clamped)."""
        sigma = self.path.sigma(tt)[0].clamp_min(DATA_SIGMA_MIN)
        return (x - self.path.alpha(tt)[0] * out) / sigma

    def velocity(self, model_fn: ModelFn) -> ModelFn:
        """The ODE velocity field v(x, t, **kw) of a model of this prediction type."""

        def velocity_fn(x: Tensor, t: Tensor, **kwargs) -> Tensor:
            return self.velocity_from_output(model_fn(x, t, **kwargs), x, t)

        return velocity_fn

    def score(self, model_fn: ModelFn) -> ModelFn:
        """The score field s(x, t, **kw) of a model of this prediction type."""

        def score_fn(x: Tensor, t: Tensor, **kwargs) -> Tensor:
            return self.score_from_output(model_fn(x, t, **kwargs), x, t)

        return score_fn

    # ---- SDE diffusion coefficient (SiT compute_diffusion) -------------------

    def diffusion(self, x: Tensor, t: Tensor, form: str = "sigma", norm: float = 1.0) -> Tensor:
        """w(t) of dx = [v + w s] dt + sqrt(2 w) dW; broadcasts against x."""
        tt = expand_t_like_x(t, x)
        if form == "constant":
            return torch.full_like(tt, norm)
        if form == "SBDM":
            return norm * self.path.drift_var(tt)
        if form == "sigma":
            return norm * self.path.sigma(tt)[0]
        if form == "linear":
            return norm * (1 - tt)
        if form == "decreasing":
            return 0.25 * (norm * torch.cos(math.pi * tt) + 1) ** 2
        if form in ("increasing-decreasing", "inccreasing-decreasing"):  # SiT spelt it with 'cc'
            return norm * torch.sin(math.pi * tt) ** 2
        raise ValueError(f"unknown diffusion form {form!r}; choose one of {DIFFUSION_FORMS}")
