"""The ``layersync`` command line (typer + rich).

Heavy imports (torch, plugins) happen inside the commands, so ``layersync --help`` stays fast.
Every user error is printed as one red line and exits with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from layersync.plugin import Modality

app = typer.Typer(
    name="layersync",
    help="LayerSync: self-aligning intermediate layers for diffusion and flow models.\n\n"
    "Plugins may add commands: `layersync <modality> --help` (e.g. `layersync image encode`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show or validate run configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console(soft_wrap=True)
err = Console(stderr=True)

ModalityOpt = Annotated[
    str | None, typer.Option("--modality", "-m", help="installed modality plugin")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML run config")]
PresetOpt = Annotated[str | None, typer.Option("--preset", "-p", help="named preset")]
Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides: train.steps=100")]


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def load_plugin(name: str) -> Modality:
    from layersync.registry import PluginError, load

    try:
        return load(name)
    except PluginError as e:
        fail(str(e))
        raise  # unreachable: fail() exits


def resolve_config(
    modality: str | None, config: Path | None, preset: str | None, overrides: list[str] | None
) -> tuple[Modality, object]:
    from layersync.config import ConfigError, read_toml, resolve

    try:
        if modality is None:
            if config is None:
                fail("give --modality NAME or --config FILE (with a `modality = ...` line)")
            modality = read_toml(config).get("modality")
            if not modality:
                fail(f"{config}: no `modality = ...` line; pass --modality")
        plugin = load_plugin(modality)
        return plugin, resolve(plugin, file=config, preset=preset, overrides=overrides or [])
    except ConfigError as e:
        fail(str(e))
        raise


# --------------------------------------------------------------------------------------------
# plugins, config
# --------------------------------------------------------------------------------------------


@app.command()
def plugins() -> None:
    """List installed modality plugins and whether they load."""
    from layersync.registry import PluginError, installed, status

    try:
        found = installed()
    except PluginError as e:
        fail(str(e))
    table = Table(title="LayerSync modality plugins")
    for column in ("name", "distribution", "version", "status"):
        table.add_column(column)
    for name, info in found.items():
        ok, message = status(name)
        shown = f"[green]ok[/green] {message}" if ok else f"[red]broken[/red] {message}"
        table.add_row(name, info.distribution, info.version, shown)
    if not found:
        console.print("no modality plugin installed: pip install layersync-image (or -audio, ...)")
        return
    console.print(table)


@config_app.command("show")
def config_show(
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: Overrides = None,
) -> None:
    """Print the resolved config as TOML."""
    from layersync.config import to_toml

    _, cfg = resolve_config(modality, config, preset, overrides)
    sys.stdout.write(to_toml(cfg))  # type: ignore[arg-type]


@config_app.command("validate")
def config_validate(file: Path, overrides: Overrides = None) -> None:
    """Check a TOML run config; prints the first problems, one per line."""
    _, cfg = resolve_config(None, file, None, overrides)
    console.print(f"[green]ok[/green] {file} ({cfg.modality}, preset {cfg.preset})")  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


@app.command()
def train(
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    resume: Annotated[
        str | None, typer.Option(help="'latest' (this run's last checkpoint) or a path")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    dry_run: Annotated[bool, typer.Option(help="print the plan and exit")] = False,
    overrides: Overrides = None,
) -> None:
    """Train a backbone with LayerSync (use torchrun for several processes)."""
    import os

    from layersync.config import ConfigError, resolve

    plugin, cfg = resolve_config(modality, config, preset, overrides)  # before torch: fast hints
    from layersync.train.loop import NonFiniteLossError, RunDirExistsError, run_dir_of

    saved = run_dir_of(cfg) / "config.toml"
    if resume and config is None and saved.is_file():
        try:  # continue with the run's own config (+ any overrides given now)
            cfg = resolve(plugin, file=saved, preset=preset, overrides=overrides or [])
        except ConfigError as e:
            fail(str(e))
    if dry_run:
        print_plan(plugin, cfg)
        return
    from layersync.train.loop import train as run_training

    try:
        run_dir = run_training(cfg, plugin, resume=resume, overwrite=overwrite)
    except (RunDirExistsError, NonFiniteLossError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if os.environ.get("RANK", "0") == "0":
        err.print(f"run directory: {run_dir}")


def print_plan(plugin: Modality, cfg: object) -> None:
    """What ``train`` would do: model size, taps, pairs, λ, batch, steps, devices."""
    import torch

    from layersync.train.distributed import resolve_device
    from layersync.train.loop import autocast_dtype, build_layersync, run_dir_of

    c = cfg  # type: ignore[assignment]
    model = plugin.build_model(c)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = plugin.block_names(c, model)
    sync = build_layersync(c, plugin, model)
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(c.train.device)
    amp = autocast_dtype(c.train.precision, device)
    table = Table(title=f"layersync train plan: {plugin.name} / {c.preset}", show_header=False)
    rows = [
        ("run directory", str(run_dir_of(c))),
        (
            "model",
            f"{type(model).__name__}: {params / 1e6:.2f}M params "
            f"({trainable / 1e6:.2f}M trainable), {len(blocks)} blocks",
        ),
        (
            "layersync",
            "disabled (vanilla baseline)"
            if sync is None
            else f"pairs {', '.join(map(str, sync.pairs))}  λ {sync.schedule.weight} "
            f"({sync.schedule.kind})",
        ),
        ("taps", "-" if sync is None else ", ".join(sync.taps.names)),
        (
            "batch",
            f"global {c.train.batch_size} = {world} rank(s) x {c.train.grad_accum} accum x "
            f"{c.train.batch_size // max(1, world * c.train.grad_accum)} micro",
        ),
        (
            "steps",
            f"{c.train.steps} (checkpoint every {c.checkpoint.every}, "
            f"keep {c.checkpoint.keep_last})",
        ),
        (
            "optimizer",
            f"AdamW lr {c.train.lr} wd {c.train.weight_decay} "
            f"warmup {c.train.lr_warmup_steps} {c.train.lr_schedule}",
        ),
        (
            "device",
            f"{device} x {world}, precision {str(amp).replace('torch.', '') if amp else 'fp32'}"
            f", compile {c.train.compile}, {c.train.distributed if world > 1 else 'single'}",
        ),
        ("ema", f"decay {c.ema.decay}"),
        ("torch", torch.__version__),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


# --------------------------------------------------------------------------------------------
# sample, eval
# --------------------------------------------------------------------------------------------


def _load_model(
    target: Path | None,
    weights: Path | None,
    modality: str | None,
    config: Path | None,
    preset: str | None,
    overrides: list[str] | None,
    raw: bool = False,
) -> tuple[Modality, Any, Any, Path]:
    """(plugin, config, model in eval mode, output root) from a run/checkpoint directory, or
    from ``--modality``/``--preset`` plus external ``--weights`` (e.g. an official .pt)."""
    from layersync.config import ConfigError, read_toml, resolve
    from layersync.train.checkpoint import load_weights, resolve_checkpoint

    if target is not None and weights is not None and "=" in target.name:
        overrides = [str(target), *(overrides or [])]  # `--weights F key=value ...`
        target = None
    if (target is None) == (weights is None):
        fail("give a run/checkpoint directory, or --weights FILE with --modality/--preset")
    if weights is not None:
        if not weights.is_file():
            fail(f"{weights}: weights file not found")
        plugin, cfg = resolve_config(modality, config, preset, overrides)
        model = plugin.build_model(cfg)
        try:
            plugin.load_weights(model, weights)
        except (ValueError, RuntimeError, KeyError) as e:
            fail(str(e) if str(weights) in str(e) else f"{weights}: {e}")
        return plugin, cfg, model.eval(), Path("samples") / weights.stem
    try:
        ckpt = resolve_checkpoint(target)
    except FileNotFoundError as e:
        fail(str(e))
    run_dir = ckpt.parent.parent
    cfg_file = run_dir / "config.toml"
    if not cfg_file.is_file():
        fail(f"{cfg_file}: missing; sample/eval need the run's config")
    plugin = load_plugin(read_toml(cfg_file)["modality"])
    try:
        cfg = resolve(plugin, file=cfg_file, overrides=overrides or [])
    except ConfigError as e:
        fail(str(e))
    model = plugin.build_model(cfg)
    model.load_state_dict(load_weights(ckpt, "model" if raw else "ema"))
    return plugin, cfg, model.eval(), run_dir / "samples" / f"{ckpt.name}{'-raw' if raw else ''}"


TargetArg = Annotated[Path | None, typer.Argument(help="run directory or checkpoint directory")]
WeightsOpt = Annotated[
    Path | None, typer.Option(help="external weights (.pt/.safetensors) instead of a run")
]


@app.command()
def sample(
    target: TargetArg = None,
    n: Annotated[int, typer.Option("--num-samples", "-n", help="number of samples")] = 16,
    out: Annotated[Path | None, typer.Option(help="output directory")] = None,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(help="samples per batch (and per part)")] = 64,
    raw: Annotated[bool, typer.Option("--raw", help="use raw weights, not EMA")] = False,
    weights: WeightsOpt = None,
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: Overrides = None,
) -> None:
    """Generate samples (EMA weights of a run, or external --weights).

    Under torchrun the batches are shared across processes; an interrupted job resumes where it
    stopped (finished batches are kept in OUT/parts/).
    """
    from layersync.sampling import sample_to_dir
    from layersync.train import distributed as dist

    plugin, cfg, model, root = _load_model(
        target, weights, modality, config, preset, overrides, raw
    )
    info = dist.init_distributed(cfg.train.device)
    model.to(info.device)
    out = out or root.with_name(f"{root.name}-seed{seed}")
    try:
        paths = sample_to_dir(
            plugin, model, cfg, n, out, seed=seed, batch_size=batch_size, info=info
        )
    finally:
        dist.shutdown()
    if info.is_main:
        console.print(f"wrote {len(paths)} file(s) to {out}")


@app.command("eval")
def evaluate(
    target: TargetArg = None,
    seed: Annotated[
        int | None, typer.Option(help="default: the seed training evaluates with")
    ] = None,
    weights: WeightsOpt = None,
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: Overrides = None,
) -> None:
    """Compute the modality's metric(s) (EMA weights of a run, or external --weights)."""
    import json

    import torch

    from layersync.train.distributed import resolve_device
    from layersync.train.loop import EVAL_SEED_OFFSET

    plugin, cfg, model, root = _load_model(target, weights, modality, config, preset, overrides)
    if seed is None:  # reproduce the run's eval/<step>/metrics.json rather than redraw it
        seed = cfg.run.seed + EVAL_SEED_OFFSET
    device = resolve_device(cfg.train.device)
    model.to(device)
    out_dir = root.parent.parent / "eval" / root.name if target else Path("eval") / root.name
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        metrics = plugin.evaluate(model, cfg, out_dir, torch.Generator(device).manual_seed(seed))
    if not metrics:
        fail(f"modality {plugin.name!r} computed no metric (is its metric switched off?)")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    table = Table(title=f"{plugin.name} metrics ({out_dir})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)


# --------------------------------------------------------------------------------------------
# bench: cost of LayerSync (step time, memory, FLOPs), samplers, convergence
# --------------------------------------------------------------------------------------------

bench_app = typer.Typer(
    help="Measure LayerSync on your hardware: step cost, sampler speed, convergence.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")
JsonOpt = Annotated[Path | None, typer.Option("--json", help="also write the results as JSON")]


def _write_json(path: Path | None, data: object) -> None:
    import json

    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        err.print(f"wrote {path}")


def _csv(text: str, kind: type) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{text!r}: expected a comma-separated list of {kind.__name__} values")
        raise


@bench_app.command("step")
def bench_step_command(
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    steps: Annotated[int, typer.Option(help="timed steps per arm")] = 20,
    warmup: Annotated[int, typer.Option(help="untimed steps per arm first")] = 3,
    json_out: JsonOpt = None,
    overrides: Overrides = None,
) -> None:
    """Vanilla vs LayerSync training steps, interleaved: time, memory, FLOPs, MFU."""
    from layersync.bench import bench_step

    plugin, cfg = resolve_config(modality, config, preset, overrides)
    try:
        result = bench_step(cfg, plugin, steps=steps, warmup=warmup, log=err.print)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    van, ls = result["arms"]["vanilla"], result["arms"]["layersync"]
    table = Table(
        title=f"bench step: {result['modality']} / {result['preset']} on {result['device']} "
        f"({result['precision']}, batch {result['batch_size']}, {steps} steps per arm)"
    )
    for column in ("", "vanilla", f"layersync {','.join(result['pairs'])}", "ratio"):
        table.add_column(column, justify="right")
    mb = 2**20
    table.add_row(
        "median step (ms)",
        f"{1e3 * van['median_step_s']:.1f}",
        f"{1e3 * ls['median_step_s']:.1f}",
        f"{result['step_time_ratio']:.3f}",
    )
    table.add_row(
        "memory (MB)",
        f"{van['memory_bytes'] / mb:.1f}",
        f"{ls['memory_bytes'] / mb:.1f}",
        f"{result['memory_ratio']:.3f}",
    )
    table.add_row(
        "  step peak (MB)",
        f"{van['step_peak_bytes'] / mb:.1f}",
        f"{ls['step_peak_bytes'] / mb:.1f}",
        f"{result['step_peak_ratio']:.3f}",
    )
    table.add_row(
        "FLOPs / step (G)",
        f"{van['flops_per_step'] / 1e9:.3f}",
        f"{ls['flops_per_step'] / 1e9:.3f}",
    )
    table.add_row(
        "achieved GFLOP/s",
        f"{van['achieved_flops_per_s'] / 1e9:.2f}",
        f"{ls['achieved_flops_per_s'] / 1e9:.2f}",
    )
    table.add_row("MFU", f"{100 * van['mfu']:.2f}%", f"{100 * ls['mfu']:.2f}%")
    console.print(table)
    peak = result["device_matmul"]
    console.print(
        f"device matmul ({peak['n']}x{peak['n']} {peak['dtype']}): "
        f"{peak['flops_per_s'] / 1e9:.1f} GFLOP/s measured; memory: {result['memory_method']}"
    )
    _write_json(json_out, result)


@bench_app.command("sample")
def bench_sample_command(
    run: Annotated[Path | None, typer.Option(help="run/checkpoint directory (EMA weights)")] = None,
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    n: Annotated[int, typer.Option("--num-samples", "-n", help="samples per configuration")] = 64,
    samplers: Annotated[
        str, typer.Option(help="mode:method list, or 'config' for the configured sampler only")
    ] = "ode:euler,ode:heun,sde:euler,sde:heun",
    steps: Annotated[str, typer.Option(help="comma-separated step counts (default: config)")] = "",
    cfg_scale: Annotated[
        str, typer.Option(help="comma-separated CFG scales (default: config)")
    ] = "",
    repeats: Annotated[int, typer.Option(help="timed repeats (median)")] = 1,
    seed: int = 0,
    json_out: JsonOpt = None,
    overrides: Overrides = None,
) -> None:
    """Samples/s and function evaluations of each sampler (random weights without --run)."""
    import torch

    from layersync.bench import bench_sample, sampler_variants

    if run is not None:
        plugin, cfg, model, _ = _load_model(run, None, None, None, None, overrides)
    else:
        plugin, cfg = resolve_config(modality, config, preset, overrides)
        torch.manual_seed(cfg.run.seed)  # type: ignore[attr-defined]
        model = plugin.build_model(cfg)  # the cost does not depend on the weights
    pairs = []
    for item in samplers.split(",") if samplers.strip() != "config" else []:
        mode, _, method = item.strip().partition(":")
        if not method:
            fail(f"--samplers {item!r}: expected mode:method (e.g. ode:heun) or 'config'")
        pairs.append((mode, method))
    variants = sampler_variants(pairs, _csv(steps, int), _csv(cfg_scale, float))
    try:
        result = bench_sample(
            plugin, cfg, model, n=n, variants=variants, repeats=repeats, seed=seed, log=err.print
        )
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    table = Table(title=f"bench sample: {result['modality']} on {result['device']} (n={n})")
    for column in ("sampler", "samples/s", "seconds", "NFE", "expected NFE", "call batch"):
        table.add_column(column, justify="right")
    for r in result["results"]:
        table.add_row(
            r["sampler"],
            f"{r['samples_per_s']:.2f}",
            f"{r['seconds']:.2f}",
            f"{r['nfe']:g}",
            "-" if r["expected_nfe"] is None else str(r["expected_nfe"]),
            ",".join(map(str, r["call_batch_sizes"])),
        )
    console.print(table)
    _write_json(json_out, result)


@bench_app.command("convergence")
def bench_convergence_command(
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    steps: Annotated[
        int | None, typer.Option(help="training steps per arm (default: config)")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="steps between evaluations (default: log.eval_every)")
    ] = None,
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0",
    out: Annotated[Path | None, typer.Option(help="output directory of the arms' runs")] = None,
    metric: Annotated[str | None, typer.Option(help="eval metric (default: the first)")] = None,
    higher_is_better: Annotated[
        bool, typer.Option("--higher-is-better", help="the metric grows when better")
    ] = False,
    overrides: Overrides = None,
) -> None:
    """Vanilla vs LayerSync runs (resumable), the plugin metric vs steps, speed-up and gain."""
    from layersync.convergence import run_convergence
    from layersync.train.loop import NonFiniteLossError

    plugin, cfg = resolve_config(modality, config, preset, overrides)
    out = out or Path(cfg.run.out_dir) / f"convergence-{cfg.modality}-{cfg.preset}"  # type: ignore[attr-defined]
    try:
        result = run_convergence(
            plugin,
            cfg,
            out,
            seeds=_csv(seeds, int),
            steps=steps,
            eval_every=eval_every,
            metric=metric,
            lower_is_better=not higher_is_better,
            log=err.print,
        )
    except (ValueError, NonFiniteLossError, FileNotFoundError) as e:
        fail(str(e))
    s = result["summary"]
    table = Table(title=f"bench convergence: {result['metric']} ({out})")
    for column in ("step", "vanilla", "layersync"):
        table.add_column(column, justify="right")
    ls_mean = dict(result["mean"]["layersync"])
    for step, value in result["mean"]["vanilla"]:
        table.add_row(str(step), f"{value:.4f}", f"{ls_mean.get(step, float('nan')):.4f}")
    console.print(table)
    need = s["layersync_steps_to_vanilla_final"]
    better = "lower" if result["lower_is_better"] else "higher"
    console.print(
        f"seeds {result['seeds']}: vanilla final {s['vanilla_final']:.4f}, LayerSync final "
        f"{s['layersync_final']:.4f} ({better} is better): relative gain "
        f"{100 * s['relative_final_gain']:+.1f}%"
    )
    if need is None:
        console.print(
            f"LayerSync did not reach the vanilla final value within {s['final_step']} steps"
        )
    else:
        console.print(
            f"LayerSync reaches the vanilla final value at step {need:.0f} of {s['final_step']} "
            f"(speed-up x{s['speedup']:.2f}, interpolated between evaluations)"
        )
    png = ", convergence.png" if "plot" in result else ""
    console.print(f"wrote {out / 'convergence.json'}, convergence.csv{png}")


