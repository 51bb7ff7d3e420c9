"""The audio modality: a 1-D SiT on log-mels or VAE latents, flow matching + LayerSync, WAV, FAD.

The pieces: ``config.py`` (sections, presets), ``embedded.py`` + ``sf2.py`` (the default data),
``data.py`` (folders, MTG-Jamendo), ``mel.py`` (the representation and its inversion),
``vae.py`` + ``latents.py`` (VAE latents), ``musicnn.py`` + ``fad.py`` (the metric). This module
turns clips into model inputs, builds the model and objective, samples, writes and evaluates.

Model input: the standardised log-mel ``(n_mels, frames)`` of a clip, or a crop of its VAE
latents ``(channels, frames)``: tokens along time, all channels of a patch of frames in one
token. Conditions: class labels (embedded families, folder classes) or multi-hot tags.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from layersync.flow import FlowObjective, build_transport
from layersync.plugin import MetricSpec, Modality
from layersync_audio.config import PRESETS, AudioConfig, DataConfig, MelConfig
from layersync_audio.latents import (
    decode,
    latent_dataset,
    latent_spec,
    log_mels,
    reference_batches,
    reference_key,
)
from layersync_audio.mel import LogMel

# --------------------------------------------------------------------------------------------
# Data: clips -> standardised log-mel
# --------------------------------------------------------------------------------------------


def wave_dataset(dc: DataConfig, split: str, vocabulary: list[str] | None = None) -> Dataset:
    """The clip dataset of ``data`` for ``split`` ("train" or "eval"): items (wave, condition)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if dc.source == "embedded":
        from layersync_audio.embedded import EmbeddedAudio

        n = dc.per_family if split == "train" else dc.eval_per_family
        return EmbeddedAudio(split, n, dc.seconds, dc.sample_rate, dc.data_seed)
    if not dc.path:
        raise ValueError(f"data.path is required for data.source = {dc.source!r}")
    if dc.source == "folder":
        from layersync_audio.data import AudioFolder

        root = Path(dc.path)
        names = ("train",) if split == "train" else ("eval", "val", "validation", "test")
        sub = next((root / n for n in names if (root / n).is_dir()), root)
        return AudioFolder(sub, dc.seconds, dc.sample_rate, on_error=dc.on_error)
    from layersync_audio.data import JamendoDataset

    if not dc.tsv:
        raise ValueError("data.tsv is required for data.source = 'jamendo'")
    tsv = dc.tsv if split == "train" else (dc.eval_tsv or dc.tsv.replace("train", "validation"))
    return JamendoDataset(
        dc.path,
        tsv,
        dc.seconds,
        dc.sample_rate,
        categories=tuple(dc.tag_categories),
        vocabulary=vocabulary,
        on_error=dc.on_error,
    )


def _key(*sections: Any) -> str:
    return json.dumps([s.model_dump(mode="json") for s in sections], sort_keys=True)


@lru_cache(maxsize=4)
def _codec(key: str) -> LogMel:
    dc, mc = (DataConfig(**d) if i == 0 else MelConfig(**d) for i, d in enumerate(json.loads(key)))
    codec = LogMel(dc.sample_rate, mc.n_fft, mc.hop_length, mc.n_mels, floor=mc.floor,
                   griffin_lim_iters=mc.griffin_lim_iters)  # fmt: skip
    train = wave_dataset(dc, "train")
    n = min(len(train), mc.stats_items)
    idx = np.linspace(0, len(train) - 1, n).round().astype(int)  # spread over the classes
    clips = torch.stack([train[int(i)][0] for i in idx])
    return codec.fit(clips.split(64)).eval()


def codec(cfg: Any) -> LogMel:
    """The log-mel codec of this data, standardised by its train split (computed once)."""
    return _codec(_key(cfg.data, cfg.mel))


@lru_cache(maxsize=4)
def _spec(key: str) -> tuple[int, int, str, int, tuple[str, ...]]:
    """data_spec of waveform data, plus the train split's class names or tag vocabulary."""
    dc = DataConfig(**json.loads(key)[0])
    ds = wave_dataset(dc, "train")
    frames = round(dc.seconds * dc.sample_rate) // json.loads(key)[1]["hop_length"]
    if dc.source == "jamendo":
        return frames, 0, "tags", ds.num_tags, tuple(ds.vocabulary)
    return frames, ds.num_classes, "class", ds.num_classes, tuple(ds.classes or ())


def _latent_spec(cfg: Any) -> tuple[int, int, str, int, int, int] | None:
    return latent_spec(cfg.data) if cfg.data.source == "latents" else None


def data_spec(cfg: Any) -> tuple[int, int, str, int]:
    """(frames, classes, condition kind "class"|"tags", number of classes or tags)."""
    spec = _latent_spec(cfg)
    return spec[:4] if spec else _spec(_key(cfg.data, cfg.mel))[:4]


