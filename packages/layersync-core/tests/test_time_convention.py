"""One time convention: ``layersync.time_range`` gates the same noise levels for a flow objective
(the toy-image template's rectified flow) and a discrete diffusion objective (the MDM-shaped test
plugin, step s of T reported as t = 1 - s/T)."""

from __future__ import annotations

from pathlib import Path

import torch

from layersync.loss import LayerSync


class Probe(torch.nn.Module):
    """Stands in for a backbone: records what the objective feeds it; two identity 'blocks'."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])
        self.seen: dict[str, torch.Tensor] = {}

    def forward(self, x, t, y, mask=None):
        self.seen["x"], self.seen["t"] = x, t
        h = x.reshape(x.shape[0], -1, 4)
        for block in self.blocks:
            h = block(h)
        return torch.zeros_like(x)


def signal_to_noise(kind: str, objective, seen) -> torch.Tensor:
    """The true per-sample SNR of the model input, from the objective's own parameters."""
    if kind == "flow":  # x_t = t x + (1 - t) noise
        t = seen["t"]
        return t**2 / (1 - t).clamp_min(1e-6) ** 2
    ab = objective.ab[seen["t"].long()]  # the model got the integer step s
    return ab / (1 - ab)


def test_one_time_range_gates_the_same_noise_levels(toy_plugins: Path) -> None:
    import toy_sequence
    from layersync_toy_image.plugin import PatternDataset, RectifiedFlow

    cases = {
        "flow": (RectifiedFlow(fixed_noise=False), PatternDataset(64, 0.05, 0)),
        "discrete": (toy_sequence.X0Diffusion(), toy_sequence.SineDataset(64, 0)),
    }
    for kind, (objective, data) in cases.items():
        batch = torch.utils.data.default_collate([data[i] for i in range(64)])
        model = Probe()
        sync = LayerSync(model, "1<-2", weight=1.0, time_range=(0.7, 1.0), warn=False)
        with sync:
            out = objective(model, batch, torch.Generator().manual_seed(0))
        gate, _ = sync._gate(None, out.t, sync.taps.pop()["blocks.0"])
        inside = gate[:, 0] > 0
        snr = signal_to_noise(kind, objective, model.seen)
        # the gate keeps exactly the cleanest samples (high SNR), in both objectives
        assert 0 < int(inside.sum()) < 64, kind
        assert snr[inside].min() > snr[~inside].max(), kind
        assert snr[inside].min() > 1.0, kind  # t >= 0.7: signal dominates the input
        assert (out.t[inside] >= 0.7).all() and (out.t[~inside] < 0.7).all(), kind
