"""NVIDIA's CorrDiff ERA5 -> HRRR package (``nvidia/corrdiff-era5-hrrr``; Earth2Studio 0.19's
``CorrDiffEra5Hrrr``): one DiT that samples 3 km HRRR fields over CONUS from 0.25 degree ERA5.

Files, under the variant's folder (``x_pred/``, the only one published): ``metadata.json``
(``era5_variables``, ``output_variables``, ``network`` {``kind``, ``prediction_type``,
``time_scale``, ``sigma_data``}, ``sampler`` {``num_steps``, ``solver``, ``shift``, ``t_max``,
``x0v_clip``, ``sigma_min``, ``sigma_max``, ``rho``, ``amp``}, ``scalar_conditions``
{``day_of_year``, ``presence_flags``}, ``hrrr_window`` {``rows``, ``cols``}, ``checkpoint``,
``number_of_samples``), ``stats.json`` (``era5`` / ``hrrr`` -> name -> ``mean``/``std``),
``era5_lat.npy`` / ``era5_lon.npy`` (the 1-D ERA5 footprint, latitude descending),
``hrrr_lat.npy`` / ``hrrr_lon.npy`` (2-D, the HRRR window), ``invariants.npy`` ``(n, H, W)``
(already normalised) and the checkpoint, a bare PhysicsNeMo ``DiT`` ``.mdlus``.

How Earth2Studio runs it, and how that maps here:

* **Objective.** ``rectified_flow`` with ``prediction_type`` ``x0`` (or ``flow``) is our
  ``edm.flow`` ``x`` (``v``) on the target directly (``edm.objective="direct"``); the sampler's
  SD3 shift ``t -> s t / (1 + (s - 1) t)`` is ``edm.flow_shift = s`` (:mod:`corrdiff_xr.edm`).
  The network sees ``time_scale * t`` (999 t) where ours passes ``ln(sigma) / 4``: the DiT's
  ``flow_time_scale`` option converts (:mod:`corrdiff_xr.nn.dit_options`). ``kind: edm``
  (an EDM x0-predictor, ``sigma_data`` from the metadata) is read as well.
* **Conditioning.** The network's channels are ERA5 | cosine zenith | invariants; the codec's
  are inputs | static (invariants) | features (``cos_zenith``, then the day-of-year sine and
  cosine of :mod:`corrdiff_xr.features`): a fixed frame (:mod:`corrdiff_xr.nn.framed`, no
  padding) reorders them. The scalar conditions ``[sin, cos]`` of the day-of-year phase (when
  ``day_of_year``) reach the DiT as its vector condition from those last two (constant)
  channels (``vector_from_inputs``); the ``presence_flags`` are always 1 at inference, so their
  embedding is a constant, folded into the noise embedding's last bias (exact).
* **Sampler.** ``solver`` and ``num_steps`` are kept; our samplers integrate
  ``dx/dsigma`` on a Karras schedule (times the shift) between the levels of Earth2Studio's grid
  (``linspace(t_max, 0)``, ``sigma = t / (1 - t)``), where it integrates ``dx_t/dt`` on that
  grid: an Euler step is the same step in either variable (tested), Heun steps are not, so
  samples differ within the solvers' error. ``x0v_clip`` (the velocity's ``max(t, clip)``)
  only acts below ``t = clip``, which the shifted schedule never reaches before its last step.
* **Grids.** Inputs are taken at the ERA5 footprint's points (latitude ascending here);
  ``y``/``x`` of the output grid are HRRR's Lambert-conformal coordinates of the window (3 km,
  :data:`HRRR_X0`, :data:`HRRR_Y0`).

The network runs on the whole window (a frame refuses patches); Earth2Studio does the same.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xarray as xr

from corrdiff_xr.model.packages import generic
from corrdiff_xr.model.packages._build import coarse_grid, fine_grid
from corrdiff_xr.model.packages._files import MAX_GRID_BYTES, PackageError, PackageFiles

if TYPE_CHECKING:
    import torch

    from corrdiff_xr.codec import Codec
    from corrdiff_xr.config import SamplerConfig
    from corrdiff_xr.model.core import CorrDiff
    from corrdiff_xr.model.packages.package import Package

__all__ = ["DEFAULT_VARIANT", "VARIANTS", "detect", "member_seeds", "network_order", "read"]

VARIANTS = ("x_pred",)
DEFAULT_VARIANT = "x_pred"
FILES = ("metadata.json", "stats.json", "era5_lat.npy", "era5_lon.npy", "hrrr_lat.npy",
         "hrrr_lon.npy", "invariants.npy")  # fmt: skip
#: HRRR's projection coordinates (m) of its first column / row, and its spacing
HRRR_X0, HRRR_Y0, HRRR_DX = -2697520.1425219304, -1587306.1525566636, 3000.0
HRRR_SHAPE = (1059, 1799)

member_seeds = generic.member_seeds


def detect(files: PackageFiles) -> bool:
    """A variant folder with ``metadata.json`` and ``hrrr_lat.npy``."""
    return any(f"{v}/metadata.json" in files and f"{v}/hrrr_lat.npy" in files for v in VARIANTS)


def _npy(files: PackageFiles, name: str, ndim: int) -> np.ndarray:
    """A finite float ``.npy`` array of ``ndim`` dimensions (no pickles)."""
    try:
        data = np.load(io.BytesIO(files.read_bytes(name, limit=MAX_GRID_BYTES)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise PackageError(f"{files.where(name)} is not a readable .npy array: {err}") from err
    if data.ndim != ndim or data.dtype.kind not in "fi" or not np.all(np.isfinite(data)):
        raise PackageError(
            f"{files.where(name)} must be a finite {ndim}-D float array, got {data.ndim}-D "
            f"{data.dtype}"
        )
    return data.astype(np.float64)


def _get(meta: Mapping[str, Any], path: str, kind: type | tuple, where: str, default: Any = ...):
    """``meta[a][b]`` for ``path`` ``"a.b"``, of ``kind``, or one line naming the key."""
    value: Any = meta
    for key in path.split("."):
        value = value.get(key, ...) if isinstance(value, Mapping) else ...
    if value is ...:
        if default is ...:
            raise PackageError(f"{where} lacks {path}")
        return default
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise PackageError(
            f"{where} {path}={value!r:.80} must be a {getattr(kind, '__name__', kind)}"
        )
    return value


def _names(meta: Mapping[str, Any], key: str, where: str) -> list[str]:
    names = _get(meta, key, list, where)
    if (
        not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) < len(names)
    ):
        raise PackageError(f"{where} {key} must be a list of distinct names")
    return names


def settings(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The metadata's settings, checked, with Earth2Studio's defaults."""
    kind = _get(meta, "network.kind", str, where)
    if kind not in ("rectified_flow", "edm"):
        raise PackageError(f"{where} network.kind={kind!r} must be 'rectified_flow' or 'edm'")
    prediction = _get(meta, "network.prediction_type", str, where, "x0")
    if prediction not in ("x0", "flow"):
        raise PackageError(f"{where} network.prediction_type={prediction!r} must be x0 or flow")
    solver = _get(meta, "sampler.solver", str, where, "heun")
    if solver not in ("heun", "euler"):
        raise PackageError(f"{where} sampler.solver={solver!r} must be heun or euler")
    num = (int, float)
    s = {
        "kind": kind,
        "prediction": prediction,
        "solver": solver,
        "time_scale": float(_get(meta, "network.time_scale", num, where, 999.0)),
        "sigma_data": float(_get(meta, "network.sigma_data", num, where, 0.5)),
        "steps": _get(meta, "sampler.num_steps", int, where, 50),
        "shift": float(_get(meta, "sampler.shift", num, where, 1.0)),
        "t_max": float(_get(meta, "sampler.t_max", num, where, 0.99)),
        "sigma_min": float(_get(meta, "sampler.sigma_min", num, where, 0.01)),
        "sigma_max": float(_get(meta, "sampler.sigma_max", num, where, 200.0)),
        "rho": float(_get(meta, "sampler.rho", num, where, 7.0)),
        "day_of_year": _get(meta, "scalar_conditions.day_of_year", bool, where, True),
        "flags": _get(meta, "scalar_conditions.presence_flags", list, where, []),
        "members": _get(meta, "number_of_samples", int, where, 1),
        "checkpoint": _get(meta, "checkpoint", str, where),
        "era5": _names(meta, "era5_variables", where),
        "outputs": _names(meta, "output_variables", where),
    }
    if not 0.0 < s["t_max"] < 1.0 or s["shift"] <= 0 or s["steps"] < 1 or s["members"] < 1:
        raise PackageError(
            f"{where} sampler t_max={s['t_max']} (in (0, 1)), shift={s['shift']} (> 0), "
            f"num_steps={s['steps']} and number_of_samples={s['members']} (>= 1) do not fit"
        )
    window = [_get(meta, f"hrrr_window.{k}", list, where) for k in ("rows", "cols")]
    if not all(len(w) == 2 and all(isinstance(i, int) for i in w) for w in window):
        raise PackageError(f"{where} hrrr_window rows/cols must be [start, stop] integers")
    s["window"] = window
    return s


