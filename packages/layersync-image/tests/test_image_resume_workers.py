"""The image plugin resumes bit-exactly with random flips and a DataLoader worker (issue 15).

The flips were drawn from each worker's global RNG: after a mid-epoch resume the worker restarts
its stream, and the weights differed by ~5e-5 from a straight run. The engine now gives every
dataset with per-item draws the run seed, so flip ``i`` in epoch ``e`` comes from (seed, e, i).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from layersync import config as config_lib
from layersync.train import checkpoint as ckpt
from layersync.train import train
from layersync_image.plugin import plugin

pytestmark = pytest.mark.filterwarnings("ignore::layersync.loss.LayerSyncHeuristicWarning")

TINY = [
    "data.source=folder",
    "data.image_size=8",
    "data.hflip=true",
    "train.num_workers=1",
    "model.arch=custom",
    "model.depth=2",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.patch_size=2",
    "train.batch_size=8",  # 10 batches per epoch: the resume at step 2 is mid-epoch
    "train.lr=1e-3",
    "layersync.pairs=1<-2",
    "checkpoint.every=100",
    "log.progress=false",
    "sampler.steps=2",
    "log.sample_count=2",
    "metric.fid=off",
]


def image_folder(root: Path) -> Path:
    """2 classes x 40 random 8x8 RGB PNGs (asymmetric: a flip changes them)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(40):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i:03d}.png")
    return root


def run(tmp_path: Path, name: str, steps: int, resume: bool = False) -> Path:
    data = tmp_path / "images"
    if not data.is_dir():
        image_folder(data)
    overrides = [f"data.path={data}", f"train.steps={steps}", f"run.name={name}"]
    cfg = config_lib.resolve(plugin, overrides=[*TINY, *overrides, f"run.out_dir={tmp_path}"])
    return train(cfg, plugin, resume="latest" if resume else None)


def test_resume_with_flips_and_a_worker_is_bit_exact(tmp_path: Path) -> None:
    straight = run(tmp_path, "straight", 4)
    run(tmp_path, "resumed", 2)
    resumed = run(tmp_path, "resumed", 4, resume=True)
    for which in ("model", "ema"):
        a = ckpt.load_weights(ckpt.resolve_checkpoint(straight), which)
        b = ckpt.load_weights(ckpt.resolve_checkpoint(resumed), which)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (which, key, (a[key] - b[key]).abs().max())
