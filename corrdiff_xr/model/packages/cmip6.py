"""NVIDIA's CorrDiff CMIP6 -> ERA5 package (``nvidia/corrdiff-cmip6-era5``; Earth2Studio 0.19's
``CorrDiffCMIP6``).

Files: the generic layout (:mod:`~corrdiff_xr.model.packages.generic`: ``regression.mdlus``,
``diffusion.mdlus``, ``metadata.json``, ``stats.json``, ``output_latlon_grid.nc``,
``input_latlon_grid.nc``, ``invariants.nc``) plus ``config.json``, which marks the layout
(Earth2Studio only fetches it). Both grids are 1-D, latitude increasing. What Earth2Studio's code
does beyond the generic package, and how it is done here:

* **Inputs at three times.** Each input variable is taken at -24, 0 and +24 hours of an
  *anchor* (the archive's daily 12:00 UTC steps), channels variable by variable
  (``t2m_m24h, t2m_0h, t2m_p24h, u10m_m24h, ...``, each with the variable's statistics).
  Outputs are valid at ``anchor + lead`` with leads whole hours in [-12, +11] (default
  -12 h: 00:00 UTC); :func:`pair` builds that valid-time axis lazily
  (:func:`corrdiff_xr.data.package_windows.window_inputs`).
* **Sea ice and snow.** Where the inputs hold ``siconc`` and ``snc``, the ``siconc`` channels
  carry ``clip(siconc + snc, 0, 100)`` (missing values as 0) smoothed by a 3 x 3 mean on the
  input grid, wrapped in longitude and edge-replicated in latitude (:func:`sai_cover`).
* **Inputs resized as images.** The inputs are resized to the output grid's shape as an
  image (``interpolate(mode="bilinear")``), so the input grid is placed on the output grid by
  pixel index (:func:`corrdiff_xr.data.package_windows.place_as_image`), not by geography.
* **Time features.** The cosine of the solar zenith angle and the hour of day at the valid
  time (:mod:`corrdiff_xr.features`). The published model was trained with a quirk that is
  reproduced, not fixed: the last invariant's channel (``coslat``) holds hour-of-day
  *values*, normalised with that invariant's statistics, and the hour of day comes again as
  the last channel with its own. The codec therefore has the invariants but the last as
  static fields and the features ``cos_zenith`` (``sza`` statistics),
  ``hour_of_day_in_coslat`` (the last invariant's) and ``hour_of_day`` (``hod``'s).
* **Frame.** The network sees the channels in the order inputs, ``sza``, invariants,
  coslat slot, ``hod``; rows north first; the image padded by 23/24 rows (reflected) and
  48/48 columns (wrapped around); its output cropped back. A fixed frame around the imported
  networks does this (:mod:`corrdiff_xr.nn.framed`), so the networks run on
  ``(H + 47) x (W + 96)`` and codecs and data see the output grid.
* **Sampling on the padded image.** Earth2Studio draws the latents on the padded image and
  conditions the residual on the regression mean *uncropped*, cropping the sum at the end;
  the model samples the same way (``sample_domain="padded"``,
  :mod:`corrdiff_xr.model.sample_domain`), so the same seeds give the same members.
* **Invariants** are stored north first in ``invariants.nc`` (Earth2Studio flips them to the
  output grid's south-first rows); they are flipped here too.
* **Bounds and sampler.** Outputs among :data:`NONNEGATIVE` are clipped at 0 (codec bounds);
  sigma defaults to 1..400 unless the metadata sets them; member ``i`` is seeded
  ``seed + i``.

Means and members equal Earth2Studio's for the same seeds
(tests/parity/test_parity_earth2studio_cmip6.py). What differs: Earth2Studio smooths
the sea ice of its caller's input tensor in place, so asked for several lead times of one
input it smooths it again for each further one; here every valid time gets it smoothed once,
as its first lead time does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from corrdiff_xr.dims import X_COARSE, Y_COARSE
from corrdiff_xr.model.packages import generic
from corrdiff_xr.model.packages._build import (
    input_grid,
    invariants_dataset,
    output_grid,
    sampler_for,
)
from corrdiff_xr.model.packages._files import PackageError, PackageFiles

if TYPE_CHECKING:
    import torch

    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import DownscalingData
    from corrdiff_xr.model.core import CorrDiff
    from corrdiff_xr.model.packages.package import Package

__all__ = [
    "FEATURES",
    "LEADS",
    "NONNEGATIVE",
    "OFFSETS",
    "PAD",
    "detect",
    "member_seeds",
    "pair",
    "read",
    "sai_cover",
    "shifted_name",
]

#: input offsets from the anchor, in hours
OFFSETS = (-24, 0, 24)
#: the valid lead times (hours from the anchor) and the default one
LEADS, DEFAULT_LEADS = tuple(range(-12, 12)), (-12,)
#: (top, bottom, left, right) padding of the network's image: rows reflected, columns wrapped
PAD = (23, 24, 48, 48)
#: the codec's time features (see the module docstring for the coslat slot)
FEATURES = ("cos_zenith", "hour_of_day_in_coslat", "hour_of_day")
#: outputs clipped at zero
NONNEGATIVE = (
    "t2m", "sp", "msl", "tcwv", "sst", "d2m",
    *(f"{v}{p}" for v in ("z", "t", "q")
      for p in (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)),
)  # fmt: skip
#: units of inputs the name table does not know
_UNITS = {"siconc": "%", "snc": "%"}
SIGMAS = (1.0, 400.0)


def shifted_name(name: str, hours: int) -> str:
    """The codec's name of input ``name`` at ``hours`` from the anchor (``t2m_m24h``)."""
    return f"{name}_{'m' if hours < 0 else 'p' if hours > 0 else ''}{abs(hours)}h"