def network_order(n_era5: int, n_invariants: int, n_vector: int) -> list[int]:
    """Codec condition channel of each network channel: ERA5, cos zenith, invariants, then
    the vector channels (codec order: ERA5, invariants, cos zenith, vector channels)."""
    zenith = n_era5 + n_invariants
    invariants = list(range(n_era5, zenith))
    return [*range(n_era5), zenith, *invariants, *range(zenith + 1, zenith + 1 + n_vector)]


def _codec(
    s: Mapping[str, Any], invariants: list[str], stats: Any, where: str
) -> tuple[Codec, dict[str, str]]:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data.names import long_name, units_of

    taken = set(s["outputs"]) | set(invariants)
    inputs = {(f"{n}_coarse" if n in taken else n): n for n in s["era5"]}
    table = {}
    for group, names in (("era5", s["era5"]), ("hrrr", s["outputs"])):
        for name in names:
            entry: Any = stats.get(group, {}).get(name) if isinstance(stats, Mapping) else None
            try:
                table[group, name] = (float(entry["mean"]), float(entry["std"]))
            except (KeyError, TypeError, ValueError):
                raise PackageError(f"{where} lacks {group}.{name}.mean/std") from None
    codec_stats = {
        **{c: table["era5", n] for c, n in inputs.items()},
        **{n: table["hrrr", n] for n in s["outputs"]},
        **{n: (0.0, 1.0) for n in invariants},  # invariants.npy is normalised already
    }
    attrs = {}
    for name, base in [*inputs.items(), *((n, n) for n in s["outputs"])]:
        known = {"units": units_of(base), "long_name": long_name(base)}
        attrs[name] = {k: v for k, v in known.items() if v}
    features = ("cos_zenith", *(("day_of_year_sin", "day_of_year_cos") * s["day_of_year"]))
    try:
        codec = Codec(
            tuple(inputs),
            tuple(s["outputs"]),
            tuple(invariants),
            codec_stats,
            attrs,
            features=features,
        )
    except ValueError as err:
        raise PackageError(f"statistics or names of the ERA5-HRRR package: {err}") from err
    return codec, inputs


