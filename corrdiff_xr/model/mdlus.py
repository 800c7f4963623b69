"""Import PhysicsNeMo ``.mdlus`` checkpoints of CorrDiff networks without unpickling code.

A ``.mdlus`` file is a zip (current) or tar (legacy) archive holding ``args.json`` (the class
name and its constructor arguments), ``metadata.json`` and ``model.pt`` (a ``torch.save``d
state dict). Members are read straight from the archive (nothing is extracted to disk), the
state dict with ``torch.load(weights_only=True)``, whose unpickler refuses any global but
tensors and plain containers: a crafted ``__reduce__`` payload is rejected, not run. The JSON arguments are mapped onto :class:`~corrdiff_xr.config.NetworkConfig`
/ :class:`~corrdiff_xr.config.EDMConfig` and the state-dict keys onto our module names.

Hostile files cost bounded memory: :mod:`corrdiff_xr.model.archives` documents the member limits
(at most 4 GiB, or twice the archive plus 1 MiB, in all; real files store members
uncompressed and a ``normal`` CorrDiff UNet is ~320 MB) and what it refuses (links, devices,
absolute and ``..`` names, over-sized or non-UTF-8 JSON). The network ``args.json`` describes
must lie within :data:`~corrdiff_xr.model.safety.NETWORK_LIMITS` and, built first on
the meta device, match the weights present before the real one is allocated.

Supported classes: regression ``UNet`` / ``CorrDiffRegressionUNet`` (latent zeros +
condition), ``StormCastUNet`` and bare ``SongUNet`` / ``SongUNetPosEmbd`` /
``SongUNetPosLtEmbd`` used as regression networks (condition only; the first convolution gets
zero weights for our zero latent channels, which leaves outputs unchanged), and the residual
denoisers ``EDMPrecondSuperResolution`` and ``EDMPrecondSR`` (whose ``scale_cond_input``
becomes ``EDMConfig.scale_condition``). PhysicsNeMo DiTs (``DiT``, ``ConcatConditionWrapper``,
``EDMPreconditioner``) go to :mod:`~corrdiff_xr.model.mdlus_dit`. Others raise :class:`MdlusError`.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import torch

from corrdiff_xr.config import EDMConfig, NetworkConfig, from_dict
from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.model.mdlus_dit import DIT_CLASSES, import_dit_mdlus
from corrdiff_xr.model.mdlus_files import MdlusCheckpoint, MdlusError, read_mdlus
from corrdiff_xr.model.mdlus_files import as_checkpoint as _checkpoint
from corrdiff_xr.model.mdlus_files import build_and_load as _build_and_load
from corrdiff_xr.model.safety import check_network, count, img_shape

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.model.core import CorrDiff

__all__ = [
    "MdlusCheckpoint",
    "MdlusError",
    "import_mdlus",
    "map_reference_state_dict",
    "read_mdlus",
]


REGRESSION_CLASSES = {"UNet", "CorrDiffRegressionUNet"}
CONDITION_ONLY_CLASSES = {
    "StormCastUNet",
    "SongUNet",
    "SongUNetPosEmbd",
    "SongUNetPosLtEmbd",
}
RESIDUAL_CLASSES = {"EDMPrecondSuperResolution", "EDMPrecondSR"}
NETWORK_CLASSES = {"SongUNet", "SongUNetPosEmbd", "SongUNetPosLtEmbd"}

# Constructor defaults of the reference networks (PhysicsNeMo 2.2.2), for args a file omits.
_SONGUNET_DEFAULTS: dict[str, Any] = {
    "model_channels": 128,
    "channel_mult": [1, 2, 2, 2],
    "channel_mult_emb": 4,
    "num_blocks": 4,
    "attn_resolutions": [16],
    "dropout": 0.10,
    "embedding_type": "positional",
    "channel_mult_noise": 1,
    "resample_filter": [1, 1],
    "bottleneck_attention": True,
    "N_grid_channels": 0,
    "gridtype": "none",
    "lead_time_channels": 0,
    "lead_time_steps": 9,
    "prob_channels": [],
}
_POSEMBD_DEFAULTS: dict[str, Any] = {
    **_SONGUNET_DEFAULTS,
    "channel_mult": [1, 2, 2, 2, 2],
    "attn_resolutions": [28],
    "dropout": 0.13,
    "gridtype": "sinusoidal",
    "N_grid_channels": 4,
}
_MUST_BE = {
    "label_dim": 0,
    "augment_dim": 0,
    "encoder_type": "standard",
    "decoder_type": "standard",
    "additive_pos_embed": False,
    "act": "silu",
}
_IGNORED = {
    "label_dropout", "checkpoint_level", "use_apex_gn", "profile_mode", "amp_mode",
    "lead_time_mode", "use_fp16",
}  # fmt: skip


# -- reading ------------------------------------------------------------------------------

# arguments of the reference's wrapper classes that are not SongUNet hyper-parameters
_WRAPPER_ARGS = frozenset({
    "img_resolution", "img_in_channels", "img_out_channels", "use_fp16", "model_type",
    "sigma_min", "sigma_max", "sigma_data", "img_channels",
})  # fmt: skip


# -- configs ------------------------------------------------------------------------------
def network_config(name: str, kwargs: dict[str, Any], *, source: str = "") -> NetworkConfig:
    """NetworkConfig for reference network class ``name`` built with ``kwargs``."""
    if name not in NETWORK_CLASSES:
        raise MdlusError(
            f"{source}: network class {name!r} is not supported; expected one of {sorted(NETWORK_CLASSES)}"
        )
    args = {
        **(_SONGUNET_DEFAULTS if name == "SongUNet" else _POSEMBD_DEFAULTS),
        **kwargs,
    }
    for key, want in _MUST_BE.items():
        if key in args and args[key] != want and not (key == "act" and args[key] is None):
            raise MdlusError(
                f"{source}: {name} argument {key}={args[key]!r} is not supported (need {want!r})"
            )
    if args["embedding_type"] not in ("positional", "zero"):
        raise MdlusError(f"{source}: embedding_type={args['embedding_type']!r} is not supported")
    if name == "SongUNet":
        args["N_grid_channels"], args["gridtype"] = 0, "none"
    if args.get("gridtype") == "test":
        raise MdlusError(f"{source}: gridtype 'test' is not supported")
    if name != "SongUNetPosLtEmbd":
        args["lead_time_channels"] = 0
    known = {
        "model_channels", "channel_mult", "channel_mult_emb", "channel_mult_noise",
        "num_blocks", "attn_resolutions", "dropout", "resample_filter", "embedding_type",
        "gridtype", "N_grid_channels", "lead_time_channels", "lead_time_steps",
        "prob_channels", "bottleneck_attention",
    }  # fmt: skip
    unknown = sorted(
        set(args)
        - known
        - set(_MUST_BE)
        - _IGNORED
        - {"img_resolution", "in_channels", "out_channels"}
    )
    if unknown:
        raise MdlusError(f"{source}: {name} arguments {unknown} are not supported")
    data = {"arch": "songunet", **{k: args[k] for k in known}}  # checked by the table's entry
    data["lead_time_channels"] = data["lead_time_channels"] or 0
    try:
        cfg = from_dict(NetworkConfig, data, path=name)
    except CorrDiffError as err:
        raise MdlusError(f"{source}: {err}") from err
    check_network(cfg, f"{source}: {name}", error=MdlusError)
    return cfg


def _extra_channels(cfg: NetworkConfig) -> int:
    grid = cfg.N_grid_channels if cfg.gridtype != "none" else 0
    return grid + cfg.lead_time_channels


def _arg(ck: MdlusCheckpoint, key: str) -> Any:
    if key not in ck.args:
        raise MdlusError(f"{ck.source}: args.json of {ck.name} lacks {key!r}")
    return ck.args[key]


def _shape_and_channels(
    ck: MdlusCheckpoint, cfg: NetworkConfig, in_key: str, out_key: str
) -> tuple[tuple[int, int], int, int]:
    """(img_shape, data in-channels, out-channels) from checked args."""
    where = f"{ck.source}: args.json"
    shape = img_shape(_arg(ck, "img_resolution"), f"{where} img_resolution", error=MdlusError)
    out_ch = count(_arg(ck, out_key), f"{where} {out_key}", error=MdlusError)
    total = count(_arg(ck, in_key), f"{where} {in_key}", error=MdlusError)
    extra = _extra_channels(cfg)
    if total <= extra:
        raise MdlusError(
            f"{where} {in_key}={total} leaves no data channels after {extra} positional/lead-time ones"
        )
    return shape, total - extra, out_ch


# -- state dicts --------------------------------------------------------------------------
def map_reference_state_dict(
    sd: dict[str, torch.Tensor],
    *,
    img_height: int,
    levels: int,
    prefix: str = "",
    target_prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Rename a reference SongUNet* state dict (keys under ``prefix``) to ours.

    Level prefixes ``{res}x{res}_`` become ``L{level}_``; legacy block-level attention keys
    (``norm2``, ``qkv``, ``proj``) move under ``attn.``; ``pos_embd`` / ``lt_embd`` become
    ``grid.weight`` / ``lead_time.weight``. Derived buffers (``map_noise.freqs``,
    ``*.resample_filter``) are dropped: ours are computed from the config.
    """
    levels_by_res = {
        f"{img_height >> lvl}x{img_height >> lvl}_": f"L{lvl}_" for lvl in range(levels)
    }
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        k = key[len(prefix) :]
        if k == "map_noise.freqs" or k.endswith(".resample_filter"):
            continue
        parts = k.split(".")
        if parts[0] in ("enc", "dec") and len(parts) > 1:
            for ref, ours in levels_by_res.items():
                if parts[1].startswith(ref):
                    parts[1] = ours + parts[1][len(ref) :]
                    break
            if len(parts) > 3 and parts[2] in ("norm2", "qkv", "proj"):
                parts[2] = {
                    "norm2": "attn.norm",
                    "qkv": "attn.qkv",
                    "proj": "attn.proj",
                }[parts[2]]
        k = ".".join(parts)
        k = {"pos_embd": "grid.weight", "lt_embd": "lead_time.weight"}.get(k, k)
        out[target_prefix + k] = value
    return out


