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
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from layersync import config as config_lib
from layersync.loss import parse_pairs
from layersync.plugin import API_VERSION, MetricSpec, Modality, missing_members
from layersync.taps import resolve_module

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


class _Fail(Exception):
    pass


# -----------------------------------------------------------------------------
# Helpers


def _sections(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """Every pydantic model reachable from ``model``'s fields (nested sections), by dotted name."""
    for name, info in model.model_fields.items():
        candidates = [info.annotation, *getattr(info.annotation, "__args__", ())]
        for ann in candidates:
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                yield f"{prefix}{name}", ann
                yield from _sections(ann, f"{prefix}{name}.")


@contextlib.contextmanager
def _count_calls(model: nn.Module) -> Iterator[list[int]]:
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def _first_batch(plugin: Modality, cfg: Any, size: int) -> Any:
    dataset = plugin.build_dataset(cfg, "train")
    n = min(size, len(dataset))
    if n < 2:
        raise _Fail(f"the demo train dataset has {len(dataset)} items; need at least 2")
    return plugin.collate([dataset[i] for i in range(n)])


def _batch_size_of(out: Any) -> int:
    return int(out.loss.shape[0])


def _is_finite_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# -----------------------------------------------------------------------------
# The checks


def _check_members(plugin: Modality, ctx: dict[str, Any]) -> None:
    missing = missing_members(plugin)
    if missing:
        raise _Fail(f"missing member(s): {', '.join(missing)}")
    if plugin.api_version != API_VERSION:
        raise _Fail(f"api_version {plugin.api_version} but this core implements {API_VERSION}")
    if not isinstance(plugin.name, str) or not plugin.name:
        raise _Fail(f"name must be a non-empty string, got {plugin.name!r}")


def _check_config(plugin: Modality, ctx: dict[str, Any]) -> None:
    problems = []
    model = plugin.config_model
    for dotted, section in [("(config_model)", model), *_sections(model)]:
        if section.model_config.get("extra") != "forbid":
            problems.append(
                f"config section {dotted!r} ({section.__name__}) allows unknown keys: "
                "set model_config = ConfigDict(extra='forbid')"
            )
    for name, _ in _sections(model):
        if "." in name:
            continue
        try:
            config_lib.resolve(plugin, overrides=[*ctx["overrides"], f"{name}.no_such_key_xyz=1"])
        except config_lib.ConfigError:
            continue
        problems.append(f"config section {name!r} accepted the unknown key {name}.no_such_key_xyz")
    if problems:
        raise _Fail("; ".join(problems))
    try:
        ctx["cfg"] = config_lib.resolve(plugin, preset="demo", overrides=ctx["overrides"])
    except config_lib.ConfigError as e:
        raise _Fail(f"the demo preset does not resolve with the overrides: {e}") from None


def _check_metrics(plugin: Modality, ctx: dict[str, Any]) -> None:
    metrics = dict(plugin.metrics_for(ctx["cfg"]))
    bad = [k for k, v in metrics.items() if not isinstance(v, MetricSpec)]
    if bad:
        raise _Fail(f"Modality.metrics values must be MetricSpec: {bad}")
    primary = [k for k, v in metrics.items() if v.primary]
    if metrics and len(primary) != 1:
        raise _Fail(
            f"Modality.metrics must mark exactly one metric primary=True, found {primary or 'none'}"
        )


def _objective_call(plugin: Modality, ctx: dict[str, Any], model: nn.Module, sync: Any) -> Any:
    objective = ctx["objective"]
    gen = torch.Generator().manual_seed(0)
    with _count_calls(model) as calls, sync if sync is not None else contextlib.nullcontext():
        out = objective(model, ctx["batch"], gen)
    if len(calls) != 1:
        raise _Fail(
            f"the objective called the model {len(calls)} times for one batch; it must call it "
            "exactly once (the LayerSync taps capture that one forward)"
        )
    return out


def _check_objective(plugin: Modality, ctx: dict[str, Any]) -> None:
    cfg = ctx["cfg"]
    torch.manual_seed(cfg.run.seed)
    ctx["model"] = model = plugin.build_model(cfg)
    ctx["objective"] = plugin.build_objective(cfg)
    ctx["batch"] = _first_batch(plugin, cfg, ctx["batch_size"])
    model.train()
    out = _objective_call(plugin, ctx, model, None)
    loss = out.loss
    if not torch.is_tensor(loss) or loss.ndim != 1:
        raise _Fail(
            f"ObjectiveOutput.loss must be per-sample (B,), got {getattr(loss, 'shape', loss)}"
        )
    b = loss.shape[0]
    if not torch.isfinite(loss).all():
        raise _Fail("the diffusion loss is not finite on the demo batch")
    if out.t is not None:
        if tuple(out.t.shape) != (b,):
            raise _Fail(f"ObjectiveOutput.t must be (B,) = ({b},), got {tuple(out.t.shape)}")
        if (out.t < 0).any() or (out.t > 1).any():
            raise _Fail(
                f"ObjectiveOutput.t must lie in [0, 1] (t = 1 clean, discrete step s of T -> "
                f"1 - s/T), got [{float(out.t.min())}, {float(out.t.max())}]"
            )
    if out.token_mask is not None and (out.token_mask.ndim != 2 or out.token_mask.shape[0] != b):
        raise _Fail(f"ObjectiveOutput.token_mask must be (B, T), got {tuple(out.token_mask.shape)}")
    ctx["out"] = out


def _check_loss_at(plugin: Modality, ctx: dict[str, Any]) -> str | None:
    objective = ctx["objective"]
    if not hasattr(objective, "loss_at"):
        return "the objective has no loss_at (optional)"
    if not hasattr(objective, "noise_like"):
        raise _Fail("the objective has loss_at but no noise_like(batch, generator)")
    model, batch = ctx["model"], ctx["batch"]
    b = _batch_size_of(ctx["out"])
    gen = torch.Generator().manual_seed(1)
    noise = objective.noise_like(batch, gen)
    t = torch.rand(b, generator=gen)
    model.eval()
    losses = []
    with torch.no_grad():
        for _ in range(2):
            with _count_calls(model) as calls:
                losses.append(objective.loss_at(model, batch, t, noise).loss)
            if len(calls) != 1:
                raise _Fail(f"loss_at called the model {len(calls)} times; it must call it once")
    model.train()
    if tuple(losses[0].shape) != (b,):
        raise _Fail(f"loss_at must return a per-sample loss ({b},), got {tuple(losses[0].shape)}")
    if not torch.equal(losses[0], losses[1]):
        raise _Fail(
            "loss_at gave different losses for the same t and noise (a hidden random draw?): "
            f"{losses[0].tolist()} vs {losses[1].tolist()}"
        )
    return None


def _build_sync(plugin: Modality, cfg: Any, model: nn.Module) -> Any:
    from layersync.train.loop import build_layersync

    cfg = cfg.model_copy(deep=True)
    cfg.layersync.enabled = True
    return build_layersync(cfg, plugin, model)


def _check_taps(plugin: Modality, ctx: dict[str, Any]) -> None:
    cfg, model = ctx["cfg"], ctx["model"]
    names = plugin.block_names(cfg, model)
    for name in names:
        try:
            resolve_module(model, name)
        except (AttributeError, KeyError, ValueError) as e:
            raise _Fail(f"block_names lists {name!r}, which is not in the model: {e}") from None
    pairs = parse_pairs(cfg.layersync.pairs or plugin.default_layersync(cfg).pairs)
    for p in pairs:
        if not 1 <= p.student < p.teacher <= len(names):
            raise _Fail(f"default pair {p} does not fit the {len(names)} blocks")
    sync = _build_sync(plugin, cfg, model)
    out = _objective_call(plugin, ctx, model, sync)
    feats = dict(sync.taps.features)
    sync.taps.pop()
    b = _batch_size_of(out)
    shapes = {n: tuple(f.shape) for n, f in feats.items()}
    for p in pairs:
        s, t = names[p.student - 1], names[p.teacher - 1]
        for role, name in (("student", s), ("teacher", t)):
            if name not in feats:
                raise _Fail(f"the {role} block {name!r} of pair {p} was not captured")
            if feats[name].ndim != 3 or feats[name].shape[0] != b:
                raise _Fail(
                    f"{role} block {name!r} gives {shapes[name]}, not (B, T, D) with B = {b}: "
                    "set Modality.token_view"
                )
        if shapes[s] != shapes[t]:
            raise _Fail(f"pair {p}: student {shapes[s]} and teacher {shapes[t]} differ in shape")
        mask = out.token_mask
        if mask is not None and tuple(mask.shape) != shapes[s][:2]:
            raise _Fail(
                f"token_mask {tuple(mask.shape)} does not fit the tapped tokens {shapes[s][:2]}"
            )
    ctx["pairs"], ctx["names"] = pairs, names


def _check_gradient(plugin: Modality, ctx: dict[str, Any]) -> None:
    cfg = ctx["cfg"]
    # a perturbed copy: at the official init (adaLN-Zero) every block is the identity, student
    # and teacher coincide and the term's gradient is exactly zero whatever the wiring
    model = copy.deepcopy(ctx["model"])
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point():
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    sync = _build_sync(plugin, cfg, model)
    out = _objective_call(plugin, ctx, model, sync)
    model.zero_grad(set_to_none=True)
    reg = sync.loss(out.token_mask, out.t)
    if not torch.isfinite(reg):
        raise _Fail(f"the LayerSync term is not finite: {float(reg)}")
    reg.backward()
    names = ctx["names"]
    students = {names[p.student - 1] for p in ctx["pairs"]}
    teachers = {names[p.teacher - 1] for p in ctx["pairs"]} - students
    for name in sorted(students):
        grads = [q.grad for q in resolve_module(model, name).parameters()]
        if not any(g is not None and bool(g.abs().sum() > 0) for g in grads):
            raise _Fail(f"the LayerSync gradient does not reach the student block {name!r}")
    for name in sorted(teachers):
        for pname, q in resolve_module(model, name).named_parameters():
            if q.grad is not None and bool(q.grad.abs().sum() > 0):
                raise _Fail(
                    f"teacher block {name!r} ({pname}) received LayerSync gradient: the teacher "
                    "side must be stop-gradient"
                )


def _check_train_resume(plugin: Modality, ctx: dict[str, Any]) -> None:
    from layersync import distributed as dist
    from layersync.train import checkpoint as ckpt
    from layersync.train.loop import Trainer

    root = ctx["tmp_dir"] / "train"
    base = [
        *ctx["overrides"],
        f"run.out_dir={root}",
        "train.device=cpu",
        "train.lr_schedule=constant",  # resuming with a new train.steps keeps the same LRs
        "checkpoint.every=2",
        "checkpoint.keep_last=5",
        "log.progress=false",
        "log.every=1",
        "log.sample_every=0",
        "log.eval_every=0",
    ]

    def run(name: str, steps: int, resume: str | None = None) -> Path:
        cfg = config_lib.resolve(
            plugin, preset="demo", overrides=[*base, f"run.name={name}", f"train.steps={steps}"]
        )
        trainer = Trainer.create(cfg, plugin, resume=resume)
        # samples and metrics have their own checks; here only the training state matters
        trainer.write_samples = lambda step: []  # type: ignore[method-assign]
        trainer.evaluate = lambda step, logger=None: {}  # type: ignore[method-assign]
        try:
            return trainer.fit()
        finally:
            dist.shutdown()

    straight = run("straight", 4) / "checkpoints" / ckpt.checkpoint_dir_name(4)
    run("split", 2)
    split = run("split", 4, resume="latest") / "checkpoints" / ckpt.checkpoint_dir_name(4)
    for which in ("model", "ema"):
        a, b = ckpt.load_weights(straight, which), ckpt.load_weights(split, which)
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        if diff:
            raise _Fail(
                f"2 steps + resume + 2 steps differ from 4 straight steps in {which} weights "
                f"{diff[:3]}: some state (data order, RNG, a per-item draw) is not resumed"
            )
    state_a, progress_a = ckpt.load_train_state(straight)
    state_b, progress_b = ckpt.load_train_state(split)
    if progress_a != progress_b:
        raise _Fail(f"resumed progress {progress_b} differs from the straight run's {progress_a}")
    try:
        assert_tree_equal(state_a, state_b)
    except AssertionError as e:
        raise _Fail(
            f"the optimizer/scheduler state after a resume differs from a straight run ({e})"
        ) from None
    ctx["trained"] = ckpt.load_weights(straight, "ema")


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


def _check_samples(plugin: Modality, ctx: dict[str, Any]) -> None:
    cfg, model = ctx["cfg"], ctx["model"]
    gen = torch.Generator().manual_seed(3)
    n = 2
    model.eval()
    with torch.no_grad():
        condition = plugin.conditions(cfg, n, gen)
        samples = plugin.sample(model, cfg, n, condition, gen)
    out_dir = ctx["tmp_dir"] / "samples"
    paths = plugin.write_samples(samples, out_dir, cfg, prefix="check")
    paths = [Path(p) for p in paths]
    if not paths:
        raise _Fail("write_samples returned no paths")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise _Fail(f"write_samples returned paths that do not exist: {missing[:3]}")


def _check_evaluate(plugin: Modality, ctx: dict[str, Any]) -> None:
    cfg, model = ctx["cfg"], ctx["model"]
    out_dir = ctx["tmp_dir"] / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        result = plugin.evaluate(model.eval(), cfg, out_dir, torch.Generator().manual_seed(4))
    declared = set(plugin.metrics_for(cfg))
    got = set(result or {})
    if got != declared:
        raise _Fail(
            f"evaluate returned {sorted(got)} but Modality.metrics_for(cfg) declares "
            f"{sorted(declared)}"
        )
    bad = {k: v for k, v in (result or {}).items() if not _is_finite_number(v)}
    if bad:
        raise _Fail(f"evaluate returned non-finite or non-numeric values: {bad}")


_RUNNERS: dict[str, Callable[[Modality, dict[str, Any]], str | None]] = {
    "members": _check_members,
    "config": _check_config,
    "metrics": _check_metrics,
    "objective": _check_objective,
    "loss_at": _check_loss_at,
    "taps": _check_taps,
    "gradient": _check_gradient,
    "train_resume": _check_train_resume,
    "samples": _check_samples,
    "evaluate": _check_evaluate,
}
_NEEDS = {  # a check is skipped when one it builds on failed
    "objective": ("config",),
    "loss_at": ("objective",),
    "taps": ("objective",),
    "gradient": ("taps",),
    "train_resume": ("config",),
    "samples": ("objective",),
    "evaluate": ("objective",),
}


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
            blocked = [c for c in _NEEDS.get(check, ()) if c in failures or c in report.skipped]
            if check != "members" and "members" in failures:
                blocked.append("members")
            if blocked:
                report.skipped[check] = f"needs {', '.join(blocked)}"
                continue
            rng = torch.random.get_rng_state()
            try:
                note = _RUNNERS[check](plugin, ctx)
            except _Fail as e:
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
