"""scripts/gpu_smoke.sh, its CPU path: every check on 2 gloo processes with tiny sizes.

On a GPU machine the same script runs SiT-XL/2 and B/2; here it proves the script itself works
(arguments, run layout, the comparisons it prints) before anyone pays for GPU time.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "gpu_smoke.sh"

pytestmark = [
    pytest.mark.slow,  # about ten torchrun launches: minutes on 2 shared cores
    pytest.mark.skipif(not SCRIPT.is_file(), reason=f"no {SCRIPT}"),
]


def test_cpu_path_passes_every_check(tmp_path: Path) -> None:
    pytest.importorskip("layersync_image")
    env = {**os.environ, "SMOKE_OUT": str(tmp_path), "NPROC": "2", "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    done = subprocess.run(
        ["bash", str(SCRIPT), "--cpu"], env=env, capture_output=True, text=True, timeout=1800
    )
    lines = {
        line.split(":", 1)[0].split(" ", 1)[1]: line
        for line in done.stdout.splitlines()
        if line.split(" ", 1)[0] in ("PASS", "FAIL", "SKIP")
    }
    assert list(lines) == ["bench step", "ddp", "resume", "fsdp", "compile", "sample", "fid"], (
        done.stdout + done.stderr
    )
    failed = [line for line in lines.values() if line.startswith("FAIL")]
    assert done.returncode == len(failed) == 0, done.stdout
    assert lines["fid"].startswith(("PASS", "SKIP"))
    # the resume check's figures: on CPU a resumed run is the straight run, bit for bit
    assert "largest loss gap 0, largest weight gap 0" in lines["resume"], lines["resume"]
    # mid-run samples and checkpoints of the DDP run are listed
    assert "'0000002.npy'" in lines["ddp"] and "'0000002'" in lines["ddp"], lines["ddp"]
