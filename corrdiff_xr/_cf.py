"""CF grid mappings: what an output on the fine grid carries over from its data.

A canonical dataset on a projected or rotated grid holds its CF grid-mapping variable as a
scalar (0-d) non-index coordinate whose attributes name the projection
(``grid_mapping_name``, e.g. ``rotated_pole`` with ``rotated_latitude_longitude``), and its
targets say ``attrs["grid_mapping"] = "rotated_pole"``. Without it, an output's ``y``/``x``
are numbers of an unknown projection. :func:`with_grid_mapping` is the one rule every
fine-grid output applies (the downscaled Dataset, hence its Zarr store; the reference NetCDF
groups; the bilinear baseline): keep the coordinate, same name and attributes, and name it in
``grid_mapping`` of every variable on ``(y, x)``. Data without such a coordinate are left as
they are.
"""

from __future__ import annotations

import warnings

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import xarray as xr

from corrdiff_xr.dims import X, Y

__all__ = [
    "COARSE_GRID_MAPPING",
    "GRID_MAPPING",
    "grid_mapping_of",
    "grid_mapping_variables",
    "grid_mappings",
    "with_grid_mapping",
]

#: the CF attribute of a data variable naming its grid-mapping variable
GRID_MAPPING = "grid_mapping"
#: the coarse grid's grid-mapping coordinate (its CRS, read by the regridding); never the
#: mapping of a fine-grid output
COARSE_GRID_MAPPING = "crs_coarse"


def grid_mapping_variables(ds: xr.Dataset) -> dict[str, str]:
    """Every CF grid-mapping variable of ``ds`` (data variable or coordinate), in the
    dataset's order, with the projection it names: cf-xarray's ``grid_mapping_names``
    turned round, e.g. ``{"rotated_pole": "rotated_latitude_longitude"}``."""
    kinds = {str(v): str(k) for k, names in ds.cf.grid_mapping_names.items() for v in names}
    return {str(n): kinds[str(n)] for n in ds.variables if str(n) in kinds}


def grid_mapping_of(ds: xr.Dataset, name: str) -> list[str]:
    """The grid-mapping variables of ``ds`` that ``ds[name]``'s ``grid_mapping`` names, as
    cf-xarray reads it: CF's short form (``"rotated_pole"``) or extended one
    (``"crs: lat lon"``); names ``ds`` lacks are left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # it warns of names ds lacks
        names = ds.cf.get_associated_variable_names(name)[GRID_MAPPING]
    return [str(n) for n in names if n in ds.variables]


def grid_mappings(ds: xr.Dataset) -> dict[str, xr.Variable]:
    """The fine grid's mapping coordinates: 0-d coordinates among
    :func:`grid_mapping_variables`, not the coarse CRS."""
    named = grid_mapping_variables(ds)
    return {
        str(name): coord.variable
        for name, coord in ds.coords.items()
        if coord.ndim == 0 and str(name) in named and name != COARSE_GRID_MAPPING
    }


def _mapping_of(name: str, var: xr.DataArray, source: xr.Dataset, names: list[str]) -> str | None:
    """The mapping ``var`` is on: its own or ``source``'s ``grid_mapping`` (short or extended CF
    form, read by cf-xarray), else the only one."""
    own = xr.Dataset({name: var.reset_coords(drop=True)}).assign_coords(
        {n: source[n] for n in names}
    )
    for ds in (own, source) if name in source.data_vars else (own,):
        found = [m for m in grid_mapping_of(ds, name) if m in names]
        if found:
            return found[0]
    return names[0] if len(names) == 1 else None


def with_grid_mapping(ds: xr.Dataset, source: xr.Dataset) -> xr.Dataset:
    """``ds`` with ``source``'s grid-mapping coordinates, each ``(y, x)`` variable naming its own.

    A variable's mapping is the one its ``grid_mapping`` attribute names, else the one its
    namesake in ``source`` names, else the only mapping ``source`` has (several and no name:
    the variable is left without one rather than given a wrong one).

    Parameters
    ----------
    ds
        An output on the fine grid.
    source
        The data it was made from (its grid-mapping coordinates are taken).

    Returns
    -------
    xr.Dataset
        ``ds`` without the coarse grid's ``crs_coarse`` (which a fine-grid output may pick up
        with the time coordinate), else itself when ``source`` has no grid-mapping coordinate.
    """
    ds = ds.drop_vars(COARSE_GRID_MAPPING, errors="ignore")
    mappings = grid_mappings(source)
    if not mappings:
        return ds
    names = sorted(mappings)
    named = {}
    for name, var in ds.data_vars.items():
        mapping = _mapping_of(str(name), var, source, names)
        if mapping is not None and {Y, X} <= set(var.dims):
            named[name] = var.assign_attrs({GRID_MAPPING: mapping})
    return ds.assign(named).assign_coords(mappings)