def detect(files: PackageFiles) -> bool:
    """A generic package with ``config.json``."""
    return "config.json" in files and generic.detect(files)


member_seeds = generic.member_seeds
Stats = generic.Stats


def _stats(files: PackageFiles, meta: Mapping[str, Any], invariants: list[str]) -> Stats:
    """The generic statistics plus the time features' (``input.sza``, ``input.hod``)."""
    stats = generic._stats(files, meta, invariants)
    extra = generic._stats(files, {"input_variables": ["sza", "hod"], "output_variables": []}, [])
    return {**stats, **extra}


def _codec(
    meta: Mapping[str, Any], invariants: list[str], stats: Stats, units: Mapping[str, str]
) -> Codec:
    """The codec: shifted inputs, invariants but the last, outputs, :data:`FEATURES`."""
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data.names import long_name, units_of

    outputs = list(meta["output_variables"])
    inputs = {
        shifted_name(v, h): v for v in meta["input_variables"] for h in OFFSETS
    }  # variable by variable, as the network's channels
    static = invariants[:-1]
    codec_stats = {
        **{n: stats["input", v] for n, v in inputs.items()},
        **{n: stats["output", n] for n in outputs},
        **{n: stats["invariants", n] for n in static},
        "cos_zenith": stats["input", "sza"],
        "hour_of_day_in_coslat": stats["invariants", invariants[-1]],
        "hour_of_day": stats["input", "hod"],
    }
    attrs = {}
    for name, base in [*inputs.items(), *((n, n) for n in outputs + static)]:
        unit = units.get(base) if base in static else _UNITS.get(base) or units_of(base)
        known = {"units": unit, "long_name": long_name(base)}
        attrs[name] = {k: v for k, v in known.items() if v}
    try:
        return Codec(
            tuple(inputs),
            tuple(outputs),
            tuple(static),
            codec_stats,
            attrs,
            bounds={n: (0.0, None) for n in outputs if n in NONNEGATIVE},
            features=FEATURES,
        )
    except ValueError as err:
        raise PackageError(f"statistics or names of the CMIP6 package: {err}") from err


def network_order(n_inputs: int, n_invariants: int) -> list[int]:
    """Codec channel of each network channel: inputs, sza, invariants, coslat slot, hod."""
    static = list(range(n_inputs, n_inputs + n_invariants - 1))
    sza, slot, hod = (n_inputs + n_invariants - 1 + k for k in range(3))
    return list(range(n_inputs)) + [sza] + static + [slot, hod]


