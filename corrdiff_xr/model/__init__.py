"""The CorrDiff model and its checkpoints.

* :mod:`~corrdiff_xr.model.core`: :class:`CorrDiff` (regression mean + EDM residual, in
  normalised space) and its safetensors checkpoint format (save, load);
  :mod:`~corrdiff_xr.model.header` checks a checkpoint's header and
  :mod:`~corrdiff_xr.model.sample_domain` samples members (on the grid or the padded image);
* :mod:`~corrdiff_xr.model.safety`: what a checkpoint must satisfy before anything is
  allocated (header limits, a meta-device build compared with the stored tensors);
* :mod:`~corrdiff_xr.model.mdlus` and :mod:`~corrdiff_xr.model.archives`: the importer of
  PhysicsNeMo ``.mdlus`` files, read in memory within size limits and without unpickling code;
* :mod:`~corrdiff_xr.model.packages`: published CorrDiff packages (:func:`open_package`).
"""

from __future__ import annotations

from pathlib import Path

from corrdiff_xr.model.core import (
    CHECKPOINT_FORMAT,
    DEFAULT_EDM,
    DEFAULT_REGRESSION,
    DEFAULT_RESIDUAL,
    DEFAULT_SAMPLER,
    CheckpointError,
    CorrDiff,
    load_weights,
    read_checkpoint_header,
)
from corrdiff_xr.model.mdlus import MdlusError, import_mdlus, read_mdlus
from corrdiff_xr.model.packages import Package, PackageError, open_package

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_EDM",
    "DEFAULT_REGRESSION",
    "DEFAULT_RESIDUAL",
    "DEFAULT_SAMPLER",
    "CheckpointError",
    "CorrDiff",
    "MdlusError",
    "Package",
    "PackageError",
    "import_mdlus",
    "load_weights",
    "open_package",
    "read_checkpoint_header",
    "read_mdlus",
    "shipped_model_path",
    "shipped_student_path",
]


def _shipped(name: str, how: str) -> Path:
    path = Path(__file__).parent.parent / "weights" / name
    if not path.exists():
        raise FileNotFoundError(
            f"the shipped model {path} is missing; reinstall corrdiff_xr or rebuild it with {how}"
        )
    return path


def shipped_model_path() -> Path:
    """Path of the shipped tiny CorrDiff checkpoint (fp16 tensors, loads as fp32)."""
    return _shipped("tiny_demo.safetensors", "benchmarks/train_shipped_model.py --install")


def shipped_student_path() -> Path:
    """Path of the shipped tiny model's distilled 1-call student (fp16 tensors, loads as fp32).

    Its sampler defaults are the calibrated 1-call setting of ``benchmarks/distil.py``; the
    demo uses it.
    """
    return _shipped("tiny_demo_student.safetensors", "benchmarks/distil.py --install")
