"""Ancestral DDPM and DDIM samplers for ``GaussianDiffusion``.

Model functions follow ``layersync.flow``: ``model_fn(x, t, **kwargs)`` with t the core time
(B,) (t = 1 - s / T of the ORIGINAL step s), so ``layersync.flow.guided`` wraps them unchanged
(CFG in one doubled forward, guidance intervals in core time). A network that takes integer
steps is adapted with ``step_model(diffusion, model)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .gaussian import GaussianDiffusion

ModelFn = Callable[..., Tensor]


def step_model(diffusion: GaussianDiffusion, model: nn.Module | ModelFn) -> ModelFn:
    """``model(x, steps, **kw)`` (integer original steps) as ``fn(x, t, **kw)`` (core time)."""

    def fn(x: Tensor, t: Tensor | float, **kwargs) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return model(x, diffusion.steps_from_t(t).to(x.device), **kwargs)

    return fn


def _x0(
    diffusion: GaussianDiffusion, model_fn: ModelFn, x: Tensor, i: int, kwargs, clip
) -> tuple[Tensor, Tensor]:
    steps = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
    original = diffusion.kept_steps.to(x.device)[steps]
    out = model_fn(x, diffusion.t_from_steps(original).to(x.device), **kwargs)
    x0 = diffusion.predict_x0(x, steps, out)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    return x0, steps


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def ddpm_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    noise: Tensor | None = None,
    clip: float | None = None,
    model_kwargs: dict | None = None,
) -> Tensor:
    """Ancestral sampling with the fixed-small posterior variance (MDM: no clipping).

    x_{s-1} = μ̃(x̂_0, x_s) + [s > 0] exp(½ log σ̃²_s) z, from x_{T-1} = ``noise`` (or N(0, I)).
    """
    x = (
        noise.to(device)
        if noise is not None
        else torch.randn(*shape, generator=generator, device=device)
    )
    kwargs = model_kwargs or {}
    for i in reversed(range(diffusion.num_steps)):
        x0, steps = _x0(diffusion, model_fn, x, i, kwargs, clip)
        mean, _, log_var = diffusion.q_posterior(x0, x, steps)
        x = mean + (torch.exp(0.5 * log_var) * _noise(x, generator) if i > 0 else 0.0)
    return x


@torch.no_grad()
def ddim_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    steps: int | str | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    noise: Tensor | None = None,
    clip: float | None = None,
    model_kwargs: dict | None = None,
) -> Tensor:
    """DDIM (Song et al., eq. 12) on the process respaced to ``steps`` (None: all steps).

    σ_s = η sqrt((1 - ᾱ_prev)/(1 - ᾱ_s)) sqrt(1 - ᾱ_s/ᾱ_prev); η = 1 on all steps is DDPM.
    """
    proc = diffusion if steps is None else diffusion.respaced(steps)
    x = (
        noise.to(device)
        if noise is not None
        else torch.randn(*shape, generator=generator, device=device)
    )
    kwargs = model_kwargs or {}
    for i in reversed(range(proc.num_steps)):
        x0, s = _x0(proc, model_fn, x, i, kwargs, clip)
        eps = proc.eps_from_x0(x, s, x0)
        ab, ab_prev = float(proc.alphas_cumprod[i]), float(proc.alphas_cumprod_prev[i])
        sigma = eta * ((1 - ab_prev) / (1 - ab)) ** 0.5 * (1 - ab / ab_prev) ** 0.5
        x = x0 * ab_prev**0.5 + (1 - ab_prev - sigma**2) ** 0.5 * eps
        if i > 0 and sigma > 0:
            x = x + sigma * _noise(x, generator)
    return x
