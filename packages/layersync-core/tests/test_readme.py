"""The README's standalone example runs as written and does what it says."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[3] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_standalone_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocks = python_blocks(README.read_text())
    assert blocks, "README has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    namespace = runpy.run_path(str(script))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3  # three training steps printed
    sync = namespace["sync"]
    assert [str(p) for p in sync.pairs] == ["4<-8"]
    assert sync.taps.names == ["blocks.3", "blocks.7"]
    assert not sync.taps.attached  # hooks gone after the `with` block
    assert sync.taps.features == {}  # released by sync.loss()
    cos = sync.stats["cos/4<-8"].item()
    assert -1.0 <= cos <= 1.0 and sync.stats["reg"].item() == pytest.approx(-cos, abs=1e-6)
