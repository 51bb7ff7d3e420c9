"""The training engine end to end: CLI runs, exact resume, stops, failures, A/B runs, EMA."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from layersync import config as config_lib
from layersync.loss import LayerSync
from layersync.plugin import Modality
from layersync.registry import load
from layersync.testing import assert_tree_equal
from layersync.train import NonFiniteLossError, RunDirExistsError, Trainer, train
from layersync.train import checkpoint as ckpt
from layersync.train.ema import EMA

pytestmark = pytest.mark.filterwarnings("ignore::layersync.loss.LayerSyncHeuristicWarning")

SMALL = [
    "train.steps=6",
    "train.batch_size=8",
    "model.depth=4",
    "checkpoint.every=2",
    "log.every=1",
    "log.progress=false",
]
FAST = {"toy-image": ["sampler.steps=4"], "toy-sequence": []}
PAIR = {"toy-image": "2<-3", "toy-sequence": "2<-4"}  # the plugins' defaults at depth 4
WEIGHT = {"toy-image": 0.2, "toy-sequence": 0.5}
METRIC = {"toy-image": "pattern_mse", "toy-sequence": "template_mse"}
SAMPLE_SHAPE = {"toy-image": (1, 8, 8), "toy-sequence": (12, 4)}


def resolve(
    modality: str, out_dir: Path, *overrides: str, name: str = "run"
) -> tuple[Modality, Any]:
    plugin = load(modality)
    cfg = config_lib.resolve(
        plugin,
        overrides=[
            *SMALL,
            *FAST[modality],
            f"run.out_dir={out_dir}",
            f"run.name={name}",
            *overrides,
        ],
    )
    return plugin, cfg


def records(run: Path, kind: str = "train") -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "layersync", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------------------------
# 1. End to end through the CLI, for both toy plugins
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["toy-image", "toy-sequence"])
def cli_run(
    request: pytest.FixtureRequest,
    toy_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, Path]:
    """``layersync train`` of 6 steps (checkpoints 2, 4, 6; keep 2) in a subprocess."""
    modality = request.param
    out = tmp_path_factory.mktemp("cli")
    done = cli(
        toy_env,
        "train",
        "--modality",
        modality,
        *SMALL,
        *FAST[modality],
        "checkpoint.keep_last=2",
        f"run.out_dir={out}",
        "run.name=r",
    )
    assert done.returncode == 0, done.stderr
    assert f"run directory: {out / 'r'}" in done.stderr
    return modality, out / "r"


def test_cli_train_writes_the_run_directory(cli_run: tuple[str, Path]) -> None:
    modality, run = cli_run
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints",
        "config.toml",
        "env.json",
        "eval",
        "metrics.jsonl",
        "samples",
    ]
    saved = config_lib.read_toml(run / "config.toml")
    assert saved["modality"] == modality and saved["train"]["steps"] == 6
    env = json.loads((run / "env.json").read_text())
    assert env["world_size"] == 1 and env["torch"] == torch.__version__
    assert env["plugin"]["name"] == modality

    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["0000004", "0000006", "last"]
    assert (root / "last").read_text() == "0000006"
    for step in ("0000004", "0000006"):
        assert sorted(p.name for p in (root / step).iterdir()) == [
            "ema.safetensors",
            "model.safetensors",
            "rng.pt",
            "train_state.pt",
        ]
    assert ckpt.load_train_state(root / "0000006")[1] == ckpt.Progress(
        step=6, epoch=0, batch_in_epoch=6, samples_seen=48
    )

    count = {"toy-image": 8, "toy-sequence": 6}[modality]  # the demo presets' sample_count
    grid = np.load(run / "samples" / "0000006.npy")
    assert grid.shape == (count, *SAMPLE_SHAPE[modality]) and np.isfinite(grid).all()
    metrics = json.loads((run / "eval" / "0000006" / "metrics.json").read_text())
    (logged,) = records(run, "eval")
    assert logged["step"] == 6 and logged[METRIC[modality]] == metrics[METRIC[modality]]
    assert next(iter(metrics)) == METRIC[modality] and np.isfinite(metrics[METRIC[modality]])


def test_cli_train_metrics_lines(cli_run: tuple[str, Path]) -> None:
    modality, run = cli_run
    lines = records(run)
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    cos = f"cos/{PAIR[modality]}"
    for r in lines:
        assert {"diffusion", "layersync", "loss", cos, "grad_norm", "lr", "it_per_s"} <= set(r)
        assert r["lr"] == pytest.approx(1e-3) and r["it_per_s"] > 0 and r["grad_norm"] > 0
        assert r["loss"] == pytest.approx(r["diffusion"] + r["layersync"], abs=1e-6)
        # one pair: the term is -λ times the mean student-teacher cosine over valid tokens
        assert r["layersync"] == pytest.approx(-WEIGHT[modality] * r[cos], abs=1e-6)
        assert r["weight"] == WEIGHT[modality] and 0 < r[cos] <= 1


def read_samples(out: Path) -> np.ndarray:
    """Every ``.npy`` the toy writers produced under ``out``, in order, as one array."""
    return np.concatenate([np.load(p) for p in sorted(out.rglob("*.npy"))])


def test_cli_sample_uses_ema_weights_unless_raw(
    layersync_cli: Callable, cli_run: tuple[str, Path], toy_plugins: Path, tmp_path: Path
) -> None:
    from layersync.sampling import sample_to_dir

    modality, run = cli_run
    plugin = load(modality)
    cfg = config_lib.resolve(plugin, file=run / "config.toml")
    last = ckpt.resolve_checkpoint(run)

    def reference(which: str) -> np.ndarray:
        model = plugin.build_model(cfg)
        model.load_state_dict(ckpt.load_weights(last, which))
        sample_to_dir(plugin, model.eval(), cfg, 4, tmp_path / f"ref-{which}", seed=0)
        return read_samples(tmp_path / f"ref-{which}")

    for flag, which in ((), "ema"), (("--raw",), "model"):
        out = tmp_path / which
        done = layersync_cli("sample", str(run), "-n", "4", "--out", str(out), *flag)
        assert done.exit_code == 0, done.output
        got = read_samples(out)
        assert got.shape == (4, *SAMPLE_SHAPE[modality])
        np.testing.assert_allclose(got, reference(which), atol=1e-6)
    assert not np.allclose(
        read_samples(tmp_path / "ema"), read_samples(tmp_path / "model"), atol=1e-3
    )


def test_cli_eval_reproduces_the_training_metric(
    layersync_cli: Callable, cli_run: tuple[str, Path], toy_plugins: Path
) -> None:
    modality, run = cli_run
    path = run / "eval" / "0000006" / "metrics.json"
    during_training = json.loads(path.read_text())
    path.unlink()  # eval must write it again, not leave training's copy to be re-read
    done = layersync_cli("eval", str(run))
    assert done.exit_code == 0, done.output
    assert METRIC[modality] in done.stdout
    assert path.is_file(), "layersync eval printed the metric but wrote no metrics.json"
    again = json.loads(path.read_text())  # every key, val_loss included
    assert again == pytest.approx(during_training, rel=1e-6)


def test_cli_eval_keeps_an_earlier_result_it_does_not_reproduce(
    layersync_cli: Callable, cli_run: tuple[str, Path], toy_plugins: Path
) -> None:
    # a re-evaluation under other settings (e.g. metric.fvd=off) must not erase what training
    # measured: the earlier file moves to metrics.1.json; an identical re-run moves nothing
    _, run = cli_run
    path = run / "eval" / "0000006" / "metrics.json"
    earlier = {**json.loads(path.read_text()), "only_in_training": 1.5}
    path.write_text(json.dumps(earlier))
    done = layersync_cli("eval", str(run))
    assert done.exit_code == 0, done.output
    kept = path.with_name("metrics.1.json")
    assert json.loads(kept.read_text()) == earlier
    assert "only_in_training" not in json.loads(path.read_text())
    again = layersync_cli("eval", str(run))
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in path.parent.glob("metrics*.json")) == [
        "metrics.1.json",
        "metrics.json",
    ]


def test_cli_dry_run_prints_the_plan_and_writes_nothing(
    layersync_cli: Callable, toy_plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from layersync.cli import common as cli_module

    monkeypatch.setattr(cli_module.console, "width", 200)  # no wrapping inside table cells
    out = tmp_path / "runs"
    done = layersync_cli(
        *[
            "train",
            "--modality",
            "toy-image",
            "--dry-run",
            *SMALL,
            "train.batch_size=16",
            "train.grad_accum=2",
            "layersync.weight=0.3",
            f"run.out_dir={out}",
            "run.name=plan",
        ],
    )
    assert done.exit_code == 0, done.output
    text = done.stdout
    assert "pairs 2<-3" in text and "λ 0.3" in text
    assert "blocks.1, blocks.2" in text  # the taps: 1-based pair 2<-3 = blocks.1 and blocks.2
    assert "global 16 = 1 rank(s) x 2 accum x 8 micro" in text
    assert "pair 2<-3: the toy-image plugin's default, not from the paper" in text
    assert str(out / "plan") in text
    assert not out.exists()


def test_describe_data_is_kept_with_the_run(
    toy_plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Modality.describe_data -> data.json in the run directory; nothing said, no file."""
    plugin, cfg = resolve("toy-image", tmp_path, "train.steps=2", name="said")
    said = {"condition": "class", "classes": ["zero", "one"]}
    with monkeypatch.context() as patch:
        patch.setattr(plugin, "describe_data", lambda c: said)
        assert json.loads((train(cfg, plugin) / "data.json").read_text()) == said
    plugin, cfg = resolve("toy-image", tmp_path, "train.steps=2", name="silent")
    assert not (train(cfg, plugin) / "data.json").exists()