# --------------------------------------------------------------------------------------------
# probe: representations per block (linear probe, linear CKA), pair suggestion
# --------------------------------------------------------------------------------------------


@app.command()
def probe(
    run: Annotated[Path, typer.Option(help="run or checkpoint directory (EMA weights)")],
    compare: Annotated[
        Path | None, typer.Option(help="a second run, analysed on the same samples")
    ] = None,
    t: Annotated[
        float, typer.Option("--t", help="time of the forward (objective's convention)")
    ] = 0.5,
    samples: Annotated[int | None, typer.Option(help="probe set size (default: all)")] = None,
    split: Annotated[str, typer.Option(help="labelled dataset split: eval or train")] = "eval",
    folds: Annotated[int, typer.Option(help="cross-validation folds of the probe")] = 5,
    seed: int = 0,
    suggest_pairs: Annotated[
        bool, typer.Option("--suggest-pairs", help="propose student<-teacher with reasoning")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="output directory (default: RUN/probe)")] = None,
    overrides: Overrides = None,
) -> None:
    """Per-block linear-probe accuracy and linear CKA of a run (vs --compare); JSON + PNG."""
    import json

    from layersync import probe as probing
    from layersync.train.distributed import resolve_device

    if split not in ("eval", "train"):
        fail(f"--split {split!r}: use eval or train")
    results: dict[str, dict] = {}
    features = []
    for target in (run, compare):
        if target is None:
            continue
        plugin, cfg, model, root = _load_model(target, None, None, None, None, overrides)
        model.to(resolve_device(cfg.train.device))
        try:
            feats = probing.collect_features(
                plugin,
                cfg,
                model,
                plugin.build_dataset(cfg, split),
                t=t,
                samples=samples,
                seed=seed,
            )
            result = probing.analyse(feats, folds=folds, seed=seed)
        except (NotImplementedError, ValueError) as e:
            fail(str(e))
        ls = cfg.layersync
        pairs = (ls.pairs or plugin.default_layersync(cfg).pairs) if ls.enabled else None
        label = root.parent.parent.name
        while label in results:
            label += "'"
        result.update(
            run=str(target), checkpoint=root.name, modality=plugin.name, layersync_pairs=pairs
        )
        results[label] = result
        features.append(feats.features)
    run_dir = _load_root(run)
    out = out or run_dir / "probe"
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "t": t,
        "split": split,
        "folds": folds,
        "seed": seed,
        "cka_kind": probing.CKA_KIND,
        "probe": "multinomial logistic regression (torch L-BFGS, 100 iterations, L2 1e-3) on "
        "standardised mean-pooled block outputs; k-fold cross-validated accuracy",
        "runs": results,
    }
    labels = list(results)
    if len(features) == 2:
        report["cross_cka"] = probing.cka_matrix(features[0], features[1])
    first = results[labels[0]]
    if suggest_pairs:
        try:
            s = probing.suggest_pair(first["cka"], first["accuracy"])
        except ValueError as e:
            fail(str(e))
        report["suggestion"] = {"pair": s.pair, "reasoning": s.reasoning}
    table = Table(title=f"layersync probe: t = {t}, {first['samples']} {split} samples")
    table.add_column("block", justify="right")
    for label in labels:
        table.add_column(f"probe acc {label}", justify="right")
        table.add_column(f"CKA(block, last) {label}", justify="right")
    for b in range(max(len(r["blocks"]) for r in results.values())):
        row = [str(b + 1)]
        for label in labels:
            r = results[label]
            if b >= len(r["blocks"]):  # a shallower model in the comparison
                row += ["-", "-"]
                continue
            row += [
                f"{r['accuracy'][b]:.3f} ± {r['accuracy_std'][b]:.3f}",
                f"{r['cka'][b][-1]:.3f}",
            ]
        table.add_row(*row)
    table.add_row(
        "mean", *[v for lbl in labels for v in (f"{_mean(results[lbl]['accuracy']):.3f}", "")]
    )
    console.print(table)
    (out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {out / 'probe.json'}")
    try:
        from layersync.plots import plot_probe

        console.print(f"wrote {plot_probe(results, out / 'probe.png')}")
    except ImportError as e:
        err.print(f"[yellow]no PNG:[/yellow] {e}")
    if suggest_pairs:
        console.print(f"suggested pair: [bold]{report['suggestion']['pair']}[/bold]")
        for line in report["suggestion"]["reasoning"]:
            console.print(f"  - {line}")


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def _load_root(target: Path) -> Path:
    """The run directory of a run or checkpoint directory."""
    from layersync.train.checkpoint import resolve_checkpoint

    return resolve_checkpoint(target).parent.parent


def main(argv: list[str] | None = None) -> None:
    """Entry point. ``layersync <modality> ...`` runs that plugin's own commands, if any."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and not argv[0].startswith("-") and argv[0] not in _core_commands():
        from layersync.registry import installed

        if argv[0] in installed():
            sub = load_plugin(argv[0]).commands()
            if sub is None:
                fail(f"modality {argv[0]!r} has no commands of its own")
            sub(args=argv[1:], prog_name=f"layersync {argv[0]}")
            return
    app(args=argv, prog_name="layersync")


def _core_commands() -> set[str]:
    names = {c.name or c.callback.__name__ for c in app.registered_commands}  # type: ignore[union-attr]
    return names | {g.name for g in app.registered_groups if g.name}


if __name__ == "__main__":
    main()
