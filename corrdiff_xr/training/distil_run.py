"""A distillation run: conditions from data, teacher trajectories, student updates, resume.

:func:`distil` turns a residual diffusion checkpoint into a few-call student
(:mod:`corrdiff_xr.training.distil` has the method and why) and writes the student as a normal
checkpoint. Its run directory (``OUT.run`` by default) holds

* ``identity.json``: the teacher's weights hash, the settings and the training times; a run
  continues only with the same (more ``steps``, another ``checkpoint_every`` or
  ``intermediate`` allowed);
* ``trajectories.safetensors``: the teacher's trajectories, solved once (with the CPU time
  and teacher calls they cost);
* ``checkpoints/<update>/``: the student (``model.safetensors``, usable as it is) and
  ``trainer.pt`` (optimiser, update count, loss, CPU seconds), written atomically by
  :mod:`corrdiff_xr.training.checkpoint`.

Running again into the same directory continues from the newest checkpoint: update ``k``
draws its batch from ``(seed, k)`` alone, so on the CPU a run stopped and resumed any number
of times ends with the weights of an uninterrupted one.

The conditions are those of inference: the data's regridded inputs and static fields encoded
by the teacher's codec, the regression mean of the whole domain, and (``patch``) random
crops of both with their offsets. Distil on training times, never on the hours the student
is scored on.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from corrdiff_xr._atomic import write_bytes
from corrdiff_xr.config import to_dict
from corrdiff_xr.edm import conditions_on_mean, residual_condition
from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.sampling import SOLVERS, draw_latents, make_generators
from corrdiff_xr.training.distil import (
    DistilConfig,
    Trajectories,
    record_trajectories,
    student_sampler,
    train_student,
)

if TYPE_CHECKING:
    from corrdiff_xr.edm import EDMPrecond
    from corrdiff_xr.inference.packages import DataLike
    from corrdiff_xr.model import CorrDiff

__all__ = ["DistilError", "DistilResult", "distil"]

_IDENTITY = "identity.json"
_TRAJECTORIES = "trajectories.safetensors"
_MODEL = "model.safetensors"
#: settings a resumed run may change (``intermediate`` is a sampler default, not training's)
_FREE = ("steps", "checkpoint_every", "intermediate")


class DistilError(CorrDiffError, ValueError):
    """A teacher, data or run directory that a distillation cannot use."""


@dataclasses.dataclass
class DistilResult:
    """What a run did and cost. ``cpu_seconds``: process CPU time of the teacher's
    trajectories plus the student's updates, over every resume; ``samples_seen``: training
    samples the student saw (updates x batch); ``teacher_calls``: teacher network calls per
    trajectory times trajectories."""

    path: Path | None
    run_dir: Path
    calls: int
    updates: int
    samples_seen: int
    trajectories: int
    teacher_calls: int
    cpu_seconds: float
    loss: float
    completed: bool


def distil(
    teacher: CorrDiff | str | os.PathLike[str],
    data: DataLike,
    out: str | os.PathLike,
    *,
    config: DistilConfig | None = None,
    run_dir: str | os.PathLike | None = None,
    stop_at: int | None = None,
) -> DistilResult:
    """Distil ``teacher`` into a ``config.calls``-call student written to ``out``.

    Parameters
    ----------
    teacher : CorrDiff or path
        A residual (or direct) diffusion checkpoint; its weights are not changed.
    data : DownscalingData or xr.Dataset
        Training times with the inputs and static fields the teacher reads (targets unused).
    out : path
        The student checkpoint, written (atomically) when the run completes.
    config : DistilConfig
        The method's settings (None: ``DistilConfig()``).
    run_dir : path
        Trajectories and checkpoints (module docstring); default ``OUT.run``. An existing
        run of the same identity is continued.
    stop_at : int, optional
        Stop (checkpointed) after this many updates in all: a run in parts.
    """
    from corrdiff_xr.model import CorrDiff

    cfg = config or DistilConfig()
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else out.with_name(out.name + ".run")
    model = CorrDiff.load(teacher) if isinstance(teacher, (str, os.PathLike)) else teacher
    _residual(model)  # refuse a regression-only teacher before any work
    times = _times(data, cfg)
    _claim(run_dir, _identity(model, cfg, times))
    traj, teacher_cpu, teacher_calls = _trajectories(run_dir, model, data, times, cfg)
    student = copy.deepcopy(model).cpu()
    student.sampler_config = student_sampler(cfg)
    updates, loss, student_cpu = train_student(
        _residual(student),
        traj,
        cfg,
        sigma_data=float(student.edm_config.sigma_data),
        root=run_dir / "checkpoints",
        stop_at=stop_at,
        save_model=lambda d: student.save(d / _MODEL),
        load_model=lambda d: student.load_state_dict(CorrDiff.load(d / _MODEL).state_dict()),
    )
    completed = updates >= cfg.steps
    if completed:
        student.eval().save(out)
    return DistilResult(
        path=out if completed else None,
        run_dir=run_dir,
        calls=cfg.calls,
        updates=updates,
        samples_seen=updates * cfg.batch_size,
        trajectories=cfg.trajectories,
        teacher_calls=teacher_calls,
        cpu_seconds=teacher_cpu + student_cpu,
        loss=loss,
        completed=completed,
    )


def _residual(model: CorrDiff) -> EDMPrecond:
    """The residual diffusion network of a teacher (or of its student copy)."""
    if model.residual is None:
        raise DistilError("the teacher is a regression-only checkpoint: nothing to distil")
    return model.residual


def _times(data: DataLike, cfg: DistilConfig) -> np.ndarray:
    """Time index of each trajectory: a seeded permutation of the data's times, cycled."""
    from corrdiff_xr.data import DownscalingData

    ds = data.dataset if isinstance(data, DownscalingData) else data
    n = int(ds.sizes["time"])
    order = np.random.default_rng(cfg.seed).permutation(n)
    return order[np.arange(cfg.trajectories) % n]


