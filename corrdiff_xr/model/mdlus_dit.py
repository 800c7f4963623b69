"""Import PhysicsNeMo DiT ``.mdlus`` checkpoints (``DiT`` and its diffusion wrappers) safely.

PhysicsNeMo 2.2.2's ``Module.save`` writes a wrapped network as one archive: ``args.json``
holds the outer class with ``"model": "__physicsnemo.Module__.model"`` and, at its top level,
that nested module's ``{__name__, __args__}`` (and so on inwards); ``model.pt`` holds one state
dict whose keys carry the nesting (``model.model.blocks.0...``). Three layouts are read here,
without unpickling code (:func:`~corrdiff_xr.model.mdlus_files.read_mdlus` reads the archive):

``DiT``
    as a regression (mean) network it sees the condition alone, as Earth2Studio's CorrDiff
    COSMO-ERA5 mean model (``t = 0``): its patch embedding gets zero weights for our zero
    latent channels, which leaves its outputs unchanged. As a diffusion network (the latent
    then the condition, e.g. ERA5-HRRR's rectified flow) it needs ``edm`` from the caller,
    since the file holds no preconditioner.
``ConcatConditionWrapper(DiT)``
    the same network, its image condition concatenated after ``x`` (latent first, as ours).
``EDMPreconditioner(ConcatConditionWrapper(DiT))``
    an EDM denoiser (``c_noise = ln(sigma) / 4``, scalar ``sigma_data``), which is our
    :class:`~corrdiff_xr.edm.EDMPrecond` with ``scale_condition=False``.

The DiT's arguments and weights (global or ``natten2d[_rope]`` attention, with or without
QK-norm, any rotary base, plain or conv-head ``proj_reshape_2d_conv`` detokenizer) map through
:mod:`corrdiff_xr.model.dit_import`; the network is checked against the DiT's bounds (its
backbone's ``check_config``) and built on the meta device against the weights present before
the real one is allocated. Anything else (another class at any level, an unknown argument, a
per-channel ``sigma_data``, a weight outside the layout) raises one
:class:`~corrdiff_xr.model.mdlus_files.MdlusError` line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import TYPE_CHECKING, Any, Literal

import torch

from corrdiff_xr.config import ConfigError, EDMConfig, NetworkConfig
from corrdiff_xr.model.dit_import import dit_config_from_physicsnemo, map_physicsnemo_dit_state_dict
from corrdiff_xr.model.mdlus_files import MdlusCheckpoint, MdlusError, as_checkpoint, build_and_load
from corrdiff_xr.model.safety import check_network, count, img_shape
from corrdiff_xr.nn.dit import dit_check_shape

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.model.core import CorrDiff

__all__ = ["DIT_CLASSES", "LAYOUTS", "DiTPart", "import_dit_mdlus", "read_dit_part"]

#: outer classes this importer reads, each with the constructor arguments it accepts
_WRAPPERS = {
    "ConcatConditionWrapper": {"model", "image_cond_key", "vector_cond_key"},
    "EDMPreconditioner": {"model", "sigma_data"},
}
DIT_CLASSES = frozenset({"DiT", *_WRAPPERS})
#: the nestings read, outermost first
LAYOUTS = (
    ("DiT",),
    ("ConcatConditionWrapper", "DiT"),
    ("EDMPreconditioner", "ConcatConditionWrapper", "DiT"),
)
_NESTED = "__physicsnemo.Module__."


@dataclasses.dataclass(frozen=True)
class DiTPart:
    """One DiT checkpoint, read and checked.

    Attributes
    ----------
    layout : tuple of str
        Class names, outermost first (one of :data:`LAYOUTS`).
    config : NetworkConfig
        Our DiT's config (``arch="dit"``).
    in_channels, out_channels : int
        The DiT's input channels (latent and image condition together) and outputs.
    img_shape : tuple of int
        The grid (H, W) it was built for.
    sigma_data : float or None
        ``EDMPreconditioner``'s (None without one).
    weights : dict
        Its weights under our names, below the prefix asked for.
    """

    layout: tuple[str, ...]
    config: NetworkConfig
    in_channels: int
    out_channels: int
    img_shape: tuple[int, int]
    sigma_data: float | None
    weights: dict[str, torch.Tensor]


def _unwrap(ck: MdlusCheckpoint) -> tuple[tuple[str, ...], dict[str, Any], str, str, Any]:
    """(layout, DiT arguments, where args.json holds them, the DiT's state-dict prefix,
    sigma_data argument or None)."""
    name: object = ck.name  # a nested module's name is checked by the loop
    args, where, prefix, sigma = ck.args, "args.json", "", None
    layout = [name]
    while name != "DiT":
        if not isinstance(name, str) or name not in _WRAPPERS or len(layout) > 2:
            raise MdlusError(
                f"{ck.source}: {where} holds class {name!r}, not one of the DiT layouts "
                f"{[' > '.join(lay) for lay in LAYOUTS]}"
            )
        unknown = sorted(set(args) - _WRAPPERS[name])
        if unknown:
            raise MdlusError(f"{ck.source}: {where} {name} arguments {unknown} are not supported")
        ref = args.get("model")
        nested = ck.modules.get(ref) if isinstance(ref, str) and ref.startswith(_NESTED) else None
        if not isinstance(nested, dict) or not isinstance(nested.get("__args__"), dict):
            raise MdlusError(
                f"{ck.source}: {where} {name} argument 'model'={ref!r:.80} names no nested "
                "module {__name__, __args__} in args.json"
            )
        if name == "EDMPreconditioner":
            sigma = args.get("sigma_data", 0.5)
        name, args, where = nested.get("__name__"), nested["__args__"], f"args.json {ref!r:.80}"
        prefix += "model."
        layout.append(name)
    names = tuple(str(n) for n in layout)  # each checked to be a str in the loop
    if names not in LAYOUTS:
        raise MdlusError(f"{ck.source}: layout {' > '.join(names)} is not one of the DiT layouts")
    return names, args, where, prefix, sigma


def _sigma_data(ck: MdlusCheckpoint, value: Any) -> float:
    """The scalar ``sigma_data``: the stored buffer (what PhysicsNeMo loads), or the argument
    when it is the buffer's value in the buffer's precision (its digits kept)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MdlusError(
            f"{ck.source}: args.json EDMPreconditioner sigma_data={value!r:.80} must be one "
            "number (per-channel sigma_data is not supported)"
        )
    stored = ck.state_dict.get("sigma_data")
    if isinstance(stored, torch.Tensor):
        if stored.numel() != 1 or not stored.is_floating_point():
            raise MdlusError(
                f"{ck.source}: model.pt sigma_data holds {stored.numel()} {stored.dtype} values; "
                "one floating-point scalar is needed (per-channel sigma_data is not supported)"
            )
        if torch.tensor(float(value), dtype=stored.dtype) != stored.reshape(()):
            value = stored.item()
    if not (math.isfinite(value) and value > 0):
        raise MdlusError(f"{ck.source}: sigma_data={value} must be finite and positive")
    return float(value)


