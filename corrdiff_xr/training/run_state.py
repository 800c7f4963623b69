"""A training run's state (:class:`Start`, :class:`Run`) and its checkpoints: what
:func:`save` writes and :func:`resume` restores.

A checkpoint (:mod:`corrdiff_xr.training.checkpoint`) holds the weights, the optimiser, the
sample count and, per rank, the loader position and random states, so each rank of a resumed
run continues its own stream exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from corrdiff_xr.config import ConfigError, NetworkConfig, TrainRunConfig
from corrdiff_xr.training import checkpoint as ckpt
from corrdiff_xr.training.distributed import ProcessInfo

__all__ = ["Run", "Start", "resume", "save"]


@dataclasses.dataclass
class Start:
    """What a run starts from: its data (restricted to the codec's variables), the codec, and
    the checkpoint to resume (None: a new run)."""

    train_pair: Any
    valid_pair: Any
    codec: Any
    img_shape: tuple[int, int]
    latest: Path | None
    regression_network: NetworkConfig | None
    #: a new regression run's valid target pixels (None: none masked, or taken from a checkpoint)
    target_mask: Any = None


@dataclasses.dataclass
class Run:
    """What every optimiser step of a run uses, built once by the training loop."""

    cfg: TrainRunConfig
    start: Start
    out: Path
    info: ProcessInfo
    device: torch.device
    model: Any  # the whole CorrDiff (saved, validated)
    trainable: torch.nn.Module  # the sub-module the optimiser updates
    net: torch.nn.Module  # ``trainable``, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    loader: Any
    per_device: int
    rounds: int


def save(run: Run, nimg: int, skipped: int) -> None:
    """Checkpoint weights, optimiser, and every rank's loader position and random state."""
    info = run.info
    local = {"loader": run.loader.state_dict(), "rng": ckpt.rng_state()}
    gathered = [local]
    if info.distributed:
        gathered = [None] * info.world_size
        torch.distributed.all_gather_object(gathered, local)
    if info.rank == 0:
        state = {
            "nimg": nimg,
            "skipped": skipped,
            "optimizer": run.optimizer.state_dict(),
            "ranks": gathered,
            "world_size": info.world_size,
        }
        ckpt.save_checkpoint(
            run.out / "checkpoints",
            nimg,
            trainer_state=state,
            save_model=lambda p: run.model.save(p / "model.safetensors"),
            keep=run.cfg.training.keep_checkpoints,
        )
    if info.distributed:
        torch.distributed.barrier()


def resume(run: Run, path: Path) -> tuple[int, int]:
    """Load checkpoint ``path`` (weights, optimiser, loader position, random states)."""
    from safetensors.torch import load_file

    from corrdiff_xr.model import CheckpointError, load_weights

    info, t = run.info, run.cfg.training
    state = ckpt.load_trainer_state(path)
    if state["world_size"] != info.world_size:
        raise ConfigError(
            f"checkpoint {path} was written by {state['world_size']} processes; "
            f"resume it with the same number (now {info.world_size})"
        )
    weights = path / "model.safetensors"
    tensors = load_file(str(weights))
    if "target_mask" in tensors:  # the mask the run was started with (checked: shape, dtype)
        run.model.set_target_mask(tensors["target_mask"])
    try:
        load_weights(run.model, tensors, source=str(weights))
    except CheckpointError as err:  # only after training.resume=force: same identity, same shapes
        raise CheckpointError(
            f"{err}; a network of another shape cannot continue this checkpoint: "
            "choose another training.output_dir for a new run"
        ) from None
    run.optimizer.load_state_dict(state["optimizer"])
    for group in run.optimizer.param_groups:  # the configured Adam settings, not the checkpoint's
        group["betas"], group["eps"] = tuple(t.betas), t.eps
    mine = state["ranks"][info.rank]
    run.loader.load_state_dict(mine["loader"])
    ckpt.set_rng_state(mine["rng"])
    return int(state["nimg"]), int(state["skipped"])
