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
becomes ``EDMConfig.scale_condition``). Anything else raises :class:`MdlusError`.
"""

from __future__ import annotations

import contextlib
import math
import os
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

from corrdiff_xr.config import EDMConfig, NetworkConfig, from_dict
from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.model import archives
from corrdiff_xr.model.archives import load_torch_weights, member_limit, open_members, read_json
from corrdiff_xr.model.safety import (
    CheckpointError,
    build_checked,
    check_network,
    count,
    img_shape,
    stored_bytes,
    tensor_specs,
)

__all__ = [
    "MdlusCheckpoint",
    "MdlusError",
    "import_mdlus",
    "map_reference_state_dict",
    "read_mdlus",
]


class MdlusError(CheckpointError):
    """A ``.mdlus`` checkpoint cannot be imported (unknown class, bad weights, unsafe pickle)."""


@dataclass(frozen=True)
class MdlusCheckpoint:
    """Contents of a ``.mdlus`` file: class name, constructor args, metadata, tensors."""

    name: str
    args: dict[str, Any]
    metadata: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    source: str


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

_WANTED = ("args.json", "metadata.json", "model.pt")


def read_mdlus(path: str | os.PathLike, *, file: BinaryIO | None = None) -> MdlusCheckpoint:
    """Read a ``.mdlus`` archive, or ``file`` (an open seekable one, e.g. a package zip's
    member read in place; ``path`` then names it), without extracting it.

    Members are read within the bounds of :mod:`corrdiff_xr.model.archives`, tensors with
    ``weights_only=True``; every refusal is an :class:`MdlusError` naming the file.
    """
    path = os.fspath(path)
    if file is None and not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with (
        open_members(path, set(_WANTED), error=MdlusError)
        if file is None
        else contextlib.nullcontext(_file_members(file, path))
    ) as files:
        for required in ("args.json", "model.pt"):
            if required not in files:
                raise MdlusError(f"{path} has no {required}; found {sorted(files)}")
        args = read_json(files["args.json"], f"{path}: args.json", error=MdlusError)
        meta = (
            read_json(files["metadata.json"], f"{path}: metadata.json", error=MdlusError)
            if "metadata.json" in files
            else {}
        )
        got = args if isinstance(args, dict) else {}
        name, kwargs = got.get("__name__"), got.get("__args__")
        if not isinstance(name, str) or not isinstance(kwargs, dict):
            raise MdlusError(
                f"{path}: args.json needs a class name in __name__ and an __args__ object "
                f"(it holds {sorted(got) if got else type(args).__name__})"
            )
        sd = load_torch_weights(files["model.pt"], source=path, error=MdlusError)
    return MdlusCheckpoint(name, dict(kwargs), meta if isinstance(meta, dict) else {}, sd, path)


def _file_members(raw: BinaryIO, source: str) -> dict[str, BinaryIO]:
    """What :func:`~corrdiff_xr.model.archives.open_members` yields, for an open file."""
    limit = member_limit(raw.seek(0, 2))
    raw.seek(0)
    kw = {"source": source, "error": MdlusError}
    try:
        tar = archives._open_tar(raw, limit, **kw)
        if tar is not None:
            found = archives._tar_members(tar, set(_WANTED), limit, **kw)
        elif zipfile.is_zipfile(raw):
            found = archives._zip_members(raw, set(_WANTED), limit, **kw)
        else:
            raise MdlusError(f"{source} is neither a zip nor a tar archive (or is truncated)")
    except archives._BROKEN as err:
        raise MdlusError(f"{source}: the archive is truncated or corrupt: {err}") from err
    return found


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
    codec: Any = None,
    hr_mean_conditioning: bool | None = None,
    in_channels: int | None = None,
    map_location: str | torch.device = "cpu",
):
    """Build a :class:`~corrdiff_xr.model.CorrDiff` from PhysicsNeMo ``.mdlus`` checkpoints.

    Parameters
    ----------
    regression : path or MdlusCheckpoint, optional
        Regression network checkpoint (``UNet``, ``CorrDiffRegressionUNet``,
        ``StormCastUNet`` or a bare ``SongUNet*``), or its contents (:func:`read_mdlus`).
    residual : path or MdlusCheckpoint, optional
        Residual denoiser checkpoint (``EDMPrecondSuperResolution`` / ``EDMPrecondSR``).
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
    from corrdiff_xr.model.core import DEFAULT_REGRESSION, CorrDiff

    if regression is None and residual is None:
        raise MdlusError("import_mdlus needs a regression and/or a residual checkpoint")
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
        source=" + ".join(
            getattr(p, "source", None) or os.fspath(p) for p in (regression, residual) if p
        ),
    )
    return model.eval().to(map_location)


def _checkpoint(source: Any) -> MdlusCheckpoint:
    return source if isinstance(source, MdlusCheckpoint) else read_mdlus(source)


def _build_and_load(make, weights: dict, *, pad_latent: int, keep_regression: bool, source: str):
    """The model ``make()`` builds, once its meta-device twin fits ``weights``, loaded.

    ``pad_latent`` zero input channels are prepended to the first convolution (condition-only
    reference networks); ``keep_regression`` keeps the fresh regression when none was given.
    """
    from corrdiff_xr.model.core import load_weights

    found = tensor_specs(weights)
    latent = "regression.net.enc.L0_conv.weight"
    if pad_latent and latent in found and len(found[latent][0]) == 4:
        # checked as padded, padded only once it passed (its shape comes from the file)
        (o, i, *k), dtype = found[latent]
        found[latent] = ((o, i + pad_latent, *k), dtype)
    model = build_checked(
        make,
        found,
        available_bytes=stored_bytes(weights),
        source=source,
        optional_prefix="regression." if keep_regression else None,
        error=MdlusError,
    )
    if keep_regression:
        own = model.state_dict()
        weights.update({k: v for k, v in own.items() if k.startswith("regression.")})
    if pad_latent and latent in weights:
        w = weights[latent]
        weights[latent] = torch.cat([w.new_zeros(w.shape[0], pad_latent, *w.shape[2:]), w], dim=1)
    load_weights(model, weights, source=source)
    return model
