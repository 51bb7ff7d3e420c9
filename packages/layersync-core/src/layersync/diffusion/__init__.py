"""Discrete Gaussian diffusion (DDPM/DDIM; x0, eps or v prediction) for DiT/MDM-style plugins.

Usage::

    diffusion = GaussianDiffusion.named("cosine", 1000, prediction="x0")
    objective = DiffusionObjective(diffusion, forward=lambda m, x, s, b, drop, g: m(x, s, b["y"]))
    fn = guided(step_model(diffusion, model), cfg_scale=2.5, null_cond=0.0, cond_key="y")
    x = ddim_sample(diffusion, fn, shape, steps=50, model_kwargs={"y": y}, generator=g)

Time: steps s = 0..T-1 (s = 0 least noisy); the core time of step s is t = 1 - s / T.
"""

from .gaussian import (
    PREDICTIONS,
    SCHEDULES,
    GaussianDiffusion,
    beta_schedule,
    betas_for_alpha_bar,
    space_timesteps,
)
from .objective import DiffusionObjective, masked_mse
from .samplers import ddim_sample, ddpm_sample, step_model

__all__ = [
    "PREDICTIONS",
    "SCHEDULES",
    "DiffusionObjective",
    "GaussianDiffusion",
    "beta_schedule",
    "betas_for_alpha_bar",
    "ddim_sample",
    "ddpm_sample",
    "masked_mse",
    "space_timesteps",
    "step_model",
]
