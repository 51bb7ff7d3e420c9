"""Every bad input: one line, the culprit named, nothing left behind (issue 9, section 2).

Each case runs the real CLI (in-process, through the shared ``layersync_cli`` runner) and must:
exit non-zero (2: usage, config, data, checkpoint), print exactly one line ``error: ...`` on
stderr and no traceback, name the culprit (file, key or value), and leave every pre-existing run
directory byte-identical (and create no new one).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from layersync.train import checkpoint as ckpt

pytestmark = pytest.mark.filterwarnings("ignore::layersync.loss.LayerSyncHeuristicWarning")

SMALL = [
    "train.steps=2",
    "train.batch_size=8",
    "model.depth=4",
    "sampler.steps=2",
    "checkpoint.every=1",
    "log.progress=false",
    "log.sample_count=4",
    "data.size=16",
]


@pytest.fixture(scope="module")
def runs(
    toy_sys_path: list[str], cli_invoke: Callable, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """``runs/good`` (2 steps, checkpoints 1 and 2) and damaged copies of it."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        for entry in reversed(toy_sys_path):
            mp.syspath_prepend(entry)
        done = cli_invoke(
            "train", "-m", "toy-image", *SMALL, f"run.out_dir={root}", "run.name=good"
        )
        assert done.exit_code == 0, done.stderr
    good = root / "good"
    for name, damage in DAMAGE.items():
        shutil.copytree(good, root / name)
        damage(root / name / "checkpoints" / "0000002")
    yield root


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE: dict[str, Callable[[Path], None]] = {
    "torn-model": lambda c: _truncate(c / "model.safetensors"),
    "torn-ema": lambda c: _truncate(c / "ema.safetensors"),
    "torn-state": lambda c: _truncate(c / "train_state.pt"),
    "torn-rng": lambda c: _truncate(c / "rng.pt"),
    "missing-rng": lambda c: (c / "rng.pt").unlink(),
    "nan-ema": lambda c: ckpt.save_file(
        {k: v * float("nan") for k, v in ckpt.load_file(str(c / "ema.safetensors")).items()},
        str(c / "ema.safetensors"),
    ),
}


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def inputs(tmp: Path) -> None:
    """Files the cases point at."""
    (tmp / "notes.txt").write_text("hello\n")
    (tmp / "run.toml").write_text('modality = "toy-image"\n[train]\nsteps = 2\n')
    (tmp / "broken.toml").write_text('modality = "toy-image"\n[train\n')
    (tmp / "other.toml").write_text('modality = "image"\n')
    (tmp / "pairs.toml").write_text('modality = "toy-image"\n[layersync]\npairs = "8-16"\n')
    (tmp / "random.bin").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 64, np.uint8)))
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "afile").write_text("x")
    torch.save({"w": torch.ones(2)}, tmp / "wrong.pt")


R = "{runs}"
T = "{tmp}"
NEW = ["-m", "toy-image", *SMALL, f"run.out_dir={R}"]

