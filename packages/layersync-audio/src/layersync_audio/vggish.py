"""VGGish (Hershey et al. 2017) as torchvggish lays it out: the embedding of ``fad_vggish``.

No weights install offline: pass a local torchvggish state dict (``vggish-10086976.pth``,
keys ``features.{0,3,6,8,11,13}.*`` and ``embeddings.{0,2,4}.*``) as ``metric.weights``.

Front end as AudioSet's ``vggish_input``: 16 kHz mono, 25-ms periodic-Hann frames every 10 ms
without padding, |rfft| with n=512, 64 HTK mel bands from 125 to 7500 Hz (the DC bin zeroed),
``log(mel + 0.01)``, non-overlapping 0.96-s examples of 96 frames (a clip shorter than one
example is repeat-padded). The embedding is the 128-d output of the last linear layer WITHOUT
its ReLU and without the PCA/quantisation post-processing.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

SAMPLE_RATE, WINDOW, HOP, N_FFT, N_MELS, EXAMPLE = 16000, 400, 160, 512, 64, 96
EMBED_DIM = 128


# --------------------------------------------------------------------------------------------
# Front end
# --------------------------------------------------------------------------------------------


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)


def mel_matrix(lower: float = 125.0, upper: float = 7500.0) -> torch.Tensor:
    """(257, 64) float64 HTK triangular weights on the rfft bins (vggish ``mel_features``)."""
    bins = _hz_to_mel(torch.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1, dtype=torch.float64))
    lo, hi = _hz_to_mel(torch.tensor([lower, upper], dtype=torch.float64))
    edges = torch.linspace(float(lo), float(hi), N_MELS + 2, dtype=torch.float64)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - left) / (center - left)
    falling = (right - bins[:, None]) / (right - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights[0] = 0.0  # the DC bin
    return weights


class VGGishFrontEnd(nn.Module):
    """Waveform ``(N,)`` at 16 kHz -> log-mel examples ``(E, 1, 96, 64)`` (float32)."""

    def __init__(self) -> None:
        super().__init__()
        n = torch.arange(WINDOW, dtype=torch.float64)
        self.register_buffer("window", 0.5 - 0.5 * torch.cos(2 * math.pi * n / WINDOW), False)
        self.register_buffer("mel", mel_matrix(), False)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """``(frames, 64)`` with frames = 1 + (N - 400) // 160 (no padding)."""
        x = wave.double()
        if len(x) < WINDOW:
            x = torch.nn.functional.pad(x, (0, WINDOW - len(x)))
        frames = x.unfold(0, WINDOW, HOP) * self.window
        magnitude = torch.fft.rfft(frames, n=N_FFT).abs()
        return torch.log(magnitude @ self.mel + 0.01)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        logmel = self.log_mel(wave)
        if len(logmel) < EXAMPLE:
            logmel = logmel.repeat(-(-EXAMPLE // len(logmel)), 1)[:EXAMPLE]
        n = len(logmel) // EXAMPLE
        return logmel[: n * EXAMPLE].reshape(n, 1, EXAMPLE, N_MELS).float()


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


class VGGish(nn.Module):
    """VGG-like conv stack (64, M, 128, M, 256, 256, M, 512, 512, M) + 3 linear layers."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU()]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(),
            nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, EMBED_DIM),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 96, 64)`` log-mel examples -> ``(B, 128)`` (before the final ReLU)."""
        h = self.features(x)  # (B, 512, 6, 4)
        h = h.permute(0, 2, 3, 1).flatten(1)  # TF's (H, W, C) flattening order
        return self.embeddings(h)


def load_vggish(path: str | Path) -> VGGish:
    """A torchvggish state dict (``.pth``, read with weights_only) -> VGGish in eval mode."""
    from layersync.assets import AssetError, load_torch_state

    state = load_torch_state(path)
    model = VGGish()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise AssetError(f"{path}: not a torchvggish state dict ({first})") from None
    return model.eval()


class VGGishEmbedding(nn.Module):
    """Clips (16 kHz mono waveforms) -> per-0.96-s-example 128-d embeddings."""

    dim = EMBED_DIM
    sample_rate = SAMPLE_RATE
    batch_size = 16

    def __init__(self, model: VGGish) -> None:
        super().__init__()
        self.frontend = VGGishFrontEnd()
        self.model = model

    @torch.no_grad()
    def forward(self, waves: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        batch = torch.cat([self.frontend(torch.as_tensor(w)) for w in waves])
        device = next(self.model.parameters()).device
        return torch.cat([self.model(b.to(device)) for b in batch.split(self.batch_size)])
