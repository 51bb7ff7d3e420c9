"""The training engine: one loop for every modality.

    plugin -> dataset, backbone, objective
    for each step:  with taps: per-sample diffusion loss (taps fill in the same forward)
                    loss = diffusion + λ · LayerSync(student, sg(teacher))
                    backward (DDP/FSDP all-reduce) -> clip -> AdamW -> EMA
                    log / checkpoint / EMA samples / metric, on their intervals

``layersync.enabled = false`` (no taps) and ``layersync.weight = 0`` (taps, zero weight) are
both the vanilla baseline through this same code path, for A/B runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from layersync import config as config_lib
from layersync.loss import LayerSync, WeightSchedule
from layersync.plugin import Modality
from layersync.train import checkpoint as ckpt
from layersync.train import distributed as dist
from layersync.train.data import DataStream, to_device
from layersync.train.ema import EMA
from layersync.train.logging import MetricsLogger

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
EVAL_SEED_OFFSET = 10_000
"""Samples and metrics use ``run.seed + EVAL_SEED_OFFSET`` (also ``layersync eval``'s default)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stopped without saving the bad state."""


class RunDirExistsError(FileExistsError):
    pass


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def run_dir_of(cfg: Any) -> Path:
    name = cfg.run.name or f"{cfg.modality}-{cfg.preset or 'custom'}"
    return Path(cfg.run.out_dir) / name


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = fp32. ``auto`` is bf16 on CUDA (when supported), fp32 elsewhere."""
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def lr_factor(step: int, warmup: int, schedule: str, total: int) -> float:
    """Multiplier of the base LR: linear warmup, then constant / cosine / linear decay to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_layersync(cfg: Any, plugin: Modality, model: nn.Module) -> LayerSync | None:
    """The LayerSync term for this run, or None when ``layersync.enabled`` is false."""
    if not cfg.layersync.enabled:
        return None
    defaults = plugin.default_layersync(cfg)
    ls = cfg.layersync
    weight = defaults.weight if ls.weight is None else ls.weight
    schedule = WeightSchedule(
        weight=weight,
        kind=ls.schedule,
        warmup_steps=ls.warmup_steps,
        decay_start=ls.decay_start,
        decay_steps=ls.decay_steps,
        final_weight=ls.final_weight,
    )
    return LayerSync(
        model,
        pairs=ls.pairs or defaults.pairs,
        weight=schedule,
        blocks=plugin.block_names(cfg, model),
        view=plugin.token_view(cfg),
        time_range=ls.time_range,
    )


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment(info: dist.DistInfo, plugin: Modality) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(info.device),
        "device_name": torch.cuda.get_device_name(info.device)
        if info.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "world_size": info.world_size,
        "layersync_core": ver("layersync-core"),
        "plugin": {"name": plugin.name, "class": type(plugin).__module__},
    }


