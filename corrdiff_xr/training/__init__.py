"""Training: the loop, the loader that streams chunk-aligned blocks from Zarr, and its parts.

* :mod:`~corrdiff_xr.training.loop`: :func:`train` (resume, DDP, accumulation, bf16,
  validation, checkpoints, TensorBoard);
* :mod:`~corrdiff_xr.training.runconfig`: :func:`load_run_config` (YAML + overrides);
* :mod:`~corrdiff_xr.training.data`, :mod:`~corrdiff_xr.training.identity`: what a run trains
  on and the identity that a resume must match;
* :mod:`~corrdiff_xr.training.loader`, :mod:`~corrdiff_xr.training.chunkread`: batches from a
  lazy pair, read chunk by chunk;
* :mod:`~corrdiff_xr.training.schedule`, ``checkpoint``, ``distributed``, ``monitor``,
  ``validation``: small pieces, each testable on its own.
"""

from __future__ import annotations

from corrdiff_xr.training.data import open_training_data
from corrdiff_xr.training.loop import (
    TrainingDivergedError,
    TrainResult,
    build_model,
    train,
)
from corrdiff_xr.training.runconfig import CONFIG_DIR, load_run_config

__all__ = [
    "CONFIG_DIR",
    "TrainResult",
    "TrainingDivergedError",
    "build_model",
    "load_run_config",
    "open_training_data",
    "train",
]
