"""Non-finite values never reach the weights, the EMA or a checkpoint (issue 9, section 1).

The gradient is checked before the optimizer step in the same host sync as the loss terms;
``train.nonfinite = stop`` ends the run naming the step and term, ``skip`` drops the update (the
run then equals one in which that update never happened) and stops after ``train.max_skipped``
consecutive skips; checkpoints are never written from NaN/inf weights.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from layersync import config as config_lib
from layersync.registry import load
from layersync.testing import assert_tree_equal
from layersync.train import (
    CheckpointError,
    NonFiniteLossError,
    NonFiniteWeightsError,
    Trainer,
    train,
)
from layersync.train import checkpoint as ckpt

pytestmark = pytest.mark.filterwarnings("ignore::layersync.loss.LayerSyncHeuristicWarning")

BASE = [
    "train.steps=5",
    "train.batch_size=8",
    "model.depth=4",
    "sampler.steps=2",
    "checkpoint.every=1",
    "checkpoint.keep_last=10",
    "log.every=1",
    "log.progress=false",
    "log.sample_count=4",
    "data.size=24",
    "ema.decay=0.5",
]


def resolve(tmp_path: Path, *overrides: str, name: str = "run") -> tuple[Any, Any]:
    plugin = load("toy-image")
    cfg = config_lib.resolve(
        plugin, overrides=[*BASE, f"run.out_dir={tmp_path}", f"run.name={name}", *overrides]
    )
    return plugin, cfg


class InfGrad(torch.autograd.Function):
    """Identity forward (the loss stays finite); backward makes every gradient inf/NaN."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("inf")


@contextlib.contextmanager
def poison_gradients(plugin: Any, steps: set[int]) -> Iterator[None]:
    """Inside the block, objective calls number ``steps`` (1-based) give a finite loss but an
    infinite gradient."""
    build, calls = plugin.build_objective, []

    def poisoned(cfg: Any) -> Any:
        objective = build(cfg)

        def call(model: Any, batch: Any, generator: Any = None) -> Any:
            out = objective(model, batch, generator)
            calls.append(1)
            if len(calls) in steps:
                out.loss = InfGrad.apply(out.loss)
            return out

        return call

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plugin, "build_objective", poisoned)
        yield


def all_finite(path: Path) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for which in ("model", "ema")
        for t in ckpt.load_file(str(path / f"{which}.safetensors")).values()
    )


def records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


# --------------------------------------------------------------------------------------------
# stop (default)
# --------------------------------------------------------------------------------------------


def test_infinite_gradient_stops_before_the_update_and_every_checkpoint_is_finite(
    toy_plugins: Path, tmp_path: Path
) -> None:
    plugin, cfg = resolve(tmp_path)
    with poison_gradients(plugin, {3}), pytest.raises(NonFiniteLossError) as info:
        train(cfg, plugin)
    root = tmp_path / "run" / "checkpoints"
    message = str(info.value)
    assert message.startswith("step 3: the gradient norm is ")  # the loss itself was finite
    assert message.endswith(f"Last good checkpoint: {root / '0000002'}")
    saved = ckpt.list_checkpoints(root)
    assert [p.name for p in saved] == ["0000001", "0000002"]
    assert all(all_finite(p) for p in saved)
    # the last good checkpoint resumes (with the gradient back to normal) and finishes
    plugin, cfg = resolve(tmp_path)
    train(cfg, plugin, resume="latest")
    assert all(all_finite(p) for p in ckpt.list_checkpoints(root))
    assert [r["step"] for r in records(tmp_path / "run")] == [1, 2, 3, 4, 5]


def test_huge_learning_rate_never_leaves_a_non_finite_checkpoint(
    toy_plugins: Path, tmp_path: Path
) -> None:
    """The issue's run (lr 1e10 without warmup, checkpoints every step) on the toy plugin:
    whatever step it stops at, every checkpoint on disk is finite and loads for a resume."""
    plugin, cfg = resolve(tmp_path, "train.lr=1e10", "train.steps=8")
    with pytest.raises(NonFiniteLossError, match=r"^step \d+: the (diffusion|LayerSync|grad)"):
        train(cfg, plugin)
    saved = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert saved and all(all_finite(p) for p in saved)
    plugin, cfg = resolve(tmp_path, "train.lr=1e-4", "train.steps=8")
    trainer = Trainer.create(cfg, plugin, resume="latest")
    assert trainer.progress.step == int(saved[-1].name)
    weights = ckpt.load_weights(saved[-1], "model")
    assert all(torch.equal(weights[k], v) for k, v in trainer.model.state_dict().items())


# --------------------------------------------------------------------------------------------
# skip
# --------------------------------------------------------------------------------------------


