"""Where an archive's cells are: its CRS and its projection coordinates, found or computed.

Pairing is by geography, never by array index. Every archive grid is *placed* by
:func:`place`, from what it carries:

* its **CRS** (a :class:`pyproj.CRS`): from a CF grid-mapping variable
  (:meth:`pyproj.CRS.from_cf`), else from cfgrib's ``GRIB_*`` attributes on the data variable
  (``GRIB_gridType`` ``polar_stereographic``, ``lambert``, ``rotated_ll``, ``regular_ll``;
  :func:`grib_crs`), else plain latitude/longitude when its axes are latitude/longitude;
* its **1-D axes**: the archive's own coordinates; or, when its dims are bare indices (cfgrib's
  ``y``/``x``) with 2-D latitude/longitude, computed by projecting those through the CRS and
  checking that they form a regular grid (each row one ``y``, each column one ``x``, to 1 % of
  a cell); or latitude/longitude axes when the 2-D ones are rectilinear without a CRS;
* its **2-D latitude/longitude**: the archive's own, or computed from the axes and the CRS.

A grid with bare index dims and no latitude/longitude cannot be placed and is refused. A
curvilinear grid without a CRS keeps index axes and is placed by its 2-D latitude/longitude
alone (:mod:`corrdiff_xr.data.regrid` then interpolates on triangles of the sphere).
Latitude/longitude are taken as coordinates on the CRS's own ellipsoid (no datum shift):
weather archives give positions, not surveys.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from corrdiff_xr.data.layout import CoordinateError
from corrdiff_xr.dims import LAT_ATTRS, LON_ATTRS

if TYPE_CHECKING:
    from pyproj import CRS, Transformer

__all__ = [
    "Placement",
    "crs_from_cf",
    "describe_crs",
    "from_geographic",
    "grib_crs",
    "place",
    "to_geographic",
]

#: the sphere GRIB uses unless it says otherwise (shapeOfTheEarth 6)
GRIB_RADIUS = 6371229.0
_GRIB_SHAPES = {0: 6367470.0, 6: 6371229.0}
# the keys a grid needs that cfgrib's default read_keys lack
_GRIB_KEYS = {
    "polar_stereographic": ["LaDInDegrees", "orientationOfTheGridInDegrees", "projectionCentreFlag"]
}
#: a derived axis may deviate from a regular grid by this fraction of a cell
_REGULAR = 0.01
_NORTH = {"degrees_north", "degree_north", "degree_n", "degrees_n"}
_EAST = {"degrees_east", "degree_east", "degree_e", "degrees_e"}


@dataclass(frozen=True)
class Placement:
    """A grid placed on the Earth: its axes (``(values, attrs)``), 2-D lat/lon and CRS.

    ``how`` says, in one line, where the CRS and the coordinates came from.
    """

    y: tuple[np.ndarray, dict[str, Any]]
    x: tuple[np.ndarray, dict[str, Any]]
    lat: np.ndarray
    lon: np.ndarray
    crs: CRS | None  # None: curvilinear, placed by lat/lon only
    how: str

    @property
    def mapping_attrs(self) -> dict[str, Any] | None:
        """CF grid-mapping attributes of a projected or rotated CRS (None otherwise)."""
        if self.crs is None or _plain_geographic(self.crs):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyproj warns that CF cannot hold everything
            return dict(self.crs.to_cf())


def _crs_module() -> ModuleType:
    try:
        import pyproj
    except ImportError as err:  # pragma: no cover - a dependency, but say what to do
        raise ImportError("placing projected grids needs pyproj: pip install pyproj") from err
    return pyproj


@functools.lru_cache(maxsize=64)
def _from_cf(key: tuple[tuple[str, Any], ...]) -> CRS:
    # pyproj looks datums up by name for every CF dict (~0.4 s): read each once
    return _crs_module().CRS.from_cf({k: list(v) if isinstance(v, tuple) else v for k, v in key})


def _cf_crs(attrs: Mapping[str, Any]) -> CRS:
    """``CRS.from_cf`` of ``attrs``, cached."""
    items = (
        (
            str(k),
            tuple(np.ravel(v).tolist()) if np.ndim(v) else (v.item() if hasattr(v, "item") else v),
        )
        for k, v in attrs.items()
    )
    return _from_cf(tuple(sorted(items)))


def _plain_geographic(crs: CRS) -> bool:
    return bool(crs.is_geographic and not crs.is_derived)


def describe_crs(crs: CRS | None) -> str:
    """One line naming ``crs``: its CF grid mapping and PROJ definition."""
    if crs is None:
        return "no CRS"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PROJ strings do not hold everything: fine to show
        name = crs.to_cf().get("grid_mapping_name", crs.name)
        return f"CRS {name} ({crs.to_proj4().replace(' +type=crs', '')})"


def _units(attrs: Mapping[str, Any]) -> str:
    return str(attrs.get("units", "")).lower().replace(" ", "_")


def _earth(attrs: Mapping[str, Any]) -> dict[str, float]:
    if "GRIB_radius" in attrs:
        return {"earth_radius": float(attrs["GRIB_radius"])}
    shape = attrs.get("GRIB_shapeOfTheEarth")
    if shape is not None and int(shape) == 5:
        return {"semi_major_axis": 6378137.0, "inverse_flattening": 298.257223563}
    return {"earth_radius": _GRIB_SHAPES.get(int(shape) if shape is not None else 6, GRIB_RADIUS)}


def grib_crs(attrs: Mapping[str, Any], *, what: str = "archive") -> CRS | None:
    """The CRS cfgrib's ``GRIB_*`` attributes describe, or None when there are none.

    Raises
    ------
    CoordinateError
        For a ``GRIB_gridType`` not handled here, or a rotation angle other than 0.
    """
    kind = attrs.get("GRIB_gridType")
    if kind is None:
        return None

    def get(key: str) -> float:
        if f"GRIB_{key}" not in attrs:
            raise CoordinateError(
                f"{what}: GRIB_gridType={kind!r} but the attribute 'GRIB_{key}' is missing; "
                "cfgrib reads it by default only for lambert and rotated_ll grids: open the "
                f"file with backend_kwargs={{'read_keys': {_GRIB_KEYS.get(kind, [key])}}}"
            )
        return float(attrs[f"GRIB_{key}"])

    cf: dict[str, Any] = dict(_earth(attrs))
    if kind == "regular_ll":
        cf["grid_mapping_name"] = "latitude_longitude"
    elif kind == "rotated_ll":
        if float(attrs.get("GRIB_angleOfRotationInDegrees", 0.0)) != 0.0:
            raise CoordinateError(
                f"{what}: GRIB rotated_ll with angleOfRotationInDegrees != 0 is not handled; "
                "regrid the archive to an unrotated grid first"
            )
        cf |= {
            "grid_mapping_name": "rotated_latitude_longitude",
            "grid_north_pole_latitude": -get("latitudeOfSouthernPoleInDegrees"),
            "grid_north_pole_longitude": (get("longitudeOfSouthernPoleInDegrees") + 360) % 360
            - 180,
        }
    elif kind == "polar_stereographic":
        lad = get("LaDInDegrees")
        south = (int(attrs.get("GRIB_projectionCentreFlag", 0)) & 128) or lad < 0
        cf |= {
            "grid_mapping_name": "polar_stereographic",
            "latitude_of_projection_origin": -90.0 if south else 90.0,
            "standard_parallel": -abs(lad) if south else abs(lad),
            "straight_vertical_longitude_from_pole": get(  # GRIB 1 and GRIB 2 names
                "LoVInDegrees" if "GRIB_LoVInDegrees" in attrs else "orientationOfTheGridInDegrees"
            ),
        }
    elif kind == "lambert":
        cf |= {
            "grid_mapping_name": "lambert_conformal_conic",
            "standard_parallel": [get("Latin1InDegrees"), get("Latin2InDegrees")],
            "longitude_of_central_meridian": get("LoVInDegrees"),
            "latitude_of_projection_origin": get("LaDInDegrees"),
        }
    else:
        raise CoordinateError(
            f"{what}: GRIB_gridType={kind!r} is not handled (polar_stereographic, lambert, "
            "rotated_ll, regular_ll are); regrid the archive to one of those first"
        )
    return _cf_crs(cf)


def _transformer(crs: CRS, inverse: bool) -> Transformer:
    pyproj = _crs_module()
    # lat/lon on the CRS's own ellipsoid: a rotated grid derives from it, a projection uses it
    base = crs.source_crs if crs.is_geographic and crs.is_derived else crs.geodetic_crs
    pair = (crs, base) if inverse else (base, crs)
    return pyproj.Transformer.from_crs(*pair, always_xy=True)


def from_geographic(crs: CRS, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(y, x)`` in ``crs`` (metres, or degrees for a rotated grid) of lat/lon points."""
    x, y = _transformer(crs, False).transform(np.asarray(lon, float), np.asarray(lat, float))
    return np.asarray(y, float), np.asarray(x, float)


