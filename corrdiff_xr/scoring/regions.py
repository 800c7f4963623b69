"""Scores by region: masks of the fine grid as a ``region`` dimension of a score table.

A region is a boolean mask on the spatial dims ``(y, x)``: land or sea from a land-sea
fraction field (ERA5's ``lsm``, ``> 0.5`` is land), a latitude/longitude box, or the points
where a field is not NaN (a domain or radar-coverage mask). :func:`region_masks` stacks named
masks along :data:`REGION`, and :func:`by_region` (``summary(..., regions=masks)``) scores
each one and concatenates the tables along it.

A region is scored as its own domain: forecast and truth are cut to the mask's bounding box
and set to NaN outside the mask, so every NaN-aware score skips those points; pointwise scores
then equal the scores of the region's points alone, and a box region scores exactly as the
box cut out by hand (FSS windows, variogram pairs and spectra included). Spectral scores of
a region that is not a box see its outside as gaps, like any missing truth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from corrdiff_xr.dims import LAT, LON, TIME, X, Y

__all__ = [
    "REGION",
    "box",
    "by_region",
    "find_land_fraction",
    "from_specs",
    "masks_for_score",
    "land_sea",
    "region_masks",
    "valid",
]

#: the dim of a score table that holds one score per region
REGION = "region"


def land_sea(fraction: xr.DataArray, *, threshold: float = 0.5) -> dict[str, xr.DataArray]:
    """``{"land": fraction > threshold, "sea": fraction <= threshold}`` (NaN is neither).

    ``fraction`` is a land-sea mask or land fraction on the fine grid, 1 for land (ERA5's
    ``lsm``, CF ``land_binary_mask`` / ``land_area_fraction``)."""
    if not isinstance(fraction, xr.DataArray):
        raise TypeError(f"land_sea needs a DataArray land fraction, got {type(fraction).__name__}")
    values = fraction.load()
    lo, hi = float(values.min()), float(values.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"land-sea mask {fraction.name!r} has values in [{lo:g}, {hi:g}]; it must be a land "
            "fraction in [0, 1] (1 = land), like ERA5's lsm"
        )
    known = values.notnull()
    return {"land": (values > threshold) & known, "sea": (values <= threshold) & known}


def box(
    grid: xr.Dataset | xr.DataArray,
    *,
    lat: tuple[float, float],
    lon: tuple[float, float],
) -> xr.DataArray:
    """The points of ``grid`` with ``lat[0] <= lat <= lat[1]`` and ``lon`` in ``lon``.

    ``grid`` has ``lat``/``lon`` coordinates (2-D on ``(y, x)`` or 1-D). Longitudes compare
    modulo 360, so a box given in -180..180 selects on a 0..360 grid; ``lon=(350, 10)``
    crosses the meridian."""
    if LAT not in grid.coords or LON not in grid.coords:
        raise ValueError(
            f"a lat/lon box needs coordinates {LAT!r} and {LON!r} on the grid; it has "
            f"{sorted(map(str, grid.coords))}"
        )
    south, north = sorted(float(v) for v in lat)
    la, lo = xr.broadcast(grid[LAT].load(), grid[LON].load())
    west, east = (float(v) % 360.0 for v in lon)
    lo360 = lo % 360.0
    inside_lon = (
        (lo360 >= west) & (lo360 <= east) if west <= east else (lo360 >= west) | (lo360 <= east)
    )
    mask = (la >= south) & (la <= north) & inside_lon
    return mask.drop_vars([c for c in mask.coords if c not in mask.dims])


def valid(field: xr.DataArray) -> xr.DataArray:
    """The points where ``field`` is not NaN (at every time, if it has one)."""
    spatial = [d for d in field.dims if d not in (Y, X)]
    known = field.notnull()
    return (known.all(spatial) if spatial else known).load()


def region_masks(**masks: xr.DataArray) -> xr.DataArray:
    """Named boolean masks on ``(y, x)`` stacked along :data:`REGION`, in the given order;
    e.g. ``region_masks(**land_sea(pair.dataset["lsm"]), alps=box(pair.fine, lat=..., lon=...))``.
    """
    if not masks:
        raise ValueError("region_masks needs at least one named mask")
    arrays = []
    for name, mask in masks.items():
        if not isinstance(mask, xr.DataArray) or set(mask.dims) != {Y, X}:
            dims = getattr(mask, "dims", type(mask).__name__)
            raise ValueError(f"region {name!r} must be a DataArray on ({Y}, {X}), got {dims}")
        mask = mask.load().astype(bool)
        if not bool(mask.any()):
            raise ValueError(f"region {name!r} holds no grid point; check its mask or box")
        arrays.append(mask.transpose(Y, X).drop_vars([c for c in mask.coords if c not in (Y, X)]))
    stacked = xr.concat(arrays, dim=REGION, join="exact", coords="minimal")
    return stacked.assign_coords({REGION: list(masks)}).rename("region_mask")


def _bounding_box(mask: xr.DataArray) -> dict[str, slice]:
    """``isel`` slices of the smallest box holding every point of ``mask``."""
    values = mask.transpose(Y, X).values
    rows, cols = np.flatnonzero(values.any(1)), np.flatnonzero(values.any(0))
    return {Y: slice(rows[0], rows[-1] + 1), X: slice(cols[0], cols[-1] + 1)}


def _in_region(ds: xr.Dataset, mask: xr.DataArray, cut: dict[str, slice]) -> xr.Dataset:
    """``ds`` cut to the box ``cut``; its data NaN outside ``mask`` (coordinates kept)."""
    part = ds.isel({d: s for d, s in cut.items() if d in ds.dims})
    inside = mask.isel(cut)
    inside = inside.drop_vars([c for c in inside.coords if c not in inside.dims])
    for d in (Y, X):  # the grid's own coordinates label the mask: positions already agree
        if d in part.coords and d in inside.dims:
            inside = inside.assign_coords({d: part[d].values})
    spatial = {Y, X}
    return part.assign(
        {n: v.where(inside) for n, v in part.data_vars.items() if spatial <= set(v.dims)}
    )


def _check_grid(mask: xr.DataArray, ds: xr.Dataset) -> None:
    for d in (Y, X):
        if d not in ds.dims or ds.sizes[d] != mask.sizes[d]:
            raise ValueError(
                f"region masks are on a ({Y}: {mask.sizes[Y]}, {X}: {mask.sizes[X]}) grid but "
                f"the forecast has dims {dict(ds.sizes)}; make the masks on the forecast's grid"
            )
        if d in ds.coords and d in mask.coords:
            have, want = np.asarray(mask[d], float), np.asarray(ds[d], float)
            if not np.allclose(have, want, rtol=1e-6):
                raise ValueError(f"region masks' {d!r} coordinate is not the forecast's")


def by_region(
    score: Callable[..., xr.Dataset],
    forecast: xr.Dataset,
    truth: xr.Dataset,
    regions: xr.DataArray | Mapping[str, xr.DataArray],
    *,
    weights: xr.DataArray | None = None,
    **kwargs: Any,
) -> xr.Dataset:
    """``score(forecast, truth, weights=..., **kwargs)`` of each region, along :data:`REGION`.

    ``regions`` is :func:`region_masks`' result or a mapping of name to mask. ``score`` is
    :func:`~corrdiff_xr.scoring.summary` or any function returning a Dataset; ``weights``
    (area weights on the grid) are cut with the data."""
    if isinstance(regions, Mapping):
        regions = region_masks(**regions)
    if REGION not in regions.dims:
        raise ValueError(f"regions must have a {REGION!r} dim; build them with region_masks()")
    _check_grid(regions.isel({REGION: 0}), forecast)
    tables = []
    for name in regions[REGION].values:
        mask = regions.sel({REGION: name}, drop=True)
        cut = _bounding_box(mask)
        fc, tr = _in_region(forecast, mask, cut), _in_region(truth, mask, cut)
        w = (
            None
            if weights is None
            else weights.isel({d: s for d, s in cut.items() if d in weights.dims})
        )
        tables.append(score(fc, tr, weights=w, **kwargs))
    names = xr.DataArray(list(regions[REGION].values), dims=REGION, name=REGION)
    out = xr.concat(tables, dim=names, join="outer", coords="minimal", combine_attrs="override")
    counts = regions.sum([Y, X]).values.astype(int)
    return out.assign_coords(region_points=(REGION, counts))


#: names and CF standard names a land-sea fraction is found under
LAND_FRACTION_NAMES = ("lsm", "land_sea_mask", "landmask", "LANDMASK", "sftlf", "landfrac")
LAND_FRACTION_STANDARD_NAMES = ("land_binary_mask", "land_area_fraction")


def find_land_fraction(*datasets: xr.Dataset | None) -> xr.DataArray | None:
    """The first land-sea fraction on ``(y, x)`` in ``datasets``, by name or standard name
    (:data:`LAND_FRACTION_NAMES`, :data:`LAND_FRACTION_STANDARD_NAMES`), else None.
    ``sftlf`` in percent is turned into a fraction."""
    for ds in datasets:
        if ds is None:
            continue
        for name, var in ds.data_vars.items():
            standard = var.attrs.get("standard_name")
            if name in LAND_FRACTION_NAMES or standard in LAND_FRACTION_STANDARD_NAMES:
                if TIME in var.dims:
                    var = var.isel({TIME: 0}, drop=True)
                if set(var.dims) == {Y, X}:
                    return var / 100.0 if var.attrs.get("units") == "%" else var
    return None


def _parse_box(spec: str) -> tuple[str, tuple[float, float], tuple[float, float]]:
    name, _, text = spec.partition("=")
    try:
        lat_text, lon_text = text.split(",")
        lat = tuple(float(v) for v in lat_text.split(":"))
        lon = tuple(float(v) for v in lon_text.split(":"))
        if len(lat) != 2 or len(lon) != 2 or not name.strip():
            raise ValueError
    except ValueError:
        raise ValueError(
            f"--regions {spec}: a box is NAME=LAT0:LAT1,LON0:LON1 in degrees, e.g. "
            "alps=44:48,5:16 (longitudes in -180..180 or 0..360)"
        ) from None
    return name.strip(), lat, lon


def from_specs(
    specs: Sequence[str], grid: xr.Dataset, *, land_fraction: xr.DataArray | None = None
) -> xr.DataArray:
    """Masks from ``score --regions`` specs: ``land``, ``sea`` (from ``land_fraction``),
    ``NAME=LAT0:LAT1,LON0:LON1`` (a box on ``grid``'s lat/lon) and ``valid`` (where
    every variable of ``grid`` is known at every time)."""
    masks: dict[str, xr.DataArray] = {}
    for spec in specs:
        if spec in ("land", "sea"):
            if land_fraction is None:
                raise ValueError(
                    f"--regions {spec} needs a land-sea fraction ({', '.join(LAND_FRACTION_NAMES)}"
                    " or a standard_name land_binary_mask) in the truth or prediction; pass "
                    "--land-sea-mask FILE[:VAR]"
                )
            masks[spec] = land_sea(land_fraction)[spec]
        elif spec == "valid":
            known = [valid(v) for v in grid.data_vars.values() if {Y, X} <= set(v.dims)]
            masks[spec] = xr.concat(known, "variable").all("variable")
        elif "=" in spec:
            name, lat, lon = _parse_box(spec)
            masks[name] = box(grid, lat=lat, lon=lon)
        else:
            raise ValueError(
                f"--regions {spec}: unknown region; give land, sea, valid or a box "
                "NAME=LAT0:LAT1,LON0:LON1"
            )
    return region_masks(**masks)


def masks_for_score(
    specs: Sequence[str],
    forecast: xr.Dataset,
    truth: xr.Dataset,
    *,
    land_sea_mask: str | None = None,
    truth_source: str | None = None,
    truth_params: Mapping | None = None,
) -> xr.DataArray:
    """``score --regions`` masks. The land-sea fraction of ``land``/``sea`` comes from
    ``land_sea_mask`` (``FILE[:VAR]``), else the static fields of a canonical or catalog
    ``truth_source``, else a variable of ``truth`` or ``forecast``."""
    from corrdiff_xr.scoring.inputs import open_truth

    fraction = None
    if land_sea_mask:
        path, _, var = land_sea_mask.partition(":")
        ds = open_truth(path)  # any NetCDF file or Zarr store
        if var and var not in ds:
            raise ValueError(f"--land-sea-mask {land_sea_mask}: no variable {var!r} in {path}")
        fraction = ds[var] if var else find_land_fraction(ds)
        if fraction is None:
            raise ValueError(
                f"--land-sea-mask {path}: no land-sea fraction in it; name it FILE:VAR"
            )
    elif {"land", "sea"} & set(specs):
        fraction = find_land_fraction(truth, forecast)
        if fraction is None and truth_source:
            fraction = find_land_fraction(_static_of(truth_source, truth_params))
    grid = truth[list(forecast.data_vars)] if "valid" in specs else forecast
    return from_specs(specs, grid, land_fraction=fraction)


def _static_of(source: str, params: Mapping | None) -> xr.Dataset | None:
    """The whole canonical dataset behind a ``catalog:`` or canonical-store truth, or None."""
    from corrdiff_xr.data import catalog_spec, open_source
    from corrdiff_xr.dims import COARSE_DIMS

    if catalog_spec(source, what="--truth") is None:
        if "://" in source or source.endswith(".nc"):
            return None
        ds = xr.open_zarr(source)
        if not set(COARSE_DIMS) <= set(ds.dims):
            return None
    return open_source(source, params=dict(params or {}), what="--truth").dataset