def _model(
    sub: PackageFiles, s: Mapping[str, Any], codec: Codec, shape: tuple[int, int]
) -> CorrDiff:
    """The CorrDiff (direct, framed DiT) with the checkpoint's weights."""
    import dataclasses

    import torch

    from corrdiff_xr.config import EDMConfig, NetworkConfig
    from corrdiff_xr.model.core import CorrDiff
    from corrdiff_xr.model.mdlus_dit import read_dit_part
    from corrdiff_xr.model.mdlus_files import MdlusError, build_and_load
    from corrdiff_xr.nn.backbones import network_dict

    where = sub.where(s["checkpoint"])
    try:
        part = read_dit_part(sub.mdlus(s["checkpoint"]), target_prefix="residual.net.inner.")
    except MdlusError as err:
        raise PackageError(f"{err} (the package's network)") from err
    n_era5, n_inv, n_out = len(codec.inputs), len(codec.static), len(codec.targets)
    n_vec, n_flags = 2 * s["day_of_year"], len(s["flags"])
    opts = dict(part.config.options)
    want = (n_out + n_era5 + 1 + n_inv, n_out, n_vec + n_flags)
    got = (part.in_channels, part.out_channels, opts.get("condition_dim", 0))
    if part.layout != ("DiT",) or got != want:
        raise PackageError(
            f"{where}: a {' > '.join(part.layout)} with (in, out, condition_dim) {got}; the "
            f"metadata needs a bare DiT with {want} (outputs + ERA5 + cos zenith + invariants; "
            "day-of-year sin/cos + presence flags)"
        )
    weights = dict(part.weights)
    key = "residual.net.inner.condition_embed.weight"
    if n_flags:  # always present (1) at inference: a constant embedding, folded into a bias
        bias = "residual.net.inner.noise_embed.mlp.2.bias"
        weights[bias] = weights[bias] + weights[key][:, n_vec:].sum(dim=1)
        weights[key] = weights[key][:, :n_vec].contiguous()
        if not n_vec:
            del weights[key]
    rf = s["kind"] == "rectified_flow"
    opts.update(
        condition_dim=n_vec, vector_from_inputs=bool(n_vec), flow_time_scale=s["time_scale"] * rf
    )
    inner = dataclasses.replace(part.config, options=opts)
    frame = {"order": network_order(n_era5, n_inv, n_vec), "flip_y": False, "pad": [0, 0, 0, 0],
             "modes": ["zero", "zero"]}  # fmt: skip
    cfg = NetworkConfig(arch="framed", options={"inner": network_dict(inner), **frame})
    flow: Literal["x", "v"] | None = ("x" if s["prediction"] == "x0" else "v") if rf else None
    edm = EDMConfig(
        sigma_data=s["sigma_data"], hr_mean_conditioning=False, objective="direct", flow=flow,
        flow_shift=s["shift"] if rf else 1.0,
    )  # fmt: skip
    try:
        model = build_and_load(
            lambda: CorrDiff(
                codec, img_shape=shape, regression_network=None, residual_network=cfg, edm=edm
            ),
            weights,
            pad_latent=0,
            keep_regression=False,
            source=where,
        )
    except (MdlusError, ValueError) as err:
        raise PackageError(f"{where}: {err}") from err
    return model.to(torch.float32).eval()


