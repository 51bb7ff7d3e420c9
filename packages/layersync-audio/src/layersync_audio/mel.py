"""The log-mel representation the model trains on, and its way back to audio.

encode: torchaudio ``MelSpectrogram`` (power 2, centred frames; the last centred frame is
dropped so ``frames = samples // hop``), ``log(max(mel, floor))``, then per-bin standardisation
with the mean/std of the training split. decode: the inverse standardisation, clamped to the
range the encoder can produce (the floor below; above, each bin's largest value in the training
split: a sampler overshoots, and out-of-range bins clip the waveform), ``exp``, an
inverse mel scale back to a linear power spectrogram, and torchaudio's Griffin-Lim.

The inverse mel scale is a non-negative one: multiplicative (KL-NMF with the mel filterbank as
the fixed basis) updates from the filterbank-spread mel energies. torchaudio's
``InverseMelScale`` returns the minimum-norm least-squares solution with its negative bins
clipped to 0, which re-projects to mel bands ~0.6 nats off on the loud bins of pure tones;
50 multiplicative updates bring that under 0.05 (tests/test_audio_data.py checks the round trip).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class LogMel(nn.Module):
    """Waveforms ``(B, N)`` <-> standardised log-mel ``(B, n_mels, N // hop)``."""

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 250,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        floor: float = 1e-5,
        griffin_lim_iters: int = 32,
    ) -> None:
        super().__init__()
        import torchaudio.transforms as T

        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.n_mels, self.floor = n_mels, floor
        self.mel = T.MelSpectrogram(
            sample_rate, n_fft, hop_length=hop_length, f_min=f_min, f_max=f_max, n_mels=n_mels,
            power=2.0, norm="slaney", mel_scale="slaney",
        )  # fmt: skip
        self.griffin_lim_iters = griffin_lim_iters
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))
        self.register_buffer("peak", torch.full((n_mels,), float("inf")))  # per-bin max (fit)

    # -- statistics -------------------------------------------------------------------------
    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Unstandardised ``log(max(mel, floor))`` ``(..., n_mels, N // hop)``."""
        frames = wave.shape[-1] // self.hop_length
        return self.mel(wave.float()).clamp_min(self.floor).log()[..., :frames]

    @torch.no_grad()
    def fit(self, waves: Iterable[torch.Tensor]) -> LogMel:
        """Set the per-bin mean/std (float64 sums over all frames) and maximum from batches of
        waveforms."""
        total, count = torch.zeros(self.n_mels, dtype=torch.float64), 0
        sq = torch.zeros_like(total)
        peak = torch.full((self.n_mels,), float("-inf"))
        for wave in waves:
            x = self.log_mel(wave.reshape(-1, wave.shape[-1]))
            peak = torch.maximum(peak, x.amax((0, 2)))
            x = x.double()
            total += x.sum((0, 2))
            sq += x.pow(2).sum((0, 2))
            count += x.shape[0] * x.shape[2]
        if count == 0:
            raise ValueError("LogMel.fit: no audio given")
        mean = total / count
        std = (sq / count - mean.pow(2)).clamp_min(1e-8).sqrt()
        self.mean.copy_(mean.float())
        self.std.copy_(std.float())
        self.peak.copy_(peak)
        return self

    def inverse_mel(self, power: torch.Tensor, iters: int = 50) -> torch.Tensor:
        """Mel power ``(..., n_mels, F)`` -> a non-negative linear power ``(..., n_fft/2+1, F)``
        whose mel projection matches it (multiplicative updates, see the module docstring)."""
        fb = self.mel.mel_scale.fb  # (freqs, mels)
        spread = fb / fb.sum(0).clamp_min(1e-12)
        linear = spread @ power
        norm = fb.sum(1, keepdim=True).clamp_min(1e-12)
        for _ in range(iters):
            linear = linear * (fb @ (power / (fb.T @ linear).clamp_min(1e-12))) / norm
        return linear

    # -- the two directions -----------------------------------------------------------------
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        return (self.log_mel(wave) - self.mean[:, None]) / self.std[:, None]

    @torch.no_grad()
    def decode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standardised log-mel ``(B, n_mels, F)`` -> waveforms ``(B, F * hop)`` in [-1, 1];
        values outside the encoder's range are clamped into it first.

        Griffin-Lim starts from random phases: with ``generator`` the result is reproducible."""
        import torchaudio

        log = (x.float() * self.std[:, None] + self.mean[:, None]).clamp_min(math.log(self.floor))
        power = torch.minimum(log, self.peak[:, None]).exp()
        power = torch.cat([power, power[..., -1:]], -1)  # the dropped last centred frame
        linear = self.inverse_mel(power)
        with torch.random.fork_rng(devices=[]):  # griffinlim draws its phases from the global RNG
            if generator is not None:
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            wave = torchaudio.functional.griffinlim(
                linear, self.window, self.n_fft, self.hop_length, self.n_fft, 2.0,
                self.griffin_lim_iters, 0.99, x.shape[-1] * self.hop_length, True,
            )  # fmt: skip
        return wave.clamp(-1, 1)