def read_dit_part(ck: MdlusCheckpoint | str | os.PathLike, *, target_prefix: str = "") -> DiTPart:
    """Read and check one DiT checkpoint of one of :data:`LAYOUTS` (a path, or what
    :func:`~corrdiff_xr.model.mdlus_files.read_mdlus` returns); weights are renamed to ours
    under ``target_prefix``."""
    ck = as_checkpoint(ck)
    layout, args, key, prefix, sigma = _unwrap(ck)
    where = f"{ck.source}: {'args.json __args__' if key == 'args.json' else key} (DiT)"
    try:
        cfg, sizes = dit_config_from_physicsnemo(args)
    except (TypeError, ValueError) as err:  # DiTImportError is a ValueError; so are bad numbers
        raise MdlusError(f"{where}: {err}") from err
    check_network(cfg, where, error=MdlusError)
    shape = img_shape(sizes["img_shape"], f"{where} input_size", error=MdlusError)
    in_ch = count(sizes["in_channels"], f"{where} in_channels", error=MdlusError)
    out_ch = count(sizes["out_channels"], f"{where} out_channels", error=MdlusError)
    try:
        dit_check_shape(cfg, shape, f"{where} input_size")
    except ConfigError as err:
        raise MdlusError(str(err)) from err
    stray = sorted(k for k in ck.state_dict if not k.startswith(prefix) and k != "sigma_data")
    if stray or ("sigma_data" in ck.state_dict and sigma is None):
        raise MdlusError(
            f"{ck.source}: model.pt weight {(stray or ['sigma_data'])[0]!r} is not part of "
            f"the {' > '.join(layout)} layout"
        )
    try:
        sd = map_physicsnemo_dit_state_dict(
            ck.state_dict, prefix=prefix, target_prefix=target_prefix
        )
    except ValueError as err:
        raise MdlusError(f"{ck.source}: {err}") from err
    sigma_data = None if sigma is None else _sigma_data(ck, sigma)
    return DiTPart(layout, cfg, in_ch, out_ch, shape, sigma_data, sd)


