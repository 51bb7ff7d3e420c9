"""Checkpoints: layout, atomic writes (even under kill -9), rotation, resolution, RNG states."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from layersync.train import checkpoint as ckpt

pytestmark = pytest.mark.filterwarnings("ignore::layersync.loss.LayerSyncHeuristicWarning")

SMALL = [
    "train.batch_size=8",
    "model.depth=4",
    "log.every=1",
    "log.progress=false",
    "sampler.steps=4",
]


# --------------------------------------------------------------------------------------------
# Writing, rotation and resolution (no model needed)
# --------------------------------------------------------------------------------------------


def write(root: Path, step: int, keep_last: int = 3) -> Path:
    """A small but complete checkpoint whose tensors encode ``step``."""
    weights = {"w": torch.full((2, 3), float(step)), "b": torch.arange(3.0) + step}
    train_state = {"optimizer": {"state": {}, "param_groups": []}, "ema_updates": step}
    return ckpt.save_checkpoint(
        root,
        ckpt.Progress(step=step, epoch=1, batch_in_epoch=step % 4, samples_seen=8 * step),
        weights,
        {k: v * 0.5 for k, v in weights.items()},
        train_state,
        [ckpt.rng_state()],
        keep_last,
    )


def test_save_checkpoint_layout_and_contents(tmp_path: Path) -> None:
    path = write(tmp_path, 7)
    assert path == tmp_path / "0000007"
    assert sorted(p.name for p in path.iterdir()) == sorted(ckpt.WEIGHT_FILES + ckpt.STATE_FILES)
    assert (tmp_path / "last").read_text() == "0000007"
    assert torch.equal(load_file(str(path / "model.safetensors"))["w"], torch.full((2, 3), 7.0))
    assert torch.equal(ckpt.load_weights(path, "ema")["b"], (torch.arange(3.0) + 7) * 0.5)
    state, progress = ckpt.load_train_state(path)
    assert progress == ckpt.Progress(step=7, epoch=1, batch_in_epoch=3, samples_seen=56)
    assert state["ema_updates"] == 7
    assert len(ckpt.load_rng_states(path)) == 1


def test_rotation_keeps_the_newest(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8, 10):
        write(tmp_path, step, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["0000008", "0000010"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000008", "0000010", "last"]
    assert ckpt.resolve_checkpoint(tmp_path) == tmp_path / "0000010"


def test_resaving_a_step_replaces_it(tmp_path: Path) -> None:
    write(tmp_path, 4)
    (tmp_path / "0000004" / "stale").write_text("x")
    write(tmp_path, 4)
    assert not (tmp_path / "0000004" / "stale").exists()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["0000004"]


def test_tmp_leftovers_are_ignored_then_removed(tmp_path: Path) -> None:
    write(tmp_path, 2)
    write(tmp_path, 4)
    # what a crash mid-write leaves: a half-filled .tmp dir, even with a weights file in it
    partial = tmp_path / ".tmp-0000006"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    assert ckpt.resolve_checkpoint(tmp_path) == tmp_path / "0000004"
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["0000002", "0000004"]
    ckpt.rotate(tmp_path, keep_last=3)
    assert not partial.exists()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["0000002", "0000004"]


def test_resolve_checkpoint_targets(tmp_path: Path) -> None:
    run = tmp_path / "run"
    root = run / "checkpoints"
    write(root, 3)
    newest = write(root, 5)
    assert ckpt.resolve_checkpoint(run) == newest  # run dir: follows `last`
    assert ckpt.resolve_checkpoint(root) == newest  # checkpoints dir
    assert ckpt.resolve_checkpoint(root / "0000003") == root / "0000003"  # one checkpoint
    assert ckpt.resolve_checkpoint(str(run)) == newest
    (root / "last").write_text("0000003")
    assert ckpt.resolve_checkpoint(run) == root / "0000003"
    (root / "last").write_text("0000099")  # dangling pointer: newest complete one
    assert ckpt.resolve_checkpoint(run) == newest
    with pytest.raises(ckpt.CheckpointError, match="no such run or checkpoint directory"):
        ckpt.resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint found"):
        ckpt.resolve_checkpoint(tmp_path / "empty")
    with pytest.raises(ckpt.CheckpointError, match="missing weights file"):
        ckpt.load_weights(newest, "nope")


def test_torn_newest_checkpoint_names_it_and_the_previous_complete_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    root = run / "checkpoints"
    older = write(root, 3)
    newest = write(root, 5)
    (newest / "rng.pt").unlink()  # torn: `last` points at it but a file is missing
    message = f"resume from the previous complete checkpoint: --resume {older}"
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.resolve_checkpoint(run)
    assert str(info.value) == (
        f"{newest}: the newest checkpoint is incomplete (missing rng.pt); {message}"
    )
    with pytest.raises(ckpt.CheckpointError, match=r"incomplete checkpoint \(missing rng\.pt\)"):
        ckpt.resolve_checkpoint(newest)


@pytest.mark.parametrize(
    "name", ["model.safetensors", "ema.safetensors", "train_state.pt", "rng.pt"]
)
def test_truncated_checkpoint_file_names_it_and_the_way_out(tmp_path: Path, name: str) -> None:
    root = tmp_path / "checkpoints"
    older = write(root, 3)
    newest = write(root, 5)
    data = (newest / name).read_bytes()
    (newest / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError) as info:
        if name.endswith(".safetensors"):
            ckpt.load_weights(newest, name.split(".")[0])
        elif name == "train_state.pt":
            ckpt.load_train_state(newest)
        else:
            ckpt.load_rng_states(newest)
    message = str(info.value)
    assert message.startswith(f"{newest / name}: ")
    assert message.endswith(f"resume from the previous complete checkpoint: --resume {older}")
    assert "\n" not in message


# --------------------------------------------------------------------------------------------
# RNG states
# --------------------------------------------------------------------------------------------


def draw(generator: torch.Generator) -> tuple:
    return (
        [random.random() for _ in range(3)],
        np.random.rand(3).tolist(),
        np.random.randn(3).tolist(),  # exercises numpy's cached-gaussian slot
        torch.rand(3),
        torch.randn(3, generator=generator),
    )


def assert_same_draws(a: tuple, b: tuple) -> None:
    assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2]
    assert torch.equal(a[3], b[3]) and torch.equal(a[4], b[4])


def test_rng_round_trip_restores_every_stream() -> None:
    gen = torch.Generator().manual_seed(3)
    np.random.randn()  # leave a cached gaussian behind
    state = ckpt.rng_state(gen)
    first = draw(gen)
    draw(gen)  # move every stream on
    ckpt.set_rng_state(state, gen)
    assert_same_draws(first, draw(gen))


def test_rng_state_survives_torch_save_and_pickle(tmp_path: Path) -> None:
    """weights_only loading (checkpoints) and plain pickling (all_gather_object under DDP)."""
    gen = torch.Generator().manual_seed(11)
    state = ckpt.rng_state(gen)
    torch.save({"ranks": [state]}, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)["ranks"][0]
    pickled = pickle.loads(pickle.dumps(state))
    reference = draw(gen)
    for restored in (loaded, pickled):
        ckpt.set_rng_state(restored, gen)
        assert_same_draws(reference, draw(gen))


class FakeCuda:
    """Stands in for torch.cuda's RNG functions: ``count`` visible GPUs, ``current`` the rank's."""

    def __init__(self, count: int, current: int) -> None:
        self.states = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(count)}
        self.current = current

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: self.states[self.current].clone())
        monkeypatch.setattr(torch.cuda, "set_rng_state", self._set)

        def refuse(*args: object) -> None:
            raise AssertionError("every visible GPU's RNG touched")

        monkeypatch.setattr(torch.cuda, "get_rng_state_all", refuse)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)

    def _set(self, state: torch.Tensor) -> None:
        self.states[self.current] = state.clone()


def test_cuda_rng_is_the_rank_device_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved on GPU 3 of 4 visible, restored where the task sees one GPU (device 0)."""
    saving = FakeCuda(count=4, current=3)
    saving.install(monkeypatch)
    state = ckpt.rng_state()
    assert torch.equal(state["cuda_device"], torch.full((8,), 3, dtype=torch.uint8))
    restoring = FakeCuda(count=1, current=0)
    restoring.install(monkeypatch)
    ckpt.set_rng_state(state)
    assert torch.equal(restoring.states[0], torch.full((8,), 3, dtype=torch.uint8))