def _framed(imported: CorrDiff, codec: Codec, shape: tuple[int, int], where: str) -> CorrDiff:
    """``imported`` (networks on the padded image) inside the CMIP6 frame, on ``shape``."""
    from corrdiff_xr.config import NetworkConfig
    from corrdiff_xr.model.core import CorrDiff
    from corrdiff_xr.nn.backbones import network_dict

    top, bottom, left, right = PAD
    padded = (shape[0] + top + bottom, shape[1] + left + right)
    if tuple(imported.img_shape) != padded:
        raise PackageError(
            f"{where}: the networks run on {imported.img_shape[0]} x {imported.img_shape[1]} "
            f"but the output grid {shape[0]} x {shape[1]} padded by {PAD} (top, bottom, left, "
            f"right) is {padded[0]} x {padded[1]}"
        )
    options = {
        "order": network_order(len(codec.inputs), len(codec.static) + 1),
        "flip_y": True,
        "pad": list(PAD),
        "modes": ["reflect", "circular"],
    }

    def frame(cfg: NetworkConfig | None) -> NetworkConfig | None:
        if cfg is None:
            return None
        return NetworkConfig(arch="framed", options={"inner": network_dict(cfg), **options})

    model = CorrDiff(
        codec,
        img_shape=shape,
        regression_network=frame(imported.regression_config),
        residual_network=frame(imported.residual_config),
        edm=imported.edm_config,
        sample_domain="padded",
    )
    state = {
        k.replace("regression.net.", "regression.net.inner.", 1).replace(
            "residual.net.", "residual.net.inner.", 1
        ): v
        for k, v in imported.state_dict().items()
    }
    model.load_state_dict(state)
    return model.to(next(imported.parameters()).device).eval()


def read(files: PackageFiles, *, map_location: str | torch.device = "cpu") -> Package:
    """The :class:`~corrdiff_xr.model.packages.Package` in ``files`` (CMIP6 layout)."""
    from corrdiff_xr.model.mdlus import MdlusError, import_mdlus
    from corrdiff_xr.model.packages.package import Package

    for name in ("metadata.json", "stats.json", "config.json", "output_latlon_grid.nc",
                 "input_latlon_grid.nc"):  # fmt: skip
        files.require(name)
    meta = generic.metadata(files)
    if meta["inference_mode"] not in ("both", "regression"):
        raise PackageError(
            f"{files.where('metadata.json')} inference_mode {meta['inference_mode']!r}: the "
            "CMIP6 model runs 'both' or 'regression'"
        )
    fine = output_grid(files, "output_latlon_grid.nc")
    coarse = input_grid(files, "input_latlon_grid.nc")
    if fine["y"].attrs.get("standard_name") != "latitude" or coarse["lat"].ndim != 1:
        raise PackageError(
            f"{files.source}: the CMIP6 package's grid files must hold 1-D lat/lon (increasing)"
        )
    invariant_names, inv_file = generic._invariant_names(files, meta)
    if not invariant_names:
        raise PackageError(
            f"{files.where('invariants.nc')}: the CMIP6 model needs its invariants, the last "
            "being the channel that holds the hour of day (coslat)"
        )
    units = {
        n: str(inv_file[n].attrs["units"]) for n in invariant_names if "units" in inv_file[n].attrs
    }
    codec = _codec(meta, invariant_names, _stats(files, meta, invariant_names), units)
    regression, residual = generic._networks(files, meta)  # "regression": the mean only
    try:
        imported = import_mdlus(
            regression,
            residual,
            codec=codec,
            hr_mean_conditioning=meta["hr_mean_conditioning"],
            map_location=map_location,
        )
    except MdlusError as err:
        raise PackageError(
            f"{err} (the CMIP6 networks take 3 channels per input variable, the invariants, "
            "the solar zenith angle and the hour of day)"
        ) from err
    shape = (fine.sizes["y"], fine.sizes["x"])
    model = _framed(imported, codec, shape, files.source)
    sigmas = (meta["sigma_min"] or SIGMAS[0], meta["sigma_max"] or SIGMAS[1])
    if residual is not None:
        model.sampler_config = sampler_for(
            meta["sampler_type"], meta["solver"], meta["number_of_steps"], sigmas, residual.args
        )
    north_first = inv_file.isel({inv_file[invariant_names[0]].dims[0]: slice(None, None, -1)})
    inv = invariants_dataset(north_first, codec.static, fine, files.where("invariants.nc"))
    return Package(
        model=model,
        layout="cmip6",
        source=files.source,
        input_grid=coarse,
        output_grid=fine,
        invariants=inv,
        members=meta["number_of_samples"],
        seed=meta["seed"],
        inference_mode=meta["inference_mode"],
        input_names={n: n for n in meta["input_variables"]},
        metadata={**meta, "lead_times_h": list(DEFAULT_LEADS)},
        pair_with=pair,
    )


