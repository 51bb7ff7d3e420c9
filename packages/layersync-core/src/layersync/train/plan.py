"""What ``layersync train`` would do, as (label, value) rows: ``--dry-run`` prints them.

It builds the model and the LayerSync term through the same code as the engine, so a pair
outside the model's depth fails here exactly as it would at the start of training.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from layersync.distributed import resolve_device
from layersync.plugin import Modality
from layersync.rundir import run_dir_of
from layersync.train.loop import autocast_dtype, build_layersync

PAPER_MIN_DEPTH = 12
"""The paper's smallest model is SiT-B/2 (12 blocks); it reports nothing for shallower ones."""


def layersync_notes(
    cfg: Any, plugin: Modality, pairs: str, weight: float, depth: int | None
) -> list[tuple[str, str]]:
    """Honest provenance of the pair and λ (``Modality.pair_source``) and a warning below the
    paper's smallest depth."""
    notes = [("pair source", plugin.pair_source(cfg, pairs, weight, depth))]
    if depth is not None and depth < PAPER_MIN_DEPTH:
        notes.append(
            (
                "warning",
                f"{depth} blocks: the paper reports nothing for models shallower than "
                f"{PAPER_MIN_DEPTH} blocks (its smallest is SiT-B/2, results from 100K steps); "
                "check the effect on yours with `layersync bench convergence` (val_loss)",
            )
        )
    return notes


def plan(cfg: Any, plugin: Modality) -> list[tuple[str, str]]:
    """Model size, taps, pairs, λ, batch split, steps, optimizer, devices of a run."""
    c = cfg
    plugin.check_assets(c)  # as `train` does before creating the run directory
    model = plugin.build_model(c)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = plugin.block_names(c, model)
    sync = build_layersync(c, plugin, model)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(c.train.device)
    amp = autocast_dtype(c.train.precision, device)
    micro = c.train.batch_size // max(1, world * c.train.grad_accum)
    notes = []
    if sync is not None:
        spec = ",".join(map(str, sync.pairs))
        notes = layersync_notes(c, plugin, spec, sync.schedule.weight, len(blocks))
    return [
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
        *notes,
        ("taps", "-" if sync is None else ", ".join(sync.taps.names)),
        (
            "batch",
            f"global {c.train.batch_size} = {world} rank(s) x {c.train.grad_accum} accum x "
            f"{micro} micro",
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
        ("non-finite", f"{c.train.nonfinite} (max {c.train.max_skipped} consecutive skips)"),
        ("ema", f"decay {c.ema.decay}"),
        ("torch", torch.__version__),
    ]
