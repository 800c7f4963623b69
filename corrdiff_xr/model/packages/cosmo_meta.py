"""``metadata.json`` of a CorrDiff COSMO-ERA5 package, checked and mapped onto our settings.

Earth2Studio 0.19's ``CorrDiffCosmoEra5.load_model`` reads one ``<resolution>/metadata.json``
per resolution (``rea6``, ``rea2``) and one of two independent networks per mode (``mean``, a
deterministic DiT; ``diffusion``, a DiT sampled directly, not as a residual of the mean).
:func:`cosmo_settings` reads the keys it reads, with its defaults, and refuses what it would
misread, one line each naming the key:

* ``era5_variables``, ``output_variables``, ``pre_invariant_variables`` (required) and
  ``post_invariant_variables``: the conditioning order is ``ERA5 | pre | cos_zenith | post``;
* ``modes.<mode>``: ``stats`` (the ``stats.json`` section of the outputs, default
  ``"output"``) and ``channel_transforms`` (whether the mode's outputs are transformed,
  default true);
* ``channel_transforms.<output>``: ``{"transform", "eps" (1e-5), "scale" (1)}``, mapped onto
  :class:`~corrdiff_xr.transforms.Transform` exactly (:func:`transform_of`), with the clamps
  Earth2Studio applies after inverting them (``log_eps`` >= 0, ``logit_eps`` in ``[0, scale]``);
* ``constraints``: ``bounds.<output>.{min, max, mode}`` (``clamp``; ``sigmoid`` is refused as
  Earth2Studio refuses it) become codec bounds; ``sza_gate`` (the dawn/dusk solar gate,
  ``half_width`` 0.05, per channel ``threshold`` 0.01 and ``half_width``) becomes codec gates
  (:class:`~corrdiff_xr.transforms.Gate` on the feature ``cos_zenith_max_1h``, the larger
  cosine of the solar zenith angle of the valid time and the hour before), which must cover
  every shortwave output once any is given;
* ``sampler``: ``num_steps`` (18, >= 2), ``sigma_min`` (0.002), ``sigma_max`` (800), ``rho``
  (7), ``solver`` (``heun`` | ``euler``) -> :class:`~corrdiff_xr.config.SamplerConfig`;
* ``checkpoints.<resolution>_<mode>``: the network file; ``regression`` / ``diffusion``
  ``patch_size`` and ``attn_kernel_size`` (the smallest domain is their product per side);
* ``invariants``: ``file``, ``native_offset``, ``native_shape``, ``norm_stats_file`` (the
  extended physical invariants and their window on the native grid), or absent (then
  ``invariants.nc`` holds them normalised already); ``number_of_samples`` (1).

Other top-level keys (``wind_levels``, descriptions) are kept as provenance and not used:
hub-height winds are an opt-in of Earth2Studio's wrapper that this reader does not offer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.model.packages._files import PackageError
from corrdiff_xr.transforms import Gate, Transform

#: a clamp ``(low, high)``, None for no limit on that side
Bounds = tuple[float | None, float | None]

__all__ = [
    "COS_ZENITH",
    "MODES",
    "POSITION_CHANNELS",
    "RESOLUTIONS",
    "SHORTWAVE",
    "COS_ZENITH_FEATURE",
    "CosmoSettings",
    "cosmo_settings",
    "transform_of",
]

RESOLUTIONS = ("rea6", "rea2")
MODES = ("mean", "diffusion")
#: computed from the output grid, never stored (sin/cos of lat, lon in degrees)
POSITION_CHANNELS = ("sin_lat", "cos_lat", "sin_lon", "cos_lon")
COS_ZENITH = "cos_zenith"
#: our time feature for that channel and for the solar gate: max(cos z(t - 1 h), cos z(t))
COS_ZENITH_FEATURE = "cos_zenith_max_1h"
#: downwelling shortwave fluxes: a solar gate, once configured, must cover each of them
SHORTWAVE = ("ASWDIR_S", "ASWDIFD_S")
_TRANSFORMS = ("log_eps", "asinh", "logit_eps", "logit_eps_percent")
_SAMPLER = {"num_steps": 18, "sigma_min": 0.002, "sigma_max": 800.0, "rho": 7.0, "solver": "heun"}
_INVARIANTS = ("file", "native_offset", "native_shape", "norm_stats_file")


@dataclass(frozen=True)
class CosmoSettings:
    """What one ``(resolution, mode)`` of a package needs, from its ``metadata.json``."""

    resolution: str
    mode: str
    era5: tuple[str, ...]
    outputs: tuple[str, ...]
    pre: tuple[str, ...]
    post: tuple[str, ...]
    stats_key: str
    transforms: Mapping[str, Transform]
    bounds: Mapping[str, tuple[float | None, float | None]]
    gates: Mapping[str, Gate]
    sampler: SamplerConfig
    checkpoint: str
    patch_size: int
    attn_kernel_size: int
    invariants: Mapping[str, Any] | None
    members: int

    @property
    def background(self) -> tuple[str, ...]:
        """The network's conditioning channels, in its trained order."""
        return self.era5 + self.pre + (COS_ZENITH,) + self.post


