"""torchrun on CPU (gloo): 2 processes train exactly what 1 process trains with the same batch.

Every run accumulates gradients over 2 micro-batches (the all-reduce must follow the last one)
and samples from the EMA mid-run (FSDP2 must reshard the EMA root before the next update).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layersync.train import checkpoint as ckpt

TORCHRUN = Path(sys.executable).with_name("torchrun")
STEPS, LR = 6, 1e-3
COMMON = [
    "train",
    "--modality",
    "toy-image",
    "data.fixed_noise=true",  # noise and t from each item's index: equal for any world size
    f"train.steps={STEPS}",
    f"train.lr={LR}",
    "train.batch_size=8",
    "train.grad_accum=2",
    "log.sample_every=2",  # EMA samples between updates (the FSDP2 reshard crash, issue 15)
    "model.depth=4",
    "checkpoint.every=3",
    "log.every=1",
    "log.progress=false",
    "sampler.steps=4",
    "ema.decay=0.5",
]
COMPARED = ("diffusion", "layersync", "loss", "cos/2<-3", "grad_norm", "lr")

pytestmark = pytest.mark.skipif(not TORCHRUN.is_file(), reason=f"no torchrun at {TORCHRUN}")


def launch(
    env: dict[str, str], out: Path, name: str, *extra: str, nproc: int = 2
) -> subprocess.CompletedProcess:
    prefix = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "-m", "layersync"]
    if nproc == 1:
        prefix = [sys.executable, "-m", "layersync"]
    return subprocess.run(
        [*prefix, *COMMON, f"run.out_dir={out}", f"run.name={name}", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


@pytest.fixture(scope="module")
def single(toy_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = launch(toy_env, out, "single", nproc=1)
    assert done.returncode == 0, done.stderr
    return out / "single"


def assert_same_training(run: Path, single: Path) -> dict[str, float]:
    """Same loss curve and (nearly) the same weights as the 1-process run; returns max diffs."""
    ours, ref = lines(run), lines(single)
    # rank 0 alone wrote: one line per (step, kind), the same files as a 1-process run
    assert [(r["step"], r["kind"]) for r in ours] == [(r["step"], r["kind"]) for r in ref]
    assert files(run) == files(single)
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    rngs = ckpt.load_rng_states(ckpt.resolve_checkpoint(run))
    assert len(rngs) == 2
    # each rank draws its own noise and t: the engine generators and torch streams differ
    assert not torch.equal(rngs[0]["generator"], rngs[1]["generator"])
    assert not torch.equal(rngs[0]["torch"], rngs[1]["torch"])
    assert sorted(p.name for p in (run / "samples").iterdir()) == sorted(
        p.name for p in (single / "samples").iterdir()
    )
    for a, b in zip(ours, ref, strict=True):
        if a["kind"] == "train":
            for key in COMPARED:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)

    diffs = {}
    for which in ("model", "ema"):
        got = ckpt.load_weights(ckpt.resolve_checkpoint(run), which)
        want = ckpt.load_weights(ckpt.resolve_checkpoint(single), which)
        assert got.keys() == want.keys()
        worst, worst_key_bias = 0.0, 0.0
        for key in want:
            diff = (got[key] - want[key]).abs()
            if key.endswith("attn.in_proj_bias"):
                # The attention key bias has an exactly-zero gradient (softmax is shift
                # invariant), so its float-rounding noise differs between the two reductions
                # and Adam normalises that noise into steps of up to lr: bound it by lr * steps.
                q, k, v = diff.chunk(3)
                worst_key_bias = max(worst_key_bias, k.max().item())
                diff = torch.cat([q, v])
            worst = max(worst, diff.max().item())
        assert worst < 1e-5, (which, worst)
        assert worst_key_bias <= LR * STEPS, (which, worst_key_bias)
        diffs[which], diffs[f"{which}_key_bias"] = worst, worst_key_bias
    return diffs


def test_ddp_matches_single_process(single: Path, toy_env: dict[str, str]) -> None:
    done = launch(toy_env, single.parent, "ddp")
    assert done.returncode == 0, done.stderr
    diffs = assert_same_training(single.parent / "ddp", single)
    print("DDP vs 1 process, max abs parameter difference:", diffs)


def test_fsdp_matches_single_process(single: Path, toy_env: dict[str, str]) -> None:
    done = launch(toy_env, single.parent, "fsdp", "train.distributed=fsdp")
    assert done.returncode == 0, done.stderr
    diffs = assert_same_training(single.parent / "fsdp", single)
    print("FSDP vs 1 process, max abs parameter difference:", diffs)


def test_batch_not_divisible_by_world_size(toy_env: dict[str, str], tmp_path: Path) -> None:
    done = launch(toy_env, tmp_path, "odd", "train.batch_size=7")
    assert done.returncode != 0
    message = "error: train.batch_size = 7 is not divisible by world size 2 x train.grad_accum 2"
    assert message in done.stderr
    assert not (tmp_path / "odd").exists()


def torchrun(env: dict[str, str], *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    prefix = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "-m", "layersync"]
    if nproc == 1:
        prefix = [sys.executable, "-m", "layersync"]
    done = subprocess.run([*prefix, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def test_eval_under_two_processes_equals_one(single: Path, toy_env: dict[str, str]) -> None:
    """Both processes join the group; rank 0 writes metrics.json (removed first) and prints."""
    path = single / "eval" / f"{STEPS:07d}" / "metrics.json"
    during_training = json.loads(path.read_text())
    path.unlink()
    done = torchrun(toy_env, "eval", str(single))
    assert json.loads(path.read_text()) == pytest.approx(during_training, rel=1e-6)
    assert done.stdout.count("metrics (") == 1  # one table, from rank 0


def test_sample_restart_deals_out_the_undone_batches(
    single: Path, toy_env: dict[str, str], tmp_path: Path
) -> None:
    """A job stopped after rank 0 of 2 finished its batches (0, 2, 4 of 5): the restart deals the
    rest (1, 3) to both ranks and ends with the same files as one uninterrupted process."""
    ref, out = tmp_path / "ref", tmp_path / "out"
    args = ["-n", "10", "--batch-size", "2", "--seed", "3"]
    torchrun(toy_env, "sample", str(single), "--out", str(ref), *args, nproc=1)
    (out / "parts").mkdir(parents=True)
    for b in (0, 2, 4):
        shutil.copytree(ref / "parts" / f"{b:06d}", out / "parts" / f"{b:06d}")
    torchrun(toy_env, "sample", str(single), "--out", str(out), *args)
    assert files(out) == files(ref)
    for name in files(ref):
        if (ref / name).is_file():
            assert (out / name).read_bytes() == (ref / name).read_bytes(), name


@pytest.mark.slow  # four more torchrun launches
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_resume_across_ranks_equals_the_straight_run(
    single: Path, toy_env: dict[str, str], strategy: str
) -> None:
    """Stopped at step 3 and resumed (rank 0 alone reads the files and broadcasts them, each rank
    reshards under FSDP2): the same weights, EMA and losses as the straight 2-process run."""
    out = single.parent
    straight = out / strategy
    if not (straight / "checkpoints").is_dir():
        extra = ["train.distributed=fsdp"] if strategy == "fsdp" else []
        assert launch(toy_env, out, strategy, *extra).returncode == 0
    name = f"{strategy}-resumed"
    extra = [f"train.distributed={strategy}"]
    done = launch(toy_env, out, name, *extra, "train.steps=3")
    assert done.returncode == 0, done.stderr
    done = launch(toy_env, out, name, *extra, f"train.steps={STEPS}", "--resume", "latest")
    assert done.returncode == 0, done.stderr
    resumed = out / name
    for which in ("model", "ema"):
        a = ckpt.load_weights(ckpt.resolve_checkpoint(straight), which)
        b = ckpt.load_weights(ckpt.resolve_checkpoint(resumed), which)
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst == 0.0, (which, worst)
    late = [r for r in lines(straight) if r["kind"] == "train" and r["step"] > 3]
    again = [r for r in lines(resumed) if r["kind"] == "train" and r["step"] > 3]
    assert [r["loss"] for r in again] == [r["loss"] for r in late]
