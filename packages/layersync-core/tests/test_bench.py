"""Cost benchmarks: FLOP and memory accounting against closed forms, the step benchmark's JSON
through the CLI, sampler NFE against ``layersync.flow``. No timing is asserted anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from layersync import config as config_lib
from layersync.bench import count_flops, peak_step_bytes, state_bytes
from layersync.bench_sample import bench_sample, sampler_variants
from layersync.config import with_overrides
from layersync.flow import ode_nfe, sde_nfe

pytestmark = pytest.mark.filterwarnings("ignore::layersync.loss.LayerSyncHeuristicWarning")
TINY = ["train.batch_size=8", "model.depth=4", "log.progress=false"]


# --------------------------------------------------------------------------------------------
# Accounting helpers
# --------------------------------------------------------------------------------------------


def test_count_flops_of_a_matmul_forward_and_backward() -> None:
    m, k, n = 8, 16, 32
    a = torch.randn(m, k, requires_grad=True)
    b = torch.randn(k, n)
    flops = count_flops(lambda: (a @ b).sum().backward())
    assert flops == 2 * m * k * n + 2 * m * n * k  # forward + grad of a (b needs none)


def test_count_flops_includes_cpu_attention() -> None:
    bsz, heads, tokens, dim = 2, 3, 5, 4
    q, k, v = (torch.randn(bsz, heads, tokens, dim) for _ in range(3))
    flops = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert flops == 2 * (2 * bsz * heads * tokens * tokens * dim)  # QK^T and AV


def test_peak_step_bytes_sees_a_transient_tensor() -> None:
    def step() -> None:
        x = torch.empty(250_000)  # 1,000,000 bytes, freed on return
        x.fill_(1.0)

    peak = peak_step_bytes(step, torch.device("cpu"))
    assert 1_000_000 <= peak <= 1_000_000 + 4096


def test_state_bytes_closed_form(toy_plugins: Path, tmp_path: Path) -> None:
    from layersync.bench import _one_step
    from layersync.registry import load
    from layersync.train import Trainer

    plugin = load("toy-image")
    cfg = config_lib.resolve(plugin, overrides=[*TINY, f"run.out_dir={tmp_path}"])
    trainer = Trainer.create(cfg, plugin, overwrite=True)
    _one_step(trainer)
    params = list(trainer.model.parameters())
    n = sum(p.numel() for p in params)
    assert not list(trainer.model.buffers())
    # weights + EMA + AdamW exp_avg and exp_avg_sq (fp32), one fp32 step counter per tensor
    assert state_bytes(trainer) == 4 * (4 * n) + 4 * len(params)
    trainer.sync.detach()


def test_with_overrides_validates(toy_plugins: Path) -> None:
    from layersync.registry import load

    plugin = load("toy-image")
    cfg = config_lib.resolve(plugin)
    assert with_overrides(plugin, cfg, ["sampler.steps=3"]).sampler.steps == 3
    assert cfg.sampler.steps == 20  # the original is untouched
    with pytest.raises(config_lib.ConfigError, match=r"sampler\.stepz"):
        with_overrides(plugin, cfg, ["sampler.stepz=3"])


# --------------------------------------------------------------------------------------------
# layersync bench step (CLI, subprocess)
# --------------------------------------------------------------------------------------------


def test_cli_bench_step_json(toy_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    env = dict(toy_env, OMP_NUM_THREADS="1")
    args = ["bench", "step", "-m", "toy-image", "--steps", "3", "--warmup", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "layersync", *args, "--json", str(out), *TINY],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "median step" in done.stdout and "MFU" in done.stdout
    r = json.loads(out.read_text())
    assert {"step_time_ratio", "memory_ratio", "device_matmul", "arms", "pairs"} <= set(r)
    van, ls = r["arms"]["vanilla"], r["arms"]["layersync"]
    for arm in (van, ls):
        assert arm["steps"] == 3 and len(arm["step_times"]) == 3
        assert arm["median_step_s"] > 0 and arm["flops_per_step"] > 0
        assert arm["mfu"] > 0 and arm["achieved_flops_per_s"] > 0
        assert arm["memory_bytes"] == arm["state_bytes"] + arm["step_peak_bytes"]
        assert arm["step_peak_bytes"] > 0
    assert r["step_time_ratio"] > 0 and r["memory_ratio"] > 0
    assert r["pairs"] == ["2<-3"]
    # the LayerSync arm really computes the term; the vanilla arm does not
    assert "cos/2<-3" in ls["metrics"] and ls["metrics"]["layersync"] != 0.0
    assert not any(k.startswith("cos/") for k in van["metrics"])
    assert van["metrics"]["layersync"] == 0.0
    # same matmuls in both arms (the cosine term is element-wise), same resident state
    assert van["flops_per_step"] == ls["flops_per_step"]
    assert van["state_bytes"] == ls["state_bytes"]
    assert r["device_matmul"]["flops_per_s"] > 0


# --------------------------------------------------------------------------------------------
# layersync bench sample
# --------------------------------------------------------------------------------------------


def test_sampler_variants_grid() -> None:
    v = sampler_variants([("ode", "heun")], steps=[4, 8], cfg_scales=[2])
    assert v == [
        ["sampler.mode=ode", "sampler.method=heun", "sampler.steps=4", "sampler.cfg_scale=2.0"],
        ["sampler.mode=ode", "sampler.method=heun", "sampler.steps=8", "sampler.cfg_scale=2.0"],
    ]
    assert sampler_variants(None) == [[]]


def test_bench_sample_nfe_matches_the_flow_formulas() -> None:
    image = pytest.importorskip("layersync_image.plugin")
    plugin = image.plugin
    cfg = config_lib.resolve(
        plugin,
        overrides=[
            "model.depth=2",
            "model.hidden_size=32",
            "model.num_heads=2",
            "train.device=cpu",
        ],
    )
    torch.manual_seed(0)
    model = plugin.build_model(cfg)
    result = bench_sample(
        plugin, cfg, model, n=6, variants=sampler_variants(steps=[3], cfg_scales=[1.0, 2.0])
    )
    rows = result["results"]
    assert len(rows) == 8
    for r in rows:
        want = ode_nfe(3, r["method"]) if r["mode"] == "ode" else sde_nfe(3, r["method"], "Mean")
        assert r["nfe"] == r["expected_nfe"] == want
        assert r["model_calls"] == want  # one sampling batch of 6
        assert r["call_batch_sizes"] == ([6] if r["cfg_scale"] == 1.0 else [12])  # CFG doubles
        assert r["samples_per_s"] > 0
    assert {(r["mode"], r["method"]) for r in rows} == {
        ("ode", "euler"),
        ("ode", "heun"),
        ("sde", "euler"),
        ("sde", "heun"),
    }


def test_cli_bench_sample_configured_sampler(
    layersync_cli: Callable, toy_plugins: Path, tmp_path: Path
) -> None:

    out = tmp_path / "sample.json"
    args = ["bench", "sample", "-m", "toy-image", "--samplers", "config", "--steps", "2,5"]
    done = layersync_cli(*args, "-n", "4", "--json", str(out), "model.depth=2")
    assert done.exit_code == 0, done.output
    rows = json.loads(out.read_text())["results"]
    # the toy's own Euler sampler (not layersync.flow's): timed and its calls counted (one per
    # step, one batch), not described or predicted
    assert [(r["sampler"], r["model_calls"], r["nfe"], r["expected_nfe"]) for r in rows] == [
        ("sampler.steps=2", 2, None, None),
        ("sampler.steps=5", 5, None, None),
    ]