def test_pair_source_never_calls_a_pair_the_papers(toy_plugins: Path, tmp_path: Path) -> None:
    """Modality.pair_source: the depth-ratio pair is "derived", the plugin's own default and a
    pair from the config are named as such; the paper gives no λ for a third-party modality."""
    plugin, cfg = resolve("toy-image", tmp_path, "model.depth=12")
    default = plugin.default_layersync(cfg).pairs
    assert default == "4<-8"  # the toy's own rule; the paper's depth ratio gives 3<-7
    assert plugin.pair_source(cfg, "3<-7", 0.2, 12).startswith(
        "pair 3<-7: derived by the depth-ratio rule, not from the paper; λ 0.2: not from"
    )
    assert plugin.pair_source(cfg, default, 0.2, 12).startswith(
        f"pair {default}: the toy-image plugin's default, not from the paper"
    )
    assert plugin.pair_source(cfg, "1 <- 5", 0.5, 12).startswith(
        "pair 1<-5: set in the config, not from the paper"
    )


# --------------------------------------------------------------------------------------------
# Loss goes down
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["toy-image", "toy-sequence"])
def test_diffusion_loss_decreases(modality: str, toy_plugins: Path, tmp_path: Path) -> None:
    plugin, cfg = resolve(modality, tmp_path, "train.steps=60", "checkpoint.every=1000")
    run = train(cfg, plugin)
    loss = [r["diffusion"] for r in records(run)]
    assert len(loss) == 60 and all(np.isfinite(loss))
    first, last = np.mean(loss[:10]), np.mean(loss[-10:])
    assert last < 0.8 * first, (first, last)


