"""The plugin conformance suite: one call in a plugin's own tests checks the whole contract.

::

    from layersync.testing import check_plugin

    def test_conforms(tmp_path):
        check_plugin(plugin, ["data.size=16", "model.depth=4"], tmp_dir=tmp_path)

``overrides`` shrink the ``demo`` preset so the checks run in seconds on a CPU. The checks, in
order (a failure names the check and the problem; all failures are reported together):

- ``members``: the contract's required members exist; ``api_version`` is this core's.
- ``config``: every config section forbids unknown keys (a typo must fail, naming the key); the
  ``demo`` preset resolves with ``overrides``.
- ``metrics``: ``Modality.metrics`` declares exactly one primary metric (when it declares any).
- ``objective``: on a batch of the demo data the objective calls the model exactly once (the
  LayerSync taps fill during that one forward) and returns a finite per-sample loss ``(B,)``, a
  time ``t`` ``(B,)`` in [0, 1] (t = 1 clean) or None, and a ``(B, T)`` token mask or None.
- ``loss_at``: where the objective has ``loss_at``, two calls with the same t and noise give the
  same loss, with one model call each.
- ``taps``: the default pair's blocks are captured as ``(B, T, D)`` (after ``token_view``) and fit
  the token mask.
- ``gradient``: the LayerSync term sends gradient into each student block and none into the
  teacher blocks (stop-gradient).
- ``train_resume``: 2 engine steps, then 2 more after a resume, equal 4 straight steps bit for bit
  (weights, EMA, optimizer state, RNG).
- ``samples``: ``conditions`` -> ``sample`` -> ``write_samples`` writes files.
- ``evaluate``: returns exactly the names declared in ``Modality.metrics``, finite numbers.

The checks themselves are in ``layersync.conformance``. ``assert_tree_equal`` (nested tensors,
dicts and lists equal bit for bit) is here too, for a plugin's own resume tests.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layersync.conformance import NEEDS, RUNNERS, Fail
from layersync.plugin import Modality

__all__ = ["CHECKS", "PluginCheckError", "PluginReport", "assert_tree_equal", "check_plugin"]

CHECKS = (
    "members",
    "config",
    "metrics",
    "objective",
    "loss_at",
    "taps",
    "gradient",
    "train_resume",
    "samples",
    "evaluate",
)


class PluginCheckError(AssertionError):
    """A plugin does not conform; the message lists every failed check and why."""


@dataclass
class PluginReport:
    """What ``check_plugin`` found: passed and skipped checks (failures raise)."""

    plugin: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def assert_tree_equal(a: Any, b: Any, where: str = "") -> None:
    """Nested tensors / dicts / lists / scalars equal exactly (tensors by ``torch.equal``), as a
    bit-exact resume needs; the AssertionError names the first differing path."""
    if torch.is_tensor(a):
        if not (torch.is_tensor(b) and torch.equal(a, b)):
            raise AssertionError(f"tensors differ at {where or 'the root'}")
    elif isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            raise AssertionError(f"keys differ at {where or 'the root'}")
        for key in a:
            assert_tree_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            raise AssertionError(f"lengths differ at {where or 'the root'}")
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_tree_equal(x, y, f"{where}[{i}]")
    elif a != b:
        raise AssertionError(f"{a!r} != {b!r} at {where or 'the root'}")


def save_tiny_autoencoder_kl(path: Path, **overrides: Any) -> Path:
    """A randomly initialised (seed 0), tiny diffusers ``AutoencoderKL`` saved to ``path``: RGB,
    4 latent channels, 2x downsampling; ``overrides`` replace its constructor arguments. The
    stand-in for SD-VAE in latent-workflow tests (needs diffusers)."""
    import diffusers

    torch.manual_seed(0)
    kwargs: dict[str, Any] = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    diffusers.AutoencoderKL(**{**kwargs, **overrides}).save_pretrained(path)
    return path


# -----------------------------------------------------------------------------
# Entry point


def check_plugin(
    plugin: Modality | str,
    overrides: Sequence[str] = (),
    *,
    tmp_dir: str | Path | None = None,
    skip: Sequence[str] = (),
    batch_size: int = 4,
) -> PluginReport:
    """Run the conformance checks on ``plugin`` (an instance or an installed modality's name).

    ``overrides``: dotted ``key=value`` settings that shrink the ``demo`` preset (data size,
    model depth, sampler steps, metric sample counts). ``skip``: names from ``CHECKS`` to leave
    out (say why in your test). Raises ``PluginCheckError`` naming every failed check; returns a
    ``PluginReport`` otherwise.
    """
    if isinstance(plugin, str):
        from layersync.registry import load

        plugin = load(plugin)
    unknown = sorted(set(skip) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; the checks are {list(CHECKS)}")
    name = getattr(plugin, "name", type(plugin).__name__)
    report = PluginReport(plugin=str(name))
    failures: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if tmp_dir is None:
            tmp_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="layersync-check-"))
        ctx: dict[str, Any] = {
            "overrides": list(overrides),
            "tmp_dir": Path(tmp_dir),
            "batch_size": batch_size,
        }
        threads = torch.get_num_threads()
        for check in CHECKS:
            if check in skip:
                report.skipped[check] = "skipped by the caller"
                continue
            blocked = [c for c in NEEDS.get(check, ()) if c in failures or c in report.skipped]
            if check != "members" and "members" in failures:
                blocked.append("members")
            if blocked:
                report.skipped[check] = f"needs {', '.join(blocked)}"
                continue
            rng = torch.random.get_rng_state()
            try:
                note = RUNNERS[check](plugin, ctx)
            except Fail as e:
                failures[check] = str(e)
                continue
            except Exception as e:
                failures[check] = f"raised {type(e).__name__}: {e}"
                continue
            finally:
                torch.random.set_rng_state(rng)
                torch.set_num_threads(threads)
            if note:
                report.skipped[check] = note
            else:
                report.passed.append(check)
    if failures:
        lines = "\n".join(f"  - {check}: {why}" for check, why in failures.items())
        raise PluginCheckError(f"plugin {name!r} fails {len(failures)} check(s):\n{lines}")
    return report