class StopFlag:
    """Set by SIGINT/SIGTERM (cluster pre-emption): the loop saves and exits at the next step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------
# Run directory
# --------------------------------------------------------------------------------------------


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Create the run directory; refuse to clobber an existing one without a flag."""
    if not is_main:
        return
    has_content = run_dir.is_dir() and any(run_dir.iterdir())
    if has_content and not resume:
        if not overwrite:
            raise RunDirExistsError(
                f"run directory {run_dir} already exists: pass --resume latest to continue it, "
                "--overwrite to replace it, or choose another run.name"
            )
        shutil.rmtree(run_dir)
    for sub in ("checkpoints", "samples", "eval"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


@dataclass
class Trainer:
    """Everything one run holds; ``fit()`` runs the loop. Build it with ``Trainer.create``."""

    cfg: Any
    plugin: Modality
    info: dist.DistInfo
    run_dir: Path
    model: nn.Module  # the user's module (unwrapped)
    wrapped: nn.Module  # what the forward goes through (DDP/FSDP/compile)
    sync: LayerSync | None
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    objective: Any
    data: DataStream
    generator: torch.Generator
    amp_dtype: torch.dtype | None
    progress: ckpt.Progress = field(default_factory=ckpt.Progress)
    last_checkpoint: Path | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, cfg: Any, plugin: Modality, *, resume: str | None = None, overwrite: bool = False
    ) -> Trainer:
        info = dist.init_distributed(cfg.train.device)
        tc = cfg.train
        micro, rem = divmod(tc.batch_size, info.world_size * tc.grad_accum)
        if rem or micro == 0:
            raise ValueError(
                f"train.batch_size = {tc.batch_size} is not divisible by world size "
                f"{info.world_size} x train.grad_accum {tc.grad_accum}"
            )
        run_dir = run_dir_of(cfg)
        start = None  # found before anything is written: a bad --resume leaves no empty run dir
        if resume is not None:
            start = ckpt.resolve_checkpoint(run_dir if resume == "latest" else resume)
        prepare_run_dir(
            run_dir, resume=resume is not None, overwrite=overwrite, is_main=info.is_main
        )
        dist.barrier()
        if info.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        seed_everything(cfg.run.seed)  # the same init on every rank (FSDP2 does not broadcast)
        model = plugin.build_model(cfg).to(info.device)
        seed_everything(cfg.run.seed + info.rank)  # per-rank streams from here on
        sync = build_layersync(cfg, plugin, model)
        ema = EMA(model, cfg.ema.decay, cfg.ema.warmup)
        wrapped = dist.wrap_model(model, info, tc.distributed, plugin.block_names(cfg, model))
        if tc.distributed == "fsdp" and info.distributed:
            dist.wrap_model(ema.model, info, "fsdp", plugin.block_names(cfg, ema.model))
        if tc.compile:
            wrapped = torch.compile(wrapped)
        if sync is not None:
            sync.attach()  # persistent hooks: `with sync:` only arms them (no recompiles)

        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=tc.lr,
            betas=tc.betas,
            weight_decay=tc.weight_decay,
            fused=info.device.type in ("cuda", "cpu"),  # one kernel for all params: 4x on CPU
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, tc.lr_warmup_steps, tc.lr_schedule, tc.steps)
        )
        amp_dtype = autocast_dtype(tc.precision, info.device)
        scaler = torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16)
        generator = torch.Generator(info.device).manual_seed(cfg.run.seed * 7919 + info.rank)
        data = DataStream(
            plugin.build_dataset(cfg, "train"),
            batch_size=micro,
            collate=plugin.collate,
            rank=info.rank,
            world_size=info.world_size,
            seed=cfg.run.seed,
            num_workers=tc.num_workers,
        )
        trainer = cls(
            cfg=cfg,
            plugin=plugin,
            info=info,
            run_dir=run_dir,
            model=model,
            wrapped=wrapped,
            sync=sync,
            ema=ema,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            objective=plugin.build_objective(cfg),
            data=data,
            generator=generator,
            amp_dtype=amp_dtype,
        )
        if start is not None:
            trainer.load(start)
        return trainer

    # -- checkpoints --------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint (collective under FSDP; files from rank 0)."""
        model_state = get_model_state_dict(self.model, options=FULL)
        ema_state = get_model_state_dict(self.ema.model, options=FULL)
        optim_state = get_optimizer_state_dict(self.model, self.optimizer, options=FULL)
        rng = ckpt.rng_state(self.generator)
        rngs = [rng]
        if self.info.distributed:
            rngs = [None] * self.info.world_size
            torch.distributed.all_gather_object(rngs, rng)
        path = None
        if self.info.is_main:
            self.data_position()
            train_state = {
                "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema_updates": self.ema.updates,
                "world_size": self.info.world_size,
            }
            path = ckpt.save_checkpoint(
                self.run_dir / "checkpoints",
                self.progress,
                model_state,
                ema_state,
                train_state,
                rngs,
                self.cfg.checkpoint.keep_last,
            )
            self.last_checkpoint = path
        dist.barrier()
        return path

    def data_position(self) -> None:
        self.progress.epoch = self.data.epoch
        self.progress.batch_in_epoch = self.data.batch_in_epoch

    def load(self, path: Path) -> None:
        """Restore weights, EMA, optimizer, scheduler, scaler, position and RNG states."""
        set_model_state_dict(self.model, ckpt.load_weights(path, "model"), options=FULL)
        set_model_state_dict(self.ema.model, ckpt.load_weights(path, "ema"), options=FULL)
        state, self.progress = ckpt.load_train_state(path)
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=FULL)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.ema.updates = state["ema_updates"]
        self.data.epoch = self.progress.epoch
        self.data.batch_in_epoch = self.progress.batch_in_epoch
        rngs = ckpt.load_rng_states(path)
        if len(rngs) != self.info.world_size:
            raise RuntimeError(
                f"{path} was written by {len(rngs)} ranks; resuming it exactly needs the same "
                f"world size (got {self.info.world_size})"
            )
        ckpt.set_rng_state(rngs[self.info.rank], self.generator)
        self.last_checkpoint = path

    # -- one optimizer step -------------------------------------------------------------------
    def train_step(self) -> dict[str, torch.Tensor]:
        """Forward/backward over ``grad_accum`` micro-batches, then the optimizer and EMA step.

        Returns detached device tensors (no host sync): diffusion, layersync, total, cos/*.
        """
        accum = self.cfg.train.grad_accum
        step = self.progress.step
        stats: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            batch = to_device(next(self.data), self.info.device)
            with self._grad_sync(micro == accum - 1), autocast(self.info.device, self.amp_dtype):
                with self.sync if self.sync is not None else contextlib.nullcontext():
                    out = self.objective(self.wrapped, batch, self.generator)
                diffusion = out.loss.float().mean()
                if self.sync is not None:
                    layersync = self.sync.loss(out.token_mask, out.t, step)
                else:
                    layersync = diffusion.new_zeros(())
                total = diffusion + layersync
                self.scaler.scale(total / accum).backward()
            _accumulate(stats, "diffusion", diffusion.detach() / accum)
            _accumulate(stats, "layersync", layersync.detach() / accum)
            if self.sync is not None:
                for key, value in self.sync.stats.items():
                    if key.startswith("cos/"):
                        _accumulate(stats, key, value / accum)
        stats["loss"] = stats["diffusion"] + stats["layersync"]
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.train.grad_clip or float("inf")
        stats["grad_norm"] = _full(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        return stats

    def _grad_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last accumulation micro-batch."""
        if sync or not self.info.distributed:
            return contextlib.nullcontext()
        if hasattr(self.wrapped, "no_sync"):
            return self.wrapped.no_sync()
        return _fsdp_no_sync(self.model)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> Path:
        cfg, info = self.cfg, self.info
        if info.is_main:
            config_lib.save(cfg, self.run_dir / "config.toml")
            env = environment(info, self.plugin)
            (self.run_dir / "env.json").write_text(json.dumps(env, indent=2) + "\n")
        logger = MetricsLogger(
            self.run_dir,
            cfg.train.steps,
            self.progress.step,
            cfg.log.tensorboard,
            cfg.log.progress,
            enabled=info.is_main,
        )
        window: dict[str, torch.Tensor] = {}
        window_steps, window_start = 0, time.perf_counter()
        global_batch = cfg.train.batch_size
        self.wrapped.train()
        try:
            with StopFlag() as stop:
                while self.progress.step < cfg.train.steps:
                    stats = self.train_step()
                    step = self.progress.step
                    self.progress.step += 1
                    self.progress.samples_seen += global_batch
                    self._check(stats, stop, step)
                    for key, value in stats.items():
                        _accumulate(window, key, value)
                    window_steps += 1
                    done = self.progress.step
                    if done % cfg.log.every == 0 or done == cfg.train.steps:
                        elapsed = time.perf_counter() - window_start
                        metrics = self._reduce(window, window_steps)
                        metrics["lr"] = self.scheduler.get_last_lr()[0]
                        metrics["it_per_s"] = window_steps / elapsed
                        metrics["samples_per_s"] = window_steps * global_batch / elapsed
                        if self.sync is not None:
                            metrics["weight"] = self.sync.weight_at(step)
                        logger.log(done, metrics)
                        window, window_steps, window_start = {}, 0, time.perf_counter()
                    else:
                        logger.advance(done)
                    if stop.signal is not None:
                        path = self.save()
                        logger.print(
                            f"stopped by signal {stop.signal} at step {done}; checkpoint {path}"
                        )
                        return self.run_dir
                    if done % cfg.checkpoint.every == 0 and done < cfg.train.steps:
                        self.save()
                    if cfg.log.sample_every and done % cfg.log.sample_every == 0:
                        self.write_samples(done)
                    if cfg.log.eval_every and done % cfg.log.eval_every == 0:
                        self.evaluate(done, logger)
            self.save()
            if not cfg.log.sample_every or cfg.train.steps % cfg.log.sample_every:
                self.write_samples(cfg.train.steps)
            if not cfg.log.eval_every or cfg.train.steps % cfg.log.eval_every:
                self.evaluate(cfg.train.steps, logger)
        finally:
            logger.close()
            if self.sync is not None:
                self.sync.detach()
        return self.run_dir

    def _check(self, stats: dict[str, torch.Tensor], stop: StopFlag, step: int) -> None:
        """One host sync per step: non-finite terms and stop requests, agreed across ranks."""
        flags = torch.stack(
            [
                (~torch.isfinite(stats["diffusion"])).float(),
                (~torch.isfinite(stats["layersync"])).float(),
                torch.tensor(float(stop.signal is not None), device=stats["diffusion"].device),
            ]
        )
        bad_diff, bad_reg, stopping = dist.all_reduce(flags, "max").tolist()
        if stopping and stop.signal is None:
            stop.signal = signal.SIGTERM  # another rank was signalled
        if bad_diff or bad_reg:
            term = "diffusion" if bad_diff else "LayerSync"
            value = stats["diffusion" if bad_diff else "layersync"].item()
            last = self.last_checkpoint or "none yet"
            raise NonFiniteLossError(  # step numbered as in metrics.jsonl and checkpoints
                f"step {step + 1}: the {term} loss is {value}; stopped without saving. "
                f"Last good checkpoint: {last}"
            )

    def _reduce(self, window: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
        keys = sorted(window)
        values = torch.stack([window[k].float() for k in keys]) / steps
        values = dist.all_reduce(values, "mean").tolist()
        return dict(zip(keys, values, strict=True))

    # -- samples and metrics ------------------------------------------------------------------
    def sampling_generator(self) -> torch.Generator:
        """Same seed every time: periodic grids are comparable across steps and runs."""
        return torch.Generator(self.info.device).manual_seed(self.cfg.run.seed + EVAL_SEED_OFFSET)

    @torch.no_grad()
    def write_samples(self, step: int) -> list[Path]:
        n = self.cfg.log.sample_count
        gen = self.sampling_generator()
        with _isolated_rng(self.info.device):  # sampling must not shift the training stream
            cond = self.plugin.conditions(self.cfg, n, gen)
            samples = self.plugin.sample(self.ema.model, self.cfg, n, cond, gen)
        paths: list[Path] = []
        if self.info.is_main:
            paths = self.plugin.write_samples(
                samples, self.run_dir / "samples", self.cfg, prefix=f"{step:07d}"
            )
        dist.barrier()
        return paths

    @torch.no_grad()
    def evaluate(self, step: int, logger: MetricsLogger | None = None) -> dict[str, float]:
        out_dir = self.run_dir / "eval" / f"{step:07d}"
        if self.info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        with _isolated_rng(self.info.device):
            metrics = self.plugin.evaluate(
                self.ema.model, self.cfg, out_dir, self.sampling_generator()
            )
        if metrics and self.info.is_main:
            (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            if logger is not None:
                logger.log(step, metrics, kind="eval")
        return metrics


def _isolated_rng(device: torch.device) -> contextlib.AbstractContextManager:
    devices = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices, device_type=device.type)


def _accumulate(acc: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    acc[key] = acc[key] + value if key in acc else value.clone()


def _full(t: torch.Tensor) -> torch.Tensor:
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]


def train(
    cfg: Any, plugin: Modality, *, resume: str | None = None, overwrite: bool = False
) -> Path:
    """Run (or resume) one training run; returns its directory."""
    trainer = Trainer.create(cfg, plugin, resume=resume, overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        dist.shutdown()