# --------------------------------------------------------------------------------------------
# 2. Bit-exact resume (stopped by a signal mid-run, then --resume latest)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def signal_after(k: int, sig: int) -> Iterator[None]:
    """Inside the block, the k-th optimizer step's forward/backward sends ``sig`` to this process
    (pre-emption); the step's check sees it, finishes the step and saves."""
    real, calls = Trainer.forward_backward, []

    def forward_backward(self: Trainer) -> dict[str, torch.Tensor]:
        stats = real(self)
        calls.append(1)
        if len(calls) == k:
            os.kill(os.getpid(), sig)
        return stats

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "forward_backward", forward_backward)
        yield


def assert_same_checkpoint(a: Path, b: Path) -> None:
    for which in ("model", "ema"):
        assert_tree_equal(ckpt.load_weights(a, which), ckpt.load_weights(b, which), which)
    state_a, progress_a = ckpt.load_train_state(a)
    state_b, progress_b = ckpt.load_train_state(b)
    assert progress_a == progress_b
    assert_tree_equal(state_a, state_b, "train_state")  # optimizer, scheduler, EMA count
    assert_tree_equal(ckpt.load_rng_states(a), ckpt.load_rng_states(b), "rng")


RESUME_CASES = {
    # dataset of 20 with micro-batches of 8 (or 4): the stop at step 3 falls mid-epoch
    "image-mid-epoch": ("toy-image", ["data.size=20"], signal.SIGTERM, (1, 1)),
    "image-grad-accum": (
        "toy-image",
        ["data.size=20", "train.grad_accum=2"],
        signal.SIGINT,
        (1, 1),
    ),
    "sequence-mid-epoch": ("toy-sequence", ["data.size=20"], signal.SIGINT, (1, 1)),
    "sequence-grad-accum": (
        "toy-sequence",
        ["data.size=46", "train.grad_accum=2"],
        signal.SIGTERM,
        (0, 6),
    ),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_is_bit_exact(case: str, toy_plugins: Path, tmp_path: Path) -> None:
    modality, extra, sig, position = RESUME_CASES[case]
    overrides = [
        *extra,
        "train.lr_schedule=cosine",
        "train.lr_warmup_steps=2",
        "train.grad_clip=0.5",
        "ema.decay=0.9",
        "ema.warmup=true",
    ]
    plugin, straight = resolve(modality, tmp_path, *overrides, name="straight")
    train(straight, plugin)

    plugin, cfg = resolve(modality, tmp_path, *overrides, name="split")
    with signal_after(3, sig):
        run = train(cfg, plugin)  # stopped by the signal after step 3, with a checkpoint there
    stop = run / "checkpoints" / "0000003"
    assert (run / "checkpoints" / "last").read_text() == "0000003"
    progress = ckpt.load_train_state(stop)[1]
    assert (progress.epoch, progress.batch_in_epoch) == position
    train(cfg, plugin, resume="latest")

    assert_same_checkpoint(
        tmp_path / "straight" / "checkpoints" / "0000006", run / "checkpoints" / "0000006"
    )
    volatile = {"time", "it_per_s", "samples_per_s"}
    a, b = records(tmp_path / "straight"), records(run)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b, strict=True):
        assert {k: v for k, v in ra.items() if k not in volatile} == {
            k: v for k, v in rb.items() if k not in volatile
        }


