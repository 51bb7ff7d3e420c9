"""Cluster-safe behaviour on 2 gloo processes (forked, CPU): one rank decides what every rank
sees of the file system (``--resume latest``), and its errors reach every rank."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from layersync import distributed as dist
from layersync.train import checkpoint as ckpt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_run(root: Path, steps: list[int], last: int) -> Path:
    """A run directory with complete (empty) checkpoints and ``last`` pointing at one."""
    ckdir = root / "checkpoints"
    for step in steps:
        path = ckdir / ckpt.checkpoint_dir_name(step)
        path.mkdir(parents=True)
        for name in ckpt.WEIGHT_FILES + ckpt.STATE_FILES:
            (path / name).write_bytes(b"")
    (ckdir / ckpt.LAST).write_text(ckpt.checkpoint_dir_name(last))
    return root


def _worker(rank: int, port: int, runs: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # each rank has its own view of the run directory (a lagging network file system)
        found = dist.on_rank0(lambda: ckpt.resolve_checkpoint(runs[rank]))
        try:
            dist.on_rank0(lambda: ckpt.resolve_checkpoint(Path(runs[rank]) / "ghost"))
            error = "none"
        except ckpt.CheckpointError as e:
            error = f"{type(e).__name__}: {e}"
        Path(out, f"rank{rank}.txt").write_text(f"{found}\n{error}")
    finally:
        torch_dist.destroy_process_group()


def test_latest_is_resolved_on_rank0_and_errors_reach_every_rank(tmp_path: Path) -> None:
    rank0 = fake_run(tmp_path / "view0", [2, 4], last=4)
    rank1 = fake_run(tmp_path / "view1", [2], last=2)  # this node has not seen step 4 yet
    assert ckpt.resolve_checkpoint(rank1).name != ckpt.resolve_checkpoint(rank0).name
    mp.start_processes(
        _worker,
        args=(free_port(), [str(rank0), str(rank1)], str(tmp_path)),
        nprocs=2,
        start_method="fork",
    )
    answers = [(tmp_path / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    want = str(rank0 / "checkpoints" / ckpt.checkpoint_dir_name(4))
    assert [a[0] for a in answers] == [want, want]
    for _, error in answers:
        assert error.startswith("CheckpointError: ") and "view0/ghost" in error, error


def test_on_rank0_alone_just_calls() -> None:
    assert dist.on_rank0(lambda: 41 + 1) == 42
    with pytest.raises(ZeroDivisionError):
        dist.on_rank0(lambda: 1 / 0)


def test_restart_deals_the_undone_batches_evenly() -> None:
    """Rank 0 of 2 finished its old share (0, 2, 4): the rest is split 1 / 1, not 0 / 2."""
    from layersync.sampling import deal_batches

    todo = [1, 3]
    shares = [deal_batches(todo, r, 2) for r in (0, 1)]
    assert shares == [[1], [3]]
    todo = list(range(3, 10))  # 7 left for 3 ranks: 3 / 2 / 2, every batch exactly once
    shares = [deal_batches(todo, r, 3) for r in range(3)]
    assert sorted(b for share in shares for b in share) == todo
    assert [len(s) for s in shares] == [3, 2, 2]