def _edm_config(
    edm: EDMConfig | None,
    part: DiTPart | None,
    *,
    objective: Literal["residual", "direct"],
    mean: bool,
    source: str,
) -> EDMConfig:
    base = edm if edm is not None else EDMConfig()
    if part is not None and part.sigma_data is None and edm is None:
        raise MdlusError(
            f"{source}: a {' > '.join(part.layout)} diffusion network has no preconditioner "
            "in the file; give edm (edm.flow for rectified flow, or EDM with its sigma_data)"
        )
    sigma = part.sigma_data if part is not None and part.sigma_data is not None else None
    try:
        return dataclasses.replace(
            base,
            sigma_data=base.sigma_data if sigma is None else sigma,
            scale_condition=False,
            hr_mean_conditioning=mean,
            objective=objective,
        )
    except (ConfigError, ValueError) as err:
        raise MdlusError(f"{source}: {err}") from err


def import_dit_mdlus(
    regression: str | os.PathLike | MdlusCheckpoint | None,
    diffusion: str | os.PathLike | MdlusCheckpoint | None = None,
    *,
    codec: Codec | None = None,
    in_channels: int | None = None,
    hr_mean_conditioning: bool | None = None,
    edm: EDMConfig | None = None,
    map_location: str | torch.device = "cpu",
) -> CorrDiff:
    """Build a :class:`~corrdiff_xr.model.CorrDiff` from PhysicsNeMo DiT ``.mdlus`` files.

    Parameters
    ----------
    regression : path or MdlusCheckpoint, optional
        A mean network: ``DiT`` or ``ConcatConditionWrapper(DiT)`` seeing the condition alone.
    diffusion : path or MdlusCheckpoint, optional
        ``EDMPreconditioner(ConcatConditionWrapper(DiT))`` (EDM), or, with ``edm`` given
        (rectified flow with ``edm.flow``, or EDM), a bare ``DiT`` /
        ``ConcatConditionWrapper(DiT)``; its input is the latent followed by the condition.
    codec : Codec, optional
        Variables and statistics; its channel counts must match the checkpoints'.
    in_channels : int, optional
        Input (condition) channels when only a diffusion checkpoint is given.
    hr_mean_conditioning : bool, optional
        For a residual diffusion: whether it sees the regression mean (inferred from the
        channel counts when left out).
    edm : EDMConfig, optional
        Objective, flow and noise settings; ``sigma_data`` comes from the file's
        ``EDMPreconditioner``. Left out, the objective is ``residual`` with a regression
        checkpoint and ``direct`` (the target diffused directly, as CorrDiff COSMO-ERA5's) with
        a diffusion checkpoint alone.
    map_location : str or torch.device
        Device of the returned model.

    Returns
    -------
    CorrDiff
        With the checkpoints' weights, in ``eval()`` mode.
    """
    from corrdiff_xr.model.core import DEFAULT_REGRESSION, CorrDiff

    if regression is None and diffusion is None:
        raise MdlusError("import_dit_mdlus needs a regression and/or a diffusion checkpoint")
    regression, diffusion = (
        None if p is None else as_checkpoint(p) for p in (regression, diffusion)
    )
    reg = None if regression is None else read_dit_part(regression, target_prefix="regression.net.")
    dif = None if diffusion is None else read_dit_part(diffusion, target_prefix="residual.net.")
    source = " + ".join(ck.source for ck in (regression, diffusion) if ck is not None)
    if reg is not None and reg.sigma_data is not None:
        raise MdlusError(f"{source}: an EDMPreconditioner checkpoint is not a regression network")
    objective: Literal["residual", "direct"] = (
        edm.objective if edm is not None else ("residual" if reg else "direct")
    )
    if objective == "direct" and reg is not None:
        raise MdlusError(f"{source}: a direct model (edm.objective='direct') has no regression")
    if reg is not None:
        in_channels = reg.in_channels if in_channels is None else in_channels
        if in_channels != reg.in_channels:
            raise MdlusError(
                f"in_channels={in_channels} disagrees with the regression checkpoint "
                f"({reg.in_channels})"
            )
    first = reg if reg is not None else dif
    assert first is not None  # one checkpoint at least (checked above)
    out_ch, shape = first.out_channels, first.img_shape
    mean = False
    if dif is not None:
        if reg is not None and (dif.out_channels, dif.img_shape) != (out_ch, shape):
            raise MdlusError(
                f"{source}: diffusion ({dif.out_channels} outputs on {dif.img_shape}) and "
                f"regression ({out_ch} on {shape}) do not match"
            )
        cond = dif.in_channels - dif.out_channels
        mean = objective == "residual" and _conditions_on_mean(
            cond, out_ch, in_channels, hr_mean_conditioning, source
        )
        in_channels = cond - (out_ch if mean else 0)
        if in_channels < 1:
            raise MdlusError(f"{source}: the diffusion DiT leaves no condition channels")
    edm_cfg = _edm_config(edm, dif, objective=objective, mean=mean, source=source)
    if codec is not None and (len(codec.in_channels), len(codec.out_channels)) != (
        in_channels,
        out_ch,
    ):
        raise MdlusError(
            f"codec has {len(codec.in_channels)} inputs / {len(codec.out_channels)} outputs, "
            f"checkpoints {in_channels} / {out_ch}"
        )
    weights = {**(reg.weights if reg else {}), **(dif.weights if dif else {})}
    direct = objective == "direct"
    model = build_and_load(
        lambda: CorrDiff(
            codec,
            img_shape=shape,
            regression_network=reg.config if reg else None if direct else DEFAULT_REGRESSION,
            residual_network=dif.config if dif else None,
            edm=edm_cfg,
            in_channels=None if codec is not None else in_channels,
            out_channels=None if codec is not None else out_ch,
        ),
        weights,
        pad_latent=out_ch if reg is not None else 0,
        keep_regression=reg is None and not direct,
        source=source,
    )
    return model.eval().to(map_location)


def _conditions_on_mean(
    cond: int, out_ch: int, in_channels: int | None, given: bool | None, source: str
) -> bool:
    """Whether a residual diffusion with ``cond`` condition channels sees the regression mean."""
    if given is None:
        if in_channels is None:
            raise MdlusError(
                f"{source}: give hr_mean_conditioning or in_channels when importing only a diffusion"
            )
        if cond not in (in_channels, in_channels + out_ch):
            raise MdlusError(
                f"{source}: the diffusion condition has {cond} channels; expected {in_channels} "
                f"inputs (+ {out_ch} for the regression mean)"
            )
        return cond == in_channels + out_ch
    if in_channels is not None and cond != in_channels + (out_ch if given else 0):
        raise MdlusError(
            f"{source}: the diffusion condition has {cond} channels, which does not fit "
            f"{in_channels} inputs with hr_mean_conditioning={given}"
        )
    return bool(given)