# --------------------------------------------------------------------------------------------
# 4. SIGTERM / SIGINT through the CLI
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_and_exits_cleanly(
    layersync_cli: Callable, sig: int, toy_env: dict[str, str], toy_plugins: Path, tmp_path: Path
) -> None:
    args = [
        "--modality",
        "toy-image",
        *SMALL,
        *FAST["toy-image"],
        "train.steps=100000",
        "checkpoint.every=100000",
        f"run.out_dir={tmp_path}",
        "run.name=r",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "layersync", "train", *args],
        env=toy_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "r" / "metrics.jsonl"
    try:
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.05)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    match = re.search(rf"stopped by signal {int(sig)} at step (\d+); checkpoint (\S+)", stderr)
    assert match, stderr
    step = int(match[1])
    root = tmp_path / "r" / "checkpoints"
    assert Path(match[2]) == root / f"{step:07d}"
    assert (root / "last").read_text() == f"{step:07d}"
    assert ckpt.load_train_state(root / f"{step:07d}")[1].step == step
    assert [r["step"] for r in records(tmp_path / "r")] == list(range(1, step + 1))

    done = layersync_cli("train", "--resume", "latest", *args, f"train.steps={step + 2}")
    assert done.exit_code == 0, done.output
    assert (root / "last").read_text() == f"{step + 2:07d}"
    assert [r["step"] for r in records(tmp_path / "r")] == list(range(1, step + 3))


# --------------------------------------------------------------------------------------------
# 5. Non-finite losses
# --------------------------------------------------------------------------------------------