def test_skip_equals_a_run_where_that_update_never_happened(
    toy_plugins: Path, tmp_path: Path
) -> None:
    plugin, cfg = resolve(tmp_path, "train.nonfinite=skip", "train.grad_clip=1.0", name="skip")
    with poison_gradients(plugin, {3}):
        train(cfg, plugin)
    root = tmp_path / "skip" / "checkpoints"
    # the skipped step changed nothing: weights, EMA and optimizer state as after step 2
    for which in ("model", "ema"):
        before, after = (ckpt.load_weights(root / s, which) for s in ("0000002", "0000003"))
        assert all(torch.equal(before[k], after[k]) for k in before)
    optim = [ckpt.load_train_state(root / s)[0]["optimizer"] for s in ("0000002", "0000003")]
    assert_tree_equal(optim[0], optim[1])  # Adam moments and step counts untouched
    lines = records(tmp_path / "skip")
    assert [r["skipped"] for r in lines] == [0, 0, 1, 0, 0]
    assert "diffusion" not in lines[2]  # a skipped step's NaN/inf statistics are not averaged
    assert all(all(v == v for v in r.values() if isinstance(v, float)) for r in lines)

    # reference: the same data order and RNG stream, with step 3's update never applied
    plugin, cfg = resolve(tmp_path, "train.nonfinite=skip", "train.grad_clip=1.0", name="ref")
    trainer = Trainer.create(cfg, plugin)
    for step in range(5):
        if step == 2:
            trainer.forward_backward()  # consumes the batch and the random draws
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.scheduler.step()
        else:
            trainer.train_step()
            assert not trainer.skipped
        trainer.progress.step += 1
    final = ckpt.load_weights(root / "0000005", "model")
    assert final.keys() == trainer.model.state_dict().keys()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(final[key], value), key
    ema = ckpt.load_weights(root / "0000005", "ema")
    for key, value in trainer.ema.model.state_dict().items():
        assert torch.equal(ema[key], value), key


def test_skip_stops_after_max_skipped_consecutive_steps(toy_plugins: Path, tmp_path: Path) -> None:
    plugin, cfg = resolve(tmp_path, "train.nonfinite=skip", "train.max_skipped=3")
    with poison_gradients(plugin, {2, 3, 4, 5}), pytest.raises(NonFiniteLossError) as info:
        train(cfg, plugin)
    root = tmp_path / "run" / "checkpoints"
    assert str(info.value).startswith("step 4: the gradient norm is ")
    assert "3 consecutive steps skipped (train.max_skipped = 3)" in str(info.value)
    assert str(info.value).endswith(f"Last good checkpoint: {root / '0000003'}")
    assert all(all_finite(p) for p in ckpt.list_checkpoints(root))


def test_two_isolated_skips_do_not_add_up(toy_plugins: Path, tmp_path: Path) -> None:
    plugin, cfg = resolve(tmp_path, "train.nonfinite=skip", "train.max_skipped=2")
    with poison_gradients(plugin, {2, 4}):  # never two in a row
        train(cfg, plugin)
    assert [r["skipped"] for r in records(tmp_path / "run")] == [0, 1, 0, 1, 0]


# --------------------------------------------------------------------------------------------
# checkpoints: never written from, never loaded with, NaN/inf weights
# --------------------------------------------------------------------------------------------


def test_save_refuses_non_finite_weights(toy_plugins: Path, tmp_path: Path) -> None:
    plugin, cfg = resolve(tmp_path)
    trainer = Trainer.create(cfg, plugin)
    good = trainer.save()
    name, param = next(iter(trainer.model.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=rf"weight '{name}' holds NaN/inf; not saved"):
        trainer.save()
    assert ckpt.list_checkpoints(tmp_path / "run" / "checkpoints") == [good]


def test_loading_non_finite_weights_names_the_file_and_the_way_out(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    state = {"w": torch.ones(3)}
    for step in (1, 2):
        ckpt.save_checkpoint(root, ckpt.Progress(step=step), state, state, {}, [{}], 5)
    ckpt.save_file(
        {"w": torch.tensor([1.0, float("inf"), 0.0])}, str(root / "0000002" / "ema.safetensors")
    )
    with pytest.raises(CheckpointError) as info:
        ckpt.load_weights(root / "0000002", "ema")
    assert str(info.value) == (
        f"{root / '0000002' / 'ema.safetensors'}: weight 'w' holds NaN/inf; resume from the "
        f"previous complete checkpoint: --resume {root / '0000001'}"
    )
    with pytest.raises(ValueError, match="'w' holds NaN/inf: checkpoint not written"):
        ckpt.save_checkpoint(
            root, ckpt.Progress(step=3), state, {"w": torch.tensor([float("nan")])}, {}, [{}], 5
        )
    assert not (root / "0000003").exists()