def test_legacy_all_gpu_rng_restores_the_current_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Older checkpoints hold every visible GPU's state: take the current device's entry."""
    state = ckpt.rng_state()
    state.pop("cuda_device")
    state["cuda"] = [torch.full((8,), 10 + i, dtype=torch.uint8) for i in range(2)]
    fake = FakeCuda(count=2, current=1)
    fake.install(monkeypatch)
    ckpt.set_rng_state(state)
    assert torch.equal(fake.states[1], state["cuda"][1])
    assert torch.equal(fake.states[0], torch.full((8,), 0, dtype=torch.uint8))  # untouched
    fewer = FakeCuda(count=4, current=3)  # no entry for device 3: left as it is
    fewer.install(monkeypatch)
    ckpt.set_rng_state(state)
    assert torch.equal(fewer.states[3], torch.full((8,), 3, dtype=torch.uint8))


# --------------------------------------------------------------------------------------------
# Real checkpoints from the engine
# --------------------------------------------------------------------------------------------


def test_every_pt_file_loads_weights_only(toy_plugins: Path, tmp_path: Path) -> None:
    from layersync import config as config_lib
    from layersync.registry import load
    from layersync.train import train

    plugin = load("toy-sequence")
    cfg = config_lib.resolve(
        plugin,
        overrides=[
            "train.batch_size=8",
            "model.depth=4",
            "log.progress=false",
            "train.steps=4",
            "checkpoint.every=2",
            "train.lr_schedule=cosine",
            "train.lr_warmup_steps=2",
            "ema.warmup=true",
            "train.grad_clip=1.0",
            f"run.out_dir={tmp_path}",
            "run.name=r",
        ],
    )
    run = train(cfg, plugin)
    files = sorted(run.glob("checkpoints/*/*.pt"))
    assert [f.parent.name for f in files] == ["0000002"] * 2 + ["0000004"] * 2
    for f in files:
        torch.load(f, map_location="cpu", weights_only=True)
    state, progress = ckpt.load_train_state(run / "checkpoints" / "0000004")
    assert progress.step == 4 and progress.samples_seen == 32
    assert state["ema_updates"] == 4 and state["world_size"] == 1
    assert state["scheduler"]["last_epoch"] == 4
    assert len(state["optimizer"]["state"]) == sum(1 for _ in plugin.build_model(cfg).parameters())


# --------------------------------------------------------------------------------------------
# kill -9 in the middle of a checkpoint write
# --------------------------------------------------------------------------------------------

# Runs the real CLI with the checkpoint writer wrapped: after the model weights of the second
# checkpoint are on disk, it announces itself in a marker file and hangs until killed.
SLOW_WRITER = """
import sys, time
from pathlib import Path

