"""The training engine (loop, precision, EMA, checkpoints, logs).

The engine's public surface is this module; nothing outside ``layersync.train`` imports
``layersync.train.loop`` directly.
"""

from layersync.rundir import RunDirExistsError
from layersync.train.checkpoint import CheckpointError, check_fits, check_weights_file
from layersync.train.loop import (
    EVAL_SEED_OFFSET,
    NonFiniteLossError,
    NonFiniteWeightsError,
    Trainer,
    autocast_dtype,
    build_layersync,
    seed_everything,
    train,
)

__all__ = [
    "EVAL_SEED_OFFSET",
    "CheckpointError",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "RunDirExistsError",
    "Trainer",
    "autocast_dtype",
    "build_layersync",
    "check_fits",
    "check_weights_file",
    "seed_everything",
    "train",
]