def input_channels(cfg: Any) -> int:
    """Channels of the model input: mel bins, or the VAE's latent channels."""
    spec = _latent_spec(cfg)
    return spec[4] if spec else cfg.mel.n_mels


def sample_rate(cfg: Any) -> int:
    """The rate of the waveforms ``sample`` returns: ``data.sample_rate`` or the VAE's."""
    spec = _latent_spec(cfg)
    return spec[5] if spec else cfg.data.sample_rate


class MelDataset(Dataset):
    """Items ``(log-mel (n_mels, frames), condition)`` of a clip dataset; fixed clip sets (the
    embedded data) are encoded once and kept in memory."""

    def __init__(self, clips: Dataset, codec: LogMel) -> None:
        self.clips, self.codec = clips, codec
        self.cache = None
        if hasattr(clips, "waves"):  # EmbeddedAudio: fixed clips, no random crops
            waves = torch.from_numpy(clips.waves)
            with torch.no_grad():
                self.cache = torch.cat([codec.encode(w) for w in waves.split(64)])

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.clips, "set_epoch"):
            self.clips.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None:
            return self.cache[index], torch.tensor(int(self.clips.labels[index]))
        wave, cond = self.clips[index]
        with torch.no_grad():
            return self.codec.encode(wave[None])[0], cond


def build_dataset(cfg: Any, split: str) -> Dataset:
    if cfg.data.source == "latents":  # one cache serves both splits, as in the image plugin
        return latent_dataset(cfg.data)
    vocabulary = None
    if cfg.data.source == "jamendo" and split == "eval":
        vocabulary = wave_dataset(cfg.data, "train").vocabulary
    return MelDataset(wave_dataset(cfg.data, split, vocabulary), codec(cfg))


# --------------------------------------------------------------------------------------------
# Model and objective
# --------------------------------------------------------------------------------------------


def build_model(cfg: Any) -> nn.Module:
    from layersync.nn import SIT_SIZES, SiT

    mc = cfg.model
    frames, _, kind, count = data_spec(cfg)
    arch: dict[str, int] = {}
    if mc.arch != "custom":
        size, _, patch = mc.arch.removeprefix("SiT-").partition("/")
        if size not in SIT_SIZES or not patch.isdigit():
            raise ValueError(
                f"model.arch = {mc.arch!r}: use 'custom' or SiT-<{'|'.join(SIT_SIZES)}>/<patch>"
            )
        arch = {**SIT_SIZES[size], "patch_size": int(patch)}
    for key in ("depth", "hidden_size", "num_heads", "patch_size"):
        if getattr(mc, key) is not None:
            arch[key] = getattr(mc, key)
    missing = [k for k in ("depth", "hidden_size", "num_heads", "patch_size") if k not in arch]
    if missing:
        raise ValueError(f"model.arch = 'custom' needs model.{', model.'.join(missing)}")
    if frames % arch["patch_size"]:
        what = f"{frames} {'latent' if cfg.data.source == 'latents' else 'mel'} frames"
        raise ValueError(f"model.patch_size = {arch['patch_size']} does not divide the {what}")
    return SiT(
        input_size=(frames,),
        in_channels=input_channels(cfg),
        mlp_ratio=mc.mlp_ratio,
        condition=kind,
        num_classes=count if kind == "class" else 1000,
        num_tags=count if kind == "tags" else 0,
        class_dropout_prob=mc.class_dropout_prob,
        learn_sigma=mc.learn_sigma,
        **arch,
    )


