"""musicnn (Pons & Serra, 2019), MSD tagger, ported to torch: the embedding of ``fad_musicnn``.

Weights: the TensorFlow checkpoint ``musicnn/MSD_musicnn/.index`` + ``.data-00000-of-00001``
inside the ``musicnn`` wheel (ISC), installed with ``pip install --no-deps musicnn`` (its pins,
tensorflow and numpy<1.17, are not needed) and read by :mod:`layersync_audio.tfckpt`.

Front end as the original extractor: 16 kHz mono, power mel (n_fft 512, hop 256, 96 Slaney
bands, Slaney norm, centred frames with reflect padding), rounded to float16 and back, then
``log10(10000 x + 1)``; non-overlapping 187-frame (3 s) patches, clips shorter than one patch
repeat-padded. The embedding is the 200-d ``penultimate`` layer (batch-normed dense), one per
patch. Network: ``build_musicnn`` (7774 timbral/temporal front end, 3 dense-residual 1-d convs,
max/mean pooling interleaved per channel, dense 200, logits 50); batch norm eps 1e-3; TF "same"
convolutions with even kernels pad (k-1)//2 before and k//2 after.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE, N_FFT, HOP, N_MELS, PATCH = 16000, 512, 256, 96, 187
EMBED_DIM = 200
MSD_LABELS = [
    "rock",
    "pop",
    "alternative",
    "indie",
    "electronic",
    "female vocalists",
    "dance",
    "00s",
    "alternative rock",
    "jazz",
    "beautiful",
    "metal",
    "chillout",
    "male vocalists",
    "classic rock",
    "soul",
    "indie rock",
    "Mellow",
    "electronica",
    "80s",
    "folk",
    "90s",
    "chill",
    "instrumental",
    "punk",
    "oldies",
    "blues",
    "hard rock",
    "ambient",
    "acoustic",
    "experimental",
    "female vocalist",
    "guitar",
    "Hip-Hop",
    "70s",
    "party",
    "country",
    "easy listening",
    "sexy",
    "catchy",
    "funk",
    "electro",
    "heavy metal",
    "Progressive rock",
    "60s",
    "rnb",
    "indie pop",
    "sad",
    "House",
    "happy",
]


def default_weights() -> Path:
    """``MSD_musicnn/.index`` inside the installed ``musicnn`` (one-line install hint if not)."""
    from layersync.assets import package_file

    return package_file("musicnn", "MSD_musicnn/.index", dist="musicnn")


# --------------------------------------------------------------------------------------------
# Front end
# --------------------------------------------------------------------------------------------


class MelFrontEnd(nn.Module):
    """Waveform(s) ``(..., N)`` at 16 kHz -> musicnn's power mel ``(..., frames, 96)``
    (frames = 1 + N // 256), computed in float64 and returned as float32."""

    def __init__(self) -> None:
        super().__init__()
        import torchaudio

        fb = torchaudio.functional.melscale_fbanks(
            N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, N_MELS, SAMPLE_RATE, "slaney", "slaney"
        )
        self.register_buffer("fbank", fb.double(), persistent=False)
        self.register_buffer(
            "window", torch.hann_window(N_FFT, dtype=torch.float64), persistent=False
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            wave.double(),
            N_FFT,
            HOP,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spec.abs().pow(2).transpose(-1, -2)  # (..., frames, freqs)
        return (power @ self.fbank).float()


def log_compress(mel: torch.Tensor) -> torch.Tensor:
    """musicnn's log: float16 rounding of the power mel, back to float32, log10(10000 x + 1)."""
    return torch.log10(10000.0 * mel.half().float() + 1.0)


def patches(logmel: torch.Tensor) -> torch.Tensor:
    """``(frames, 96)`` -> ``(P, 187, 96)`` non-overlapping patches (the remainder is dropped,
    as in the original); a clip shorter than one patch is repeated until it fills one."""
    frames = logmel.shape[0]
    if frames < PATCH:
        logmel = logmel.repeat(-(-PATCH // frames), 1)[:PATCH]
        frames = PATCH
    n = frames // PATCH
    return logmel[: n * PATCH].reshape(n, PATCH, N_MELS)


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def _bn(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3)


class MusiCNN(nn.Module):
    """``build_musicnn`` with 1.6x front-end filters, 64 mid-end filters, 200 back-end units."""

    def __init__(self, num_classes: int = 50, mid: int = 64, units: int = 200) -> None:
        super().__init__()
        self.bn_input = nn.BatchNorm2d(1, eps=1e-3)
        # timbral: (7 x 38) and (7 x 67) kernels over (time, mel), 204 filters each
        self.timbral = nn.ModuleList(nn.Conv2d(1, 204, (7, k)) for k in (38, 67))
        self.timbral_bn = nn.ModuleList(_bn(204) for _ in range(2))
        # temporal: (128/64/32 x 1) kernels, 51 filters each, TF "same" padding in time
        self.temporal = nn.ModuleList(nn.Conv2d(1, 51, (k, 1)) for k in (128, 64, 32))
        self.temporal_bn = nn.ModuleList(_bn(51) for _ in range(3))
        front = 2 * 204 + 3 * 51
        self.mid = nn.ModuleList(nn.Conv1d(c, mid, 7) for c in (front, mid, mid))
        self.mid_bn = nn.ModuleList(_bn(mid) for _ in range(3))
        pooled = 2 * (front + 3 * mid)
        self.pool_bn = _bn(pooled)
        self.dense = nn.Linear(pooled, units)
        self.dense_bn = _bn(units)
        self.logits = nn.Linear(units, num_classes)

    def _freq_max(self, h: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
        """conv output (B, C, T, F') -> ReLU -> batch norm -> max over frequency: (B, C, T).

        In eval mode batch norm is a per-channel affine map a x + b, so the max over frequency
        is a * max(x) + b where a >= 0 and a * min(x) + b where a < 0: no (B, C, T, F') pass
        beyond the ReLU."""
        h = F.relu(h)
        if self.training:
            b, c, t, f = h.shape
            h = bn(h.permute(0, 3, 1, 2).reshape(b * f, c, t))
            return h.reshape(b, f, c, t).amax(1)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        ext = torch.where(scale[:, None] >= 0, h.amax(-1), h.amin(-1))
        return ext * scale[:, None] + shift[:, None]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` (B, 187, 96) log-mel patches -> {"penultimate" (B, 200), "logits" (B, 50),
        "mean_pool"/"max_pool" (B, 753), "timbral" (B, T, 408), "temporal" (B, T, 153)}."""
        h = self.bn_input(x[:, None])  # (B, 1, T, 96)
        padded = F.pad(h, (0, 0, 3, 3))
        timbral = [
            self._freq_max(conv(padded), bn)
            for conv, bn in zip(self.timbral, self.timbral_bn, strict=True)
        ]
        temporal = []
        for conv, bn in zip(self.temporal, self.temporal_bn, strict=True):
            k = conv.kernel_size[0]
            temporal.append(self._freq_max(conv(F.pad(h, (0, 0, (k - 1) // 2, k // 2))), bn))
        front = torch.cat(timbral + temporal, 1)  # (B, 561, T)
        feats, res = [front], None
        for i, (conv, bn) in enumerate(zip(self.mid, self.mid_bn, strict=True)):
            out = bn(F.relu(conv(F.pad(feats[-1], (3, 3)))))
            res = out if i == 0 else out + res
            feats.append(res)
        mid = torch.cat(feats, 1)  # (B, 753, T)
        max_pool, mean_pool = mid.amax(-1), mid.mean(-1)
        pooled = torch.stack([max_pool, mean_pool], -1).flatten(1)  # [max_0, mean_0, max_1, ...]
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return {
            "penultimate": penultimate,
            "logits": self.logits(penultimate),
            "mean_pool": mean_pool,
            "max_pool": max_pool,
            "timbral": torch.cat(timbral, 1).transpose(1, 2),
            "temporal": torch.cat(temporal, 1).transpose(1, 2),
        }

    # -- weights --------------------------------------------------------------------------
    def load_tf(self, tensors: dict) -> MusiCNN:
        """Copy the checkpoint tensors (TF1 layer names in creation order) into this module."""
        convs = [*self.timbral, *self.temporal, *self.mid]
        bns = [self.bn_input, *self.timbral_bn, *self.temporal_bn, *self.mid_bn]
        bns += [self.pool_bn, self.dense_bn]
        t = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
        with torch.no_grad():
            for i, conv in enumerate(convs):
                name = "conv2d" + (f"_{i}" if i else "")
                kernel = t[f"{name}/kernel"]  # [kh, kw, in, out]
                if conv.weight.ndim == 3:  # full-width conv2d == conv1d over the width's channels
                    kernel = kernel[:, :, 0].permute(2, 1, 0)
                else:
                    kernel = kernel.permute(3, 2, 0, 1)
                conv.weight.copy_(kernel)
                conv.bias.copy_(t[f"{name}/bias"])
            for i, bn in enumerate(bns):
                name = "batch_normalization" + (f"_{i}" if i else "")
                bn.weight.copy_(t[f"{name}/gamma"])
                bn.bias.copy_(t[f"{name}/beta"])
                bn.running_mean.copy_(t[f"{name}/moving_mean"])
                bn.running_var.copy_(t[f"{name}/moving_variance"])
            for layer, name in ((self.dense, "dense"), (self.logits, "dense_1")):
                layer.weight.copy_(t[f"{name}/kernel"].T)
                layer.bias.copy_(t[f"{name}/bias"])
        return self


@lru_cache(maxsize=2)
def load_musicnn(index: str | None = None) -> MusiCNN:
    """The MSD musicnn in eval mode; ``index``: a ``.index`` file (default: the installed
    ``musicnn`` wheel's)."""
    from layersync_audio.tfckpt import load_checkpoint

    path = Path(index) if index else default_weights()
    return MusiCNN().load_tf(load_checkpoint(path)).eval()


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


class MusicnnEmbedding(nn.Module):
    """Clips (16 kHz mono waveforms) -> per-patch 200-d penultimate embeddings."""

    dim = EMBED_DIM
    sample_rate = SAMPLE_RATE
    batch_size = 8  # patches per forward: keeps the (B, 204, 187, 59) activations small

    def __init__(self, model: MusiCNN | None = None) -> None:
        super().__init__()
        self.frontend = MelFrontEnd()
        self.model = model if model is not None else load_musicnn()

    @torch.no_grad()
    def forward(self, waves: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """A batch ``(B, N)`` or a list of 1-d clips -> ``(sum of patches, 200)``."""
        batch = torch.cat([patches(log_compress(self.frontend(torch.as_tensor(w)))) for w in waves])
        device = next(self.model.parameters()).device
        return torch.cat(
            [self.model(b.to(device))["penultimate"] for b in batch.split(self.batch_size)]
        )
