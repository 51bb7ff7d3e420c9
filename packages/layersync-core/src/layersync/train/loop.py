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

from layersync import distributed as dist
from layersync import rundir
from layersync.backends import backends_record, configure_backends
from layersync.loss import LayerSync, WeightSchedule
from layersync.pairs import effective_layersync
from layersync.plugin import Modality
from layersync.rundir import run_dir_of
from layersync.train import checkpoint as ckpt
from layersync.train.data import DataStream, give_run_seed, to_device
from layersync.train.ema import EMA
from layersync.train.logging import MetricsLogger, WandbSettings, require_wandb
from layersync.train.runtime import (
    StopFlag,
    autocast,
    autocast_dtype,
    environment,
    fsdp_no_sync,
    full_tensor,
    isolated_rng,
    lr_factor,
    seed_everything,
)

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
EVAL_SEED_OFFSET = 10_000
"""Samples and metrics use ``run.seed + EVAL_SEED_OFFSET`` (also ``layersync eval``'s default)."""


class NonFiniteLossError(RuntimeError):
    """A loss term or the gradient became NaN/inf; the run stopped without saving the bad state
    (or, with ``train.nonfinite = skip``, after ``train.max_skipped`` consecutive skips)."""


class NonFiniteWeightsError(RuntimeError):
    """Weights to be checkpointed (or loaded) hold NaN/inf: they are never written."""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def build_layersync(cfg: Any, plugin: Modality, model: nn.Module) -> LayerSync | None:
    """The LayerSync term for this run, or None when ``layersync.enabled`` is false (pairs and
    λ from ``layersync.pairs.effective_layersync``: one code path for every command)."""
    found = effective_layersync(cfg, plugin, model)
    if found is None:
        return None
    pairs, weight = found
    ls = cfg.layersync
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
        pairs=pairs,
        weight=schedule,
        blocks=plugin.block_names(cfg, model),
        view=plugin.token_view(cfg),
        time_range=ls.time_range,
        warn=False,  # effective_layersync warned already
    )


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
    consecutive_skips: int = 0  # non-finite steps skipped in a row (train.nonfinite = skip)
    skipped_total: int = 0  # ... in this process's part of the run
    skipped: bool = False  # the last step was skipped (agreed across ranks)
    stopping: bool = False  # a rank was signalled before the last step's check (agreed)
    _stop: StopFlag | None = None
    _logger: MetricsLogger | None = None

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
        if cfg.log.wandb and info.is_main:
            require_wandb()
        if info.is_main and not resume and not overwrite:
            rundir.check_free(run_dir)
        plugin.check_assets(cfg)  # metric networks etc.: missing now, not after training
        # Everything is built and checked (pairs against the depth, data, checkpoint) before
        # the run directory is created: a failed start leaves nothing behind.
        start = None
        if resume is not None:
            target = run_dir if resume == "latest" else resume  # rank 0 decides: one view
            start = dist.on_rank0(lambda: ckpt.resolve_checkpoint(target))
        configure_backends(cfg)  # as every command that loads this run: eval reproduces it

        seed_everything(cfg.run.seed)  # the same init on every rank (FSDP2 does not broadcast)
        model = plugin.build_model(cfg).to(info.device)
        seed_everything(cfg.run.seed + info.rank)  # per-rank streams from here on
        sync = build_layersync(cfg, plugin, model)
        ema = EMA(model, cfg.ema.decay, cfg.ema.warmup)
        amp_dtype = autocast_dtype(tc.precision, info.device)
        wrapped = dist.wrap_model(
            model,
            info,
            tc.distributed,
            plugin.block_names(cfg, model),
            param_dtype=amp_dtype if amp_dtype == torch.bfloat16 else None,
        )
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
        scaler = torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16)
        generator = torch.Generator(info.device).manual_seed(cfg.run.seed * 7919 + info.rank)
        data = DataStream(
            give_run_seed(plugin.build_dataset(cfg, "train"), cfg.run.seed),
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
        if info.is_main:
            rundir.prepare(run_dir, resume=resume is not None, overwrite=overwrite)
        dist.barrier()
        return trainer

    # -- checkpoints --------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint (collective under FSDP; files from rank 0)."""
        model_state = get_model_state_dict(self.model, options=FULL)
        ema_state = get_model_state_dict(self.ema.model, options=FULL)
        bad = ckpt.first_nonfinite(model_state) or ckpt.first_nonfinite(ema_state)
        flag = torch.tensor([float(bad is not None)], device=self.info.device)
        if dist.all_reduce(flag, "max").item():  # rank 0 holds the full state: all agree
            raise NonFiniteWeightsError(
                f"step {self.progress.step}: weight {bad or '(on rank 0)'!r} holds NaN/inf; "
                f"not saved. Last good checkpoint: {self.last_checkpoint or 'none yet'}"
            )
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
                self.run_dir / rundir.CHECKPOINTS,
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
        """Restore weights, EMA, optimizer, scheduler, scaler, position and RNG states.

        Under torchrun only rank 0 reads the weight and optimizer files (host memory: one copy
        per node's rank 0, not one per GPU) and broadcasts the tensors, which each rank shards
        as its model is (FSDP2) or keeps (DDP). A bad file is an error on every rank.
        """
        dist_on = self.info.distributed
        options = StateDictOptions(
            full_state_dict=True, cpu_offload=True, broadcast_from_rank0=dist_on
        )
        for which, module in (("model", self.model), ("ema", self.ema.model)):
            weights: dict[str, torch.Tensor] = {}
            dist.on_rank0(lambda w=weights, n=which, m=module: _read_weights(path, n, m, w))
            set_model_state_dict(module, weights, options=options)
        held: dict[str, Any] = {}

        def read_state() -> tuple[dict[str, Any], ckpt.Progress]:
            state, progress = ckpt.load_train_state(path)
            held["optimizer"] = state.pop("optimizer")
            return state, progress  # small: broadcast to the other ranks

        state, self.progress = dist.on_rank0(read_state)
        set_optimizer_state_dict(
            self.model, self.optimizer, held.get("optimizer", {}), options=options
        )
        held.clear()
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.ema.updates = state["ema_updates"]
        self.data.epoch = self.progress.epoch
        self.data.batch_in_epoch = self.progress.batch_in_epoch
        rngs = ckpt.load_rng_states(path)
        if len(rngs) != self.info.world_size:
            raise ckpt.CheckpointError(
                f"{path} was written by {len(rngs)} ranks; resuming it exactly needs the same "
                f"world size (got {self.info.world_size})"
            )
        ckpt.set_rng_state(rngs[self.info.rank], self.generator)
        self.last_checkpoint = path

    # -- one optimizer step -------------------------------------------------------------------
    def train_step(self) -> dict[str, torch.Tensor]:
        """Forward/backward over ``grad_accum`` micro-batches, one host sync that checks the loss
        terms and the gradient norm on every rank, then the optimizer and EMA step (or, for a
        non-finite step under ``train.nonfinite = skip``, no update at all).

        Returns detached device tensors (diffusion, layersync, loss, grad_norm, cos/*); whether
        the step was skipped is ``self.skipped``, whether a rank was signalled ``self.stopping``
        (both agreed across ranks).
        """
        stats = self.forward_backward()
        self.skipped = not self._step_is_finite(stats)
        if not self.skipped:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.ema.update(self.model)
            self.consecutive_skips = 0
        else:  # skip: the weights, optimizer moments and EMA stay as they were
            if self.scaler.is_enabled():  # forget this step's unscale_ without a step
                self.scaler.update(new_scale=self.scaler.get_scale())
        self.scheduler.step()  # the LR follows the step count, skipped or not
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    def forward_backward(self) -> dict[str, torch.Tensor]:
        """The losses and gradients of one optimizer step (no host sync, no update)."""
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
            # logged values: the mean over micro-batches
            _accumulate(stats, "diffusion", diffusion.detach(), accum)
            _accumulate(stats, "layersync", layersync.detach(), accum)
            if self.sync is not None:
                for key, value in self.sync.stats.items():
                    # cos/<pair> and the block diagnostics rms/<block>, rel/<pair> (issue 14)
                    if key.startswith(("cos/", "rms/", "rel/")):
                        _accumulate(stats, key, value, accum)
        stats["loss"] = stats["diffusion"] + stats["layersync"]
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.train.grad_clip or float("inf")
        stats["grad_norm"] = full_tensor(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        ).detach()
        return stats

    def _step_is_finite(self, stats: dict[str, torch.Tensor]) -> bool:
        """The one host sync of a step, agreed across ranks before any weight changes: are the
        loss terms and the gradient finite, and has any rank been asked to stop (a signal)?

        Under fp16 a non-finite gradient with finite losses is the grad scaler's business (it
        skips the step and lowers the scale); anything else non-finite follows
        ``train.nonfinite``: ``stop`` raises ``NonFiniteLossError``, ``skip`` returns False.
        """
        device = stats["diffusion"].device
        stop = self._stop is not None and self._stop.signal is not None
        flags = torch.stack(
            [
                (~torch.isfinite(stats["diffusion"])).float(),
                (~torch.isfinite(stats["layersync"])).float(),
                (~torch.isfinite(stats["grad_norm"].float())).float(),
                torch.tensor(float(stop), device=device),
            ]
        )
        bad_diff, bad_reg, bad_grad, stopping = dist.all_reduce(flags, "max").tolist()
        self.stopping = bool(stopping)
        if stopping and self._stop is not None and self._stop.signal is None:
            self._stop.signal = signal.SIGTERM  # another rank was signalled
        if bad_grad and not (bad_diff or bad_reg) and self.scaler.is_enabled():
            bad_grad = 0.0
        if not (bad_diff or bad_reg or bad_grad):
            return True
        step = self.progress.step + 1  # numbered as in metrics.jsonl and checkpoints
        if bad_diff or bad_reg:
            term = "diffusion" if bad_diff else "LayerSync"
            what = f"the {term} loss is {stats['diffusion' if bad_diff else 'layersync'].item()}"
        else:
            what = (
                f"the gradient norm is {stats['grad_norm'].item()} "
                f"(loss {stats['loss'].item():.4g})"
            )
        last = self.last_checkpoint or "none yet"
        tc = self.cfg.train
        if tc.nonfinite == "stop":
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"step {step}: {what}; stopped without saving (train.nonfinite=skip would skip "
                f"such steps). Last good checkpoint: {last}"
            )
        self.consecutive_skips += 1
        self.skipped_total += 1
        if self.consecutive_skips >= tc.max_skipped:
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"step {step}: {what}; {self.consecutive_skips} consecutive steps skipped "
                f"(train.max_skipped = {tc.max_skipped}); stopped without saving. "
                f"Last good checkpoint: {last}"
            )
        return False

    def _grad_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last accumulation micro-batch."""
        if sync or not self.info.distributed:
            return contextlib.nullcontext()
        if hasattr(self.wrapped, "no_sync"):
            return self.wrapped.no_sync()
        return fsdp_no_sync(self.model)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> Path:
        cfg, info = self.cfg, self.info
        if info.is_main:
            rundir.write_config(self.run_dir, cfg)
            rundir.write_json(self.run_dir / rundir.ENV, environment(info, self.plugin))
            described = self.plugin.describe_data(cfg)
            if described:
                rundir.write_json(self.run_dir / rundir.DATA, dict(described))
        wandb = None
        if cfg.log.wandb:
            wandb = WandbSettings(
                project=cfg.log.wandb_project,
                name=self.run_dir.name,
                config=cfg.model_dump(mode="json"),
                entity=cfg.log.wandb_entity,
            )
        logger = MetricsLogger(
            self.run_dir,
            cfg.train.steps,
            self.progress.step,
            cfg.log.tensorboard,
            cfg.log.progress,
            enabled=info.is_main,
            wandb=wandb,
        )
        self._logger = logger
        window: dict[str, torch.Tensor] = {}
        window_steps, window_skipped, window_start = 0, 0, time.perf_counter()
        global_batch = cfg.train.batch_size
        self.wrapped.train()
        try:
            with StopFlag() as stop:
                self._stop = stop
                while self.progress.step < cfg.train.steps:
                    stats = self.train_step()
                    step = self.progress.step
                    self.progress.step += 1
                    self.progress.samples_seen += global_batch
                    window_steps += 1
                    if self.skipped:  # its stats are NaN/inf: counted, not averaged
                        window_skipped += 1
                    else:
                        for key, value in stats.items():
                            _accumulate(window, key, value)
                    done = self.progress.step
                    if done % cfg.log.every == 0 or done == cfg.train.steps:
                        elapsed = time.perf_counter() - window_start
                        metrics = self._reduce(window, window_steps - window_skipped)
                        if cfg.train.nonfinite == "skip":
                            metrics["skipped"] = window_skipped
                        bad_items = getattr(self.data.dataset, "skipped", None)
                        if isinstance(bad_items, int):  # data.on_error = skip: unreadable files
                            metrics["data_skipped"] = bad_items
                        metrics["lr"] = self.scheduler.get_last_lr()[0]
                        if info.device.type == "cuda":  # the largest of any rank, since the start
                            peak = torch.cuda.max_memory_allocated(info.device) / 2**30
                            peak_t = torch.tensor([peak], device=info.device)
                            metrics["peak_mem_gb"] = dist.all_reduce(peak_t, "max").item()
                        metrics["it_per_s"] = window_steps / elapsed
                        metrics["samples_per_s"] = window_steps * global_batch / elapsed
                        if self.sync is not None:
                            metrics["weight"] = self.sync.weight_at(step)
                        logger.log(done, metrics)
                        if self.sync is not None:  # issue 14: cos ~ 1 reached by norm growth
                            for line in self.sync.shortcut_warnings(metrics):
                                logger.print(line)
                        window, window_steps, window_start = {}, 0, time.perf_counter()
                        window_skipped = 0
                    else:
                        logger.advance(done)
                    if self.stopping:  # agreed at the step's check: every rank saves here
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

    def _reduce(self, window: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
        if not window:  # every step of the window was skipped
            return {}
        keys = sorted(window)
        values = torch.stack([window[k].float() for k in keys]) / steps
        values = dist.all_reduce(values, "mean").tolist()
        return dict(zip(keys, values, strict=True))

    # -- samples and metrics ------------------------------------------------------------------
    def sampling_generator(self) -> torch.Generator:
        """Same seed every time: periodic grids are comparable across steps and runs."""
        return torch.Generator(self.info.device).manual_seed(self.cfg.run.seed + EVAL_SEED_OFFSET)

    @contextlib.contextmanager
    def _eval_forward(self) -> Iterator[None]:
        """Around every EMA sampling/eval forward: the training RNG streams are left untouched,
        and the FSDP2 EMA copy is resharded afterwards, even on an error (FSDP2 leaves a root
        unsharded after a forward; the next EMA update would then mix full tensors and shards).
        """
        try:
            with isolated_rng(self.info.device):
                yield
        finally:
            self.ema.reshard()

    @torch.no_grad()
    def write_samples(self, step: int) -> list[Path]:
        n = self.cfg.log.sample_count
        gen = self.sampling_generator()
        with self._eval_forward():  # sampling must not shift the training stream
            cond = self.plugin.conditions(self.cfg, n, gen)
            samples = self.plugin.sample(self.ema.model, self.cfg, n, cond, gen)
        paths: list[Path] = []
        if self.info.is_main:
            paths = self.plugin.write_samples(
                samples, rundir.samples_dir(self.run_dir), self.cfg, prefix=rundir.step_name(step)
            )
            if self._logger is not None:
                self._logger.log_images(step, paths)
        dist.barrier()
        return paths

    @torch.no_grad()
    def evaluate(self, step: int, logger: MetricsLogger | None = None) -> dict[str, float]:
        out_dir = rundir.eval_dir(self.run_dir, step)
        if self.info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        with self._eval_forward():
            metrics = self.plugin.evaluate(
                self.ema.model, self.cfg, out_dir, self.sampling_generator()
            )
            # -- val_loss (layersync.valloss; edit owned by issue 14) ---------------------------
            if getattr(self, "_val_loss", None) is None:  # built once: held-out batches kept
                from layersync.valloss import ValLoss

                self._val_loss = ValLoss.for_run(self.plugin, self.cfg, self.objective) or False
            if self._val_loss:
                metrics = {**(metrics or {}), **self._val_loss(self.ema.model, self.info.device)}
            # -- end val_loss ---------------------------------------------------------------------
        if metrics and self.info.is_main:
            rundir.write_json(out_dir / "metrics.json", metrics)
            rundir.write_json(out_dir / rundir.BACKENDS, backends_record())
            if logger is not None:
                logger.log(step, metrics, kind="eval")
        return metrics


def _read_weights(path: Path, which: str, module: nn.Module, into: dict) -> None:
    """Read ``which`` (model/ema) weights of checkpoint ``path`` into ``into``, checked."""
    into.update(ckpt.load_weights(path, which))
    ckpt.check_fits(into, module, path / f"{which}.safetensors")


def _accumulate(
    acc: dict[str, torch.Tensor], key: str, value: torch.Tensor, divisor: int = 1
) -> None:
    """``acc[key] += value / divisor``, with no kernel for ``divisor == 1`` or a first value
    (logged tensors are detached and never changed in place, so no copy is needed)."""
    if divisor != 1:
        value = value / divisor
    acc[key] = acc[key] + value if key in acc else value


def train(
    cfg: Any, plugin: Modality, *, resume: str | None = None, overwrite: bool = False
) -> Path:
    """Run (or resume) one training run; returns its directory."""
    trainer = Trainer.create(cfg, plugin, resume=resume, overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        dist.shutdown()
