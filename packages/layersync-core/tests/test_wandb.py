"""The optional Weights & Biases logger (``log.wandb = true``, extra ``wandb``), tested offline
(``WANDB_MODE=offline``: no network, no account): metrics, eval metrics, the resolved config and
sample grids go to the run, and a resumed run continues the same W&B run id."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from layersync import config as config_lib
from layersync.registry import load
from layersync.train import train
from layersync.train.logging import WANDB_ID, MetricsLogger, WandbSettings

pytestmark = pytest.mark.filterwarnings("ignore::layersync.loss.LayerSyncHeuristicWarning")

RUN = [
    "train.batch_size=8",
    "model.depth=4",
    "sampler.steps=2",
    "log.every=1",
    "log.progress=false",
    "log.sample_every=2",
    "log.sample_count=4",
    "log.wandb=true",
    "log.wandb_project=layersync-test",
    "checkpoint.every=2",
]


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))


def flush() -> None:
    """Stop the W&B service process: it writes the offline record files asynchronously."""
    import wandb

    wandb.teardown()


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_offline_run_logs_and_a_resume_continues_the_same_run(
    offline: None, toy_plugins: Path, tmp_path: Path
) -> None:
    plugin = load("toy-image")
    common = [*RUN, f"run.out_dir={tmp_path}", "run.name=r"]
    train(config_lib.resolve(plugin, overrides=[*common, "train.steps=4"]), plugin)
    run_dir = tmp_path / "r"
    run_id = (run_dir / WANDB_ID).read_text().strip()
    train(config_lib.resolve(plugin, overrides=[*common, "train.steps=6"]), plugin, resume="latest")
    assert (run_dir / WANDB_ID).read_text().strip() == run_id
    flush()
    runs = offline_runs(run_dir)
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)
    for run in runs:
        (log,) = run.glob(f"run-{run_id}.wandb")
        data = log.read_bytes()
        # metric names, the eval metric and the resolved config travel in the record log
        for key in (b"train/diffusion", b"train/cos/2<-3", b"eval/pattern_mse", b"layersync-test"):
            assert key in data, key
        assert b'"pairs"' in data or b"pairs" in data


def test_sample_grids_are_logged_as_images(offline: None, tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "0000002.png"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(png)
    logger = MetricsLogger(
        tmp_path, 4, progress=False, wandb=WandbSettings(project="layersync-test", name="grid")
    )
    logger.log(2, {"diffusion": 0.5})
    logger.log_images(2, [png, tmp_path / "samples.npy"])
    logger.close()
    flush()
    (run,) = offline_runs(tmp_path)
    media = list((run / "files" / "media" / "images").glob("*.png"))
    assert len(media) == 1
    assert np.asarray(Image.open(media[0]))[0, 0].tolist() == [200, 200, 200]


def test_missing_wandb_is_one_clear_error_before_the_run_dir(
    toy_plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    plugin = load("toy-image")
    cfg = config_lib.resolve(plugin, overrides=[*RUN, f"run.out_dir={tmp_path}", "run.name=r"])
    with pytest.raises(ValueError, match=r"pip install 'layersync-core\[wandb\]'"):
        train(cfg, plugin)
    assert not (tmp_path / "r").exists()
