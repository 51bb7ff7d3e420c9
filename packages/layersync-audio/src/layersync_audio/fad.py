"""Fréchet Audio Distance, named by its embedding network (``fad_musicnn``).

FAD = the Fréchet distance between Gaussians fitted to ALL frame embeddings of a reference set
and of a generated set (core ``FeatureStats`` / ``frechet_distance``). An embedding network
takes mono clips at its own sample rate (clips are resampled to it) and returns one vector per
frame (musicnn: per 3-s patch; CLAP: per 10-s window, one every second).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from layersync.metrics import FeatureStats, GaussianStats

# embedding name (metric.embedding) -> (metric name, loader(weights path or None) -> network)
EMBEDDINGS: dict[str, tuple[str, Callable[[str | None], Any]]] = {}


def _musicnn(weights: str | None) -> Any:
    from layersync_audio.musicnn import MusicnnEmbedding, load_musicnn

    return MusicnnEmbedding(load_musicnn(weights))


def _vggish(weights: str | None) -> Any:
    from layersync.assets import AssetError
    from layersync_audio.vggish import VGGishEmbedding, load_vggish

    if not weights:
        raise AssetError(
            "metric.weights: VGGish weights do not install offline; pass a local torchvggish "
            "state dict (vggish-10086976.pth) as metric.weights"
        )
    return VGGishEmbedding(load_vggish(weights))


def _clap(weights: str | None) -> Any:
    from layersync_audio.clap import ClapEmbedding, load_clap

    return ClapEmbedding(load_clap(weights))


EMBEDDINGS["musicnn-msd"] = ("fad_musicnn", _musicnn)
EMBEDDINGS["vggish"] = ("fad_vggish", _vggish)
EMBEDDINGS["clap-laion-music"] = ("fad_clap", _clap)


def metric_name(embedding: str) -> str:
    """``musicnn-msd`` -> ``fad_musicnn``; an unknown name fails naming the choices."""
    if embedding not in EMBEDDINGS:
        raise ValueError(f"metric.embedding = {embedding!r}: choose one of {', '.join(EMBEDDINGS)}")
    return EMBEDDINGS[embedding][0]


def load_embedding(embedding: str, weights: str | None = None) -> Any:
    """The embedding network (its weights checked now: a missing file fails in one line)."""
    metric_name(embedding)
    return EMBEDDINGS[embedding][1](weights)


def resample(waves: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """``waves`` (..., N) at ``rate`` -> at ``target`` (unchanged when equal)."""
    if rate == target:
        return waves
    import torchaudio

    return torchaudio.functional.resample(waves, rate, target)


@torch.no_grad()
def embedding_stats(embed: Any, batches: Iterable[torch.Tensor], sample_rate: int) -> GaussianStats:
    """Statistics of the frame embeddings of clips given as ``(B, N)`` batches at
    ``sample_rate`` (resampled to the network's rate)."""
    stats = FeatureStats(embed.dim)
    for waves in batches:
        waves = resample(waves, sample_rate, embed.sample_rate)
        stats.update(embed(list(waves.float().cpu())).double().cpu())
    if stats.n < 2:
        raise ValueError("FAD needs at least 2 embedding frames per set")
    return stats.finalize()


def fad(reference: GaussianStats, generated: GaussianStats) -> float:
    return float(generated.frechet_distance(reference))