# (id, argv, culprit named in the error line)
CASES: list[tuple[str, list[str], str]] = [
    # layer pairs: one code path for config validation, --dry-run, train, probe, bench
    ("dry-run-self-pair", ["train", "--dry-run", *NEW, "layersync.pairs=3<-3"], "3<-3"),
    ("self-pair", ["train", *NEW, "run.name=new", "layersync.pairs=3<-3"], "3<-3"),
    ("trailing-comma", ["train", *NEW, "run.name=new", "layersync.pairs=2<-3,"], "'2<-3,'"),
    ("dash-pair", ["train", *NEW, "run.name=new", "layersync.pairs=8-16"], "'8-16'"),
    ("pair-too-deep", ["train", *NEW, "run.name=new", "layersync.pairs=2<-9"], "2<-9"),
    ("dry-run-too-deep", ["train", "--dry-run", *NEW, "layersync.pairs=2<-9"], "2<-9"),
    ("validate-dash-pair", ["config", "validate", f"{T}/pairs.toml"], "'8-16'"),
    (
        "validate-too-deep",
        ["config", "validate", f"{T}/run.toml", "layersync.pairs=1<-40"],
        "1<-40",
    ),
    ("bench-too-deep", ["bench", "step", *NEW, "layersync.pairs=2<-9"], "2<-9"),
    # config
    ("zero-steps", ["train", *NEW, "run.name=new", "train.steps=0"], "train.steps"),
    ("typo-key", ["train", *NEW, "run.name=new", "train.stpes=3"], "train.stpes"),
    ("bad-bool", ["train", *NEW, "run.name=new", "data.fixed_noise=maybe"], "maybe"),
    ("bad-policy", ["train", *NEW, "run.name=new", "train.nonfinite=ignore"], "train.nonfinite"),
    ("bad-preset", ["train", *NEW, "--preset", "huge"], "huge"),
    ("bad-modality", ["train", "-m", "nosuch"], "nosuch"),
    ("missing-config", ["train", "--config", f"{T}/nowhere.toml"], "nowhere.toml"),
    ("broken-toml", ["train", "--config", f"{T}/broken.toml"], "broken.toml"),
    ("dir-as-config", ["config", "validate", T], T),
    ("other-modality", ["train", "-m", "toy-image", "--config", f"{T}/other.toml"], "other.toml"),
    ("no-override-value", ["train", *NEW, "run.name=new", "train.steps"], "train.steps"),
    # run directories
    ("run-exists", ["train", *NEW, "run.name=good"], f"{R}/good"),
    ("resume-missing", ["train", "--resume", "latest", *NEW, "run.name=ghost"], f"{R}/ghost"),
    (
        "resume-torn-model",
        ["train", "--resume", f"{R}/torn-model", *NEW, "run.name=torn-model"],
        "model.safetensors",
    ),
    (
        "resume-torn-ema",
        ["train", "--resume", "latest", *NEW, "run.name=torn-ema"],
        "ema.safetensors",
    ),
    (
        "resume-torn-state",
        ["train", "--resume", "latest", *NEW, "run.name=torn-state"],
        "train_state.pt",
    ),
    ("resume-torn-rng", ["train", "--resume", "latest", *NEW, "run.name=torn-rng"], "rng.pt"),
    (
        "resume-torn-newest",
        ["train", "--resume", "latest", *NEW, "run.name=missing-rng"],
        "0000002",
    ),
    (
        "resume-nan-weights",
        ["train", "--resume", "latest", *NEW, "run.name=nan-ema"],
        "ema.safetensors",
    ),
    (
        "resume-other-shape",
        ["train", "--resume", "latest", *NEW, "run.name=good", "model.dim=48"],
        "model.safetensors",
    ),
    # sample / eval
    ("sample-zero", ["sample", f"{R}/good", "-n", "0"], "--num-samples"),
    ("sample-zero-batch", ["sample", f"{R}/good", "--batch-size", "0"], "--batch-size"),
    ("sample-out-is-file", ["sample", f"{R}/good", "--out", f"{T}/afile"], "afile"),
    ("sample-nothing", ["sample"], "--weights"),
    ("sample-missing-run", ["sample", f"{R}/ghost"], "ghost"),
    ("sample-torn-ema", ["sample", f"{R}/torn-ema"], "ema.safetensors"),
    ("weights-text", ["sample", "--weights", f"{T}/notes.txt", "-m", "toy-image"], "notes.txt"),
    ("weights-toml", ["sample", "--weights", f"{T}/run.toml", "-m", "toy-image"], "run.toml"),
    ("weights-random", ["sample", "--weights", f"{T}/random.bin", "-m", "toy-image"], "random.bin"),
    ("weights-empty", ["sample", "--weights", f"{T}/empty.pt", "-m", "toy-image"], "empty.pt"),
    ("weights-missing", ["sample", "--weights", f"{T}/gone.pt", "-m", "toy-image"], "gone.pt"),
    ("weights-mismatch", ["sample", "--weights", f"{T}/wrong.pt", "-m", "toy-image"], "wrong.pt"),
    ("sample-bad-override", ["sample", f"{R}/good", "sampler.stepz=3"], "sampler.stepz"),
    ("eval-missing-run", ["eval", f"{R}/ghost"], "ghost"),
    # probe / bench
    ("probe-missing-run", ["probe", "--run", f"{R}/ghost"], "ghost"),
    ("probe-bad-split", ["probe", "--run", f"{R}/good", "--split", "test"], "--split"),
    ("bench-bad-seeds", ["bench", "convergence", *NEW, "--seeds", "a,b"], "--seeds"),
    ("bench-bad-sampler", ["bench", "sample", *NEW, "--samplers", "ode"], "'ode'"),
    ("bench-zero-steps", ["bench", "step", *NEW, "--steps", "0"], "--steps"),
]


@pytest.mark.parametrize(("argv", "culprit"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_culprit(
    argv: list[str], culprit: str, runs: Path, tmp_path: Path, layersync_cli: Callable
) -> None:
    inputs(tmp_path)
    fill = {"{runs}": str(runs), "{tmp}": str(tmp_path)}

    def expand(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    before = {p.name: snapshot(p) for p in runs.iterdir()}
    done = layersync_cli(*map(expand, argv))
    assert done.exit_code == 2, (done.exit_code, done.stderr, done.exception)
    assert isinstance(done.exception, SystemExit)  # handled: not an uncaught exception
    assert "Traceback" not in done.stderr + done.stdout
    (line,) = done.lines
    assert line.startswith("error: ") and expand(culprit) in line, line
    after = {p.name: snapshot(p) for p in runs.iterdir()}
    assert after == before  # no run directory touched, none created


def test_at_least_thirty_bad_inputs() -> None:
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_debug_shows_the_traceback(runs: Path, layersync_cli: Callable, monkeypatch) -> None:
    argv = ["train", *[a.replace(R, str(runs)) for a in NEW], "layersync.pairs=2<-9"]
    plain = layersync_cli(*argv)
    assert "Traceback" not in plain.stderr
    debug = layersync_cli("--debug", *argv)
    assert debug.exit_code == 2 and "Traceback (most recent call last)" in debug.stderr
    assert debug.errors == plain.errors
    monkeypatch.setenv("LAYERSYNC_DEBUG", "1")
    assert "Traceback (most recent call last)" in layersync_cli(*argv).stderr


def test_square_brackets_in_messages_are_printed(layersync_cli: Callable, tmp_path: Path) -> None:
    """User text is never rich markup: '[x]' survives in errors (issue: the key list vanished)."""
    done = layersync_cli("train", "--config", str(tmp_path / "[weird] name.toml"))
    assert done.errors == [f"error: {tmp_path / '[weird] name.toml'}: config file not found"]