def _names(meta: Mapping, key: str, where: str, *, required: bool = True) -> tuple[str, ...]:
    if key not in meta:
        if required:
            raise PackageError(f"{where} lacks the key {key!r} (a list of variable names)")
        return ()
    value = meta[key]
    ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    if not ok or len(set(value)) != len(value):
        raise PackageError(
            f"{where} key {key!r} must be a list of unique names, not {value!r:.200}"
        )
    return tuple(value)


def _mapping(
    value: Any, key: str, where: str, allowed: tuple[str, ...] | None = None
) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PackageError(f"{where} key {key!r} must be a JSON object, not {value!r:.200}")
    if allowed is not None and (unknown := sorted(set(value) - set(allowed))):
        raise PackageError(
            f"{where} key {key!r} has unknown key(s) {unknown}; known: {list(allowed)}"
        )
    return dict(value)


def _number(
    value: Any, key: str, where: str, *, low: float = -math.inf, above: bool = False
) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (above and value == low):
        need = (
            f"a finite number {'>' if above else '>='} {low:g}"
            if low > -math.inf
            else "a finite number"
        )
        raise PackageError(f"{where} key {key!r} must be {need}, not {value!r:.100}")
    return float(value)


def _integer(value: Any, key: str, where: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PackageError(f"{where} key {key!r} must be an integer >= {low}, not {value!r:.100}")
    return value


def transform_of(spec: Any, key: str, where: str) -> tuple[Transform | None, Bounds | None]:
    """Our transform and the clamp Earth2Studio applies after inverting it, for one
    ``channel_transforms`` entry (``None, None``: identity).

    Earth2Studio's forward maps, and ours that equal them (``u = x / scale``, then our kind):
    ``log_eps``: ``log(1 + x / eps)`` = ``log_eps`` with ``scale = eps``, ``eps = 1`` (its
    ``scale`` is ignored there too); ``asinh``: ``asinh(x / eps)`` = ``asinh`` with ``scale =
    eps``; ``logit_eps``: ``logit(eps + (1 - 2 eps) x / scale)`` = ``logit_eps`` with ``eps' =
    eps / (1 - 2 eps)`` (divide numerator and denominator by ``1 - 2 eps``), same ``scale``;
    ``logit_eps_percent``: the same with ``scale`` 100 where it is left at 1.
    """
    if isinstance(spec, str) and spec:
        raise PackageError(
            f"{where} {key} is the bare string {spec!r}; it must be an object with 'transform' "
            "and explicit 'eps'/'scale' (as Earth2Studio requires)"
        )
    spec = _mapping(spec, key, where, ("transform", "eps", "scale"))
    kind = str(spec.get("transform") or "").lower()
    if not kind:
        return None, None
    if kind not in _TRANSFORMS:
        raise PackageError(f"{where} {key}.transform {kind!r} is not one of {list(_TRANSFORMS)}")
    eps = _number(spec.get("eps", 1e-5), f"{key}.eps", where, low=0.0, above=True)
    scale = _number(spec.get("scale", 1.0), f"{key}.scale", where, low=0.0, above=True)
    if kind == "log_eps":
        return Transform("log_eps", eps=1.0, scale=eps), (0.0, None)
    if kind == "asinh":
        return Transform("asinh", scale=eps), None
    if eps >= 0.5:
        raise PackageError(f"{where} {key}.eps={eps:g} must be below 0.5 for {kind}")
    if kind == "logit_eps_percent" and scale == 1.0:
        scale = 100.0
    return Transform("logit_eps", eps=eps / (1.0 - 2.0 * eps), scale=scale), (0.0, scale)


def _tighter(a: Bounds | None, b: Bounds | None) -> Bounds | None:
    if a is None or b is None:
        return a or b
    lows, highs = (
        [v for v in (a[0], b[0]) if v is not None],
        [v for v in (a[1], b[1]) if v is not None],
    )
    return (max(lows) if lows else None, min(highs) if highs else None)


def _bounds(constraints: Mapping, outputs: tuple[str, ...], where: str) -> dict[str, Bounds]:
    out: dict[str, Bounds] = {}
    for name, spec in _mapping(constraints.get("bounds"), "constraints.bounds", where).items():
        if name not in outputs:  # ignored, as Earth2Studio ignores them
            continue
        key = f"constraints.bounds.{name}"
        spec = _mapping(spec, key, where, ("min", "max", "mode"))
        mode = str(spec.get("mode") or "clamp").lower()
        if mode != "clamp":
            raise PackageError(
                f"{where} {key}.mode={mode!r}: only 'clamp' bounds apply after sampling "
                "(Earth2Studio refuses 'sigmoid' too)"
            )
        lo, hi = (
            None if spec.get(k) is None else _number(spec[k], f"{key}.{k}", where)
            for k in ("min", "max")
        )
        if lo is not None or hi is not None:
            out[name] = (lo, hi)
    return out


def _gates(constraints: Mapping, outputs: tuple[str, ...], where: str) -> dict[str, Gate]:
    spec = _mapping(
        constraints.get("sza_gate"), "constraints.sza_gate", where, ("half_width", "channels")
    )
    width = spec.get("half_width")
    width = 0.05 if width is None else _number(width, "constraints.sza_gate.half_width", where)
    gates = {}
    for name, c in _mapping(spec.get("channels"), "constraints.sza_gate.channels", where).items():
        if name not in outputs:
            continue
        key = f"constraints.sza_gate.channels.{name}"
        if isinstance(c, Mapping):
            c = _mapping(c, key, where, ("threshold", "half_width"))
            threshold = _number(c.get("threshold", 0.01), f"{key}.threshold", where)
            hw = (
                width
                if c.get("half_width") is None
                else _number(c["half_width"], f"{key}.half_width", where)
            )
        else:
            threshold, hw = _number(c, key, where), width
        if hw <= 0:
            raise PackageError(f"{where} {key}: the gate's half_width must be > 0, is {hw:g}")
        gates[name] = Gate(COS_ZENITH_FEATURE, threshold, hw)
    ungated = [n for n in outputs if n in SHORTWAVE and n not in gates]
    if gates and ungated:
        raise PackageError(
            f"{where} constraints.sza_gate must cover every shortwave output; it misses {ungated}"
        )
    return gates


def _sampler(meta: Mapping, where: str) -> SamplerConfig:
    spec = {**_SAMPLER, **_mapping(meta.get("sampler"), "sampler", where, tuple(_SAMPLER))}
    if spec["solver"] not in ("heun", "euler"):
        raise PackageError(
            f"{where} sampler.solver must be 'heun' or 'euler', not {spec['solver']!r:.50}"
        )
    lo = _number(spec["sigma_min"], "sampler.sigma_min", where, low=0.0, above=True)
    hi = _number(spec["sigma_max"], "sampler.sigma_max", where, low=lo, above=True)
    return SamplerConfig(
        solver=spec["solver"],
        num_steps=_integer(spec["num_steps"], "sampler.num_steps", where, low=2),
        sigma_min=lo,
        sigma_max=hi,
        rho=_number(spec["rho"], "sampler.rho", where, low=0.0, above=True),
    )


def _invariants(meta: Mapping, where: str) -> dict[str, Any] | None:
    spec = _mapping(meta.get("invariants"), "invariants", where, _INVARIANTS)
    if not spec.get("file"):
        return None
    missing = [k for k in _INVARIANTS if k not in spec]
    if missing:
        raise PackageError(f"{where} key 'invariants' lacks {missing}")
    for k in ("file", "norm_stats_file"):
        if not isinstance(spec[k], str):
            raise PackageError(f"{where} invariants.{k} must be a file name, not {spec[k]!r:.100}")
    for k, low in (("native_offset", 0), ("native_shape", 1)):
        pair = spec[k]
        if not isinstance(pair, list) or len(pair) != 2:
            raise PackageError(f"{where} invariants.{k} must be [rows, columns], not {pair!r:.100}")
        spec[k] = tuple(
            _integer(v, f"invariants.{k}[{i}]", where, low=low) for i, v in enumerate(pair)
        )
    return spec


def _mode(meta: Mapping, mode: str, where: str) -> tuple[str, bool]:
    modes = _mapping(meta.get("modes"), "modes", where)
    if modes and mode not in modes:
        raise PackageError(f"{where} has a 'modes' block without {mode!r} (it has {sorted(modes)})")
    entry = _mapping(modes.get(mode), f"modes.{mode}", where, ("stats", "channel_transforms"))
    stats_key, transformed = entry.get("stats", "output"), entry.get("channel_transforms", True)
    if not isinstance(stats_key, str) or not isinstance(transformed, bool):
        raise PackageError(
            f"{where} modes.{mode} needs a 'stats' name and a true/false 'channel_transforms'"
        )
    return stats_key, transformed


def _architecture(meta: Mapping, mode: str, where: str) -> tuple[int, int]:
    section = "regression" if mode == "mean" else "diffusion"
    spec = meta.get(section)
    if not isinstance(spec, Mapping) or not {"patch_size", "attn_kernel_size"} <= set(spec):
        raise PackageError(f"{where} key {section!r} must hold 'patch_size' and 'attn_kernel_size'")
    return (
        _integer(spec["patch_size"], f"{section}.patch_size", where, low=1),
        _integer(spec["attn_kernel_size"], f"{section}.attn_kernel_size", where, low=1),
    )


def cosmo_settings(meta: Any, resolution: str, mode: str, where: str) -> CosmoSettings:
    """The settings of ``(resolution, mode)`` in the parsed ``metadata.json`` ``meta``.

    Raises
    ------
    PackageError
        One line naming ``where`` and the key that is missing or does not fit.
    """
    if not isinstance(meta, Mapping):
        raise PackageError(f"{where} must hold a JSON object, not {type(meta).__name__}")
    era5, outputs = _names(meta, "era5_variables", where), _names(meta, "output_variables", where)
    pre, post = (
        _names(meta, "pre_invariant_variables", where),
        _names(meta, "post_invariant_variables", where, required=False),
    )
    clash = sorted(set(era5 + pre + post + (COS_ZENITH,)) & set(outputs)) or sorted(
        set(pre) & set(post)
    )
    if clash or COS_ZENITH in pre + post or not outputs:
        raise PackageError(
            f"{where}: variable lists overlap or are empty ({clash or COS_ZENITH!r})"
        )
    stats_key, transformed = _mode(meta, mode, where)
    transforms: dict[str, Transform] = {}
    clamps: dict[str, Bounds | None] = {}
    specs = (
        _mapping(meta.get("channel_transforms"), "channel_transforms", where) if transformed else {}
    )
    for name in outputs:
        t, clamp = transform_of(specs.get(name), f"channel_transforms.{name}", where)
        if t is not None:
            transforms[name], clamps[name] = t, clamp
    constraints = _mapping(meta.get("constraints"), "constraints", where, ("bounds", "sza_gate"))
    for name, b in _bounds(constraints, outputs, where).items():
        clamps[name] = _tighter(clamps.get(name), b)
    bounds = {k: v for k, v in clamps.items() if v is not None}
    for name, (lo, hi) in bounds.items():
        if lo is not None and hi is not None and lo >= hi:
            raise PackageError(f"{where}: the bounds of {name} leave nothing ([{lo:g}, {hi:g}])")
    checkpoints = _mapping(meta.get("checkpoints"), "checkpoints", where)
    key = f"{resolution}_{mode}"
    if not isinstance(checkpoints.get(key), str):
        raise PackageError(
            f"{where} checkpoints has no file for {key!r} (it has {sorted(checkpoints)})"
        )
    patch, kernel = _architecture(meta, mode, where)
    return CosmoSettings(
        resolution=resolution,
        mode=mode,
        era5=era5,
        outputs=outputs,
        pre=pre,
        post=post,
        stats_key=stats_key,
        transforms=transforms,
        bounds=bounds,
        gates=_gates(constraints, outputs, where),
        sampler=_sampler(meta, where),
        checkpoint=checkpoints[key],
        patch_size=patch,
        attn_kernel_size=kernel,
        invariants=_invariants(meta, where),
        members=_integer(meta.get("number_of_samples", 1), "number_of_samples", where, low=1),
    )
