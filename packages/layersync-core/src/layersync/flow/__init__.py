"""Stochastic-interpolant objective (Linear/GVP/VP; velocity/noise/score) and samplers."""

from .config import SamplerConfig, TransportConfig, build_transport, run_sampler, sample_sit
from .objective import FlowObjective
from .samplers import CountingFn, guided, ode_nfe, sample_ode, sample_sde, sde_nfe
from .transport import (
    PATHS,
    PREDICTIONS,
    GVPPath,
    LinearPath,
    Transport,
    TransportLoss,
    VPPath,
    expand_t_like_x,
    make_path,
    mean_flat,
)

__all__ = [
    "PATHS",
    "PREDICTIONS",
    "CountingFn",
    "FlowObjective",
    "GVPPath",
    "LinearPath",
    "SamplerConfig",
    "Transport",
    "TransportConfig",
    "TransportLoss",
    "VPPath",
    "build_transport",
    "expand_t_like_x",
    "guided",
    "make_path",
    "mean_flat",
    "ode_nfe",
    "run_sampler",
    "sample_ode",
    "sample_sde",
    "sample_sit",
    "sde_nfe",
]
