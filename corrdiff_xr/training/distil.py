"""Few-step students: distil a residual diffusion model into a 1-, 2- or 4-call generator.

Method
------
Trajectory distillation into a consistency-style student. The teacher's probability-flow ODE
is solved once per training sample, from latents at ``sigma_max`` down to 0, with a
deterministic one-step solver (Heun or Euler, e.g. the reference's Heun-18), and its state is
recorded at every level of its schedule. The student, a copy of the teacher's residual
network in the same EDM parameterisation and started from its weights, is trained to map each
recorded state ``(x_sigma, sigma)`` straight to the trajectory's end: knowledge distillation
of the noise-to-sample map (Luhman & Luhman 2021, arXiv 2101.02388) at every noise level, so
the student is a consistency function (Song et al. 2023, "Consistency Models", arXiv
2303.01469) and samples with their multistep algorithm (:func:`corrdiff_xr.sampling.
distilled`): one call from the latents, and each further call re-noises the sample to an
intermediate level and maps it again. That intermediate level (``sigma_min`` of the student's
sampler) and the noise scale (``S_noise``) are the student's free settings, which
:func:`corrdiff_xr.inference.calibrate.calibrate` tunes for spread-skill 1.

Why this and not the others, for a CPU budget of minutes: consistency *distillation*
bootstraps its target from the student's own (EMA) output one ODE step away, so what it
learns travels one discretisation step per stage of training and needs hundreds of thousands
of updates; progressive distillation (Salimans & Ho 2022, arXiv 2202.00512) halves the steps
per stage, ``log2(35)`` ~ 5 stages of full training for one call. Solving the teacher's ODE
once per sample costs a fixed number of teacher calls up front (35 per trajectory for
Heun-18), after which every update regresses onto an exact target and the recorded
trajectories are reused every epoch. Its known limit: a 1-call regression onto a
deterministic map blurs where the student cannot represent it, which shows as lost
small-scale power and spread; the multistep sampler and calibrated noise scale win some back.
On the demo model (``benchmarks/distil.py``: 128 Heun-18 trajectories, 1200 updates of 8,
about 6 CPU-minutes) the 1-call student scores a fair CRPS within 1.2 % of Heun-18's with
spread-skill 1.04 on held-out hours that played no part in any choice.

The loss is the plain squared error of the student's output against the trajectory's end,
over ``sigma_data^2`` (the same at every level: the sample's error is what counts). Levels are
drawn as the student is used: with ``calls=1`` only ``sigma_max``; otherwise ``sigma_max``
half the time and the recorded levels from ``floor`` up the other half.

The student is a normal checkpoint (:func:`corrdiff_xr.training.distil_run.distil` writes
it): the teacher's codec, regression network and EDM settings, its residual network's
weights replaced, and sampler defaults ``solver="distilled"`` with the student's calls, so
``downscale``, ``generate``, patching, shared noise, member batching and masks use it as they
use any model. Runs are resumable (:mod:`corrdiff_xr.training.distil_run`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from corrdiff_xr._constraints import Checked, Rule, setting
from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.protocols import Denoiser
from corrdiff_xr.sampling import SOLVERS, karras_sigmas

__all__ = [
    "DistilConfig",
    "Trajectories",
    "draw_batch",
    "record_trajectories",
    "student_loss",
    "student_sampler",
    "train_student",
]

#: teacher solvers whose steps do not depend on earlier ones (a trajectory may be cut at
#: every level and continued, which multistep solvers' history forbids)
ONE_STEP_SOLVERS = ("heun", "euler")


@dataclasses.dataclass(frozen=True)
class DistilConfig(Checked):
    """Settings of a distillation run (module docstring).

    ``calls``: network calls per member of the student (1, 2 or 4); ``teacher_solver``,
    ``teacher_steps``, ``sigma_max``, ``sigma_min``, ``rho``: the teacher's deterministic
    solver and schedule (the reference's Heun-18 by default); ``trajectories``: teacher
    samples solved (each on one training time, cycling through the times); ``steps`` and
    ``batch_size``: student updates and samples per update; ``lr``: Adam's learning rate;
    ``floor``: lowest recorded level the student trains on (calls > 1); ``intermediate``:
    the student's intermediate level before calibration; ``patch``: train on random patches
    of this shape (None: the whole domain); ``checkpoint_every``: updates between
    checkpoints; ``seed``: times, latents, patches and batches.
    """

    calls: Literal[1, 2, 4] = 2
    teacher_solver: Literal["heun", "euler"] = "heun"
    teacher_steps: int = setting(18, ge=2, le=1000)
    sigma_max: float = setting(800.0, gt=0)
    sigma_min: float = setting(0.002, gt=0)
    rho: float = setting(7.0, gt=0)
    trajectories: int = setting(128, ge=1, le=1_000_000)
    steps: int = setting(1200, ge=0, le=10_000_000)
    batch_size: int = setting(8, ge=1, le=4096)
    lr: float = setting(2e-4, gt=0)
    floor: float = setting(0.05, gt=0)
    intermediate: float = setting(0.5, gt=0)
    patch: tuple[int, int] | None = setting(None, ge=1)
    checkpoint_every: int = setting(100, ge=1)
    seed: int = setting(0, ge=0)

    RULES = (
        Rule(("sigma_min", "sigma_max"), lambda lo, hi: lo < hi, "need sigma_min < sigma_max"),
        Rule(("floor", "sigma_max"), lambda lo, hi: lo < hi, "need floor < sigma_max"),
    )

    def teacher(self) -> SamplerConfig:
        """The teacher's sampler (deterministic: no churn)."""
        return SamplerConfig(
            solver=self.teacher_solver,
            num_steps=self.teacher_steps,
            sigma_max=self.sigma_max,
            sigma_min=self.sigma_min,
            rho=self.rho,
        )


def student_sampler(cfg: DistilConfig) -> SamplerConfig:
    """The student's sampler defaults before calibration: ``cfg.calls`` calls from the
    teacher's ``sigma_max``, intermediate level ``cfg.intermediate``, noise scale 1."""
    return SamplerConfig(
        solver="distilled",
        num_steps=cfg.calls,
        sigma_max=cfg.sigma_max,
        sigma_min=min(cfg.intermediate, cfg.sigma_max / 2),
        rho=cfg.rho,
    )


@dataclasses.dataclass
class Trajectories:
    """Teacher trajectories: the student's training set.

    ``condition`` (N, C_cond, h, w) and ``offsets`` (N, 2) are what the residual network is
    called with; ``states`` (N, L, C, h, w) the ODE states at the recorded levels ``sigmas``
    (L,) float64, decreasing from ``sigma_max``; ``endpoints`` (N, C, h, w) the samples.
    """

    condition: Tensor
    offsets: Tensor
    sigmas: Tensor
    states: Tensor
    endpoints: Tensor

    def tensors(self) -> dict[str, Tensor]:
        """The fields by name, contiguous on the CPU (to save)."""
        return {f.name: getattr(self, f.name).detach().cpu().contiguous()
                for f in dataclasses.fields(self)}  # fmt: skip


#: ``residual(x, sigma, condition=..., offsets=...) -> D(x; sigma)`` (an EDMPrecond)
Residual = Callable[..., Tensor]


@torch.no_grad()
def record_trajectories(
    residual: Residual,
    condition: Tensor,
    offsets: Tensor,
    latents: Tensor,
    *,
    teacher: SamplerConfig,
    floor: float,
    calls: int,
    shift: float = 1.0,
    batch_size: int = 8,
) -> Trajectories:
    """Solve the teacher's probability-flow ODE from ``latents`` and record its states.

    Parameters
    ----------
    residual
        The teacher's denoiser, called as ``residual(x, sigma, condition=, offsets=)``.
    condition, offsets
        Per trajectory: (N, C_cond, h, w) and (N, 2).
    latents
        (N, C, h, w) standard-normal (or Student-t) latents.
    teacher
        A deterministic one-step solver (``heun`` or ``euler``, no churn) and its schedule.
    floor, calls
        Which levels to keep: ``sigma_max`` alone for one call, else every level >= floor.
    shift
        The model's flow time-shift (schedule levels times ``shift``, as sampling does).
    batch_size
        Trajectories per teacher call.
    """
    if teacher.solver not in ONE_STEP_SOLVERS or teacher.S_churn != 0:
        raise ValueError(
            f"the teacher's solver must be deterministic and one-step ({', '.join(ONE_STEP_SOLVERS)}"
            f", S_churn=0), got solver={teacher.solver!r}, S_churn={teacher.S_churn:g}"
        )
    solve = SOLVERS[teacher.solver].run
    sigmas = karras_sigmas(teacher) * shift
    levels = [0] if calls == 1 else [i for i, s in enumerate(sigmas[:-1]) if i == 0 or s >= floor]
    states, ends = [], []
    for start in range(0, latents.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        denoise: Denoiser = functools.partial(_call, residual, condition[rows], offsets[rows])

        x = latents[rows] * sigmas[0].to(latents.dtype)
        kept = [x] if 0 in levels else []
        for i, pair in enumerate(pairwise(sigmas)):
            x = solve(denoise, x, torch.stack(pair), config=teacher)
            if i + 1 in levels:
                kept.append(x)
        states.append(torch.stack(kept, dim=1))
        ends.append(x)
    return Trajectories(condition, offsets, sigmas[levels], torch.cat(states), torch.cat(ends))


def _call(
    residual: Residual, condition: Tensor, offsets: Tensor, x: Tensor, sigma: Tensor
) -> Tensor:
    return residual(x, sigma, condition=condition, offsets=offsets)


def draw_batch(
    n: int, levels: int, batch_size: int, *, calls: int, seed: int, step: int
) -> tuple[Tensor, Tensor]:
    """Trajectory rows and level indices of update ``step``: a pure function of its
    arguments (so a resumed run draws what an uninterrupted one would)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    rows = torch.randint(n, (batch_size,), generator=g)
    if calls == 1 or levels == 1:
        return rows, torch.zeros(batch_size, dtype=torch.int64)
    later = torch.randint(1, levels, (batch_size,), generator=g)
    at_max = torch.rand(batch_size, generator=g) < 0.5
    return rows, torch.where(at_max, torch.zeros_like(later), later)


def student_loss(
    student: Residual,
    traj: Trajectories,
    rows: Tensor,
    levels: Tensor,
    *,
    sigma_data: float,
) -> Tensor:
    """Mean squared error of ``student(x_sigma, sigma)`` against the trajectories' ends, over
    ``sigma_data^2``, for trajectory ``rows`` at recorded ``levels``."""
    x = traj.states[rows, levels]
    sigma = traj.sigmas[levels].to(x.dtype)
    pred = student(x, sigma, condition=traj.condition[rows], offsets=traj.offsets[rows])
    return ((pred - traj.endpoints[rows]) ** 2).mean() / sigma_data**2


def train_student(
    net: torch.nn.Module,
    traj: Trajectories,
    cfg: DistilConfig,
    *,
    sigma_data: float,
    root: Path | None = None,
    stop_at: int | None = None,
    save_model: Callable[[Path], object] | None = None,
    load_model: Callable[[Path], object] | None = None,
) -> tuple[int, float, float]:
    """Update the student ``net`` (called as ``net(x, sigma, condition=, offsets=)``) for
    ``cfg.steps`` updates (or up to ``stop_at``) with Adam on :func:`student_loss`.

    With ``root``, a checkpoint is written there every ``cfg.checkpoint_every`` updates and at
    the end (``save_model(directory)`` writes the weights, :mod:`~corrdiff_xr.training.
    checkpoint` the optimiser), and the newest one is continued from (``load_model``).
    Returns (updates done in all, the last loss, CPU seconds of all updates).
    """
    from corrdiff_xr.training import checkpoint as ckpt

    if root is not None and (save_model is None or load_model is None):
        raise ValueError(
            "train_student with root= needs save_model and load_model, which write and read "
            "the student's weights in a checkpoint directory"
        )
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    updates, loss, cpu = 0, math.nan, 0.0
    latest = None if root is None else ckpt.latest_checkpoint(root)
    if latest is not None and load_model is not None:  # never None with a root (above)
        state = ckpt.load_trainer_state(latest)
        load_model(latest)
        optimizer.load_state_dict(state["optimizer"])
        updates, loss, cpu = int(state["updates"]), float(state["loss"]), float(state["cpu"])
    for group in optimizer.param_groups:  # a resumed run takes the given rate
        group["lr"] = cfg.lr
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    # eval mode: the student learns the function it will be sampled with (no dropout, the
    # network's inference-time normalisation)
    net.eval()
    start = time.process_time()
    while updates < end:
        rows, levels = draw_batch(len(traj.endpoints), len(traj.sigmas), cfg.batch_size,
                                  calls=cfg.calls, seed=cfg.seed, step=updates)  # fmt: skip
        value = student_loss(net, traj, rows, levels, sigma_data=sigma_data)
        if not torch.isfinite(value):
            raise FloatingPointError(
                f"the student's loss is {float(value)} at update {updates}; lower lr ({cfg.lr:g})"
            )
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        updates, loss = updates + 1, float(value.detach())
        checkpoint = updates % cfg.checkpoint_every == 0 or updates == end
        if root is not None and save_model is not None and checkpoint:
            spent = cpu + time.process_time() - start
            state = {"optimizer": optimizer.state_dict(), "updates": updates, "loss": loss,
                     "cpu": spent}  # fmt: skip
            ckpt.save_checkpoint(root, updates, save_model=save_model, trainer_state=state, keep=2)
    return updates, loss, cpu + time.process_time() - start
