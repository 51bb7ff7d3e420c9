"""Discrete Gaussian diffusion (DDPM): β schedules, q(x_s | x_0), posteriors, predictions.

Conventions (as improved-diffusion / guided-diffusion / MDM): steps s = 0 .. T-1, s = 0 the
least noisy; x_s = sqrt(ᾱ_s) x_0 + sqrt(1 - ᾱ_s) ε. Tables are float64 and cast to the input's
dtype on lookup. The core time of step s is t = 1 - s / T (t = 1 clean, t = 0 noise), which is
what objectives report and what sampler model functions receive (see ``steps_from_t``).

Predictions: "x0" (the model outputs x_0), "eps" (ε), "v" (v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x_0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("x0", "eps", "v")


#################################################################################
#                                 β schedules                                   #
#################################################################################


def betas_for_alpha_bar(steps: int, alpha_bar, max_beta: float = 0.999) -> Tensor:
    """β_s = min(1 - ᾱ((s+1)/T) / ᾱ(s/T), max_beta) for a continuous ᾱ(τ), τ in [0, 1]."""
    betas = [
        min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def beta_schedule(name: str, steps: int) -> Tensor:
    """The named β schedule (float64, (steps,)).

    "linear": Ho et al.'s 1e-4 .. 0.02 for 1000 steps, rescaled by 1000 / steps.
    "cosine": Nichol & Dhariwal, ᾱ(τ) = cos²((τ + 0.008) / 1.008 · π/2), β clipped at 0.999.
    """
    if steps < 1:
        raise ValueError(f"diffusion steps must be >= 1, got {steps}")
    if name == "linear":
        scale = 1000 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if name == "cosine":
        return betas_for_alpha_bar(
            steps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        )
    raise ValueError(f"unknown beta schedule {name!r} (choose from {', '.join(SCHEDULES)})")


def space_timesteps(steps: int, count: int | str) -> list[int]:
    """The kept steps of a respaced sampler, as improved-diffusion's ``space_timesteps``
    for one section: "ddimN" uses the integer stride of the DDIM paper (0, k, 2k, ...);
    an int N takes round(i · (T-1)/(N-1)) for i < N."""
    if isinstance(count, str) and count.startswith("ddim"):
        want = int(count[4:])
        for stride in range(1, steps):
            if len(range(0, steps, stride)) == want:
                return list(range(0, steps, stride))
        raise ValueError(f"cannot take exactly {want} of {steps} steps with an integer stride")
    n = int(count)
    if not 1 <= n <= steps:
        raise ValueError(f"cannot take {n} of {steps} diffusion steps")
    stride = 1.0 if n == 1 else (steps - 1) / (n - 1)
    return sorted({round(i * stride) for i in range(n)})


#################################################################################
#                              Gaussian diffusion                               #
#################################################################################


def _lookup(table: Tensor, steps: Tensor, x: Tensor) -> Tensor:
    """table[steps] shaped (B, 1, ..., 1) in x's dtype and device."""
    dtype = x.dtype if x.is_floating_point() else torch.float32
    out = table.to(steps.device)[steps.long()].to(device=x.device, dtype=dtype)
    return out.reshape(-1, *([1] * (x.ndim - 1)))


