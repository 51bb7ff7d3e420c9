"""Stable Audio Open VAE latents: the VAE, the windows it encodes, ``layersync audio encode``.

The VAE is a diffusers ``AutoencoderOobleck`` in a LOCAL folder (``config.json`` + weights, as
``save_pretrained`` writes it; a pipeline folder with a ``vae/`` sub-folder also works). Stable
Audio Open's: stereo 44.1 kHz, 2048 samples per latent frame, 64 latent channels.

What is cached. Every file of a folder (class sub-folders give ``labels``) or of an MTG-Jamendo
TSV (``tags``, multi-hot over the vocabulary) is resampled to the VAE's ``sampling_rate``, given
its ``audio_channels`` (mono repeated to stereo, or stereo mixed down) and cut into consecutive
windows of ``seconds`` rounded to whole latent frames (10 s -> 215 frames at 44.1 kHz / 2048).
A file's last window ends at the file's end (it overlaps the one before); a file shorter than
one window is padded with silence at the end, as the wave loaders pad short clips. Each window
is one cache item: the posterior ``mean``/``std`` ``(latent channels, frames)`` and the fields
``labels`` (int64) or ``tags`` (float32 multi-hot), ``track`` (int64 file index), ``start``
(int64 first sample at the VAE rate) and ``file`` (text). Training crops ``data.frames`` of each
window at random (:mod:`layersync_audio.latents`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from layersync.assets import diffusers_folder, load_diffusers
from layersync_audio.data import AudioError, read_audio

__all__ = ["AudioWindows", "VaeSpec", "encode_windows", "load_vae", "vae_spec"]

# --------------------------------------------------------------------------------------------
# The VAE folder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VaeSpec:
    """The facts of a VAE folder's ``config.json`` the audio path needs."""

    path: Path
    sample_rate: int
    audio_channels: int
    hop_length: int
    latent_channels: int
    scale_factor: float


INSTALL = "pip install 'layersync-audio[vae]'"


def vae_spec(path: str | os.PathLike | None, key: str = "vae") -> VaeSpec:
    """Read the folder's ``config.json`` (no weights loaded); AssetError naming ``key`` when it
    is not a local AutoencoderOobleck folder (core ``diffusers_folder``)."""
    folder, config = diffusers_folder(path, "AutoencoderOobleck", key=key, install=INSTALL)
    hop = 1
    for r in config.get("downsampling_ratios", [2, 4, 4, 8, 8]):
        hop *= int(r)
    return VaeSpec(
        path=folder,
        sample_rate=int(config.get("sampling_rate", 44100)),
        audio_channels=int(config.get("audio_channels", 2)),
        hop_length=hop,
        latent_channels=int(config.get("decoder_input_channels", 64)),
        scale_factor=float(config.get("scaling_factor", 1.0)),  # Stable Audio Open: none (1.0)
    )


def load_vae(path: str | os.PathLike, key: str = "vae") -> Any:
    """The ``AutoencoderOobleck`` of a local folder, in eval mode on the CPU."""
    return load_diffusers(path, "AutoencoderOobleck", key=key, install=INSTALL)


# --------------------------------------------------------------------------------------------
# Windows of the source files
# --------------------------------------------------------------------------------------------


