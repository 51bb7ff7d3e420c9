"""torchrun on CPU (gloo): 2 processes train exactly what 1 process trains with the same batch."""

from __future__ import annotations

import json
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
    assert len(ckpt.load_rng_states(ckpt.resolve_checkpoint(run))) == 2
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
    message = "error: train.batch_size = 7 is not divisible by world size 2 x train.grad_accum 1"
    assert message in done.stderr
    assert not (tmp_path / "odd").exists()