def test_nan_diffusion_loss_names_the_step(
    toy_plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin, cfg = resolve("toy-sequence", tmp_path)
    build = plugin.build_objective

    def poisoned(cfg: Any) -> Any:
        objective, calls = build(cfg), []

        def call(model: nn.Module, batch: Any, generator: Any = None) -> Any:
            out = objective(model, batch, generator)
            calls.append(1)
            if len(calls) == 3:
                out.loss = out.loss * float("nan")
            return out

        return call

    monkeypatch.setattr(plugin, "build_objective", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, plugin)
    message = str(info.value)
    assert message.startswith("step 3: the diffusion loss is nan")
    root = tmp_path / "run" / "checkpoints"
    assert message.endswith(f"Last good checkpoint: {root / '0000002'}")
    # nothing of the bad step was saved; the last good checkpoint loads and is finite
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["0000002"]
    for which in ("model", "ema"):
        weights = ckpt.load_weights(ckpt.resolve_checkpoint(tmp_path / "run"), which)
        assert all(torch.isfinite(w).all() for w in weights.values())
    assert [r["step"] for r in records(tmp_path / "run")] == [1, 2]


def test_nan_layersync_term_is_named(
    toy_plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin, cfg = resolve("toy-image", tmp_path)
    real, calls = LayerSync.regularizer, []

    def regularizer(self: LayerSync, *args: Any) -> torch.Tensor:
        calls.append(1)
        reg = real(self, *args)
        return reg * float("nan") if len(calls) == 5 else reg

    monkeypatch.setattr(LayerSync, "regularizer", regularizer)
    with pytest.raises(NonFiniteLossError, match=r"^step 5: the LayerSync loss is nan"):
        train(cfg, plugin)


def test_cli_nan_is_one_line_exit_2(
    layersync_cli: Callable, toy_plugins: Path, tmp_path: Path
) -> None:
    # lr = 1e30: step 1 is finite (so checkpoint 1 exists), the forward of step 2 overflows
    done = layersync_cli(
        *[
            "train",
            "--modality",
            "toy-image",
            *SMALL,
            *FAST["toy-image"],
            "train.lr=1e30",
            "checkpoint.every=1",
            f"run.out_dir={tmp_path}",
            "run.name=r",
        ],
    )
    assert done.exit_code == 2 and isinstance(done.exception, SystemExit)
    (line,) = error_lines(done.stderr)
    root = tmp_path / "r" / "checkpoints"
    assert line == (
        "error: step 2: the diffusion loss is nan; stopped without saving (train.nonfinite=skip "
        f"would skip such steps). Last good checkpoint: {root / '0000001'}"
    )
    good = ckpt.resolve_checkpoint(tmp_path / "r")
    assert good == root / "0000001"
    assert ckpt.load_train_state(good)[1].step == 1
    assert set(ckpt.load_weights(good, "model")) == set(ckpt.load_weights(good, "ema"))


# --------------------------------------------------------------------------------------------
# 6. Run directory protection
# --------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


def test_existing_run_dir_is_protected(
    layersync_cli: Callable, toy_plugins: Path, tmp_path: Path
) -> None:
    args = [
        "train",
        "--modality",
        "toy-image",
        *SMALL,
        *FAST["toy-image"],
        "train.steps=2",
        f"run.out_dir={tmp_path}",
        "run.name=r",
    ]
    run = tmp_path / "r"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)

    result = layersync_cli(*args)
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        f"error: run directory {run} already exists: pass --resume latest to continue it, "
        "--overwrite to replace it, or choose another run.name"
    ]
    assert snapshot(run) == before
    plugin, cfg = resolve("toy-image", tmp_path, "train.steps=2", name="r")
    with pytest.raises(RunDirExistsError):
        train(cfg, plugin)
    assert snapshot(run) == before

    result = layersync_cli(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (run / "notes.txt").exists()
    assert (run / "checkpoints" / "last").read_text() == "0000002"


def test_resume_of_a_missing_run_is_a_clear_error(
    layersync_cli: Callable, toy_plugins: Path, tmp_path: Path
) -> None:
    result = layersync_cli(
        *[
            "train",
            "--modality",
            "toy-image",
            "--resume",
            "latest",
            *SMALL,
            f"run.out_dir={tmp_path}",
            "run.name=nothing",
        ],
    )
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        f"error: {tmp_path / 'nothing'}: no such run or checkpoint directory"
    ]
    assert not (tmp_path / "nothing").exists()  # and it leaves no empty run dir behind