import layersync.train.checkpoint as ckpt

marker, hang_on = Path(sys.argv[1]), int(sys.argv[2])
calls = 0
real_save_file = ckpt.save_file


def save_file(tensors, filename, *args, **kwargs):
    global calls
    calls += 1
    real_save_file(tensors, filename, *args, **kwargs)
    if calls == hang_on:
        marker.write_text(str(filename))
        time.sleep(600)


ckpt.save_file = save_file
from layersync.cli import main

sys.argv = ["layersync", *sys.argv[3:]]
main()
"""


def test_kill_9_during_checkpoint_write(toy_env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "slow_writer.py"
    script.write_text(SLOW_WRITER)
    marker = tmp_path / "writing"
    args = [
        "--modality",
        "toy-image",
        *SMALL,
        "train.steps=6",
        "checkpoint.every=2",
        f"run.out_dir={tmp_path}",
        "run.name=r",
    ]
    # save_file calls: 1-2 = checkpoint 2 (model, ema), 3 = model of checkpoint 4
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marker), "3", "train", *args],
        env=toy_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the run never reached its second checkpoint"
            time.sleep(0.05)
        root = tmp_path / "r" / "checkpoints"
        assert Path(marker.read_text()) == root / ".tmp-0000004" / "model.safetensors"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # the half-written checkpoint is invisible; `last` is the previous complete one, and loads
    assert (root / ".tmp-0000004" / "model.safetensors").is_file()
    assert (root / "last").read_text() == "0000002"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["0000002"]
    good = ckpt.resolve_checkpoint(tmp_path / "r")
    assert good == root / "0000002"
    assert set(ckpt.load_weights(good, "model")) == set(ckpt.load_weights(good, "ema"))
    assert ckpt.load_train_state(good)[1].step == 2

    # --resume latest continues from it to the end and cleans the leftover up
    done = subprocess.run(
        [sys.executable, "-m", "layersync", "train", "--resume", "latest", *args],
        env=toy_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (root / "last").read_text() == "0000006"
    assert not (root / ".tmp-0000004").exists()
    assert ckpt.load_train_state(root / "0000006")[1].step == 6
    # the steps logged after checkpoint 2 and lost to the kill are logged once, by the resume
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
