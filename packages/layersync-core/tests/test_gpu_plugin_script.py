"""scripts/gpu_plugin.sh (issues 11-13): the CUDA sizes it configures, and its CPU path (tiny
sizes, the same two commands) passing both checks for each installed plugin."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "gpu_plugin.sh"
METRIC = {"audio": "fad_musicnn", "motion": "r_precision_top3", "video": "fvd4_16f"}


def settings(modality: str, cpu: bool) -> list[str]:
    """The key=value overrides of one case of the script (MODEL and RUN together)."""
    block = re.search(rf"    {modality}:{int(cpu)}\)\n(.*?);;", SCRIPT.read_text(), re.S)
    assert block, f"no {modality} case in {SCRIPT}"
    words = shlex.split(re.sub(r"\b(MODEL|RUN)=\(|\)", " ", block.group(1)))
    return [w for w in words if "=" in w and not w.startswith("STEPS=")]


@pytest.mark.parametrize(("modality", "tokens"), [("audio", 215), ("video", 512), ("motion", None)])
def test_cuda_settings_are_the_issue_sizes(
    modality: str, tokens: int | None, tmp_path, monkeypatch
):
    pytest.importorskip(f"layersync_{modality}")
    from layersync.config import resolve
    from layersync.registry import load

    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))
    plugin = load(modality)
    cfg = resolve(plugin, overrides=[*settings(modality, cpu=False), "train.device=cpu"])
    if modality == "motion":  # MDM 8 x 512, batch 64, 200 steps, one 1,024-sample replication
        assert (cfg.model.num_layers, cfg.model.latent_dim, cfg.train.batch_size) == (8, 512, 64)
        assert (cfg.train.steps, cfg.metric.num_samples, cfg.metric.replications) == (200, 1024, 1)
        assert (cfg.sampler.mode, cfg.sampler.ddim_steps) == ("ddim", 50)
        return
    assert (cfg.model.depth, cfg.model.hidden_size, cfg.model.num_heads) == (28, 1152, 16)  # XL
    assert cfg.train.steps == 50 and cfg.metric.num_samples == 256
    import torch

    with torch.device("meta"):  # sizes only: no 675M-parameter allocation
        model = plugin.build_model(cfg)
    assert model.num_tokens == tokens


@pytest.mark.parametrize("modality", ["audio", "motion", "video"])
def test_cpu_path_passes_both_checks(modality: str, tmp_path: Path) -> None:
    pytest.importorskip(f"layersync_{modality}")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_OUT": str(tmp_path / "out"),
        "LAYERSYNC_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", str(SCRIPT), modality, "--cpu"], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    step, metric = (line for line in done.stdout.splitlines() if line.startswith("PASS"))
    assert step.startswith("PASS step: ") and re.search(r"LayerSync [\d.]+ ms \(x\d\.\d{3}\)", step)
    assert metric.startswith("PASS metric: step 2, ") and f"{METRIC[modality]} " in metric
    assert (tmp_path / "out" / "step.json").is_file()
    assert (tmp_path / "out" / "metric" / "eval" / "0000002" / "metrics.json").is_file()
