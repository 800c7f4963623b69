"""Training checkpoints: written atomically, the newest ``keep`` kept, the newest resumed.

A checkpoint is a directory ``<root>/<nimg:012d>/`` holding ``model.safetensors`` (written by
:meth:`corrdiff_xr.model.CorrDiff.save`, so it can be used for generation as it is) and
``trainer.pt`` (optimiser, sample count, loader positions, random states, and with
``training.ema`` the raw weights beside the averaged ones in ``model.safetensors``; tensors
and plain Python only, read back with ``weights_only=True``). It is assembled under a hidden temporary
name and renamed into place, so a process killed at any moment leaves either the complete
checkpoint or none; old checkpoints are renamed away before they are deleted for the same
reason.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corrdiff_xr._atomic import atomic_path, discard, remove_stale

__all__ = [
    "latest_checkpoint",
    "list_checkpoints",
    "load_trainer_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

_TRAINER = "trainer.pt"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    done = [
        p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (p / _TRAINER).exists()
    ]
    return sorted(done, key=lambda p: int(p.name))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(
    root: str | os.PathLike,
    nimg: int,
    *,
    save_model: Callable[[Path], object],
    trainer_state: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write checkpoint ``nimg`` atomically and delete all but the newest ``keep``.

    ``save_model(directory)`` writes the model into the fresh checkpoint directory.
    """
    root = Path(root)
    final = root / f"{nimg:012d}"
    # re-saving the same step (e.g. after a resume) replaces it
    with atomic_path(final, fsync=True) as staged:
        staged.mkdir()
        save_model(staged)
        torch.save(trainer_state, staged / _TRAINER)
    for old in list_checkpoints(root)[:-keep]:
        discard(old)
    remove_stale(root)  # partial copies left by a killed run
    return final


def load_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``trainer_state`` saved with a checkpoint."""
    path = Path(checkpoint) / _TRAINER
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; {checkpoint} is not a training checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """The random states a training step draws from (torch CPU/CUDA, numpy, Python)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> tuple[str, list[int], int, int, float]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return (str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached))


def _tuples(obj: Any) -> Any:
    # torch.save turns nothing into lists, but be safe with Python's nested-tuple state
    return tuple(_tuples(o) for o in obj) if isinstance(obj, (list, tuple)) else obj
