"""Deterministic random VGGish weights, shared by test_vggish.py and its fixture script."""

from __future__ import annotations

import torch


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """One N(0, 1/fan_in) tensor per key (sorted), biases N(0, 0.01^2): reproducible anywhere."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(shapes):
        shape = shapes[name]
        fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
        std = fan_in**-0.5 if len(shape) > 1 else 0.01
        state[name] = torch.randn(shape, generator=g) * std
    return state
