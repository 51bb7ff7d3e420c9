"""Training throughput of layersync's SiT engine vs the official SiT / LayerSync code.

    python scripts/bench_official.py --official ~/src/LayerSync --model SiT-B/2 --batch 16 \
        train.precision=bf16 train.compile=true

``--official`` is a local checkout of https://github.com/vita-epfl/LayerSync (its SiT forward
returns the block features and ``training_losses`` takes ``loss_type="layer_sync"``) or of
https://github.com/willisma/SiT (vanilla). The script imports that checkout's ``models.py`` and
``transport/`` (they need ``timm``), builds the same SiT size, and times one optimizer step of
each implementation, interleaved in one process after a warm-up:

- official: the body of its ``train.py`` loop on a fixed batch of latents (``training_losses``,
  ``loss = diff + reg_weight * reg``, ``zero_grad``, ``backward``, AdamW(lr=1e-4, wd=0) step, and
  the per-parameter EMA update ``ema = decay * ema + (1 - decay) * param`` that ``train.py``
  runs every step). Its online VAE encoding and the DDP wrapper (one process here) are left
  out, so the comparison is of the training step alone.
- layersync: ``Trainer.train_step`` of ``--preset`` (default ``sit-b2-imagenet256``) on the
  same random latents, with the given ``key=value`` overrides (the engine's performance options:
  ``train.precision``, ``train.compile``). LayerSync is on when the official code has it.

Both see the same latent size, batch, pair ``--student<-teacher`` and λ. Prints the median step
time of each, images/s, and the throughput ratio (layersync / official); ``--json`` saves them.
Timings are medians of the interleaved steps; compare ratios from one run, not seconds.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def load_official(root: Path) -> tuple[Any, Any]:
    """The checkout's ``models`` and ``transport`` modules."""
    if not (root / "models.py").is_file() or not (root / "transport").is_dir():
        raise SystemExit(f"--official {root}: no models.py and transport/ (a SiT checkout?)")
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("models"), importlib.import_module("transport")
    except ModuleNotFoundError as e:
        raise SystemExit(
            f"--official {root}: cannot import it ({e}); it needs timm and torchdiffeq"
        ) from None


def official_step_fn(args: argparse.Namespace, models: Any, transport_mod: Any, x, y):
    """One step of the official loop on a fixed batch; returns (step function, is_layersync)."""
    import inspect

    transport = transport_mod.create_transport("Linear", "velocity", None, None, None)
    layersync = "loss_type" in inspect.signature(transport.training_losses).parameters
    kwargs = {"input_size": x.shape[-1], "num_classes": 1000}
    if layersync:
        kwargs |= {"encoder_depth": args.student, "gt_encoder_depth": args.teacher}
    torch.manual_seed(args.seed)
    model = models.SiT_models[args.model](**kwargs).to(args.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    model.train()
    pairs = list(zip(ema.parameters(), model.parameters(), strict=True))

    def step() -> float:
        if layersync:
            terms = transport.training_losses(model, x, {"y": y}, loss_type="layer_sync")
            loss = terms["loss"].mean() + args.weight * terms["reg"].mean()
        else:
            loss = transport.training_losses(model, x, {"y": y})["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for e, p in pairs:
                e.mul_(0.9999).add_(p.data, alpha=1 - 0.9999)
        return loss.item()  # as train.py: running_loss += loss.item()

    return step, layersync


def layersync_trainer(args: argparse.Namespace, latents: Path, layersync: bool, out: Path):
    from layersync import config as config_lib
    from layersync import registry
    from layersync.train.loop import Trainer

    plugin = registry.load("image")
    overrides = [
        f"model.arch={args.model}",
        "data.source=array",
        f"data.path={latents}",
        f"train.batch_size={args.batch}",
        f"train.device={args.device}",
        f"run.seed={args.seed}",
        f"run.out_dir={out}",
        "log.progress=false",
        f"layersync.enabled={str(layersync).lower()}",
        f"layersync.pairs={args.student}<-{args.teacher}",
        f"layersync.weight={args.weight}",
        *args.overrides,
    ]
    cfg = config_lib.resolve(plugin, preset=args.preset, overrides=overrides)
    return Trainer.create(cfg, plugin, overwrite=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", type=Path, required=True, help="SiT or LayerSync checkout")
    p.add_argument("--model", default="SiT-B/2")
    p.add_argument("--preset", default="sit-b2-imagenet256")
    p.add_argument("--latent-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--student", type=int, default=4, help="1-based block (official numbering)")
    p.add_argument("--teacher", type=int, default=8)
    p.add_argument("--weight", type=float, default=0.3, help="λ")
    p.add_argument("--steps", type=int, default=10, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("overrides", nargs="*", help="layersync config overrides (key=value)")
    args = p.parse_args()

    models, transport_mod = load_official(args.official.expanduser().resolve())
    gen = torch.Generator().manual_seed(args.seed)
    s = args.latent_size
    x = torch.rand(args.batch * 4, 4, s, s, generator=gen) * 2 - 1  # the array source: [-1, 1]
    y = torch.randint(0, 1000, (args.batch * 4,), generator=gen)
    official, layersync = official_step_fn(
        args,
        models,
        transport_mod,
        x[: args.batch].to(args.device),
        y[: args.batch].to(args.device),
    )

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory(prefix="bench-official-") as tmp:
        latents = Path(tmp) / "latents.npz"
        np.savez(latents, images=x.numpy(), labels=y.numpy())
        trainer = layersync_trainer(args, latents, layersync, Path(tmp) / "runs")
        ours = trainer.train_step
        arms = {"official": official, "layersync": ours}
        for _ in range(args.warmup):
            for fn in arms.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in arms}
        names = list(arms)
        for i in range(args.steps):
            for name in names if i % 2 == 0 else names[::-1]:
                sync()
                start = time.perf_counter()
                arms[name]()
                sync()
                times[name].append(time.perf_counter() - start)
        if trainer.sync is not None:
            trainer.sync.detach()
        tc = trainer.cfg.train
        precision = "fp32" if trainer.amp_dtype is None else str(trainer.amp_dtype)[6:]

    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "official": str(args.official),
        "official_layersync": layersync,
        "model": args.model,
        "latent_size": s,
        "batch": args.batch,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "layersync_options": {"precision": precision, "compile": tc.compile},
        "steps": args.steps,
        "warmup": args.warmup,
        "median_step_s": median,
        "images_per_s": {name: args.batch / m for name, m in median.items()},
        "throughput_ratio": median["official"] / median["layersync"],
        "step_times_s": times,
    }
    for name in names:
        print(
            f"{name:>10}: median step {median[name] * 1e3:9.1f} ms, "
            f"{args.batch / median[name]:7.2f} images/s"
        )
    print(
        f"throughput layersync / official: {result['throughput_ratio']:.3f} "
        f"({args.model}, {s}x{s} latents, batch {args.batch}, {args.device}, "
        f"layersync {precision}{' + compile' if tc.compile else ''}, "
        f"LayerSync term {'on' if layersync else 'off'} in both)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