# -- import -------------------------------------------------------------------------------
def _regression_part(
    ck: MdlusCheckpoint,
) -> tuple[NetworkConfig, int, int, tuple[int, int], dict, bool]:
    """(config, data in-channels, out-channels, img_shape, mapped weights, condition_only)."""
    a = ck.args
    if ck.name in REGRESSION_CLASSES or ck.name == "StormCastUNet":
        model_type = a.get(
            "model_type",
            "SongUNet" if ck.name == "StormCastUNet" else "SongUNetPosEmbd",
        )
        extra_kw = {k: v for k, v in a.items() if k not in _WRAPPER_ARGS}
        cfg = network_config(model_type, extra_kw, source=ck.source)
        shape, in_ch, out_ch = _shape_and_channels(ck, cfg, "img_in_channels", "img_out_channels")
        prefix, condition_only = "model.", ck.name == "StormCastUNet"
    elif ck.name in NETWORK_CLASSES:
        cfg = network_config(ck.name, a, source=ck.source)
        shape, in_ch, out_ch = _shape_and_channels(ck, cfg, "in_channels", "out_channels")
        prefix, condition_only = "", True
    else:
        raise MdlusError(
            f"{ck.source}: class {ck.name!r} is not a supported regression network; expected one of "
            f"{sorted(REGRESSION_CLASSES | CONDITION_ONLY_CLASSES)}"
        )
    sd = map_reference_state_dict(
        ck.state_dict,
        img_height=shape[0],
        levels=len(cfg.channel_mult),
        prefix=prefix,
        target_prefix="regression.net.",
    )
    return cfg, in_ch, out_ch, shape, sd, condition_only