def to_geographic(crs: CRS, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lat, lon)`` of points ``(y, x)`` of ``crs``."""
    lon, lat = _transformer(crs, True).transform(np.asarray(x, float), np.asarray(y, float))
    return np.asarray(lat, float), np.asarray(lon, float)


def axis_attrs(crs: CRS) -> tuple[dict[str, str], dict[str, str]]:
    """CF attributes of the ``(y, x)`` axes of ``crs``."""
    if _plain_geographic(crs):
        return dict(LAT_ATTRS), dict(LON_ATTRS)
    if crs.is_geographic:  # rotated pole
        return (
            {"standard_name": "grid_latitude", "units": "degrees"},
            {"standard_name": "grid_longitude", "units": "degrees"},
        )
    return (
        {"standard_name": "projection_y_coordinate", "units": "m"},
        {"standard_name": "projection_x_coordinate", "units": "m"},
    )


def _regular_axes(
    qy: np.ndarray, qx: np.ndarray, where: str, what: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """1-D axes of a ``(y, x)`` grid whose rows share ``qy`` and columns ``qx``, else error."""
    if qy.shape[0] < 2 or qy.shape[1] < 2:
        raise CoordinateError(f"{what}: a grid of {qy.shape} cells cannot be interpolated")
    y1, x1 = qy.mean(axis=1), qx.mean(axis=0)
    cell = min(np.median(np.abs(np.diff(y1))), np.median(np.abs(np.diff(x1))))
    dev = max(np.abs(qy - y1[:, None]).max(), np.abs(qx - x1[None, :]).max())
    if not np.isfinite(dev) or not cell > 0 or dev > _REGULAR * cell:
        raise CoordinateError(
            f"{what}: its 2-D latitude/longitude do not form a regular grid {where} (off by "
            f"{dev / cell:.3g} of a cell); the CRS's parameters do not match its coordinates: "
            "check the grid mapping (or GRIB_* attributes)"
        )
    if not (np.all(np.diff(y1) > 0) or np.all(np.diff(y1) < 0)):
        raise CoordinateError(f"{what}: its rows are not monotonic {where}")
    if not (np.all(np.diff(x1) > 0) or np.all(np.diff(x1) < 0)):
        raise CoordinateError(f"{what}: its columns are not monotonic {where}")
    return y1, x1, float(dev / cell)


def _check_axes(
    crs: CRS, lat: np.ndarray, lon: np.ndarray, y: np.ndarray, x: np.ndarray, what: str
) -> None:
    """The archive's latitude/longitude, projected, fall on its axes (to half a cell)."""
    qy, qx = from_geographic(crs, lat, lon)
    cell = min(np.median(np.abs(np.diff(y))), np.median(np.abs(np.diff(x))))
    off = max(np.nanmax(np.abs(qy - y[:, None])), np.nanmax(np.abs(qx - x[None, :]))) / cell
    if not off <= 0.5:
        raise CoordinateError(
            f"{what}: its latitude/longitude, projected through its CRS, miss its axes by "
            f"{off:.3g} cells: its grid mapping (or GRIB_* attributes) does not describe its "
            "grid; fix the grid mapping, or drop it and keep the latitude/longitude"
        )


