"""A renamed fresh copy of either template installs and trains with no edit outside its folder.

The copy gets a new folder, package, distribution and modality name (a search-and-replace inside
the folder only), is pip-installed into a private target directory and trained for a few steps
through the CLI: the core finds it through its entry point alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CORE_SRC = REPO / "packages" / "layersync-core" / "src"

COPIES = {  # template folder: (old package, new package, old modality, new modality)
    "layersync-toy-image": ("layersync_toy_image", "acme_glyphs", "toy-image", "acme-glyphs"),
    "layersync-toy-sequence": (
        "layersync_toy_sequence",
        "acme_moves",
        "toy-sequence",
        "acme-moves",
    ),
}


def renamed_copy(template: str, dest: Path) -> tuple[Path, str, str]:
    old_pkg, new_pkg, old_name, new_name = COPIES[template]
    folder = dest / f"{new_name}-plugin"
    shutil.copytree(
        REPO / "templates" / template, folder, ignore=shutil.ignore_patterns("__pycache__")
    )
    (folder / "src" / old_pkg).rename(folder / "src" / new_pkg)
    for path in folder.rglob("*"):
        if path.suffix in (".py", ".toml", ".md"):
            text = path.read_text()
            text = text.replace(old_pkg, new_pkg).replace(f"layersync-{old_name}", new_name)
            path.write_text(
                text.replace(f'"{old_name}"', f'"{new_name}"').replace(
                    f"{old_name} =", f"{new_name} ="
                )
            )
    return folder, new_pkg, new_name


@pytest.mark.parametrize("template", list(COPIES))
def test_renamed_copy_installs_and_trains(template: str, tmp_path: Path) -> None:
    folder, package, name = renamed_copy(template, tmp_path)
    assert not list(folder.rglob(f"*{COPIES[template][0]}*"))  # nothing kept the old name
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "--target", str(site), str(folder)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(CORE_SRC)]),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # fmt: skip
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    run = subprocess.run(
        [sys.executable, "-m", "layersync", "train", "--modality", name, "train.steps=4",
         "train.batch_size=8", "data.size=16", "model.depth=4", "log.progress=false",
         "log.every=1", f"run.out_dir={tmp_path / 'runs'}", "run.name=r"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "runs" / "r"
    assert (out / "checkpoints" / "last").read_text() == "0000004"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "diffusion" in x]
    assert [x["step"] for x in train_lines] == [1, 2, 3, 4]
    assert all(x["layersync"] < 0 for x in train_lines)  # the term ran: -cos of real features
    env_json = json.loads((out / "env.json").read_text())
    assert env_json["plugin"]["class"] == f"{package}.plugin"