def _duration(path: Path, rate: int) -> int:
    """Length of ``path`` in samples at ``rate``, from its header."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:
        raise AudioError(f"{path}: cannot decode audio ({e})") from None
    if info.frames <= 0:
        raise AudioError(f"{path}: cannot decode audio (no samples)")
    return -(-info.frames * rate // info.samplerate)


class AudioWindows(Dataset):
    """Windows of ``frames * hop`` samples of every file of ``files`` (an ``AudioFolder`` or
    ``JamendoDataset``): items ``(wave (channels, N), condition, track, start)``.

    ``on_error="skip"`` drops files whose header cannot be read (counted in ``skipped``)."""

    def __init__(self, files: Any, spec: VaeSpec, frames: int, on_error: str = "error") -> None:
        self.source, self.spec, self.frames = files, spec, int(frames)
        self.length = self.frames * spec.hop_length
        self.windows: list[tuple[int, int]] = []
        self.skipped = 0
        for track, path in enumerate(files.files):
            try:
                n = _duration(path, spec.sample_rate)
            except AudioError:
                if on_error != "skip":
                    raise
                self.skipped += 1
                continue
            starts = list(range(0, max(1, n - self.length + 1), self.length))
            if n > self.length and starts[-1] + self.length < n:
                starts.append(n - self.length)  # the last window ends at the file's end
            self.windows += [(track, s) for s in starts]
        if not self.windows:
            raise AudioError(f"no decodable audio file among the {len(files.files)} of {files}")
        self._last: tuple[int, torch.Tensor] | None = None  # files are visited in order

    def __len__(self) -> int:
        return len(self.windows)

    def wave(self, track: int) -> torch.Tensor:
        if self._last is None or self._last[0] != track:
            path = self.source.files[track]
            self._last = (track, read_audio(path, self.spec.sample_rate, self.spec.audio_channels))
        return self._last[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        track, start = self.windows[index]
        wave = self.wave(track)[:, start : start + self.length]
        wave = torch.nn.functional.pad(wave, (0, self.length - wave.shape[1]))
        return wave, self.source.target(track), track, start

    def __repr__(self) -> str:
        return f"AudioWindows({self.source!r}, windows={len(self)}, frames={self.frames})"


# --------------------------------------------------------------------------------------------
# Encoding into the core latent cache
# --------------------------------------------------------------------------------------------


def encode_windows(
    windows: AudioWindows,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float16,
    shard_size: int = 4096,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Run the VAE of ``windows.spec`` once over every window and write the moment cache to
    ``out_dir`` (:func:`layersync.latents.write_latent_cache`); returns ``out_dir``."""
    from layersync.latents import write_latent_cache

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"latent cache {out_dir} already exists (pass --overwrite)")
    spec, source = windows.spec, windows.source
    vae = load_vae(spec.path).to(device)
    tags = hasattr(source, "vocabulary")
    cond = "tags" if tags else "labels"

    def encode(lo: int, hi: int) -> dict[str, Any]:
        parts: dict[str, list] = {k: [] for k in ("mean", "std", cond, "track", "start")}
        files: list[str] = []
        with torch.no_grad():
            for b in range(lo, hi, batch_size):
                items = [windows[i] for i in range(b, min(hi, b + batch_size))]
                dist = vae.encode(torch.stack([w for w, *_ in items]).to(device)).latent_dist
                for k, v in (("mean", dist.mean), ("std", dist.std)):
                    parts[k].append(v.float().cpu())
                parts[cond].append(torch.stack([c for _, c, *_ in items]))
                parts["track"].append(torch.tensor([t for *_, t, _ in items]))
                parts["start"].append(torch.tensor([s for *_, s in items]))
                files += [str(source.files[t]) for *_, t, _ in items]
                if progress is not None:
                    progress(min(hi, b + batch_size), len(windows))
        out: dict[str, Any] = {k: torch.cat(v) for k, v in parts.items()}
        out[cond] = out[cond].to(torch.float32 if tags else torch.int64)
        return {**out, "file": files}

    info = {
        "modality": "audio",
        "vae": str(spec.path.resolve()),
        "sample_rate": spec.sample_rate,
        "audio_channels": spec.audio_channels,
        "hop_length": spec.hop_length,
        "window_frames": windows.frames,
        "condition": cond,
        "source": repr(source),
        **({"vocabulary": list(source.vocabulary)} if tags else {}),
        **({"classes": list(source.classes)} if not tags else {}),
    }
    return write_latent_cache(
        out_dir,
        len(windows),
        encode,
        scale_factor=spec.scale_factor,
        dtype=dtype,
        shard_size=shard_size,
        info=info,
        plan={"source": repr(windows), "vae": info["vae"]},
        overwrite=overwrite,
    )