def sai_cover(siconc: xr.DataArray, snc: xr.DataArray) -> xr.DataArray:
    """``clip(siconc + snc, 0, 100)`` (missing as 0), 3 x 3 mean on the input grid: columns
    wrapped around, rows edge-replicated; lazy, float32."""
    cover = (siconc.fillna(0) + snc.fillna(0)).clip(0, 100).astype(np.float32)
    padded = cover.pad({X_COARSE: 1}, mode="wrap").pad({Y_COARSE: 1}, mode="edge")
    smooth = padded.rolling({Y_COARSE: 3, X_COARSE: 3}, center=True).sum() / np.float32(9)
    inner = {Y_COARSE: slice(1, -1), X_COARSE: slice(1, -1)}
    out = smooth.isel(inner).assign_coords({d: siconc[d] for d in (Y_COARSE, X_COARSE)})
    if out.chunks is not None:  # padding split the grid into pieces: one chunk again
        out = out.chunk({Y_COARSE: -1, X_COARSE: -1})
    return out.astype(np.float32).assign_attrs(siconc.attrs)


@dataclass(frozen=True)
class _Inputs:
    """What :func:`~corrdiff_xr.data.package_pair.package_pair` reads of a codec: the
    package's own variables, once each."""

    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    static: tuple[str, ...]
    stats: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    attrs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def pair(
    package: Package,
    coarse: xr.Dataset,
    *,
    name_map: Mapping[str, Any] | None = None,
    regrid: str | None = None,
    truth: xr.Dataset | None = None,
    lead_times: Sequence[int] | None = None,
) -> DownscalingData:
    """The archive ``coarse`` (daily steps at 12:00 UTC, the anchors) on the package's grids.

    ``lead_times``: whole hours in [-12, +11] from each anchor (default -12); the pair's
    times are ``anchor + lead`` for every anchor whose -24 h and +24 h steps the archive
    holds. ``truth``: the outputs on the output grid at (some of) those valid times, which
    become the pair's targets (``calibrate``, scoring).
    """
    from corrdiff_xr.data.package_pair import open_as_pair, package_pair, with_truth
    from corrdiff_xr.data.package_windows import place_as_image, window_inputs

    leads = DEFAULT_LEADS if lead_times is None else tuple(int(h) for h in lead_times)
    if not leads or any(h not in LEADS for h in leads):
        raise PackageError(f"lead_times must be whole hours in [-12, 11], got {list(leads)}")
    codec = package.codec
    names = list(package.input_names.values())
    base = _Inputs(
        tuple(names),
        (),
        codec.static,
        {**{n: codec.stats[shifted_name(n, 0)] for n in names}, **codec.stats},
        {**{n: codec.attrs.get(shifted_name(n, 0), {}) for n in names}, **codec.attrs},
    )
    day = package_pair(
        coarse,
        codec=base,
        input_grid=package.input_grid,
        output_grid=package.output_grid,
        invariants=package.invariants,
        name_map=name_map,
        regrid=regrid,
    ).dataset
    if "siconc" in names and "snc" in names:
        day = day.assign(siconc=sai_cover(day["siconc"], day["snc"]))
    shifted = {shifted_name(n, h): (n, np.timedelta64(h, "h")) for n in names for h in OFFSETS}
    ds = window_inputs(day, shifted, [np.timedelta64(h, "h") for h in leads])
    targets: tuple[str, ...] = ()
    if truth is not None:  # outputs valid at anchor + lead, as the inputs now are
        ds = with_truth(ds, truth, codec=codec, output_grid=package.output_grid)
        targets = codec.targets
    return open_as_pair(place_as_image(ds), codec, targets)