def _sampler(s: Mapping[str, Any]) -> SamplerConfig:
    """Our sampler for the metadata's: the flow's levels ``t / (1 - t)`` of its linear-t
    grid's ends (unshifted: ``edm.flow_shift`` multiplies them), or the EDM range."""
    from corrdiff_xr.config import SamplerConfig

    if s["kind"] == "edm":
        lo, hi, rho = s["sigma_min"], s["sigma_max"], s["rho"]
    else:
        t_min = s["t_max"] / s["steps"]
        lo, hi, rho = t_min / (1 - t_min), s["t_max"] / (1 - s["t_max"]), 7.0
    return SamplerConfig(
        solver=s["solver"], num_steps=s["steps"], sigma_min=lo, sigma_max=hi, rho=rho
    )


def _grids(sub: PackageFiles, s: Mapping[str, Any]) -> tuple[xr.Dataset, xr.Dataset]:
    lat_in, lon_in = _npy(sub, "era5_lat.npy", 1), _npy(sub, "era5_lon.npy", 1)
    lat, lon = _npy(sub, "hrrr_lat.npy", 2), _npy(sub, "hrrr_lon.npy", 2)
    (r0, r1), (c0, c1) = s["window"]
    if (
        lat.shape != lon.shape
        or lat.shape != (r1 - r0, c1 - c0)
        or not (0 <= r0 < r1 <= HRRR_SHAPE[0] and 0 <= c0 < c1 <= HRRR_SHAPE[1])
    ):
        raise PackageError(
            f"{sub.source}: hrrr_lat/hrrr_lon {lat.shape}/{lon.shape} must both be the "
            f"metadata's hrrr_window rows {[r0, r1]} x cols {[c0, c1]} within HRRR {HRRR_SHAPE}"
        )
    if lat_in.size < 2 or not (np.all(np.diff(lat_in) < 0) or np.all(np.diff(lat_in) > 0)):
        raise PackageError(f"{sub.where('era5_lat.npy')} must be strictly monotonic")
    if lon_in.size < 2 or not np.all(np.diff(lon_in) > 0):
        raise PackageError(f"{sub.where('era5_lon.npy')} must be strictly increasing")
    fine = fine_grid(lat, lon).assign_coords(
        y=("y", HRRR_Y0 + HRRR_DX * np.arange(r0, r1), {"units": "m", "axis": "Y"}),
        x=("x", HRRR_X0 + HRRR_DX * np.arange(c0, c1), {"units": "m", "axis": "X"}),
    )
    return coarse_grid(np.sort(lat_in), lon_in), fine