# --------------------------------------------------------------------------------------------
# 7. The vanilla baseline runs through the same loop
# --------------------------------------------------------------------------------------------


def test_weight_zero_equals_disabled(toy_plugins: Path, tmp_path: Path) -> None:
    final = {}
    for name, flags in {
        "off": ["layersync.enabled=false"],
        "zero": ["layersync.weight=0.0"],
        "on": ["layersync.weight=0.2"],
    }.items():
        plugin, cfg = resolve("toy-image", tmp_path, "train.steps=4", *flags, name=name)
        run = train(cfg, plugin)
        final[name] = ckpt.load_weights(run / "checkpoints" / "0000004", "model")
        lines = records(run)
        if name == "off":
            assert all(r["layersync"] == 0 and "weight" not in r for r in lines)
            assert not any(k.startswith("cos/") for k in lines[0])
        else:
            assert all("cos/2<-3" in r for r in lines)
        final[f"{name}-loss"] = [r["diffusion"] for r in lines]
    assert_tree_equal(final["off"], final["zero"])
    assert final["off-loss"] == final["zero-loss"]
    diff = max((final["on"][k] - final["off"][k]).abs().max().item() for k in final["off"])
    assert diff > 1e-4
    assert final["on-loss"][0] == final["off-loss"][0]  # same first batch, same init


# --------------------------------------------------------------------------------------------
# 9. EMA
# --------------------------------------------------------------------------------------------


class Scalar(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([value], dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))


def test_ema_decay_closed_form() -> None:
    model = Scalar(2.0)
    ema = EMA(model, decay=0.9)
    assert ema.model is not model and not ema.model.w.requires_grad
    values = [1.0, -3.0, 0.5, 4.0, 2.5]
    for v in values:
        model.w.data.fill_(v)
        model.count += 1
        ema.update(model)
    k, d = len(values), 0.9
    expected = d**k * 2.0 + sum((1 - d) * d ** (k - i) * v for i, v in enumerate(values, 1))
    assert ema.model.w.item() == pytest.approx(expected, rel=1e-12)
    assert ema.updates == k and ema.model.count.item() == k  # buffers are copied
    # a constant parameter: ema_k = d^k e_0 + (1 - d^k) p
    model, ema = Scalar(1.0), EMA(Scalar(0.0), decay=0.99)
    ema.model.w.data.fill_(-1.0)
    for _ in range(50):
        ema.update(model)
    assert ema.model.w.item() == pytest.approx(0.99**50 * -1.0 + (1 - 0.99**50), rel=1e-12)


def test_ema_warmup_formula() -> None:
    model = Scalar(0.0)
    ema = EMA(model, decay=0.9, warmup=True)
    expected, decays = 0.0, []
    for n, v in enumerate([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0] * 10):
        decay = min(0.9, (1 + n) / (10 + n))
        decays.append(ema.current_decay())
        assert decays[-1] == pytest.approx(decay)
        model.w.data.fill_(v)
        ema.update(model)
        expected = decay * expected + (1 - decay) * v
    assert ema.model.w.item() == pytest.approx(expected, rel=1e-12)
    assert decays[0] == pytest.approx(0.1) and decays[79] < 0.9 == decays[80]  # then capped
    assert EMA(model, decay=0.9).current_decay() == 0.9  # no warmup: constant


def test_engine_ema_extremes(toy_plugins: Path, tmp_path: Path) -> None:
    """decay 0: the EMA is the model; decay 1: the EMA stays at the initial weights."""
    saved = {}
    for decay in ("0.0", "1.0"):
        plugin, cfg = resolve(
            "toy-image",
            tmp_path,
            "train.steps=2",
            f"ema.decay={decay}",
            "ema.warmup=false",
            name=f"d{decay}",
        )
        run = train(cfg, plugin)
        last = ckpt.resolve_checkpoint(run)
        saved[decay] = ckpt.load_weights(last, "ema"), ckpt.load_weights(last, "model")
    assert_tree_equal(*saved["0.0"])
    torch.manual_seed(0)  # the engine builds the model right after seeding with run.seed
    init = plugin.build_model(cfg).state_dict()
    assert_tree_equal(saved["1.0"][0], {k: v for k, v in init.items()})
