"""The ``transport`` and ``sampler`` config sections of a flow-matching plugin, and the
functions that turn them into a ``Transport`` and into samples (of any model, or in batches
from a core ``layersync.nn.SiT``).

A plugin puts ``transport: TransportConfig`` and ``sampler: SamplerConfig`` (or a subclass that
adds fields, e.g. a frame rate) in its config model. ``layersync bench sample`` varies and
describes exactly these fields, so a plugin that uses them gets sampler benchmarks for free.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from layersync.config import Section

from .samplers import guided, sample_ode, sample_sde
from .transport import ModelFn, Transport


class TransportConfig(Section):
    path: Literal["linear", "gvp", "vp"] = "linear"
    prediction: Literal["velocity", "noise", "score", "data"] = "velocity"
    loss_weight: Literal["velocity", "likelihood"] | None = None
    train_eps: float | None = None
    sample_eps: float | None = None
    time_dist: Literal["uniform", "logit-normal"] = Field(
        "uniform",
        description="training times: uniform (SiT) or logit-normal (SD3, JiT: sigmoid of "
        "N(time_mean, time_std); a negative mean trains more near noise)",
    )
    time_mean: float = 0.0
    time_std: float = Field(1.0, gt=0)


class SamplerConfig(Section):
    mode: Literal["ode", "sde"] = "ode"
    method: Literal["euler", "heun"] = "heun"
    steps: int = Field(50, gt=1)
    cfg_scale: float = Field(1.0, ge=1.0)
    cfg_interval: tuple[float, float] | None = Field(
        None, description="guide only for t in [low, high] (t=1 is data)"
    )
    guided_channels: int | None = Field(
        None, gt=0, description="guide only the first k channels (official SiT/DiT: 3 of 4)"
    )
    last_step: Literal["Mean", "Tweedie", "Euler"] | None = "Mean"
    last_step_size: float = 0.04
    diffusion_form: str = "sigma"
    diffusion_norm: float = 1.0
    batch_size: int = Field(64, gt=0)


def build_transport(tc: TransportConfig) -> Transport:
    return Transport(
        tc.path,
        tc.prediction,
        tc.loss_weight,
        tc.train_eps,
        tc.sample_eps,
        time_dist=tc.time_dist,
        time_mean=tc.time_mean,
        time_std=tc.time_std,
    )


def run_sampler(
    sc: SamplerConfig,
    transport: Transport,
    model_fn: ModelFn,
    z: Tensor,
    *,
    model_kwargs: dict | None = None,
    null_cond: Tensor | float | int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Samples from the noise batch ``z`` with the sampler ``sc`` describes.

    ``model_fn(x, t, **model_kwargs)``; classifier-free guidance (``sc.cfg_scale > 1``) needs the
    condition under ``model_kwargs["y"]`` and its ``null_cond``: without one (an unconditional
    model) the scale is ignored."""
    if sc.cfg_scale > 1.0 and null_cond is not None:
        model_fn = guided(
            model_fn,
            cfg_scale=sc.cfg_scale,
            null_cond=null_cond,
            interval=sc.cfg_interval,
            guided_channels=sc.guided_channels,
        )
    if sc.mode == "ode":
        t0, t1 = transport.ode_interval()
        return sample_ode(
            transport.velocity(model_fn),
            z,
            steps=sc.steps,
            method=sc.method,
            t0=t0,
            t1=t1,
            model_kwargs=model_kwargs,
        )
    return sample_sde(
        transport,
        model_fn,
        z,
        steps=sc.steps,
        method=sc.method,
        diffusion_form=sc.diffusion_form,
        diffusion_norm=sc.diffusion_norm,
        last_step=sc.last_step,
        last_step_size=sc.last_step_size,
        generator=generator,
        model_kwargs=model_kwargs,
    )


@torch.no_grad()
def sample_sit(
    model: nn.Module,
    sc: SamplerConfig,
    transport: Transport,
    n: int,
    condition: Tensor | None,
    generator: torch.Generator,
    null_cond: Tensor | float | int | None = None,
) -> Tensor:
    """``n`` samples ``(n, C, *input_size)`` from a core ``layersync.nn.SiT`` (put in eval mode)
    in batches of ``sc.batch_size``: noise drawn from ``generator`` (on its device), sample
    ``i`` conditioned on ``condition[i]`` (None: unconditional, no guidance)."""
    device = next(model.parameters()).device
    model.eval()
    shape = (model.in_channels, *model.x_embedder.input_size)

    def model_fn(x: Tensor, t: Tensor, **kw: Tensor) -> Tensor:
        return model(x, t.expand(len(x)) if t.ndim == 0 else t, kw.get("y"))

    out = []
    for start in range(0, n, sc.batch_size):
        b = min(sc.batch_size, n - start)
        z = torch.randn(b, *shape, generator=generator, device=generator.device).to(device)
        kwargs = {} if condition is None else {"y": condition[start : start + b].to(device)}
        null = None if condition is None else null_cond
        out.append(
            run_sampler(
                sc, transport, model_fn, z, model_kwargs=kwargs, null_cond=null, generator=generator
            )
        )
    return torch.cat(out)