def _residual_part(
    ck: MdlusCheckpoint,
) -> tuple[NetworkConfig, EDMConfig, int, int, tuple[int, int], dict]:
    a = ck.args
    if ck.name not in RESIDUAL_CLASSES:
        raise MdlusError(
            f"{ck.source}: class {ck.name!r} is not a supported residual denoiser; expected one of "
            f"{sorted(RESIDUAL_CLASSES)}"
        )
    extra_kw = {k: v for k, v in a.items() if k not in _WRAPPER_ARGS | {"scale_cond_input"}}
    cfg = network_config(a.get("model_type", "SongUNetPosEmbd"), extra_kw, source=ck.source)
    scale = bool(a.get("scale_cond_input", True)) if ck.name == "EDMPrecondSR" else False
    try:
        edm = from_dict(
            EDMConfig,
            {"sigma_data": a.get("sigma_data", 0.5), "scale_condition": scale},
            path=f"{ck.name} args",
        )
    except CorrDiffError as err:
        raise MdlusError(f"{ck.source}: {err}") from err
    if not math.isfinite(edm.sigma_data):
        raise MdlusError(f"{ck.source}: sigma_data={edm.sigma_data} must be finite")
    shape, cond_ch, out_ch = _shape_and_channels(ck, cfg, "img_in_channels", "img_out_channels")
    sd = map_reference_state_dict(
        ck.state_dict,
        img_height=shape[0],
        levels=len(cfg.channel_mult),
        prefix="model.",
        target_prefix="residual.net.",
    )
    return cfg, edm, cond_ch, out_ch, shape, sd


