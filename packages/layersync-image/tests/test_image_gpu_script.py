"""scripts/gpu_convergence.sh: the paper-direction A/B it configures, and its CPU path (tiny)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layersync import config as config_lib
from layersync_image.plugin import plugin

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "gpu_convergence.sh"
LAYERSYNC = Path(sys.executable).parent / "layersync"


def _script(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    full = {**os.environ, "LS": str(LAYERSYNC), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        ["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=timeout
    )


def _overrides(command: str) -> tuple[dict[str, str], list[str]]:
    """(options, key=value overrides) of the printed bench command."""
    words = shlex.split(command)[3:]  # drop: layersync bench convergence
    options: dict[str, str] = {}
    overrides, i = [], 0
    while i < len(words):
        if words[i] == "--no-noise-check":
            options[words[i]], i = "", i + 1
        elif words[i].startswith("-"):
            options[words[i]], i = words[i + 1], i + 2
        else:
            overrides.append(words[i])
            i += 1
    return options, overrides


def test_the_default_run_is_sit_b2_on_256_tokens_pair_4_8_bf16() -> None:
    done = _script({"DRY_RUN": "1"})
    assert done.returncode == 0, done.stderr
    opts, overrides = _overrides(done.stdout)
    assert opts["--metric"] == "val_loss" and opts["--steps"] == "3000"
    assert (
        opts["--final-eval"] == "metric.fid=on,metric.num_samples=5000,metric.reference_count=5000"
    )
    cfg = config_lib.resolve(plugin, preset="fashion-mnist", overrides=overrides)
    m = cfg.model
    assert (m.arch, m.depth, m.hidden_size, m.num_heads, m.patch_size) == (
        "SiT-B/2",
        12,
        768,
        12,
        2,
    )
    assert (cfg.data.source, cfg.data.image_size) == ("fashion-mnist", 32)  # (32/2)^2 = 256
    assert (cfg.layersync.pairs, cfg.layersync.weight) == ("4<-8", 0.3)
    assert (cfg.train.precision, cfg.train.device, cfg.train.lr) == ("bf16", "cuda", 1e-4)
    folder = _script({"DRY_RUN": "1", "DATA_PATH": "/data/x", "SEEDS": "0,1,2"})
    opts, overrides = _overrides(folder.stdout)
    assert "data.source=folder" in overrides and "data.path=/data/x" in overrides
    assert opts["--seeds"] == "0,1,2"


@pytest.mark.slow
def test_cpu_path_tiny_prints_the_paired_result(tmp_path: Path) -> None:
    """Both arms, val_loss curves and the final FID/KID at two draws, on a tiny 12-block SiT
    (random Inception weights: the numbers are meaningless, the path is the real one)."""
    weights = tmp_path / "inception.pth"
    from layersync_image.fid import InceptionV3Pool3

    torch.manual_seed(0)
    torch.save(InceptionV3Pool3().state_dict(), weights)
    extra = (
        f"metric.inception_weights={weights} sampler.steps=2 sampler.batch_size=8 "
        "metric.batch_size=8 log.progress=false train.lr_warmup_steps=0"
    )
    env = {
        "STEPS": "4",
        "EVAL_EVERY": "2",
        "BATCH": "8",
        "N": "6",
        "DEVICE": "cpu",
        "PRECISION": "fp32",
        "OUT": str(tmp_path / "out"),
        "MODEL": "model.depth=12 model.hidden_size=24 model.num_heads=2 model.patch_size=8",
        "EXTRA": extra,
        "LAYERSYNC_CACHE": str(tmp_path / "cache"),
    }
    done = _script(env, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "convergence.json").read_text())
    assert result["metric"] == "val_loss" and result["steps"] == 4
    assert [s for s, _ in result["curves"]["layersync"]["0"]] == [2, 4]
    final = result["final_eval"]["metrics"]
    assert set(final) == {"fid", "kid", "kid_std"}
    assert all(len(v) == 2 for arm in final["kid"]["values"].values() for v in arm.values())
    text = done.stdout + done.stderr
    assert "final gain (paired per seed)" in text and "final kid (" in text
