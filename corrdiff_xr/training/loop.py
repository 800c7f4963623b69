"""The training loop: regression, residual diffusion and patched diffusion training.

:func:`train` takes a validated :class:`~corrdiff_xr.config.TrainRunConfig` (see
:func:`corrdiff_xr.training.load_run_config` and the ``train`` command) and trains one of
CorrDiff's two networks in normalised space:

* ``regression``: the mean UNet, on whole images (:func:`corrdiff_xr.edm.regression_loss`);
* ``diffusion``: the EDM residual denoiser, the frozen regression model of
  ``training.regression_checkpoint`` giving the mean (:func:`corrdiff_xr.edm.residual_loss`);
* ``patched_diffusion``: the same on ``training.patch_num`` random ``patch.shape`` patches
  per image.

Each optimiser step sees ``training.total_batch_size`` samples: ``batch_size_per_device``
per process, accumulated over rounds and averaged over processes (DDP under torchrun, SLURM
or OpenMPI), with the loss normalised by the total so the gradient is that of one big batch.
The learning rate is a pure function of the sample count
(:func:`corrdiff_xr.training.schedule.learning_rate`). With ``training.ema`` an average of
the weights follows every step and is what validation scores and ``model.safetensors``
holds (:mod:`corrdiff_xr.training.ema`). Diffusion runs also log the loss by noise-level
bin (:class:`corrdiff_xr.training.monitor.LossBySigma`).

Output directory and resume
---------------------------
``training.output_dir`` holds one run: a new run marks it (a ``train`` output) and records its
identity in ``identity.json`` (:mod:`corrdiff_xr.training.identity`). Re-running into it
continues from the newest checkpoint when the identity is the same (a longer duration, a new
learning rate or other optimiser setting: applied, and logged); another identity (data,
codec, network, EDM, patches, regression checkpoint) is refused before any weight is loaded,
unless ``training.resume=force``. Files and foreign directories are never written into. The
codec (channel order, statistics) is fixed by the first checkpoint and taken from it on
every resume.

Determinism
-----------
On the CPU a run is a pure function of config, seed, data and number of torch threads (a
reduction's rounding depends on its split among threads): two clean runs, or a run killed
and resumed any number of times, give bit-identical weights. Channel order never depends on
a store's listing order (detected names are sorted, :func:`corrdiff_xr.data.roles`: a store
without consolidated metadata lists its variables in hash-seed order, which made two runs
differ); sample order and loader patches are functions of ``(seed, epoch, sample)``
whatever the read-ahead threads or workers; dropout, noise levels and patch origins come from
the global torch generator in the main thread, seeded with ``training.seed`` (+ rank) and
saved in every checkpoint. On a GPU, runs differ unless ``training.deterministic``: cuDNN
picks convolution algorithms by timing them, and some CUDA kernels (convolution backward,
``index_add``/scatter) accumulate with atomics in varying order; ``deterministic`` turns on
``torch.use_deterministic_algorithms`` (with ``CUBLAS_WORKSPACE_CONFIG``), at some cost in
speed. CPU and GPU never agree bit for bit, nor do other world sizes or accumulation
settings (sums are reassociated), nor bf16 autocast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from corrdiff_xr._constraints import SettingError
from corrdiff_xr.config import NetworkConfig, TrainRunConfig
from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.training import run_state
from corrdiff_xr.training.distributed import ProcessInfo, detect, initialize, shutdown
from corrdiff_xr.training.ema import WeightAverage, ema_beta
from corrdiff_xr.training.monitor import LossBySigma, Monitor
from corrdiff_xr.training.objective import Objective, objective
from corrdiff_xr.training.run_state import Run, averaged, model_file, open_run
from corrdiff_xr.training.schedule import accumulation_rounds, learning_rate

__all__ = ["TrainResult", "TrainingDivergedError", "build_model", "train"]

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.model import CorrDiff
    from corrdiff_xr.training.batch import Batch

log = logging.getLogger(__name__)


class TrainingDivergedError(CorrDiffError, FloatingPointError):
    """Too many steps had non-finite loss or gradients (lower the learning rate or clip)."""


# -- the run --------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
    """What a run did: samples seen, steps taken/skipped, final loss, where things went."""

    nimg: int
    steps: int
    skipped_steps: int
    loss: float
    output_dir: Path
    completed: bool
    #: stopped at ``training.max_minutes`` (checkpointed; running again continues)
    timed_out: bool = False


def _device(name: str, info: ProcessInfo) -> torch.device:
    if name == "auto":
        return (
            torch.device(f"cuda:{info.local_rank}")
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    return torch.device(name)


def _is_due(nimg: int, step: int, every: int) -> bool:
    # true when the last step crossed a multiple of ``every`` samples
    return nimg // every > (nimg - step) // every


def build_model(
    cfg: TrainRunConfig,
    codec: Codec,
    img_shape: tuple[int, int],
    *,
    regression_network: NetworkConfig | None = None,
) -> tuple[CorrDiff, torch.nn.Module]:
    """The (untrained) CorrDiff to train and the sub-module whose weights the optimiser updates.

    Diffusion tasks need the ``regression_network`` config of the frozen regression net.
    """
    from corrdiff_xr.model import CorrDiff

    if cfg.task == "regression":
        model = CorrDiff(
            codec,
            img_shape=img_shape,
            regression_network=cfg.network,
            residual_network=None,
            edm=cfg.edm,
        )
        return model, model.regression
    model = CorrDiff(
        codec,
        img_shape=img_shape,
        regression_network=regression_network,
        residual_network=cfg.network,
        edm=cfg.edm,
        sampler=cfg.sampler,  # what validation sampled with: generate's default too
    )
    model.regression.requires_grad_(False).eval()
    assert model.residual is not None  # built from residual_network
    return model, model.residual


def _set_deterministic(enabled: bool, device: torch.device) -> None:
    if not enabled or device.type != "cuda":
        return  # CPU kernels are deterministic already (for a given number of threads)
    # cuBLAS needs a fixed workspace to be deterministic; read when its handle is created
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def train(cfg: TrainRunConfig, *, max_steps: int | None = None) -> TrainResult:
    """Train as configured; resume from the newest checkpoint in the output directory.

    ``max_steps`` stops after that many optimiser steps in this call (tests, profiling).
    """
    t = cfg.training
    info = detect()
    device = _device(t.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    initialize(info, device)
    try:
        _set_deterministic(t.deterministic, device)
        run = _build_run(cfg, info, device)
        nimg, skipped = 0, 0
        if run.start.latest is not None:
            nimg, skipped = run_state.resume(run, run.start.latest)
            log.info("resumed from %s at %d samples", run.start.latest, nimg)
        else:
            torch.manual_seed(t.seed + info.rank)  # per-rank noise from here on
        return _loop(run, nimg=nimg, skipped=skipped, max_steps=max_steps)
    finally:
        shutdown()


def _build_run(cfg: TrainRunConfig, info: ProcessInfo, device: torch.device) -> Run:
    """Open the run (:func:`~corrdiff_xr.training.run_state.open_run`), then build its
    model, optimiser, weight average and loader."""
    from corrdiff_xr.model import CorrDiff
    from corrdiff_xr.training.loader import ChunkShuffleLoader

    t = cfg.training
    per_device = t.batch_size_per_device or t.total_batch_size // info.world_size
    rounds = accumulation_rounds(t.total_batch_size, per_device, info.world_size)
    out = Path(t.output_dir)
    start = open_run(cfg, out, info)
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model, trainable = build_model(
        cfg, start.codec, start.img_shape, regression_network=start.regression_network
    )
    model.set_target_mask(start.target_mask)
    reg_file = t.regression_checkpoint  # given whenever the mean is frozen (the config's rule)
    if start.latest is None and start.regression_network is not None and reg_file is not None:
        frozen = CorrDiff.load(model_file(reg_file))
        model.regression.load_state_dict(frozen.regression.state_dict())
        model.set_target_mask(frozen.target_mask)  # the pixels the mean was trained on
    model.to(device)
    optimizer = torch.optim.Adam(trainable.parameters(), lr=t.lr, betas=t.betas, eps=t.eps)
    loader = ChunkShuffleLoader(
        start.train_pair,
        start.codec,
        batch_size=per_device,
        block_size=t.loader.block_size,
        seed=t.seed,
        rank=info.rank,
        world_size=info.world_size,
        num_workers=t.loader.num_workers,
        prefetch_factor=t.loader.prefetch_factor,
        lead_time=cfg.data.lead_time,
        # on a GPU the workers only read and each batch is encoded there; on the CPU numpy
        # encodes in the reading workers, beside the training step (benchmarks/loader.py)
        encode_device=device if device.type == "cuda" else None,
    )
    _check_batch_fits(per_device, loader.epoch_length(0), t.batch_size_per_device)
    return Run(
        cfg=cfg,
        start=start,
        out=out,
        info=info,
        device=device,
        model=model,
        trainable=trainable,
        net=trainable,
        optimizer=optimizer,
        loader=loader,
        per_device=per_device,
        rounds=rounds,
        ema=None if t.ema is None else WeightAverage(trainable),  # a resume restores it
    )


def _check_batch_fits(per_device: int, samples: int, explicit: int | None) -> None:
    """A batch larger than an epoch would cycle the data many times for one optimiser step."""
    if per_device > samples:
        key = "batch_size_per_device" if explicit else "total_batch_size"
        raise SettingError(
            ((f"training.{key}", per_device),),
            f"samples per device and step is more than the {samples} training samples this "
            f"process sees per epoch; lower training.{key} to at most {samples}",
        )


def _loop(run: Run, *, nimg: int, skipped: int, max_steps: int | None) -> TrainResult:
    """Optimiser steps until ``training.duration`` samples (or ``max_steps`` steps)."""
    t = run.cfg.training
    if run.info.distributed:  # wrapped after any resume: DDP broadcasts rank 0's weights
        run.net = torch.nn.parallel.DistributedDataParallel(
            run.trainable, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    monitor = Monitor(
        run.out / "tensorboard",
        total=t.duration,
        initial=nimg,
        active=run.info.rank == 0,
        progress=t.progress,
    )
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")
    loss_fn = objective(run.cfg, run.model)
    by_sigma = None
    if run.cfg.task != "regression":
        patches = t.patch_num if run.cfg.task == "patched_diffusion" else 1
        by_sigma = LossBySigma(run.cfg.edm, rows_per_sample=patches, device=run.device)
    batches = iter(run.loader)
    steps, loss_value = 0, math.nan
    run.model.eval()  # a frozen regression net stays in eval mode (no dropout)
    run.trainable.train()
    out_of_time = _clock(t.max_minutes, run.info, run.device)
    timed_out = False
    try:
        while nimg < t.duration and (max_steps is None or steps < max_steps):
            loss_value, grad_norm, lr, skipped = _step(
                run, batches, loss_fn, autocast, by_sigma, nimg=nimg, skipped=skipped
            )
            # after skipped steps too: the average is over samples (run.ema iff training.ema)
            if run.ema is not None and t.ema is not None:
                beta = ema_beta(
                    t.total_batch_size, nimg, halflife=t.ema, rampup_ratio=t.ema_rampup_ratio
                )
                run.ema.update(run.trainable, beta)
            nimg += t.total_batch_size
            steps += 1
            _after_step(
                run,
                monitor,
                by_sigma,
                nimg,
                loss=loss_value,
                lr=lr,
                grad_norm=grad_norm,
                skipped=skipped,
            )
            if nimg < t.duration and out_of_time():
                timed_out = True
                if not _is_due(nimg, t.total_batch_size, t.checkpoint_every):  # not just saved
                    run_state.save(run, nimg, skipped)
                log.info(
                    "training.max_minutes=%s reached at %d of %d samples; checkpoint and "
                    "model.safetensors saved, run the same command again to continue",
                    t.max_minutes,
                    nimg,
                    t.duration,
                )
                break
    finally:
        monitor.close()
    if run.info.rank == 0 and (nimg >= t.duration or timed_out):
        # a timed-out run leaves usable weights too: a later stage (diffusion) reads them
        with averaged(run):
            run.model.save(run.out / "model.safetensors")
    return TrainResult(nimg, steps, skipped, loss_value, run.out, nimg >= t.duration, timed_out)


def _clock(
    max_minutes: float | None, info: ProcessInfo, device: torch.device
) -> Callable[[], bool]:
    """``out_of_time()``: whether ``max_minutes`` have passed since now; every rank gets the
    same answer (the slowest clock's), so all stop at the same step."""
    if max_minutes is None:
        return lambda: False
    deadline = time.monotonic() + 60.0 * max_minutes

    def out_of_time() -> bool:
        late = time.monotonic() >= deadline
        if info.distributed:
            flag = torch.tensor([float(late)], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            late = bool(flag.item())
        return late

    return out_of_time


def _step(
    run: Run,
    batches: Iterator[Batch],
    loss_fn: Objective,
    autocast: torch.autocast,
    by_sigma: LossBySigma | None,
    *,
    nimg: int,
    skipped: int,
) -> tuple[float, torch.Tensor, float, int]:
    """One optimiser step from ``nimg`` samples, skipped when its loss or gradients are not
    finite; returns ``(loss, gradient norm, learning rate, skipped steps so far)``."""
    t = run.cfg.training
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum = _accumulate_gradients(
        run.net,
        batches,
        loss_fn,
        rounds=run.rounds,
        per_device=run.per_device,
        info=run.info,
        autocast=autocast,
        device=run.device,
        by_sigma=by_sigma,
    )
    grad_norm = torch.nn.utils.clip_grad_norm_(run.trainable.parameters(), t.grad_clip or math.inf)
    lr = learning_rate(
        nimg, lr=t.lr, rampup=t.lr_rampup, decay=t.lr_decay, decay_every=t.lr_decay_every
    )
    if torch.isfinite(loss_sum) and torch.isfinite(grad_norm):
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        run.optimizer.step()
        return float(loss_sum), grad_norm, lr, skipped
    skipped += 1  # identical on every rank: loss and gradients are all-reduced
    log.warning(
        "non-finite loss or gradient at %d samples; step skipped (%d so far)",
        nimg + t.total_batch_size,
        skipped,
    )
    if skipped > t.max_nonfinite_steps:
        raise TrainingDivergedError(
            f"{skipped} steps had non-finite loss or gradients (training.max_nonfinite_steps="
            f"{t.max_nonfinite_steps}); lower training.lr or set training.grad_clip"
        )
    return float(loss_sum), grad_norm, lr, skipped


def _after_step(
    run: Run,
    monitor: Monitor,
    by_sigma: LossBySigma | None,
    nimg: int,
    *,
    loss: float,
    lr: float,
    grad_norm: torch.Tensor,
    skipped: int,
) -> None:
    """Progress, then the logs, validation and checkpoint due at ``nimg`` samples (all at the end)."""
    t = run.cfg.training

    def due(every: int) -> bool:
        return _is_due(nimg, t.total_batch_size, every) or nimg >= t.duration

    monitor.advance(t.total_batch_size, nimg, loss=loss, lr=lr)
    if due(t.log_every):
        monitor.scalars(
            nimg,
            **{
                "train/loss": loss,
                "train/lr": lr,
                "train/grad_norm": float(grad_norm),
                "train/skipped_steps": skipped,
                **(by_sigma.flush(run.info) if by_sigma is not None else {}),  # every rank
            },
        )
    if run.start.valid_pair is not None and due(t.validate_every):
        _validate(run, monitor, nimg)
        run.model.eval()
        run.trainable.train()
    if due(t.checkpoint_every):
        run_state.save(run, nimg, skipped)


def _accumulate_gradients(
    net: torch.nn.Module,
    batches: Iterator[Batch],
    loss_fn: Objective,
    *,
    rounds: int,
    per_device: int,
    info: ProcessInfo,
    autocast: torch.autocast,
    device: torch.device,
    by_sigma: LossBySigma | None = None,
) -> torch.Tensor:
    """Backward over ``rounds`` batches; gradients and the returned loss are those of the mean
    over all ``per_device x rounds x world_size`` samples (DDP averages over processes and
    synchronises only on the last round). ``by_sigma`` collects the loss by noise level."""
    loss_sum = torch.zeros((), device=device)
    for r in range(rounds):
        batch = next(batches).to(device)
        last = r == rounds - 1 or not info.distributed
        # not the last round: only a distributed run's DDP-wrapped net gets here
        ddp = cast(torch.nn.parallel.DistributedDataParallel, net)
        with contextlib.nullcontext() if last else ddp.no_sync():
            with autocast:
                elementwise, sigma = loss_fn(net, batch)
                loss = elementwise.sum() / (per_device * rounds)
            loss.backward()
        loss_sum += loss.detach().float()
        if by_sigma is not None and sigma is not None:  # the diffusion tasks' losses
            by_sigma.add(sigma, elementwise.detach())
    if info.distributed:
        torch.distributed.all_reduce(loss_sum)
        loss_sum /= info.world_size
    return loss_sum


def _validate(run: Run, monitor: Monitor, nimg: int) -> None:
    from corrdiff_xr.training.validation import validate

    pair = run.start.valid_pair
    if run.info.rank != 0 or pair is None:
        return
    with averaged(run):  # the weights generate will sample with
        metrics, image = validate(
            run.cfg,
            run.model,
            pair,
            run.start.codec,
            device=run.device,
            batch_size=run.per_device,
        )
    monitor.scalars(nimg, **{f"valid/{k}": v for k, v in metrics.items()})
    if image is not None:
        monitor.image("valid/sample", image, nimg)
