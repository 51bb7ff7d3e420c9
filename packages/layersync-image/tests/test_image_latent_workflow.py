"""The latent workflow a paper reproduction uses, end to end on a tiny random VAE:
`layersync image encode` (folder of class sub-folders) -> train on data.source=latents ->
samples decoded by the VAE into images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from layersync import config as config_lib
from layersync.train.loop import Trainer
from layersync_image.commands import app
from layersync_image.latents import LatentDataset
from layersync_image.plugin import plugin


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory, tiny_vae) -> Path:
    return tiny_vae(tmp_path_factory.mktemp("vae"))


def image_folder(root: Path, corrupt: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    if corrupt:
        (root / "dog" / "broken.png").write_bytes(b"not a png")
    return root


def test_encode_command_train_on_latents_and_decode(vae_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    folder = image_folder(tmp_path / "images", corrupt=True)
    out = tmp_path / "latents"
    args = ["encode", str(folder), "--vae", str(vae_dir), "--out", str(out), "--image-size", "16"]
    failed = runner.invoke(app, args)
    assert failed.exit_code == 2
    assert "broken.png" in failed.output  # the unreadable file is named
    assert not out.exists()  # and nothing half-written is left as the cache

    done = runner.invoke(app, [*args, "--on-error", "skip", "--flip"])
    assert done.exit_code == 0, done.output
    assert "1 unreadable files skipped" in done.output
    cache = LatentDataset(out)
    assert len(cache) == 12 and (cache.channels, cache.image_size) == (4, 8)
    assert cache.num_classes == 2 and json.loads((out / "meta.json").read_text())["flip"]

    cfg = config_lib.resolve(
        plugin,
        overrides=[
            f"run.out_dir={tmp_path}",
            "run.name=latent",
            "train.steps=2",
            "train.batch_size=4",
            "log.progress=false",
            "log.sample_count=4",
            "data.source=latents",
            f"data.path={out}",
            "data.hflip=true",
            f"vae.path={vae_dir}",
            "model.depth=2",
            "model.hidden_size=32",
            "sampler.steps=2",
            "metric.fid=off",
        ],
    )
    model = plugin.build_model(cfg)
    assert (model.in_channels, model.input_size, model.num_classes) == (4, 8, 2)
    run_dir = Trainer.create(cfg, plugin).fit()
    grid = np.asarray(Image.open(run_dir / "samples" / "0000002.png"))
    assert grid.ndim == 3 and grid.shape[2] == 3  # decoded to RGB images by the VAE
    samples = plugin.sample(model, cfg, 2, torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    assert samples.shape == (2, 3, 16, 16) and samples.abs().max() <= 1
