"""Shared test helper: import PhysicsNeMo (the reference) and build its CorrDiff networks.

PhysicsNeMo 2.2.2 imports torchvision, whose CUDA build cannot load its C++ ops against the CPU
torch used here; registering the two op schemas it looks up (``torchvision::nms`` /
``qnms``) first lets the import succeed. :func:`physicsnemo` does that once and returns the
module, or None when it cannot be imported (tests then skip with :data:`requires_physicsnemo`).

:func:`reference_regression` / :func:`reference_residual` build the reference's ``UNet`` /
``EDMPrecondSuperResolution`` from *our* configs, and :func:`copy_reference_weights` copies a
reference model's weights into a :class:`~corrdiff_xr.model.CorrDiff` through the same key
mapping that ``import_mdlus`` uses.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import pytest
import torch

from corrdiff_xr.config import EDMConfig, NetworkConfig
from corrdiff_xr.model.mdlus import map_reference_state_dict

__all__ = [
    "copy_reference_weights",
    "copy_weights_to_reference",
    "physicsnemo",
    "reference_network_kwargs",
    "reference_regression",
    "reference_residual",
    "requires_physicsnemo",
]

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def register_torchvision_schemas() -> None:
    """Define ``torchvision::nms`` and ``torchvision::qnms`` unless already defined."""
    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}", _SCHEMA)
        except RuntimeError:  # already registered (second call, or a working torchvision)
            pass


@functools.lru_cache(maxsize=1)
def physicsnemo() -> Any | None:
    """The ``physicsnemo`` module, or None if it cannot be imported here."""
    register_torchvision_schemas()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import physicsnemo as pn
            import physicsnemo.diffusion.preconditioners
            import physicsnemo.models.diffusion_unets
    except Exception:  # noqa: BLE001 (any import failure means: no reference available)
        return None
    return pn


requires_physicsnemo = pytest.mark.skipif(
    physicsnemo() is None,
    reason="physicsnemo (reference implementation) cannot be imported",
)


def reference_network_kwargs(cfg: NetworkConfig) -> dict[str, Any]:
    """Reference SongUNetPosEmbd/PosLtEmbd keyword arguments equivalent to ``cfg``."""
    kw: dict[str, Any] = {
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
        "N_grid_channels": cfg.N_grid_channels if cfg.gridtype != "none" else 0,
    }
    if cfg.gridtype != "none":
        kw["gridtype"] = cfg.gridtype
    if cfg.lead_time_channels:
        kw.update(
            lead_time_channels=cfg.lead_time_channels,
            lead_time_steps=cfg.lead_time_steps,
            prob_channels=list(cfg.prob_channels),
        )
    return kw


def _model_type(cfg: NetworkConfig) -> str:
    return "SongUNetPosLtEmbd" if cfg.lead_time_channels else "SongUNetPosEmbd"


def _extra(cfg: NetworkConfig) -> int:
    return (cfg.N_grid_channels if cfg.gridtype != "none" else 0) + cfg.lead_time_channels


def reference_regression(
    cfg: NetworkConfig,
    *,
    in_channels: int,
    out_channels: int,
    img_shape: tuple[int, int],
):
    """Reference ``UNet`` (regression) equivalent to our regression network."""
    pn = physicsnemo()
    from physicsnemo.models.diffusion_unets import UNet

    assert pn is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return UNet(
            img_resolution=list(img_shape),
            img_in_channels=in_channels + _extra(cfg),
            img_out_channels=out_channels,
            model_type=_model_type(cfg),
            **reference_network_kwargs(cfg),
        )


def reference_residual(
    cfg: NetworkConfig,
    edm: EDMConfig,
    *,
    cond_channels: int,
    out_channels: int,
    img_shape: tuple[int, int],
):
    """Reference ``EDMPrecondSuperResolution`` (or ``EDMPrecondSR`` when ``edm.scale_condition``)."""
    from physicsnemo.diffusion.preconditioners import (
        EDMPrecondSR,
        EDMPrecondSuperResolution,
    )

    kw = dict(
        img_resolution=list(img_shape),
        img_in_channels=cond_channels + _extra(cfg),
        img_out_channels=out_channels,
        model_type=_model_type(cfg),
        sigma_data=edm.sigma_data,
        **reference_network_kwargs(cfg),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if edm.scale_condition:
            return EDMPrecondSR(img_channels=out_channels, scale_cond_input=True, **kw)
        return EDMPrecondSuperResolution(**kw)


def copy_reference_weights(
    ref: torch.nn.Module, ours: torch.nn.Module, *, target_prefix: str = ""
) -> None:
    """Load reference weights (its ``model.`` sub-network) into ``ours`` (a SongUNet or a wrapper)."""
    net = ref.model
    img_h = net.img_shape_y
    levels = net._num_levels
    sd = map_reference_state_dict(
        ref.state_dict(),
        img_height=img_h,
        levels=levels,
        prefix="model.",
        target_prefix=target_prefix,
    )
    missing, unexpected = ours.load_state_dict(sd, strict=False)
    assert not unexpected, f"unexpected keys {unexpected}"
    assert not missing, f"missing keys {missing}"


def randomize_(module: torch.nn.Module, *, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Overwrite every parameter with N(0, scale^2)/sqrt(fan-in) noise (deterministic per seed).

    Fresh reference networks start with near-zero output convolutions (init_weight 1e-5), so
    their outputs are tiny and any comparison would pass; random weights make outputs O(1).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            fan_in = p[0].numel() if p.ndim > 1 else 1
            std = scale / fan_in**0.5 if p.ndim > 1 else scale
            p.copy_(
                torch.randn(p.shape, generator=g) * std
                + (1.0 if name.endswith("norm0.weight") else 0.0)
            )
    return module


def copy_weights_to_reference(
    ours: torch.nn.Module, ref: torch.nn.Module, *, target_prefix: str = ""
) -> None:
    """Load ``ours`` (a SongUNet or a wrapper) into the reference's ``model.`` sub-network.

    The inverse of :func:`copy_reference_weights`: the key map is the same one, applied to
    the reference's own state dict, whose tensors share storage with its parameters.
    """
    net = ref.model
    mapped = map_reference_state_dict(
        ref.state_dict(),
        img_height=net.img_shape_y,
        levels=net._num_levels,
        prefix="model.",
        target_prefix=target_prefix,
    )
    theirs = {k: v for k, v in ours.state_dict().items() if k.startswith(target_prefix)}
    if set(mapped) != set(theirs):
        raise KeyError(
            f"weights that do not map: ours only {sorted(set(theirs) - set(mapped))}, "
            f"reference only {sorted(set(mapped) - set(theirs))}"
        )
    with torch.no_grad():
        for key, dest in mapped.items():
            dest.copy_(theirs[key])
