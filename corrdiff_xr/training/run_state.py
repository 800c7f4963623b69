"""A training run's state (:class:`Start`, :class:`Run`) and its checkpoints: what
:func:`open_run` checks and records before anything is built, what :func:`save` writes and
:func:`resume` restores.

A checkpoint (:mod:`corrdiff_xr.training.checkpoint`) holds the weights, the optimiser, the
sample count and, per rank, the loader position and random states, so each rank of a resumed
run continues its own stream exactly where it stopped. With ``training.ema`` its
``model.safetensors`` holds the weight average (:mod:`corrdiff_xr.training.ema`) and
``trainer.pt`` the raw weights under ``raw_weights``; a resume restores both, so a resumed
run ends with the average and weights of an uninterrupted one. Turning ``training.ema`` on
in a resume starts the average at the checkpoint's weights; turning it off continues from the
raw weights (the average is dropped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from corrdiff_xr._redact import redact_options
from corrdiff_xr.config import ConfigError, NetworkConfig, TrainRunConfig, from_dict, to_dict
from corrdiff_xr.training import checkpoint as ckpt
from corrdiff_xr.training import identity as ident
from corrdiff_xr.training.data import (
    codec_variables,
    new_codec,
    open_training_data,
    valid_target_pixels,
)
from corrdiff_xr.training.distributed import ProcessInfo
from corrdiff_xr.training.ema import WeightAverage

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import DownscalingData
    from corrdiff_xr.model import CorrDiff
    from corrdiff_xr.training.loader import ChunkShuffleLoader

__all__ = ["Run", "Start", "averaged", "model_file", "open_run", "resume", "save"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Start:
    """What a run starts from: its data (restricted to the codec's variables), the codec, and
    the checkpoint to resume (None: a new run)."""

    train_pair: DownscalingData
    valid_pair: DownscalingData | None
    codec: Codec
    img_shape: tuple[int, int]
    latest: Path | None
    regression_network: NetworkConfig | None
    #: a new regression run's valid target pixels (None: none masked, or taken from a checkpoint)
    target_mask: np.ndarray | None = None


@dataclasses.dataclass
class Run:
    """What every optimiser step of a run uses, built once by the training loop."""

    cfg: TrainRunConfig
    start: Start
    out: Path
    info: ProcessInfo
    device: torch.device
    model: CorrDiff  # the whole CorrDiff (saved, validated)
    trainable: torch.nn.Module  # the sub-module the optimiser updates
    net: torch.nn.Module  # ``trainable``, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    loader: ChunkShuffleLoader
    per_device: int
    rounds: int
    ema: WeightAverage | None = None  # the average of ``trainable``'s weights (training.ema)


def averaged(run: Run) -> contextlib.AbstractContextManager[None]:
    """A block in which ``run.model`` holds the weights it is validated and saved with: the
    average with ``training.ema``, else the trained weights."""
    return contextlib.nullcontext() if run.ema is None else run.ema.applied(run.trainable)


def model_file(path: str | Path) -> Path:
    path = Path(path)
    return path / "model.safetensors" if path.is_dir() else path


def open_run(cfg: TrainRunConfig, out: Path, info: ProcessInfo) -> Start:
    """Check the output directory, the data and the run's identity; record it (rank 0).

    Everything that can refuse the run happens here, before any network is built or weight
    loaded: a refused output directory, invalid data, a grid unlike the regression
    checkpoint's, a resume whose identity differs from the recorded one.
    """
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.model import read_checkpoint_header
    from corrdiff_xr.nn.backbones import check_shape

    t = cfg.training
    latest = ckpt.latest_checkpoint(out / "checkpoints") if ident.prepare_output_dir(out) else None
    train_pair, valid_pair = open_training_data(cfg)
    img_shape = (int(train_pair.fine.sizes["y"]), int(train_pair.fine.sizes["x"]))
    if cfg.patch.shape is not None and any(p > n for p, n in zip(cfg.patch.shape, img_shape)):
        raise ConfigError(
            f"patch.shape {tuple(cfg.patch.shape)} is larger than the domain {img_shape} (y, x)"
        )
    if cfg.task == "patched_diffusion" and cfg.patch.shape is not None:  # the config's rule
        check_shape(cfg.network, cfg.patch.shape, "patch.shape")
    else:  # the networks see whole images (the frozen regression net too, for diffusion)
        check_shape(cfg.network, img_shape, f"the fine grid of data.source {cfg.data.source}")
    reg_header: dict[str, Any] | None = None
    reg_codec, reg_file = None, None
    frozen_mean = cfg.task != "regression" and cfg.edm.objective == "residual"
    # the config's rule: a residual diffusion run names its regression checkpoint
    if frozen_mean and t.regression_checkpoint is not None:
        reg_file = model_file(t.regression_checkpoint)
        reg_header = read_checkpoint_header(reg_file)
        if tuple(reg_header["img_shape"]) != img_shape:
            raise ConfigError(
                f"regression checkpoint grid {tuple(reg_header['img_shape'])} differs from the "
                f"data's {img_shape}"
            )
        c = reg_header["codec"]
        reg_codec = ident.codec_identity(
            c["inputs"],
            c["targets"],
            c.get("static", ()),
            c.get("attrs", {}),
            transforms=c.get("transforms"),
            bounds=c.get("bounds"),
            features=c.get("features", ()),
        )
    identity = ident.run_identity(cfg, train_pair, codec=reg_codec, regression_file=reg_file)
    settings = ident.run_settings(cfg)
    history: list[dict[str, Any]] = []
    header: dict[str, Any] | None
    if latest is not None:
        history = ident.check_resume(
            out,
            ident.read_record(out, regression_file=reg_file),
            identity=identity,
            settings=settings,
            mode=t.resume,
            nimg=int(latest.name),
        )
        header = read_checkpoint_header(
            latest / "model.safetensors"
        )  # the codec is the checkpoint's
    else:
        header = reg_header
    if header is not None:
        codec = Codec.from_dict(header["codec"])
    else:
        codec = new_codec(cfg, train_pair)  # a new regression or direct run: computed here
    if info.distributed:
        torch.distributed.barrier()  # every rank has looked at the directory before rank 0 writes
    if info.rank == 0:
        ident.write_record(
            out,
            identity=identity,
            settings=settings,
            codec=codec.to_dict(),
            history=history,
            new=latest is None,
        )
        saved = to_dict(cfg)
        saved["data"] = redact_options(saved["data"])  # no password or token in the run's files
        (out / "config.yaml").write_text(_yaml(saved))
    reg_net = None
    if frozen_mean and header is not None:  # the regression's (or the run's) header then
        reg_net = from_dict(NetworkConfig, header["regression_network"], path="regression_network")
    train = codec_variables(train_pair, codec, source=cfg.data.source)
    valid = (
        None if valid_pair is None else codec_variables(valid_pair, codec, source=cfg.data.source)
    )
    mask = None
    if latest is None and not frozen_mean:  # later runs take it from a checkpoint
        mask = valid_target_pixels(train)
    return Start(train, valid, codec, img_shape, latest, reg_net, mask)


def save(run: Run, nimg: int, skipped: int) -> None:
    """Checkpoint weights, optimiser, and every rank's loader position and random state."""
    info = run.info
    local = {"loader": run.loader.state_dict(), "rng": ckpt.rng_state()}
    gathered: list[dict[str, Any] | None] = [local]
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
        if run.ema is not None:  # model.safetensors gets the average
            state["raw_weights"] = {
                k: v.detach().cpu().clone() for k, v in run.trainable.state_dict().items()
            }
        with averaged(run):
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
    _restore_average(run, state.get("raw_weights"))
    run.optimizer.load_state_dict(state["optimizer"])
    for group in run.optimizer.param_groups:  # the configured Adam settings, not the checkpoint's
        group["betas"], group["eps"] = tuple(t.betas), t.eps
    mine = state["ranks"][info.rank]
    run.loader.load_state_dict(mine["loader"])
    ckpt.set_rng_state(mine["rng"])
    return int(state["nimg"]), int(state["skipped"])


def _restore_average(run: Run, raw: dict[str, torch.Tensor] | None) -> None:
    """After the checkpoint's ``model.safetensors`` is loaded: the average (if one is kept)
    starts from it, and the trained module gets the raw weights saved beside it (if any)."""
    if run.ema is not None:
        if raw is None:
            log.info("training.ema: the weight average starts at the checkpoint's weights")
        run.ema.reset(run.trainable)
    if raw is not None:
        if run.ema is None:
            log.info("training.ema is off: training continues from the raw weights, unaveraged")
        run.trainable.load_state_dict(raw)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