def import_mdlus(
    regression: str | os.PathLike | MdlusCheckpoint | None,
    residual: str | os.PathLike | MdlusCheckpoint | None = None,
    *,
    codec: Codec | None = None,
    hr_mean_conditioning: bool | None = None,
    in_channels: int | None = None,
    map_location: str | torch.device = "cpu",
) -> CorrDiff:
    """Build a :class:`~corrdiff_xr.model.CorrDiff` from PhysicsNeMo ``.mdlus`` checkpoints.

    Parameters
    ----------
    regression : path or MdlusCheckpoint, optional
        Regression network checkpoint (``UNet``, ``CorrDiffRegressionUNet``,
        ``StormCastUNet`` or a bare ``SongUNet*``; or a PhysicsNeMo ``DiT``), or its contents
        (:func:`read_mdlus`).
    residual : path or MdlusCheckpoint, optional
        Residual denoiser checkpoint (``EDMPrecondSuperResolution`` / ``EDMPrecondSR``; or
        ``EDMPreconditioner(ConcatConditionWrapper(DiT))``, see
        :func:`~corrdiff_xr.model.mdlus_dit.import_dit_mdlus` for the DiT layouts).
    codec : Codec, optional
        Variables and statistics the networks were trained with; its channel counts must match.
    hr_mean_conditioning : bool, optional
        Whether the residual sees the regression mean; inferred from the channel counts when
        both checkpoints are given.
    in_channels : int, optional
        Input channels when only a residual checkpoint is given.
    map_location : str or torch.device
        Device of the returned model.

    Returns
    -------
    CorrDiff
        With the reference's weights (in ``eval()`` mode).
    """
    if regression is None and residual is None:
        raise MdlusError("import_mdlus needs a regression and/or a residual checkpoint")
    regression, residual = (None if p is None else _checkpoint(p) for p in (regression, residual))
    dit = any(ck is not None and ck.name in DIT_CLASSES for ck in (regression, residual))
    return (import_dit_mdlus if dit else _import_unets)(
        regression,
        residual,
        codec=codec,
        in_channels=in_channels,
        hr_mean_conditioning=hr_mean_conditioning,
        map_location=map_location,
    )


def _import_unets(
    regression: MdlusCheckpoint | None,
    residual: MdlusCheckpoint | None,
    *,
    codec: Codec | None,
    hr_mean_conditioning: bool | None,
    in_channels: int | None,
    map_location: str | torch.device,
) -> CorrDiff:
    """:func:`import_mdlus` for the CorrDiff UNet classes."""
    from corrdiff_xr.model.core import DEFAULT_REGRESSION, CorrDiff

    weights: dict[str, torch.Tensor] = {}
    reg_cfg, res_cfg, edm = DEFAULT_REGRESSION, None, EDMConfig()
    img_shape = out_ch = None
    pad_latent = False
    if regression is not None:
        reg_cfg, in_ch, out_ch, img_shape, sd, pad_latent = _regression_part(
            _checkpoint(regression)
        )
        weights.update(sd)
        in_channels = in_ch if in_channels is None else in_channels
        if in_channels != in_ch:
            raise MdlusError(
                f"in_channels={in_channels} disagrees with the regression checkpoint ({in_ch})"
            )
    if residual is not None:
        res_cfg, edm, cond_ch, r_out, r_shape, sd = _residual_part(_checkpoint(residual))
        weights.update(sd)
        if out_ch is not None and (r_out, r_shape) != (out_ch, img_shape):
            raise MdlusError(
                f"residual ({r_out} outputs on {r_shape}) and regression ({out_ch} on {img_shape}) do not match"
            )
        out_ch, img_shape = r_out, r_shape
        if hr_mean_conditioning is None:
            if in_channels is None:
                raise MdlusError(
                    "give hr_mean_conditioning or in_channels when importing only a residual"
                )
            if cond_ch == in_channels + out_ch:
                hr_mean_conditioning = True
            elif cond_ch == in_channels:
                hr_mean_conditioning = False
            else:
                raise MdlusError(
                    f"residual condition has {cond_ch} channels; expected {in_channels} inputs "
                    f"(+ {out_ch} for the regression mean)"
                )
        if in_channels is None:
            in_channels = cond_ch - (out_ch if hr_mean_conditioning else 0)
        if cond_ch != in_channels + (out_ch if hr_mean_conditioning else 0):
            raise MdlusError(
                f"residual condition has {cond_ch} channels, which does not fit {in_channels} inputs"
            )
        edm = EDMConfig(
            sigma_data=edm.sigma_data,
            scale_condition=edm.scale_condition,
            hr_mean_conditioning=hr_mean_conditioning,
        )
    if codec is not None and (len(codec.in_channels), len(codec.out_channels)) != (
        in_channels,
        out_ch,
    ):
        raise MdlusError(
            f"codec has {len(codec.in_channels)} inputs / {len(codec.out_channels)} outputs, "
            f"checkpoints {in_channels} / {out_ch}"
        )
    assert img_shape is not None and out_ch is not None  # one checkpoint at least (checked)
    model = _build_and_load(
        lambda: CorrDiff(
            codec,
            img_shape=img_shape,
            regression_network=reg_cfg,
            residual_network=res_cfg,
            edm=edm,
            in_channels=None if codec is not None else in_channels,
            out_channels=None if codec is not None else out_ch,
        ),
        weights,
        pad_latent=out_ch if pad_latent else 0,
        keep_regression=regression is None,
        source=" + ".join(p.source for p in (regression, residual) if p is not None),
    )
    return model.eval().to(map_location)
