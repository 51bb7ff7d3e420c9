"""The plugin conformance checks behind ``layersync.testing.check_plugin``, one function per
check, in the order of ``layersync.testing.CHECKS`` (whose docstring says what each checks).

A check takes the plugin and a shared ``ctx`` dict (``overrides``, ``tmp_dir``, ``batch_size``,
then what earlier checks built: ``cfg``, ``model``, ``objective``, ``batch``, ``out``, ``pairs``,
``names``, ``trained``); it raises ``Fail`` with the problem, or returns a note when it does not
apply.
``NEEDS`` says which checks a check builds on.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from layersync import config as config_lib
from layersync.pairs import parse_pairs
from layersync.plugin import API_VERSION, MetricSpec, Modality, missing_members
from layersync.taps import resolve_module


class Fail(Exception):
    """A check's finding, phrased for the plugin author."""


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
        raise Fail(f"the demo train dataset has {len(dataset)} items; need at least 2")
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
        raise Fail(f"missing member(s): {', '.join(missing)}")
    if plugin.api_version != API_VERSION:
        raise Fail(f"api_version {plugin.api_version} but this core implements {API_VERSION}")
    if not isinstance(plugin.name, str) or not plugin.name:
        raise Fail(f"name must be a non-empty string, got {plugin.name!r}")


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
        raise Fail("; ".join(problems))
    try:
        ctx["cfg"] = config_lib.resolve(plugin, preset="demo", overrides=ctx["overrides"])
    except config_lib.ConfigError as e:
        raise Fail(f"the demo preset does not resolve with the overrides: {e}") from None


def _check_metrics(plugin: Modality, ctx: dict[str, Any]) -> None:
    metrics = dict(plugin.metrics_for(ctx["cfg"]))
    bad = [k for k, v in metrics.items() if not isinstance(v, MetricSpec)]
    if bad:
        raise Fail(f"Modality.metrics values must be MetricSpec: {bad}")
    primary = [k for k, v in metrics.items() if v.primary]
    if metrics and len(primary) != 1:
        raise Fail(
            f"Modality.metrics must mark exactly one metric primary=True, found {primary or 'none'}"
        )


