"""Fixed-step ODE/SDE samplers and classifier-free guidance, from noise (t = t0) to data (t = 1).

Function evaluations (NFE): a "function evaluation" is one call of the model function given to
the sampler (one batched forward; under `guided` that forward carries the doubled batch).
- sample_ode, Euler: `steps` evaluations. Heun: 2 * steps (the corrector runs on every step,
  like a fixed-grid Heun/trapezoid RK2 step), or 2 * steps - 1 with `last_step_euler=True`
  (REPA's euler_sampler(heun=True) and EDM: the final step is a plain Euler step).
  `ode_nfe` gives the count. Note: SiT hands fixed-step ODE solvers to torchdiffeq on
  linspace(t0, t1, num_steps), i.e. num_steps - 1 intervals; here `steps` counts intervals,
  so SiT's num_steps=250 is steps=249 (REPA's num_steps is already intervals).
- sample_sde follows SiT: a grid of `steps` points on [t0, t1] (steps - 1 SDE steps, one
  evaluation each for Euler-Maruyama, two for Heun) then, unless last_step is None, one
  last-step evaluation at t1: NFE = (steps - 1) * (1 or 2) + (last_step is not None).
  SiT evaluated the model twice per drift (velocity and score separately); here both come from
  one evaluation, the numbers are otherwise identical. `sde_nfe` gives the count.
Wrap a model in `CountingFn` to measure it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .transport import ModelFn, Transport, expand_t_like_x

LAST_STEPS = ("Mean", "Tweedie", "Euler", None)


#################################################################################
#                                   Helpers                                     #
#################################################################################


class CountingFn:
    """Wraps a model function and counts its calls (`nfe`) and their batch sizes."""

    def __init__(self, fn: ModelFn) -> None:
        self.fn = fn
        self.nfe = 0
        self.batch_sizes: list[int] = []

    def __call__(self, x: Tensor, t: Tensor, **kwargs) -> Tensor:
        self.nfe += 1
        self.batch_sizes.append(x.shape[0])
        return self.fn(x, t, **kwargs)

    def reset(self) -> None:
        self.nfe = 0
        self.batch_sizes = []


def _method(method: str) -> str:
    key = method.lower()
    if key not in ("euler", "heun"):
        raise ValueError(f"unknown method {method!r}; choose 'euler' or 'heun'")
    return key


def _last_step(last_step: str | None) -> str | None:
    if last_step is None or last_step.lower() == "none":
        return None
    for name in ("Mean", "Tweedie", "Euler"):
        if last_step.lower() == name.lower():
            return name
    raise ValueError(f"unknown last_step {last_step!r}; choose one of {LAST_STEPS}")


def ode_nfe(steps: int, method: str = "euler", last_step_euler: bool = False) -> int:
    """Model evaluations used by sample_ode."""
    if _method(method) == "euler":
        return steps
    return 2 * steps - (1 if last_step_euler else 0)


def sde_nfe(steps: int, method: str = "euler", last_step: str | None = "Mean") -> int:
    """Model evaluations used by sample_sde."""
    per_step = 1 if _method(method) == "euler" else 2
    return (steps - 1) * per_step + (0 if _last_step(last_step) is None else 1)


def _time(t: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


#################################################################################
#                                  ODE sampler                                  #
#################################################################################


@torch.no_grad()
def sample_ode(
    velocity_fn: ModelFn,
    x0: Tensor,
    *,
    steps: int = 50,
    method: str = "euler",
    t0: float = 0.0,
    t1: float = 1.0,
    model_kwargs: dict | None = None,
    last_step_euler: bool = False,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Integrate dx/dt = velocity_fn(x, t, **model_kwargs) with `steps` uniform steps t0 -> t1.

    Use `transport.velocity(model)` as velocity_fn and `transport.ode_interval()` for (t0, t1).
    t0 > t1 integrates backwards (data -> noise). Returns the final state, or with
    return_trajectory=True (final, [x at each grid time, starting with x0]).
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    heun = _method(method) == "heun"
    kwargs = model_kwargs or {}
    grid = torch.linspace(t0, t1, steps + 1, dtype=torch.float64).tolist()
    x = x0
    traj = [x]
    for i in range(steps):
        t_cur, t_next = grid[i], grid[i + 1]
        h = t_next - t_cur
        d_cur = velocity_fn(x, _time(t_cur, x), **kwargs)
        x_next = x + h * d_cur
        if heun and not (last_step_euler and i == steps - 1):
            d_next = velocity_fn(x_next, _time(t_next, x), **kwargs)
            x_next = x + 0.5 * h * (d_cur + d_next)
        x = x_next
        if return_trajectory:
            traj.append(x)
    return (x, traj) if return_trajectory else x


#################################################################################
#                                  SDE sampler                                  #
#################################################################################


@torch.no_grad()
def sample_sde(
    transport: Transport,
    model_fn: ModelFn,
    x0: Tensor,
    *,
    steps: int = 250,
    method: str = "euler",
    diffusion_form: str = "sigma",
    diffusion_norm: float = 1.0,
    last_step: str | None = "Mean",
    last_step_size: float = 0.04,
    generator: torch.Generator | None = None,
    model_kwargs: dict | None = None,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Solve dx = [v + w s] dt + sqrt(2 w) dW from noise to data (SiT Sampler.sample_sde).

    v and s are the velocity and score of `model_fn` (a model of transport.prediction type),
    w = transport.diffusion(form, norm). The loop runs on `steps` grid points over
    transport.sde_interval(...) (Euler-Maruyama, or the stochastic Heun of SiT: noise first, then
    a Heun step of the drift), then the last step from t1 = 1 - last_step_size:
    "Mean" x + (v + w s) * size (no noise), "Tweedie" E[x1 | x] = (x + sigma^2 s) / alpha,
    "Euler" x + v * size, None nothing (the loop then ends at 1 - sample_eps).
    """
    if steps < 2:
        raise ValueError("steps must be >= 2 (a grid of `steps` points)")
    heun = _method(method) == "heun"
    last_step = _last_step(last_step)
    if last_step is None:
        last_step_size = 0.0
    kwargs = model_kwargs or {}
    t0, t1 = transport.sde_interval(diffusion_form, last_step_size)
    grid = torch.linspace(t0, t1, steps, dtype=torch.float64).tolist()
    dt = grid[1] - grid[0]

    def fields(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        out = model_fn(x, t, **kwargs)
        return transport.velocity_from_output(out, x, t), transport.score_from_output(out, x, t)

    def sde_drift(x: Tensor, t: Tensor) -> Tensor:
        v, s = fields(x, t)
        w = transport.diffusion(x, t, diffusion_form, diffusion_norm)
        # where w = 0 the score term is dropped, so a singular score (velocity models at t = 1,
        # reached by SiT's Heun corrector when last_step is None) cannot turn into 0 * inf = NaN
        return v + torch.where(w == 0, torch.zeros_like(s), w * s)

    x = x0
    traj = [x]
    for t_cur in grid[:-1]:
        t = _time(t_cur, x)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        dw = noise * dt**0.5
        w = transport.diffusion(x, t, diffusion_form, diffusion_norm)
        if heun:
            x_hat = x + torch.sqrt(2 * w) * dw
            k1 = sde_drift(x_hat, t)
            k2 = sde_drift(x_hat + dt * k1, _time(t_cur + dt, x))
            x = x_hat + 0.5 * dt * (k1 + k2)
        else:
            x = x + sde_drift(x, t) * dt + torch.sqrt(2 * w) * dw
        if return_trajectory:
            traj.append(x)

    t = _time(t1, x)
    if last_step == "Mean":
        x = x + sde_drift(x, t) * last_step_size
    elif last_step == "Euler":
        x = x + fields(x, t)[0] * last_step_size
    elif last_step == "Tweedie":
        tt = expand_t_like_x(t, x)
        alpha, sigma = transport.path.alpha(tt)[0], transport.path.sigma(tt)[0]
        x = (x + sigma**2 * fields(x, t)[1]) / alpha
    if return_trajectory and last_step is not None:
        traj.append(x)
    return (x, traj) if return_trajectory else x


#################################################################################
#                          Classifier-free guidance                             #
#################################################################################


def guided(
    model_fn: ModelFn,
    *,
    cfg_scale: float,
    null_cond: Tensor | float | int,
    cond_key: str = "y",
    interval: Sequence[float] | None = None,
    guided_channels: int | None = None,
    channel_dim: int = 1,
) -> ModelFn:
    """Model function with classifier-free guidance, out = uncond + s * (cond - uncond).

    Conditional and unconditional passes run in ONE forward on the doubled batch
    [x, x] with kwargs[cond_key] = [cond, null_cond]; other tensor kwargs whose leading dim is
    the batch size (masks, lengths) are repeated too. `null_cond` broadcasts to the condition
    (e.g. torch.tensor(1000) for the null ImageNet label, or a null embedding).
    Guidance applies to samples whose t lies in the closed `interval` (t_lo, t_hi) in this
    package's time (t = 1 is data; REPA's guidance_low/high in its noise-time are
    (1 - high, 1 - low) here); elsewhere the output is the conditional prediction, and a step
    with no sample inside runs the conditional batch only. With guided_channels=k only the
    first k channels (along channel_dim) are guided, the rest are the conditional output, as in
    SiT/DiT forward_with_cfg (k=3 of the 4 latent channels). cfg_scale == 1 runs the
    conditional model alone.
    """
    if interval is not None:
        lo, hi = float(interval[0]), float(interval[1])

    def guided_fn(x: Tensor, t: Tensor | float, **kwargs) -> Tensor:
        if cond_key not in kwargs:
            raise KeyError(f"guided model needs the condition as keyword {cond_key!r}")
        batch = x.shape[0]
        t_vec = torch.as_tensor(t, device=x.device)
        if t_vec.ndim == 0:
            t_vec = t_vec.expand(batch)
        inside = torch.ones(batch, dtype=torch.bool, device=x.device)
        if interval is not None:
            inside = (t_vec >= lo) & (t_vec <= hi)
        if cfg_scale == 1.0 or not bool(inside.any()):
            return model_fn(x, t, **kwargs)

        cond = kwargs[cond_key]
        null = torch.as_tensor(null_cond, device=cond.device).to(cond.dtype).expand_as(cond)
        kw2 = {
            k: torch.cat([v, v]) if torch.is_tensor(v) and v.ndim and v.shape[0] == batch else v
            for k, v in kwargs.items()
        }
        kw2[cond_key] = torch.cat([cond, null])
        out = model_fn(torch.cat([x, x]), torch.cat([t_vec, t_vec]), **kw2)
        out_c, out_u = out.chunk(2)
        out_g = out_u + cfg_scale * (out_c - out_u)
        if guided_channels is not None:
            k = guided_channels
            rest = out_c.shape[channel_dim] - k
            out_g = torch.cat(
                [out_g.narrow(channel_dim, 0, k), out_c.narrow(channel_dim, k, rest)], channel_dim
            )
        mask = inside.view(batch, *([1] * (out_c.ndim - 1)))
        return torch.where(mask, out_g, out_c)

    return guided_fn
