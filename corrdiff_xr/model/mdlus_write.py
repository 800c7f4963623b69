"""Write CorrDiff networks as PhysicsNeMo 2.2.2 ``.mdlus`` files, without PhysicsNeMo.

The inverse of :mod:`corrdiff_xr.model.mdlus`. A file is what PhysicsNeMo's own
``Module.save`` writes: an uncompressed zip of ``model.pt`` (a ``torch.save``d state dict),
``args.json`` (``__name__``, ``__module__`` and the constructor's ``__args__``) and
``metadata.json`` (the PhysicsNeMo version and the class's checkpoint version), so
``physicsnemo.Module.from_checkpoint`` rebuilds the reference class and loads the weights
strictly. The regression network becomes the reference's ``UNet`` and the residual denoiser
``EDMPrecondSuperResolution`` (``EDMPrecondSR`` when the condition is scaled), with the
reference's key names (:func:`reference_state_dict`) and the derived buffers it stores
(``map_noise.freqs``, the up/down ``resample_filter`` kernels), recomputed from the config.

Only models the reference computes the same way are written: :func:`check_exportable` refuses
the rest in one line (lead-time networks, our biased evaluation GroupNorm, grids the levels
do not divide without our padding).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from corrdiff_xr.config import NetworkConfig
from corrdiff_xr.errors import CorrDiffError

if TYPE_CHECKING:
    from corrdiff_xr.model.core import CorrDiff

__all__ = [
    "ExportError",
    "check_exportable",
    "reference_network_args",
    "reference_state_dict",
    "write_mdlus",
    "write_regression",
    "write_residual",
]

#: the PhysicsNeMo release whose file format (and class versions) these files follow
PHYSICSNEMO_VERSION = "2.2.2"
_CLASSES = {  # name -> (module, checkpoint version) as PhysicsNeMo 2.2.2 saves them
    "UNet": ("physicsnemo.models.diffusion_unets.unet", "0.2.0"),
    "EDMPrecondSuperResolution": ("physicsnemo.diffusion.preconditioners.legacy", "0.1.0"),
    "EDMPrecondSR": ("physicsnemo.diffusion.preconditioners.legacy", "0.1.0"),
}
_ATTENTION = {"norm": "norm2", "qkv": "qkv", "proj": "proj"}


class ExportError(CorrDiffError, ValueError):
    """A model or data that cannot be written in a format another tool reads."""


# -- arguments ----------------------------------------------------------------------------
def _grid_channels(cfg: NetworkConfig) -> int:
    return cfg.N_grid_channels if cfg.gridtype != "none" else 0


def check_exportable(cfg: NetworkConfig, img_shape: tuple[int, int], *, what: str) -> None:
    """Refuse (one line) a network the reference would compute differently."""
    if cfg.arch != "songunet":
        raise ExportError(f"{what} is an {cfg.arch!r} network; the reference's are SongUNets")
    if cfg.lead_time_channels:
        raise ExportError(
            f"{what} has a lead-time embedding, which the generic CorrDiff package cannot feed"
        )
    if not cfg.eval_groupnorm_unbiased:
        raise ExportError(
            f"{what} uses eval_groupnorm_unbiased=False; the reference always uses the unbiased "
            "variance, so its outputs would differ"
        )
    step = 2 ** (len(cfg.channel_mult) - 1)
    if img_shape[0] % step or img_shape[1] % step:
        raise ExportError(
            f"{what} runs on {img_shape[0]} x {img_shape[1]} pixels, which its "
            f"{len(cfg.channel_mult)} levels only handle with our padding; the reference needs "
            f"multiples of {step}"
        )


def reference_network_args(cfg: NetworkConfig) -> tuple[str, dict[str, Any]]:
    """(``model_type``, SongUNet keyword arguments) of the reference equivalent to ``cfg``."""
    kwargs: dict[str, Any] = {
        "model_channels": cfg.model_channels,
        "channel_mult": list(cfg.channel_mult),
        "channel_mult_emb": cfg.channel_mult_emb,
        "channel_mult_noise": cfg.channel_mult_noise,
        "num_blocks": cfg.num_blocks,
        "attn_resolutions": list(cfg.attn_resolutions),
        "dropout": cfg.dropout,
        "resample_filter": list(cfg.resample_filter),
        "embedding_type": cfg.embedding_type,
        "bottleneck_attention": cfg.bottleneck_attention,
    }
    if not _grid_channels(cfg):
        return "SongUNet", kwargs  # SongUNetPosEmbd always adds a grid; SongUNet has none
    kwargs.update(N_grid_channels=cfg.N_grid_channels, gridtype=cfg.gridtype)
    return "SongUNetPosEmbd", kwargs


# -- state dicts --------------------------------------------------------------------------
def _reference_key(key: str, resolutions: dict[str, str]) -> str:
    parts = key.split(".")
    if parts[0] in ("enc", "dec") and len(parts) > 1:
        level, _, rest = parts[1].partition("_")
        if level in resolutions and rest:
            parts[1] = f"{resolutions[level]}_{rest}"
        if len(parts) > 4 and parts[2] == "attn" and parts[3] in _ATTENTION:
            parts[2:4] = [_ATTENTION[parts[3]]]
    key = ".".join(parts)
    return {"grid.weight": "pos_embd", "lead_time.weight": "lt_embd"}.get(key, key)


def reference_state_dict(
    sd: dict[str, torch.Tensor],
    cfg: NetworkConfig,
    *,
    img_height: int,
    prefix: str = "",
    target_prefix: str = "model.",
) -> dict[str, torch.Tensor]:
    """Our SongUNet state dict (keys under ``prefix``) with the reference's key names.

    The inverse of :func:`~corrdiff_xr.model.mdlus.map_reference_state_dict`, plus the
    derived buffers the reference keeps in its state dict and ours recomputes:
    ``map_noise.freqs`` of the positional noise embedding and the ``resample_filter`` of every
    up/down-sampling convolution (``conv0`` and ``skip`` of ``*_up``/``*_down`` blocks).
    """
    levels = len(cfg.channel_mult)
    resolutions = {f"L{lvl}": f"{img_height >> lvl}x{img_height >> lvl}" for lvl in range(levels)}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(prefix):
            out[target_prefix + _reference_key(key[len(prefix) :], resolutions)] = value.detach()
    taps = torch.as_tensor(list(cfg.resample_filter), dtype=torch.float32)
    kernel = (torch.outer(taps, taps) / taps.sum().square())[None, None]
    for key in list(out):
        parts = key[len(target_prefix) :].split(".")
        if (
            len(parts) == 4
            and parts[0] in ("enc", "dec")
            and parts[1].endswith(("_up", "_down"))
            and parts[2] in ("conv0", "skip")
            and parts[3] == "weight"
        ):
            out[key[: -len("weight")] + "resample_filter"] = kernel.clone()
    if cfg.embedding_type == "positional":
        half = cfg.model_channels * cfg.channel_mult_noise // 2
        freqs = (1.0 / 10000) ** (torch.arange(half, dtype=torch.float32) / (half - 1))
        out[target_prefix + "map_noise.freqs"] = freqs
    return out


# -- files --------------------------------------------------------------------------------
def write_mdlus(
    path: str | os.PathLike, name: str, args: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> Path:
    """Write a ``.mdlus`` zip of class ``name`` (a key of ``_CLASSES``) as PhysicsNeMo does."""
    module, version = _CLASSES[name]
    buffer = io.BytesIO()
    torch.save({k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}, buffer)
    header = {"__name__": name, "__module__": module, "__args__": args}
    meta = {"physicsnemo_version": PHYSICSNEMO_VERSION, "mdlus_file_version": version}
    path = Path(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("model.pt", buffer.getvalue())
        archive.writestr("args.json", json.dumps(header))
        archive.writestr("metadata.json", json.dumps(meta))
    return path


def write_regression(model: CorrDiff, path: str | os.PathLike) -> Path:
    """``model``'s regression network as the reference's ``UNet`` (``regression.mdlus``)."""
    cfg = model.regression_config
    if cfg is None:
        raise ExportError("the model has no regression network (edm.objective='direct')")
    check_exportable(cfg, model.img_shape, what="the regression network")
    model_type, kwargs = reference_network_args(cfg)
    args = {
        "img_resolution": list(model.img_shape),
        "img_in_channels": model.in_channels + _grid_channels(cfg),
        "img_out_channels": model.out_channels,
        "use_fp16": False,
        "model_type": model_type,
        **kwargs,
    }
    net = cast(nn.Module, model.regression.net)  # a RegressionUNet's backbone
    sd = reference_state_dict(net.state_dict(), cfg, img_height=model.img_shape[0])
    return write_mdlus(path, "UNet", args, sd)


def write_residual(model: CorrDiff, path: str | os.PathLike) -> Path:
    """``model``'s residual denoiser as ``EDMPrecondSuperResolution`` (``diffusion.mdlus``)."""
    cfg, edm = model.residual_config, model.edm_config
    if cfg is None or model.residual is None:
        raise ExportError("the model has no residual network (a regression-only model)")
    check_exportable(cfg, model.img_shape, what="the residual network")
    model_type, kwargs = reference_network_args(cfg)
    cond = model.in_channels + (model.out_channels if edm.hr_mean_conditioning else 0)
    args: dict[str, Any] = {
        "img_resolution": list(model.img_shape),
        "img_in_channels": cond + _grid_channels(cfg),
        "img_out_channels": model.out_channels,
        "use_fp16": False,
        "model_type": model_type,
        "sigma_data": edm.sigma_data,
        "sigma_min": 0.0,
        "sigma_max": float("inf"),
        **kwargs,
    }
    name = "EDMPrecondSuperResolution"
    if edm.scale_condition:
        name = "EDMPrecondSR"
        args.update(img_channels=model.out_channels, scale_cond_input=True)
    sd = reference_state_dict(model.residual.net.state_dict(), cfg, img_height=model.img_shape[0])
    return write_mdlus(path, name, args, sd)
