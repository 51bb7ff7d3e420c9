"""The training engine (loop, distributed, precision, EMA, checkpoints, logs)."""

from layersync.train.loop import NonFiniteLossError, RunDirExistsError, Trainer, train

__all__ = ["NonFiniteLossError", "RunDirExistsError", "Trainer", "train"]
