"""The per-process model cache: tasks carry a small token, never the model.

A block task receives a :class:`ModelToken` (checkpoint path, its modification stamp and the
requested device): a few dozen bytes whatever the model size. The first task in a process
loads the checkpoint and keeps it in :data:`_MODELS`; later tasks of that process reuse it.
With a dask.distributed cluster each worker process therefore loads the model once; threads
of a worker share it (evaluation under ``torch.no_grad`` does not mutate the module).

An in-memory model is written once to a temporary checkpoint (:func:`token_for`), keyed by
the object and the version counters of its tensors, so a model changed in place after one
``downscale`` call is saved again on the next. When a dask.distributed Client is active, the
temporary file also travels once to each worker (:mod:`corrdiff_xr.inference.plugin`), so
workers on other hosts find it; a checkpoint *path* must be readable by every worker.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile
import threading
import weakref
from collections import Counter, OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corrdiff_xr.model import CorrDiff

__all__ = ["LOADS", "ModelToken", "load_model", "resolve_device", "token_for"]

_LOCK = threading.Lock()
#: loaded models, most recently used last; a few at most (a training loop that downscales
#: every epoch makes a new checkpoint each time, and old ones must not pile up in memory)
_MODELS: OrderedDict[tuple[str, int, str], CorrDiff] = OrderedDict()
MAX_MODELS = 2
#: checkpoint loads per (path, stamp) in this process; tests read it through client.run
LOADS: Counter[tuple[str, int]] = Counter()
_SAVED: dict[int, tuple[weakref.ref[CorrDiff], tuple[int, ...], str]] = {}
_TMPDIRS: list[str] = []


@dataclasses.dataclass(frozen=True)
class ModelToken:
    """What a task needs to find the model: a path, its stamp and the device to use."""

    path: str
    stamp: int
    device: str | None = None


def _stamp(path: Path) -> int:
    """Latest modification time (ns) of a checkpoint file or of the files in its directory."""
    if path.is_dir():
        stamps = [p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()]
        return max(stamps, default=path.stat().st_mtime_ns)
    return path.stat().st_mtime_ns


def checkpoint_token(path: str | os.PathLike, *, device: str | None = None) -> ModelToken:
    """Token for a checkpoint on disk, with a clear error when it does not exist."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"model checkpoint {str(path)!r} does not exist")
    return ModelToken(str(path), _stamp(path), device)


def _versions(model: CorrDiff) -> tuple[int, ...]:
    # Tensor._version increases on every in-place change (optimizer steps, load_state_dict).
    return tuple(t._version for t in list(model.parameters()) + list(model.buffers()))


def _cleanup() -> None:
    for path in _TMPDIRS:
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_cleanup)


def token_for(model: CorrDiff | str | os.PathLike[str], *, device: str | None = None) -> ModelToken:
    """Token for a loaded CorrDiff or a checkpoint path; an in-memory model is saved once."""
    if isinstance(model, (str, os.PathLike)):
        return checkpoint_token(model, device=device)
    if not hasattr(model, "save"):
        raise TypeError(
            f"model must be a CorrDiff or a checkpoint path, got {type(model).__name__}"
        )
    with _LOCK:
        versions = _versions(model)
        entry = _SAVED.get(id(model))
        if entry is not None and entry[0]() is model and entry[1] == versions:
            path = entry[2]
        else:
            tmp = tempfile.mkdtemp(prefix="corrdiff_xr-model-")
            _TMPDIRS.append(tmp)
            path = os.path.join(tmp, "model")
            model.save(path)
            _SAVED[id(model)] = (weakref.ref(model), versions, path)
    return checkpoint_token(path, device=device)


def resolve_device(device: str | None) -> str:
    """``None`` means the worker's accelerator when it has one (CUDA), else the CPU."""
    if device is not None:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(token: ModelToken) -> CorrDiff:
    """The model for ``token``, loaded at most once per process and device."""
    device = resolve_device(token.device)
    key = (token.path, token.stamp, device)
    with _LOCK:
        model = _MODELS.get(key)
        if model is not None:
            _MODELS.move_to_end(key)
        else:
            path = Path(token.path)
            if not path.exists():
                raise FileNotFoundError(
                    f"model checkpoint {token.path!r} is not visible on this worker "
                    f"(pid {os.getpid()}); put it on storage every worker can read"
                )
            if _stamp(path) != token.stamp:
                raise RuntimeError(
                    f"model checkpoint {token.path!r} changed after the computation was "
                    "built; call downscale again"
                )
            from corrdiff_xr.model import CorrDiff

            model = CorrDiff.load(token.path, map_location=device)
            model.eval()
            LOADS[(token.path, token.stamp)] += 1
            _MODELS[key] = model
            while len(_MODELS) > MAX_MODELS:
                _MODELS.popitem(last=False)
    return model
