"""Radially averaged power spectra over the fine grid (private; see ``scoring``)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from corrdiff_xr.dims import MEMBER, X, Y
from corrdiff_xr.scoring import kernels
from corrdiff_xr.scoring.common import (
    Data,
    DataT,
    Dims,
    _back,
    _mean_dims,
    _prepare,
    _single_chunk,
    _sqrt,
    _to_dataset,
)

WAVENUMBER = "wavenumber"


_LENGTH_UNITS_KM = {
    "m": 1e-3,
    "metre": 1e-3,
    "meter": 1e-3,
    "metres": 1e-3,
    "meters": 1e-3,
    "km": 1.0,
    "kilometre": 1.0,
    "kilometer": 1.0,
    "kilometres": 1.0,
    "kilometers": 1.0,
}


_KM_PER_DEGREE = 111.195  # mean Earth radius 6371 km


def _spacing_km(ds: xr.Dataset, dims: Sequence[Hashable]) -> tuple[float, float] | None:
    """Grid spacing (dy, dx) in km from coordinate units, or None when unknown.

    Lengths (m, km) are converted directly. Degrees (a regular lat/lon grid) use
    111.195 km per degree, the column spacing scaled by cos of the domain's mean (grid)
    latitude, which is close enough for the limited-area domains downscaling works on and
    also right for rotated-pole grids (``grid_latitude`` in degrees).
    """
    spacing = []
    for axis, d in enumerate(dims):
        if d not in ds.coords or ds.sizes[d] < 2:
            return None
        units = str(ds[d].attrs.get("units", "")).strip().lower()
        scale = _LENGTH_UNITS_KM.get(units)
        if scale is None and units.startswith("degree"):
            scale = _KM_PER_DEGREE
            if axis == 1:  # a longitude step shrinks with (grid) latitude
                row = ds[dims[0]]
                row_units = str(row.attrs.get("units", "")).strip().lower()
                lat_mean = float(row.mean()) if row_units.startswith("degree") else 0.0
                scale *= np.cos(np.deg2rad(lat_mean))
        if scale is None:
            return None
        step = np.diff(np.asarray(ds[d].values, dtype=np.float64)) * scale
        # 1%: coordinates stored as float32 wobble by ~0.2% of a 1.5 km step
        if not np.allclose(step, step.mean(), rtol=1e-2):
            raise ValueError(f"coordinate {d!r} is not evenly spaced; pass spacing= explicitly")
        spacing.append(abs(float(step.mean())))
    return spacing[0], spacing[1]


def power_spectrum(
    data: DataT,
    *,
    dim: Dims = None,
    spatial_dims: tuple[str, str] = (Y, X),
    spacing: float | tuple[float, float] | None = None,
    member_dim: str = MEMBER,
) -> DataT:
    r"""Radially averaged (isotropic) power spectral density over ``spatial_dims``.

    For each 2-D field (mean removed) the squared FFT amplitudes are summed over annuli of
    width :math:`\Delta k` (the coarser fundamental wavenumber) and divided by
    :math:`\Delta k`, i.e. the azimuthal average times the annulus's number of modes, so
    :math:`\sum_k E(k)\,\Delta k` equals the field's variance (Parseval). The spectra are
    then averaged over ``dim`` (default every other dim except ``member_dim``, so an
    ensemble keeps one spectrum per member).

    Parameters
    ----------
    data : Dataset or DataArray
        Fields with ``spatial_dims``; these are rechunked lazily to one chunk if needed.
    dim : str or sequence of str, optional
        Dims to average spectra over (not the spatial ones).
    spatial_dims : (str, str)
        The (row, column) dims of the grid.
    spacing : float or (float, float), optional
        Grid spacing in km (dy, dx). By default it is read from the coordinates when their
        ``units`` are a length (m, km) or degrees (regular lat/lon, 111.195 km per degree,
        longitude scaled by cos of the mean latitude); otherwise wavenumbers are in cycles
        per pixel.
    member_dim : str
        Ensemble dimension, kept by default.

    Returns
    -------
    Dataset or DataArray
        Dimension ``wavenumber`` (cycles per km, or per pixel; its attribute ``nyquist`` is
        the highest wavenumber resolved along both axes) with coordinate ``wavelength``;
        units ``(units)^2 km`` (or ``pixel``).
    """
    ds, _ = _to_dataset(data, "data")
    for d in spatial_dims:
        if d not in ds.dims:
            raise ValueError(f"power_spectrum needs dimension {d!r}; dims are {tuple(ds.dims)}")
    if spacing is None:
        km = _spacing_km(ds, spatial_dims)
    else:
        given = np.broadcast_to(np.asarray(spacing, dtype=float), (2,))  # one, or (dy, dx)
        km = (float(given[0]), float(given[1]))
    dy, dx = km if km is not None else (1.0, 1.0)
    length = "km" if km is not None else "pixel"
    ny, nx = ds.sizes[spatial_dims[0]], ds.sizes[spatial_dims[1]]
    bin_index, dk, nbins = kernels.radial_bins(ny, nx, dy=dy, dx=dx)
    wavenumber = dk * np.arange(1, nbins + 1)
    out = {}
    for name, var in ds.data_vars.items():
        if not set(spatial_dims) <= set(var.dims):
            continue  # e.g. a scalar or 1-D variable riding along
        for d in spatial_dims:
            var = _single_chunk(var, d)
        out[name] = xr.apply_ufunc(
            kernels.radial_spectrum,
            var,
            input_core_dims=[list(spatial_dims)],
            output_core_dims=[[WAVENUMBER]],
            kwargs={"bin_index": bin_index, "dk": dk, "nbins": nbins},
            dask="parallelized",
            output_dtypes=[np.float64],
            dask_gufunc_kwargs={"output_sizes": {WAVENUMBER: nbins}},
        )
        units = var.attrs.get("units")
        out[name].attrs = {
            "long_name": f"power spectral density of {var.attrs.get('long_name', name)}",
            "units": f"({units})^2 {length}" if units else length,
        }
    if not out:
        raise ValueError(f"no variable has both spatial dims {spatial_dims}")
    spec = xr.Dataset(out).assign_coords(
        {
            WAVENUMBER: (
                WAVENUMBER,
                wavenumber,
                {
                    "units": f"cycles per {length}",
                    "long_name": "wavenumber",
                    # bins above this are the grid's corner modes (kept for Parseval)
                    "nyquist": 0.5 / max(dy, dx),
                },
            ),
            "wavelength": (
                WAVENUMBER,
                1.0 / wavenumber,
                {"units": length, "long_name": "wavelength"},
            ),
        }
    )
    spatial_coords = [c for c in spec.coords if set(spec[c].dims) & set(spatial_dims)]
    spec = spec.drop_vars(spatial_coords)
    dims = [d for d in _mean_dims(spec, dim, member_dim) if d != WAVENUMBER]
    result = spec.mean(dims, keep_attrs=True) if dims else spec
    return _back(result, data)


def log_spectral_distance(
    forecast: DataT,
    truth: Data,
    *,
    dim: Dims = None,
    member_dim: str = MEMBER,
    spatial_dims: tuple[str, str] = (Y, X),
    spacing: float | tuple[float, float] | None = None,
) -> DataT:
    r"""Log-spectral distance in dB between the forecast's and the truth's power spectra,
    :math:`\sqrt{\operatorname{mean}_k (10 \log_{10} E_f(k) / E_t(k))^2}`.

    Both spectra are those of :func:`power_spectrum`, averaged over the members and ``dim``
    (default all but ``member_dim`` and the spatial dims) before the ratio; wavenumbers
    above the Nyquist of both axes (the grid's corner modes) are left out. The forecast is
    masked where the truth is NaN, so both see the same gaps. 0 is a perfect spectrum;
    3 dB means power off by a factor of two on average (in the log sense).
    """
    fc, tr, _ = _prepare(forecast, truth, member_dim)
    fc = fc.where(tr.notnull())
    dims = [d for d in _mean_dims(fc, dim, member_dim) if d not in spatial_dims]
    spec_fc = power_spectrum(
        fc, dim=dims, spatial_dims=spatial_dims, spacing=spacing, member_dim=member_dim
    ).mean(member_dim)
    spec_tr = power_spectrum(
        tr, dim=[d for d in dims if d in tr.dims], spatial_dims=spatial_dims, spacing=spacing,
        member_dim=member_dim,
    )  # fmt: skip
    k = spec_fc[WAVENUMBER]
    resolved = k <= k.attrs["nyquist"] * (1 + 1e-9)
    # numpy's stubs type a ufunc of a Dataset as an ndarray; xarray returns a Dataset
    ratio_db: xr.Dataset = 10.0 * np.log10(spec_fc / spec_tr)  # type: ignore[assignment]
    lsd = _sqrt((ratio_db**2).where(resolved).mean(WAVENUMBER))
    lsd = lsd.drop_vars([c for c in lsd.coords if c not in lsd.dims])
    for name, v in lsd.data_vars.items():
        v.attrs = {"long_name": f"log-spectral distance of {name}", "units": "dB"}
    return _back(lsd, forecast)