@torch.no_grad()
def sample_mels(
    model: nn.Module, cfg: Any, condition: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Model-space samples ``(n, channels, frames)`` (standardised log-mels or latents) for
    class labels or tag vectors."""
    from layersync.flow import sample_sit

    null = model.num_classes if model.condition == "class" else 0.0  # tags: the zero vector
    transport = build_transport(cfg.transport)
    return sample_sit(
        model, cfg.sampler, transport, len(condition), condition, generator, null_cond=null
    ).cpu()


# --------------------------------------------------------------------------------------------
# FAD
# --------------------------------------------------------------------------------------------


def _embedding(cfg: Any) -> Any | None:
    """The FAD network, or None (with one warning) when ``metric.fad=auto`` and it is absent."""
    from layersync_audio.fad import load_embedding

    mc = cfg.metric
    try:
        return load_embedding(mc.embedding, mc.weights)
    except ValueError as e:  # AssetError (missing package/file) is a ValueError
        if mc.fad == "on" or "metric.embedding" in str(e):
            raise
        warnings.warn(f"FAD skipped: {e}", stacklevel=3)
        return None


def _family_classes(cfg: Any) -> int:
    """Classes of class-labelled waveform data (the family metrics need labelled real clips);
    0 for tags or latent data."""
    if cfg.data.source == "latents":
        return 0
    _, classes, kind, _ = data_spec(cfg)
    return classes if kind == "class" else 0


def _reference_key(cfg: Any, what: str) -> dict[str, Any]:
    """Everything a cached reference quantity of ``metric.reference_split`` depends on."""
    mc, dc = cfg.metric, cfg.data
    return {
        "what": what,
        "embedding": mc.embedding,
        "weights": mc.weights or "installed",
        "data": dc.model_dump(mode="json"),
        "latents": reference_key(cfg) if dc.source == "latents" else None,
        "split": mc.reference_split,
        "count": mc.reference_count,
    }


def family_reference(cfg: Any, embed: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(clip vectors, labels) of the real reference clips for the family metrics, cached
    like the FAD statistics (stored as one array: the label, then the vector)."""
    from layersync.metrics import cached_array
    from layersync_audio import family

    def compute() -> np.ndarray:
        real = wave_dataset(cfg.data, cfg.metric.reference_split)
        vectors, labels = family.reference_vectors(
            embed, real, cfg.metric.reference_count, sample_rate(cfg)
        )
        return torch.cat([labels[:, None].double(), vectors], 1).numpy()

    table = torch.from_numpy(cached_array(_reference_key(cfg, "family-reference"), compute))
    return table[:, 1:], table[:, 0].long()


def reference_stats(cfg: Any, embed: Any):
    """Embedding statistics of the real clips of ``metric.reference_split``, cached."""
    from layersync.metrics import cached_stats
    from layersync_audio.fad import embedding_stats

    mc, dc = cfg.metric, cfg.data
    key = _reference_key(cfg, "fad-reference")

    def compute():
        if dc.source == "latents":  # VAE reconstructions of the cached crops
            batches = reference_batches(cfg, mc.reference_count, mc.batch_size)
            return embedding_stats(embed, batches, sample_rate(cfg))
        clips = wave_dataset(dc, mc.reference_split)
        n = len(clips) if mc.reference_count is None else min(len(clips), mc.reference_count)
        batches = (
            torch.stack([clips[i][0] for i in range(s, min(n, s + mc.batch_size))])
            for s in range(0, n, mc.batch_size)
        )
        return embedding_stats(embed, batches, dc.sample_rate)

    return cached_stats(key, compute)


# --------------------------------------------------------------------------------------------
# The plugin
# --------------------------------------------------------------------------------------------


class AudioModality(Modality):
    name = "audio"
    description = "1-D SiT + flow matching on log-mels or VAE latents; WAV samples; FAD"
    config_model = AudioConfig
    presets = PRESETS
    metrics = {"fad_musicnn": MetricSpec(higher_is_better=False, primary=True)}

    def metrics_for(self, cfg: Any) -> dict[str, MetricSpec]:
        """``fad_<network>`` of ``metric.embedding`` (FAD values compare only per network);
        class-labelled waveform data adds ``family_accuracy`` and its real-clip yardstick."""
        from layersync_audio.fad import metric_name

        specs = {
            metric_name(cfg.metric.embedding): MetricSpec(higher_is_better=False, primary=True)
        }
        if _family_classes(cfg):
            specs["family_accuracy"] = MetricSpec(higher_is_better=True)
            specs["family_accuracy_real"] = MetricSpec(higher_is_better=None)
        return specs

    def build_dataset(self, cfg: Any, split: str) -> Dataset:
        return build_dataset(cfg, split)

    def build_model(self, cfg: Any) -> nn.Module:
        return build_model(cfg)

    def check_assets(self, cfg: Any) -> None:
        """``metric.fad=on`` needs the embedding network and its weights (with ``auto`` a
        missing network skips FAD with a warning at evaluation); latent data needs ``vae.path``,
        a local AutoencoderOobleck folder, to decode samples."""
        if cfg.data.source == "latents":
            from layersync_audio.vae import vae_spec

            vae_spec(cfg.vae.path, key="vae.path")
        if cfg.metric.fad == "on":
            _embedding(cfg)

    def build_objective(self, cfg: Any) -> FlowObjective:
        return FlowObjective(build_transport(cfg.transport))

    def conditions(self, cfg: Any, n: int, generator: torch.Generator) -> torch.Tensor:
        """Classes 0, 1, ..., k-1, 0, ... (one per grid column); tags: those of random real
        train clips."""
        _, _, kind, count = data_spec(cfg)
        if kind == "class":
            return torch.arange(n) % count
        latent = cfg.data.source == "latents"
        clips = build_dataset(cfg, "train") if latent else wave_dataset(cfg.data, "train")
        pick = torch.randint(len(clips), (n,), generator=generator)
        return torch.stack([clips.target(int(i)) for i in pick])

    def sample(self, model, cfg, n, condition, generator) -> torch.Tensor:
        """Waveforms ``(n, samples)`` in [-1, 1] (Griffin-Lim phases from ``generator``), or
        ``(n, channels, samples)`` decoded by a stereo VAE."""
        cond = condition if condition is not None else self.conditions(cfg, n, generator)
        x = sample_mels(model, cfg, cond[:n], generator)
        if cfg.data.source == "latents":
            return decode(x, cfg)
        return codec(cfg).decode(x, generator=generator)

    def write_samples(self, samples, out_dir: Path, cfg: Any, prefix: str = "") -> list[Path]:
        """``wav/<prefix-><i>.wav`` (16-bit) and a spectrogram grid PNG (one class per column)."""
        from layersync.media import save_wav
        from layersync_audio.writers import spectrogram_grid

        out_dir = Path(out_dir)
        rate = sample_rate(cfg)
        stem = f"{prefix}-" if prefix else ""
        paths = [
            save_wav(out_dir / "wav" / f"{stem}{i:04d}.wav", wave.cpu().numpy(), rate)
            for i, wave in enumerate(samples)
        ]
        _, classes, kind, _ = data_spec(cfg)
        mono = samples.cpu().float()
        mono = mono.mean(1) if mono.ndim == 3 else mono
        if cfg.data.source == "latents":  # no mel statistics: only the log-mel picture
            mels = log_mels(mono, rate, cfg.mel)
        else:
            mels = codec(cfg).log_mel(mono)
        columns = classes if kind == "class" else 8
        paths.insert(0, spectrogram_grid(mels, out_dir / f"{prefix or 'grid'}.png", columns))
        return paths

    def describe_data(self, cfg: Any) -> dict[str, Any]:
        """The train split's condition vocabulary, kept with the run (``data.json``): label i
        is ``classes[i]``, tag i is ``vocabulary[i]``."""
        _, _, kind, _ = data_spec(cfg)
        if cfg.data.source == "latents":  # the cache's metadata
            train = build_dataset(cfg, "train")
            names = train.vocabulary if kind == "tags" else train.classes
        else:  # read with the data's spec, once per process
            names = _spec(_key(cfg.data, cfg.mel))[4]
        if kind == "tags":
            return {"condition": "tags", "vocabulary": list(names or [])}
        return {"condition": "class", "classes": list(names or [])}

    def merge_samples(self, parts: list[Path], out_dir: Path, cfg: Any) -> list[Path]:
        """``layersync sample``'s export: ``wav/<i>.wav`` over all batches, ``grid.png``."""
        from layersync_audio.writers import merge_wav_parts

        return merge_wav_parts(parts, out_dir)

    def evaluate(self, model, cfg, out_dir: Path, generator: torch.Generator) -> dict[str, float]:
        """FAD of ``metric.num_samples`` class-balanced samples against the reference split;
        with class labels on waveform data also ``family_accuracy`` (layersync_audio.family)."""
        from layersync.metrics import FeatureStats
        from layersync_audio import family
        from layersync_audio.fad import metric_name, resample

        mc = cfg.metric
        if mc.fad == "off":
            return {}
        embed = _embedding(cfg)
        if embed is None:
            return {}
        ref = reference_stats(cfg, embed)
        classes = _family_classes(cfg)
        stats, first, vectors = FeatureStats(embed.dim), None, []
        conditions = self.conditions(cfg, mc.num_samples, generator)
        for chunk in conditions.split(mc.batch_size):
            waves = self.sample(model, cfg, len(chunk), chunk, generator)
            first = waves if first is None else first
            waves = waves.mean(1) if waves.ndim == 3 else waves  # the embeddings take mono
            waves = resample(waves, sample_rate(cfg), embed.sample_rate)
            for frames in family.clip_embeddings(embed, waves):
                stats.update(frames)
                vectors.append(frames.mean(0))
        self.write_samples(first, out_dir, cfg, prefix="fad-samples")
        out = {metric_name(mc.embedding): stats.finalize().frechet_distance(ref)}
        if classes:
            reference = family_reference(cfg, embed)
            out |= family.family_scores(torch.stack(vectors), conditions, reference, classes)
        return out

    def probe_forward(self, model, cfg, batch, t: float, generator=None):
        """One forward at time ``t`` with the null condition; returns the class labels."""
        x, y = batch
        if y.ndim != 1:
            raise NotImplementedError("layersync probe needs class labels (not tags)")
        times = torch.full((len(x),), float(t), device=x.device, dtype=x.dtype)
        null = torch.ones_like(y)
        build_transport(cfg.transport).loss(
            lambda xt, tt: model(xt, tt, y, force_drop_ids=null), x, generator=generator, t=times
        )
        return y, None

    def commands(self) -> Any:
        from layersync_audio.commands import app

        return app


plugin = AudioModality()
