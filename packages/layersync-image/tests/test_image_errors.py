"""Bad image data through the real CLI: a corrupt file is one line naming it (exit 2), or is
skipped and counted (``data.on_error=skip`` -> ``data_skipped`` in metrics.jsonl); a bad data
path fails before the run directory exists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from layersync.cli import app

TINY = [
    "--modality",
    "image",
    "model.arch=custom",
    "model.depth=6",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.patch_size=2",
    "data.image_size=8",
    "train.steps=3",
    "train.batch_size=4",
    "train.device=cpu",
    "metric.fid=off",
    "log.every=1",
    "log.progress=false",
    "log.sample_count=2",
    "sampler.steps=2",
    "layersync.pairs=2<-4",  # inside the heuristic: no warning lines
]


def folder_with_a_corrupt_image(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), np.uint8)).save(root / c / f"{i}.png")
    (root / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    return root / "a" / "1.png"


def lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_corrupt_image_is_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = folder_with_a_corrupt_image(tmp_path / "data")
    done = CliRunner().invoke(
        app,
        [
            "train",
            *TINY,
            "data.source=folder",
            f"data.path={tmp_path / 'data'}",
            f"run.out_dir={tmp_path / 'runs'}",
            "run.name=r",
        ],
    )
    assert done.exit_code == 2 and isinstance(done.exception, SystemExit)
    (line,) = lines(done.stderr)
    assert line.startswith(f"error: cannot read image {bad}")
    assert "Traceback" not in done.stderr


def test_corrupt_image_is_skipped_and_counted(tmp_path: Path) -> None:
    folder_with_a_corrupt_image(tmp_path / "data")
    done = CliRunner().invoke(
        app,
        [
            "train",
            *TINY,
            "data.source=folder",
            f"data.path={tmp_path / 'data'}",
            "data.on_error=skip",
            f"run.out_dir={tmp_path / 'runs'}",
            "run.name=r",
        ],
    )
    assert done.exit_code == 0, done.stderr
    records = [json.loads(x) for x in (tmp_path / "runs" / "r" / "metrics.jsonl").open()]
    counts = [r["data_skipped"] for r in records if r["kind"] == "train"]
    assert len(counts) == 3 and counts[-1] == 1  # the one bad file, met once and remembered


def test_missing_data_path_fails_before_the_run_directory_exists(tmp_path: Path) -> None:
    done = CliRunner().invoke(
        app,
        [
            "train",
            *TINY,
            "data.source=folder",
            f"data.path={tmp_path / 'nowhere'}",
            f"run.out_dir={tmp_path / 'runs'}",
            "run.name=r",
        ],
    )
    assert done.exit_code == 2
    assert lines(done.stderr) == [f"error: image folder not found: {tmp_path / 'nowhere'}"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("dry_run", [False, True], ids=["train", "dry-run"])
@pytest.mark.parametrize(
    ("override", "culprit"),
    [
        ("metric.inception_weights", "metric.inception_weights: no such file"),
        ("metric.reference", "metric.reference: no such file"),
        ("vae.path", "vae.path: no such folder"),
    ],
)
def test_missing_metric_asset_fails_before_the_run_directory_exists(
    tmp_path: Path, override: str, culprit: str, dry_run: bool
) -> None:
    """Plugin.check_assets runs before anything is created: not an error after training."""
    gone = tmp_path / "gone.pth"
    done = CliRunner().invoke(
        app,
        [
            "train",
            *(["--dry-run"] if dry_run else []),
            *TINY,
            "metric.fid=on",
            f"{override}={gone}",
            f"run.out_dir={tmp_path / 'runs'}",
            "run.name=r",
        ],
    )
    assert done.exit_code == 2, done.stderr
    assert lines(done.stderr) == [f"error: {culprit}: {gone}"]
    assert not (tmp_path / "runs").exists()


def test_latent_preset_without_fid_reference_fails_at_start(tmp_path: Path) -> None:
    """The ImageNet presets (latent data, FID on) name the missing metric.reference before
    training, not in a ValueError at the end of a multi-day run."""
    from layersync.assets import AssetError
    from layersync.config import resolve
    from layersync_image.plugin import plugin

    vae = tmp_path / "vae"  # what check_assets reads of a VAE folder: its config and weights
    vae.mkdir()
    (vae / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    (vae / "diffusion_pytorch_model.safetensors").touch()
    base = [f"vae.path={vae}", f"data.path={tmp_path}", "metric.fid=auto"]
    cfg = resolve(plugin, preset="sit-b2-imagenet256", overrides=base)
    with pytest.raises(AssetError, match=r"needs metric\.reference"):
        plugin.check_assets(cfg)
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(4), sigma=np.eye(4))
    cfg = resolve(plugin, preset="sit-b2-imagenet256", overrides=[*base, f"metric.reference={ref}"])
    assert plugin.check_assets(cfg) is None
    assert (
        plugin.check_assets(
            resolve(plugin, preset="sit-b2-imagenet256", overrides=[*base[:2], "metric.fid=off"])
        )
        is None
    )