def _identity(model: CorrDiff, cfg: DistilConfig, times: np.ndarray) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(model.config_dict()["edm"], sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if tensor is not None:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    settings = {k: v for k, v in to_dict(cfg).items() if k not in _FREE}
    return {"teacher_sha256": digest.hexdigest(), "config": settings, "times": times.tolist()}


def _claim(run_dir: Path, identity: dict[str, Any]) -> None:
    """Record a new run's identity, or check that an existing run has this one."""
    path = run_dir / _IDENTITY
    if path.exists():
        found = json.loads(path.read_text())
        if found != json.loads(json.dumps(identity)):
            differ = sorted(k for k in identity if found.get(k) != identity[k])
            keys = sorted(
                k
                for k in identity["config"]
                if found.get("config", {}).get(k) != identity["config"][k]
            )
            raise DistilError(
                f"{run_dir} holds another distillation run ({', '.join(differ)} differ"
                + (f": {', '.join(keys)}" if keys else "")
                + "); give another run directory or the same teacher, data and settings"
            )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise DistilError(f"{run_dir} is not empty and holds no distillation run; choose another")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_bytes(path, json.dumps(identity).encode())


def _trajectories(
    run_dir: Path, model: CorrDiff, data: DataLike, times: np.ndarray, cfg: DistilConfig
) -> tuple[Trajectories, float, int]:
    """The run's trajectories, solved now or read back; their CPU seconds and teacher calls."""
    from safetensors import safe_open
    from safetensors.torch import save

    path = run_dir / _TRAJECTORIES
    if path.exists():
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata()
            traj = Trajectories(**{k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
        return traj, float(meta["cpu_seconds"]), int(meta["teacher_calls"])
    start = time.process_time()
    model = model.eval()
    condition, offsets = _conditions(model, data, times, cfg)
    edm = model.edm_config
    latents = draw_latents(
        make_generators([cfg.seed * 1_000_003 + i for i in range(len(times))]),
        (model.out_channels, *condition.shape[-2:]),
        nu=edm.nu,
    )
    device = next(model.parameters()).device  # the teacher solves where it is; the rest: CPU
    traj = record_trajectories(
        _residual(model),
        condition.to(device),
        offsets.to(device),
        latents.to(device),
        teacher=cfg.teacher(),
        floor=cfg.floor,
        calls=cfg.calls,
        shift=float(edm.flow_shift),
        batch_size=cfg.batch_size,
    )
    traj = Trajectories(**traj.tensors())
    cpu = time.process_time() - start
    calls = len(times) * SOLVERS[cfg.teacher_solver].calls(cfg.teacher_steps)
    meta = {"cpu_seconds": repr(cpu), "teacher_calls": str(calls)}
    write_bytes(path, save(traj.tensors(), metadata=meta))
    return traj, cpu, calls


@torch.no_grad()
def _conditions(
    model: CorrDiff, data: DataLike, times: np.ndarray, cfg: DistilConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual network's condition (and offsets) at each trajectory's time."""
    from corrdiff_xr.inference.downscaling import _pair, _sources

    if model.codec is None:
        raise DistilError("the teacher has no codec, so it cannot read data; attach one first")
    src = _sources(_pair(data, model.codec), model.codec)
    unique, where = np.unique(times, return_inverse=True)
    x = torch.from_numpy(np.asarray(model.codec.encode_inputs(src.isel(time=unique).load())))
    device = next(model.parameters()).device
    means = []
    for start in range(0, len(x), cfg.batch_size):
        rows = x[start : start + cfg.batch_size].to(device)
        offsets = torch.zeros((len(rows), 2), dtype=torch.int64, device=device)
        means.append(model.predict_mean(rows, offsets=offsets).float().cpu())
    mean_on = conditions_on_mean(model.edm_config)
    cond = residual_condition(x, torch.cat(means), hr_mean_conditioning=mean_on)[where]
    offsets = torch.zeros((len(times), 2), dtype=torch.int64)
    if cfg.patch is None:
        return cond, offsets
    (ph, pw), (h, w) = cfg.patch, cond.shape[-2:]
    if ph > h or pw > w:
        raise DistilError(f"patch {cfg.patch} is larger than the grid ({h}, {w}); use a smaller")
    rng = np.random.default_rng(cfg.seed + 1)
    origins = np.stack([rng.integers(0, h - ph + 1, len(times)),
                        rng.integers(0, w - pw + 1, len(times))], axis=1)  # fmt: skip
    crops = [cond[i, :, r : r + ph, c : c + pw] for i, (r, c) in enumerate(origins)]
    return torch.stack(crops), torch.as_tensor(origins, dtype=torch.int64)