def _objective_call(plugin: Modality, ctx: dict[str, Any], model: nn.Module, sync: Any) -> Any:
    objective = ctx["objective"]
    gen = torch.Generator().manual_seed(0)
    with _count_calls(model) as calls, sync if sync is not None else contextlib.nullcontext():
        out = objective(model, ctx["batch"], gen)
    if len(calls) != 1:
        raise Fail(
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
        raise Fail(
            f"ObjectiveOutput.loss must be per-sample (B,), got {getattr(loss, 'shape', loss)}"
        )
    b = loss.shape[0]
    if not torch.isfinite(loss).all():
        raise Fail("the diffusion loss is not finite on the demo batch")
    if out.t is not None:
        if tuple(out.t.shape) != (b,):
            raise Fail(f"ObjectiveOutput.t must be (B,) = ({b},), got {tuple(out.t.shape)}")
        if (out.t < 0).any() or (out.t > 1).any():
            raise Fail(
                f"ObjectiveOutput.t must lie in [0, 1] (t = 1 clean, discrete step s of T -> "
                f"1 - s/T), got [{float(out.t.min())}, {float(out.t.max())}]"
            )
    if out.token_mask is not None and (out.token_mask.ndim != 2 or out.token_mask.shape[0] != b):
        raise Fail(f"ObjectiveOutput.token_mask must be (B, T), got {tuple(out.token_mask.shape)}")
    ctx["out"] = out


def _check_loss_at(plugin: Modality, ctx: dict[str, Any]) -> str | None:
    objective = ctx["objective"]
    if not hasattr(objective, "loss_at"):
        return "the objective has no loss_at (optional)"
    if not hasattr(objective, "noise_like"):
        raise Fail("the objective has loss_at but no noise_like(batch, generator)")
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
                raise Fail(f"loss_at called the model {len(calls)} times; it must call it once")
    model.train()
    if tuple(losses[0].shape) != (b,):
        raise Fail(f"loss_at must return a per-sample loss ({b},), got {tuple(losses[0].shape)}")
    if not torch.equal(losses[0], losses[1]):
        raise Fail(
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
            raise Fail(f"block_names lists {name!r}, which is not in the model: {e}") from None
    pairs = parse_pairs(cfg.layersync.pairs or plugin.default_layersync(cfg).pairs)
    for p in pairs:
        if not 1 <= p.student < p.teacher <= len(names):
            raise Fail(f"default pair {p} does not fit the {len(names)} blocks")
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
                raise Fail(f"the {role} block {name!r} of pair {p} was not captured")
            if feats[name].ndim != 3 or feats[name].shape[0] != b:
                raise Fail(
                    f"{role} block {name!r} gives {shapes[name]}, not (B, T, D) with B = {b}: "
                    "set Modality.token_view"
                )
        if shapes[s] != shapes[t]:
            raise Fail(f"pair {p}: student {shapes[s]} and teacher {shapes[t]} differ in shape")
        mask = out.token_mask
        if mask is not None and tuple(mask.shape) != shapes[s][:2]:
            raise Fail(
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
        raise Fail(f"the LayerSync term is not finite: {float(reg)}")
    reg.backward()
    names = ctx["names"]
    students = {names[p.student - 1] for p in ctx["pairs"]}
    teachers = {names[p.teacher - 1] for p in ctx["pairs"]} - students
    for name in sorted(students):
        grads = [q.grad for q in resolve_module(model, name).parameters()]
        if not any(g is not None and bool(g.abs().sum() > 0) for g in grads):
            raise Fail(f"the LayerSync gradient does not reach the student block {name!r}")
    for name in sorted(teachers):
        for pname, q in resolve_module(model, name).named_parameters():
            if q.grad is not None and bool(q.grad.abs().sum() > 0):
                raise Fail(
                    f"teacher block {name!r} ({pname}) received LayerSync gradient: the teacher "
                    "side must be stop-gradient"
                )


def _check_train_resume(plugin: Modality, ctx: dict[str, Any]) -> None:
    from layersync import distributed as dist
    from layersync.testing import assert_tree_equal
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
            raise Fail(
                f"2 steps + resume + 2 steps differ from 4 straight steps in {which} weights "
                f"{diff[:3]}: some state (data order, RNG, a per-item draw) is not resumed"
            )
    state_a, progress_a = ckpt.load_train_state(straight)
    state_b, progress_b = ckpt.load_train_state(split)
    if progress_a != progress_b:
        raise Fail(f"resumed progress {progress_b} differs from the straight run's {progress_a}")
    try:
        assert_tree_equal(state_a, state_b)
    except AssertionError as e:
        raise Fail(
            f"the optimizer/scheduler state after a resume differs from a straight run ({e})"
        ) from None
    ctx["trained"] = ckpt.load_weights(straight, "ema")


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
        raise Fail("write_samples returned no paths")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise Fail(f"write_samples returned paths that do not exist: {missing[:3]}")


def _check_evaluate(plugin: Modality, ctx: dict[str, Any]) -> None:
    cfg, model = ctx["cfg"], ctx["model"]
    out_dir = ctx["tmp_dir"] / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        result = plugin.evaluate(model.eval(), cfg, out_dir, torch.Generator().manual_seed(4))
    declared = set(plugin.metrics_for(cfg))
    got = set(result or {})
    if got != declared:
        raise Fail(
            f"evaluate returned {sorted(got)} but Modality.metrics_for(cfg) declares "
            f"{sorted(declared)}"
        )
    bad = {k: v for k, v in (result or {}).items() if not _is_finite_number(v)}
    if bad:
        raise Fail(f"evaluate returned non-finite or non-numeric values: {bad}")


RUNNERS: dict[str, Callable[[Modality, dict[str, Any]], str | None]] = {
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
NEEDS = {  # a check is skipped when one it builds on failed
    "objective": ("config",),
    "loss_at": ("objective",),
    "taps": ("objective",),
    "gradient": ("taps",),
    "train_resume": ("config",),
    "samples": ("objective",),
    "evaluate": ("objective",),
}