class GaussianDiffusion:
    """The forward process and its posteriors for a β schedule.

    Args:
        betas: (T,) float64 β_s, or use ``GaussianDiffusion.named("cosine", 1000)``.
        prediction: what the model outputs: "x0", "eps" or "v".
        kept_steps: the original step index of each step when this process is a respacing of a
            longer one (``respaced``); the model is always called with original indices.
    """

    def __init__(
        self, betas: Tensor, prediction: str = "eps", kept_steps: Iterable[int] | None = None
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"unknown prediction {prediction!r} (choose from {', '.join(PREDICTIONS)})"
            )
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self.prediction = prediction
        self.num_steps = len(betas)
        self.kept_steps = (
            torch.arange(self.num_steps) if kept_steps is None else torch.tensor(list(kept_steps))
        )
        self.original_steps = (
            int(self.kept_steps[-1]) + 1 if kept_steps is not None else self.num_steps
        )

        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, 0)
        self.alphas_cumprod_prev = torch.cat(
            [torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]]
        )
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # q(x_{s-1} | x_s, x_0) = N(c1 x_0 + c2 x_s, posterior_variance)
        self.posterior_variance = (
            betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        # log clipped: the variance is 0 at s = 0 (as improved-diffusion)
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = (
            betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )

    @classmethod
    def named(cls, schedule: str, steps: int, prediction: str = "eps") -> GaussianDiffusion:
        return cls(beta_schedule(schedule, steps), prediction)

    def respaced(self, count: int | str) -> GaussianDiffusion:
        """The process restricted to ``space_timesteps(T, count)`` (new βs from the kept ᾱ)."""
        kept = space_timesteps(self.num_steps, count)
        ab = self.alphas_cumprod[kept]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        original = self.kept_steps[kept].tolist()
        out = GaussianDiffusion(1.0 - ab / prev, self.prediction, kept_steps=original)
        out.original_steps = self.original_steps
        return out

    # -- time convention -------------------------------------------------------------------
    def t_from_steps(self, steps: Tensor) -> Tensor:
        """Core time t = 1 - s / T of (original) integer steps."""
        return 1.0 - steps.float() / self.original_steps

    def steps_from_t(self, t: Tensor) -> Tensor:
        """The nearest original integer step of core time t (inverse of ``t_from_steps``)."""
        s = torch.round((1.0 - torch.as_tensor(t, dtype=torch.float64)) * self.original_steps)
        return s.clamp(0, self.original_steps - 1).long()

    def sample_steps(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """n uniform integer steps in [0, T)."""
        return torch.randint(self.num_steps, (n,), generator=generator, device=device)

    # -- forward process -------------------------------------------------------------------
    def q_sample(self, x0: Tensor, steps: Tensor, noise: Tensor) -> Tensor:
        """x_s = sqrt(ᾱ_s) x_0 + sqrt(1 - ᾱ_s) ε."""
        return (
            _lookup(self.sqrt_alphas_cumprod, steps, x0) * x0
            + _lookup(self.sqrt_one_minus_alphas_cumprod, steps, x0) * noise
        )

    def q_posterior(self, x0: Tensor, x_t: Tensor, steps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{s-1} | x_s, x_0)."""
        mean = (
            _lookup(self.posterior_mean_coef1, steps, x_t) * x0
            + _lookup(self.posterior_mean_coef2, steps, x_t) * x_t
        )
        var = _lookup(self.posterior_variance, steps, x_t)
        return mean, var, _lookup(self.posterior_log_variance_clipped, steps, x_t)

    # -- predictions -----------------------------------------------------------------------
    def target(self, x0: Tensor, noise: Tensor, steps: Tensor) -> Tensor:
        """The regression target of this process's prediction type."""
        if self.prediction == "x0":
            return x0
        if self.prediction == "eps":
            return noise
        return (
            _lookup(self.sqrt_alphas_cumprod, steps, x0) * noise
            - _lookup(self.sqrt_one_minus_alphas_cumprod, steps, x0) * x0
        )

    def predict_x0(self, x_t: Tensor, steps: Tensor, out: Tensor) -> Tensor:
        """x_0 implied by a model output of this prediction type."""
        if self.prediction == "x0":
            return out
        a, s = (
            _lookup(self.sqrt_alphas_cumprod, steps, x_t),
            _lookup(self.sqrt_one_minus_alphas_cumprod, steps, x_t),
        )
        if self.prediction == "eps":
            return (x_t - s * out) / a
        return a * x_t - s * out  # v

    def eps_from_x0(self, x_t: Tensor, steps: Tensor, x0: Tensor) -> Tensor:
        a, s = (
            _lookup(self.sqrt_alphas_cumprod, steps, x_t),
            _lookup(self.sqrt_one_minus_alphas_cumprod, steps, x_t),
        )
        return (x_t - a * x0) / s
