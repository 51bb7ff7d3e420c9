"""Engine options that also run on CPU: gradient accumulation, precision, torch.compile, LR
schedules, TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layersync import config as config_lib
from layersync.registry import load
from layersync.train import Trainer, train
from layersync.train import checkpoint as ckpt
from layersync.train.loop import lr_factor

pytestmark = pytest.mark.filterwarnings("ignore::layersync.loss.LayerSyncHeuristicWarning")


def run(tmp_path: Path, name: str, *overrides: str) -> Path:
    plugin = load("toy-image")
    cfg = config_lib.resolve(
        plugin,
        overrides=[
            "train.steps=4",
            "train.batch_size=8",
            "model.depth=4",
            "checkpoint.every=100",
            "log.every=1",
            "log.progress=false",
            "sampler.steps=2",
            "data.fixed_noise=true",
            "data.size=64",
            f"run.out_dir={tmp_path}",
            f"run.name={name}",
            *overrides,
        ],
    )
    return train(cfg, plugin)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_weights(ckpt.resolve_checkpoint(run_dir), "model")


def losses(run_dir: Path) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if x["kind"] == "train"]


def test_grad_accumulation_equals_the_full_batch(toy_plugins: Path, tmp_path: Path) -> None:
    """4 micro-batches of 2 make the same update as one batch of 8 (the loss is scaled 1/4)."""
    full = run(tmp_path, "full")
    accum = run(tmp_path, "accum", "train.grad_accum=4")
    assert losses(accum) == pytest.approx(losses(full), rel=1e-5)
    a, b = weights(full), weights(accum)
    for key in a:
        if key.endswith("attn.in_proj_bias"):
            # the key bias has an exactly-zero gradient (softmax is shift-invariant): Adam
            # turns its rounding noise into steps of up to lr each, so bound it by lr x steps
            dim = a[key].numel() // 3
            q_v = torch.cat([a[key][:dim] - b[key][:dim], a[key][2 * dim :] - b[key][2 * dim :]])
            assert q_v.abs().max() < 2e-5, key
            assert (a[key][dim : 2 * dim] - b[key][dim : 2 * dim]).abs().max() <= 4 * 1e-3
            continue
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=2e-5, msg=key)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(toy_plugins: Path, tmp_path: Path, precision: str) -> None:
    """Autocast runs on CPU too; weights stay fp32, the LayerSync term is computed in fp32,
    fp16 uses a GradScaler (its state is checkpointed)."""
    fp32 = run(tmp_path, "fp32")
    low = run(tmp_path, precision, f"train.precision={precision}")
    w = weights(low)
    assert all(v.dtype in (torch.float32, torch.int64) for v in w.values())
    # a few steps at reduced precision stay close to fp32, but are not identical
    assert losses(low) == pytest.approx(losses(fp32), rel=0.05)
    assert losses(low) != losses(fp32)
    state, _ = ckpt.load_train_state(ckpt.resolve_checkpoint(low))
    scaler = state["scaler"]
    if precision == "fp16":
        assert scaler and scaler["scale"] > 0
    else:
        assert not scaler  # disabled scaler: nothing to save


def test_layersync_term_is_fp32_under_bf16(toy_plugins: Path, tmp_path: Path) -> None:
    plugin = load("toy-image")
    cfg = config_lib.resolve(
        plugin,
        overrides=[
            "train.batch_size=8",
            "model.depth=4",
            "log.progress=false",
            "train.precision=bf16",
            f"run.out_dir={tmp_path}",
        ],
    )
    trainer = Trainer.create(cfg, plugin)
    stats = trainer.train_step()
    assert stats["layersync"].dtype == torch.float32
    assert trainer.sync is not None and trainer.sync.stats["cos/2<-3"].dtype == torch.float32


def test_lr_schedules() -> None:
    assert [lr_factor(s, 2, "constant", 10) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(2, 2, "cosine", 10) == pytest.approx(1.0)
    assert lr_factor(6, 2, "cosine", 10) == pytest.approx(0.5)
    assert lr_factor(6, 2, "linear", 10) == pytest.approx(0.5)
    assert lr_factor(10, 2, "linear", 10) == pytest.approx(0.0)


@pytest.mark.slow
def test_torch_compile_matches_eager(toy_plugins: Path, tmp_path: Path) -> None:
    """torch.compile (CPU inductor) with persistent LayerSync hooks: same losses as eager."""
    eager = run(tmp_path, "eager")
    compiled = run(tmp_path, "compiled", "train.compile=true")
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-4)
    lines = (compiled / "metrics.jsonl").read_text()
    assert '"cos/2<-3"' in lines  # the taps captured through the compiled module


def test_tensorboard_logging(toy_plugins: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = run(tmp_path, "tb", "log.tensorboard=true")
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