def crs_from_cf(mapping: Mapping[str, Any] | None, what: str = "grid") -> CRS | None:
    """The CRS of CF grid-mapping attributes (None for none), or a CoordinateError."""
    if not mapping:
        return None
    pyproj = _crs_module()
    try:
        return _cf_crs(mapping)
    except pyproj.exceptions.CRSError as err:
        raise CoordinateError(
            f"{what}: its grid mapping {mapping.get('grid_mapping_name')!r} cannot be read as "
            f"a CRS ({err}); fix the grid-mapping attributes (CF conventions)"
        ) from None


def _unwrapped(lon: np.ndarray) -> np.ndarray:
    """Longitudes without 360-degree jumps, in the archive's convention at ``lon[0, 0]``."""
    out = np.unwrap(lon, period=360.0, axis=1)
    return out - 360.0 * np.round((out[:, :1] - out[0, 0]) / 360.0)


def _geographic_axes(lat: np.ndarray, lon: np.ndarray) -> bool:
    """Whether a 2-D lat/lon grid is rectilinear (a latitude/longitude grid)."""
    try:
        _regular_axes(lat, _unwrapped(lon), "", "")
    except CoordinateError:
        return False
    return True


def place(
    ds: xr.Dataset,
    ydim: str,
    xdim: str,
    *,
    lat: str | None,
    lon: str | None,
    mapping: Mapping[str, Any] | None,
    attrs: Mapping[str, Any],
    what: str,
) -> Placement:
    """Place the ``(ydim, xdim)`` grid of ``ds`` (see the module docstring).

    Parameters
    ----------
    lat, lon
        Names of 2-D latitude/longitude coordinates on ``(ydim, xdim)``, or None.
    mapping
        Attributes of the archive's CF grid-mapping variable, or None.
    attrs
        Attributes of a data variable (cfgrib puts ``GRIB_*`` there).

    Raises
    ------
    CoordinateError
        When the grid cannot be placed (bare index dims without latitude/longitude), or its
        CRS and its latitude/longitude disagree; the message names the archive and the fix.
    """
    crs, how = crs_from_cf(mapping, what), "its CF grid mapping"
    if crs is None:
        crs, how = grib_crs(attrs, what=what), f"GRIB_gridType={attrs.get('GRIB_gridType')!r}"
    how = how if crs is not None else "no CRS given"
    lat2 = ds[lat].transpose(ydim, xdim).values.astype(float) if lat else None
    lon2 = ds[lon].transpose(ydim, xdim).values.astype(float) if lon else None
    ya, xa = (
        (np.asarray(ds[d].values), dict(ds[d].attrs))
        if d in ds.coords and ds[d].ndim == 1
        else None
        for d in (ydim, xdim)
    )
    if ya is not None and xa is not None:
        if _units(ya[1]) in _NORTH and _units(xa[1]) in _EAST:
            ya[1].setdefault("standard_name", "latitude")
            xa[1].setdefault("standard_name", "longitude")
            if crs is None:
                crs = _cf_crs({"grid_mapping_name": "latitude_longitude"})
                how = "its latitude/longitude axes"
        scale = 1000.0 if _units(ya[1]) == "km" else 1.0
        # a latitude without its longitude (or the reverse) places nothing
        if lat2 is not None and lon2 is not None and crs is not None:
            if not _plain_geographic(crs):
                _check_axes(crs, lat2, lon2, ya[0] * scale, xa[0] * scale, what)
        elif crs is not None:
            gy, gx = np.meshgrid(ya[0] * scale, xa[0] * scale, indexing="ij")
            lat2, lon2 = to_geographic(crs, gy, gx)
            how += "; latitude/longitude computed from its axes"
        if lat2 is None or lon2 is None:
            raise CoordinateError(
                f"{what}: the grid ({ydim}, {xdim}) has no CRS and no 2-D latitude/longitude; "
                "add a CF grid mapping or latitude/longitude coordinates (standard_name "
                "'latitude'/'longitude') so its cells can be placed"
            )
        how = f"{describe_crs(crs)}, from {how}; axes from the archive"
        return Placement(ya, xa, lat2, lon2, crs, how)
    if lat2 is None or lon2 is None:
        raise CoordinateError(
            f"{what}: dims ({ydim}, {xdim}) are bare indices with no latitude/longitude; add "
            "2-D latitude/longitude coordinates (or 1-D projection coordinates and a CF grid "
            "mapping) so its cells can be placed: grids are never paired by index"
        )
    if crs is None:
        if not _geographic_axes(lat2, lon2):  # curvilinear: placed by latitude/longitude only
            index = ({"long_name": f"{ydim} index"}, {"long_name": f"{xdim} index"})
            return Placement(
                (np.arange(lat2.shape[0]), index[0]), (np.arange(lat2.shape[1]), index[1]),
                lat2, lon2, None, "no CRS: curvilinear, placed by its 2-D latitude/longitude",
            )  # fmt: skip
        crs = _cf_crs({"grid_mapping_name": "latitude_longitude"})
        how = "its rectilinear 2-D latitude/longitude (no CRS given)"
    if _plain_geographic(crs):  # keep the archive's own longitude convention
        qy, qx = lat2, _unwrapped(lon2)
    else:
        qy, qx = from_geographic(crs, lat2, lon2)
    y1, x1, dev = _regular_axes(qy, qx, f"in its CRS ({how})", what)
    yattrs, xattrs = axis_attrs(crs)
    how = (
        f"{describe_crs(crs)}, from {how}; axes computed from its 2-D latitude/longitude "
        f"(regular to {dev:.2g} of a cell)"
    )
    return Placement((y1, yattrs), (x1, xattrs), lat2, lon2, crs, how)