def read(
    files: PackageFiles,
    *,
    map_location: str | torch.device = "cpu",
    variant: str | None = None,
) -> Package:
    """The :class:`~corrdiff_xr.model.packages.Package` of ``variant`` (``"x_pred"``)."""
    from corrdiff_xr.model.packages.package import Package

    variant = DEFAULT_VARIANT if variant is None else variant
    if variant not in VARIANTS:
        raise PackageError(f"ERA5-HRRR variant {variant!r} is not one of {list(VARIANTS)}")
    for name in FILES:
        files.require(f"{variant}/{name}")
    sub = files.within(variant)
    meta = sub.json("metadata.json")
    if not isinstance(meta, Mapping):
        raise PackageError(f"{sub.where('metadata.json')} must hold an object")
    s = settings(meta, sub.where("metadata.json"))
    sub.require(s["checkpoint"], " (metadata.json checkpoint)")
    coarse, fine = _grids(sub, s)
    values = _npy(sub, "invariants.npy", 3)
    shape = (fine.sizes["y"], fine.sizes["x"])
    names = [f"invariant_{i}" for i in range(len(values))]
    if "invariant_variables" in meta:  # not in Earth2Studio's files: channel numbers otherwise
        names = _names(meta, "invariant_variables", sub.where("metadata.json"))
    if len(names) != len(values) or values.shape[1:] != shape:
        raise PackageError(
            f"{sub.where('invariants.npy')} is {values.shape}: one field per invariant "
            f"{names} on the {shape} window"
        )
    codec, inputs = _codec(s, list(names), sub.json("stats.json"), sub.where("stats.json"))
    invariants = xr.Dataset(
        {n: (("y", "x"), v.astype(np.float32)) for n, v in zip(names, values)}, coords=fine.coords
    )
    model = _model(sub, s, codec, shape).to(map_location)
    model.sampler_config = _sampler(s)
    return Package(
        model=model,
        layout="hrrr",
        source=files.source,
        input_grid=coarse,
        output_grid=fine,
        invariants=invariants,
        members=s["members"],
        seed=None,
        inference_mode="diffusion",
        input_names=inputs,
        metadata={**{k: v for k, v in meta.items() if isinstance(k, str)}, "variant": variant},
    )
