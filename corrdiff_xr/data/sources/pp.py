"""A small reader for the Met Office PP field format (no iris).

A PP file is a sequence of Fortran unformatted records, two per field: a 64-word header
(45 integers then 19 reals) and a data record holding ``LBROW x LBNPT`` values followed by
``LBEXT`` words of "extra data" (e.g. explicit coordinate vectors for irregular grids). Each
record is framed by a 4-byte big-endian length before and after it. Words are big-endian and
32 bits wide; a header record of 512 bytes means 64-bit words, which we also accept.

Only what CorrDiff's sample data needs is implemented: unpacked data (``LBPACK`` = 0), real or
integer values (``LBUSER(1)``), regular or explicit-vector grids, rotated poles. Anything
else (WGRIB/CRAY/run-length packing, land/sea compression) raises a ``PPFormatError`` that
names the file, the field and the header word, rather than returning wrong numbers.

Word meanings follow the Unified Model documentation paper F3 ("Format of PP files").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import xarray as xr

from corrdiff_xr.dims import LAT_ATTRS, LON_ATTRS
from corrdiff_xr.errors import CorrDiffError

__all__ = [
    "STASH_NAMES",
    "PPField",
    "PPFormatError",
    "open_pp",
    "read_pp",
    "rotated_to_geographic",
]

#: 1-based header word numbers of the integer part (UMDP F3).
_INT_WORDS = {
    "LBYR": 1, "LBMON": 2, "LBDAT": 3, "LBHR": 4, "LBMIN": 5, "LBSEC": 6,
    "LBYRD": 7, "LBMOND": 8, "LBDATD": 9, "LBHRD": 10, "LBMIND": 11, "LBSECD": 12,
    "LBTIM": 13, "LBFT": 14, "LBLREC": 15, "LBCODE": 16, "LBHEM": 17, "LBROW": 18,
    "LBNPT": 19, "LBEXT": 20, "LBPACK": 21, "LBREL": 22, "LBFC": 23, "LBCFC": 24,
    "LBPROC": 25, "LBVC": 26, "LBRVC": 27, "LBEXP": 28, "LBEGIN": 29, "LBNREC": 30,
    "LBPROJ": 31, "LBTYP": 32, "LBLEV": 33, "LBSRCE": 38,
    "LBUSER1": 39, "LBUSER2": 40, "LBUSER3": 41, "LBUSER4": 42, "LBUSER5": 43,
    "LBUSER6": 44, "LBUSER7": 45,
}  # fmt: skip
#: 1-based header word numbers of the real part.
_REAL_WORDS = {
    "BDATUM": 50, "BACC": 51, "BLEV": 52, "BRLEV": 53, "BHLEV": 54, "BHRLEV": 55,
    "BPLAT": 56, "BPLON": 57, "BGOR": 58, "BZY": 59, "BDY": 60, "BZX": 61, "BDX": 62,
    "BMDI": 63, "BMKS": 64,
}  # fmt: skip
_N_INT = 45
_N_REAL = 19

#: CF standard names of the STASH codes (section * 1000 + item) we know.
STASH_NAMES: dict[int, tuple[str, str]] = {
    4: ("air_potential_temperature", "K"),
    33: ("surface_altitude", "m"),
    30: ("land_binary_mask", "1"),
    16203: ("air_temperature", "K"),
    3236: ("air_temperature", "K"),
}

#: types of the extra-data vectors (UMDP F3 table 4)
_EXTRA_X, _EXTRA_Y = 1, 2


class PPFormatError(CorrDiffError, ValueError):
    """The file is not PP, or uses a feature this reader does not implement."""


@dataclass(frozen=True)
class PPField:
    """One PP field: its header words, its 2-D data and its extra-data vectors.

    Attributes
    ----------
    ints, reals : ndarray
        The 45 integer and 19 real header words, in file order.
    data : ndarray
        ``(LBROW, LBNPT)`` values, first row southernmost (row ``j`` lies at ``y[j]``);
        missing values (``BMDI``) are NaN for real fields.
    extra : dict
        Extra-data vectors keyed by their type code (1 = x coordinates, 2 = y coordinates).
    """

    ints: np.ndarray
    reals: np.ndarray
    data: np.ndarray
    extra: dict[int, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:  # int or float, by the word's kind
        """Header word by its UMDP F3 name, e.g. ``field["LBFT"]`` or ``field["BPLAT"]``."""
        if name in _INT_WORDS:
            return int(self.ints[_INT_WORDS[name] - 1])
        if name in _REAL_WORDS:
            return float(self.reals[_REAL_WORDS[name] - _N_INT - 1])
        raise KeyError(f"unknown PP header word {name!r}")

    @property
    def stash(self) -> int:
        """STASH code, section * 1000 + item (``LBUSER(4)``)."""
        return self["LBUSER4"]

    @property
    def stash_string(self) -> str:
        """STASH code in the usual ``mMMsSSiIII`` spelling."""
        return f"m{self['LBUSER7']:02d}s{self.stash // 1000:02d}i{self.stash % 1000:03d}"

    @property
    def validity_time(self) -> np.datetime64:
        """Validity time (``LBYR``..``LBMIN``, plus seconds in header release 3)."""
        return _datetime(self, "LBYR", "LBMON", "LBDAT", "LBHR", "LBMIN", "LBSEC")

    @property
    def reference_time(self) -> np.datetime64:
        """Data (forecast reference) time (``LBYRD``..``LBMIND``)."""
        return _datetime(self, "LBYRD", "LBMOND", "LBDATD", "LBHRD", "LBMIND", "LBSECD")

    @property
    def x(self) -> np.ndarray:
        """Longitudes (rotated if the pole is) of the columns, degrees."""
        return self._axis("BZX", "BDX", "LBNPT", _EXTRA_X)

    @property
    def y(self) -> np.ndarray:
        """Latitudes (rotated if the pole is) of the rows, degrees."""
        return self._axis("BZY", "BDY", "LBROW", _EXTRA_Y)

    @property
    def is_rotated(self) -> bool:
        """Whether the grid's pole is not the geographic North Pole."""
        return not (self["BPLAT"] == 90.0 and self["BPLON"] in (0.0, 180.0))

    def _axis(self, zero: str, step: str, count: str, extra_code: int) -> np.ndarray:
        if self[step] != 0.0:
            # UMDP F3: the first point is one step beyond the "zeroth" point
            n = np.arange(1, self[count] + 1, dtype=np.float64)
            return (self[zero] + n * self[step]).astype(np.float64)
        if extra_code in self.extra:
            return self.extra[extra_code].astype(np.float64)
        raise PPFormatError(
            f"field {self.stash_string}: {step}=0 (irregular grid) but no extra-data "
            f"coordinate vector of type {extra_code} is present"
        )


def _datetime(f: PPField, yr: str, mon: str, day: str, hr: str, mn: str, sec: str) -> np.datetime64:
    seconds = f[sec] if f["LBREL"] >= 3 else 0
    text = f"{f[yr]:04d}-{f[mon]:02d}-{f[day]:02d}T{f[hr]:02d}:{f[mn]:02d}:{seconds:02d}"
    return np.datetime64(text, "ns")


def _read_record(fh: IO[bytes], name: str, what: str) -> bytes | None:
    head = fh.read(4)
    if not head:
        return None
    if len(head) != 4:
        raise PPFormatError(f"{name}: truncated record marker while reading {what}")
    length = int(np.frombuffer(head, ">i4")[0])
    if length <= 0:
        raise PPFormatError(f"{name}: record length {length} before {what} (not a PP file?)")
    body = fh.read(length)
    tail = fh.read(4)
    if len(body) != length or len(tail) != 4:
        raise PPFormatError(f"{name}: file ends inside {what} ({length} bytes expected)")
    if int(np.frombuffer(tail, ">i4")[0]) != length:
        raise PPFormatError(
            f"{name}: record markers disagree around {what} (not a big-endian PP file?)"
        )
    return body


def _parse_extra(raw: bytes, width: int, name: str, label: str) -> dict[int, np.ndarray]:
    """Split the extra-data words into vectors; each starts with ``1000 * length + type``."""
    int_t, real_t = (">i4", ">f4") if width == 4 else (">i8", ">f8")
    vectors: dict[int, np.ndarray] = {}
    n_words, i = len(raw) // width, 0
    while i < n_words:
        code = int(np.frombuffer(raw[i * width : (i + 1) * width], int_t)[0])
        length, kind = divmod(code, 1000)
        if length <= 0 or i + 1 + length > n_words:
            raise PPFormatError(f"{name}: field {label}: malformed extra-data word {code}")
        chunk = raw[(i + 1) * width : (i + 1 + length) * width]
        vectors[kind] = np.frombuffer(chunk, real_t).astype(np.float64)
        i += 1 + length
    return vectors


def iter_pp(fh: IO[bytes], *, name: str = "<stream>") -> Iterator[PPField]:
    """Yield the fields of an open binary PP stream, one header+data record pair at a time."""
    index = 0
    while True:
        header = _read_record(fh, name, f"header of field {index}")
        if header is None:
            return
        if len(header) not in (256, 512):
            raise PPFormatError(
                f"{name}: field {index} header is {len(header)} bytes; a PP header is "
                "64 words of 4 or 8 bytes (256 or 512)"
            )
        width = len(header) // 64
        int_t, real_t = (">i4", ">f4") if width == 4 else (">i8", ">f8")
        ints = np.frombuffer(header[: _N_INT * width], int_t).astype(np.int64)
        reals = np.frombuffer(header[_N_INT * width :], real_t).astype(np.float64)
        body = _read_record(fh, name, f"data of field {index}")
        if body is None:
            raise PPFormatError(f"{name}: field {index} has a header but no data record")
        probe = PPField(ints, reals, np.empty((0, 0)))
        label = f"{index} ({probe.stash_string})"
        lbpack = probe["LBPACK"]
        if lbpack % 10 != 0 or (lbpack // 10) % 10 != 0:
            raise PPFormatError(
                f"{name}: field {label} has LBPACK={lbpack}; only unpacked data (LBPACK=0) "
                "is supported by this reader"
            )
        nrow, npt, next_ = probe["LBROW"], probe["LBNPT"], probe["LBEXT"]
        expected = (nrow * npt + next_) * width
        if len(body) < expected:
            raise PPFormatError(
                f"{name}: field {label} data record has {len(body)} bytes, header "
                f"LBROW={nrow} LBNPT={npt} LBEXT={next_} needs {expected}"
            )
        is_int = probe["LBUSER1"] == 2
        values = np.frombuffer(body[: nrow * npt * width], int_t if is_int else real_t)
        data = values.reshape(nrow, npt)
        if is_int:
            data = data.astype(np.int64)
        else:
            data = data.astype(np.float32 if width == 4 else np.float64)
            data[data == np.asarray(probe["BMDI"], data.dtype)] = np.nan
        raw = body[nrow * npt * width : expected]
        extra = _parse_extra(raw, width, name, label) if next_ else {}
        yield PPField(ints, reals, data, extra)
        index += 1


def read_pp(path: str | os.PathLike) -> list[PPField]:
    """Read every field of a PP file.

    Parameters
    ----------
    path
        Local path of the file.

    Returns
    -------
    list of PPField
        In file order.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"PP file not found: {name}")
    with open(name, "rb") as fh:
        return list(iter_pp(fh, name=name))


def rotated_to_geographic(
    rlat: np.ndarray, rlon: np.ndarray, *, pole_lat: float, pole_lon: float
) -> tuple[np.ndarray, np.ndarray]:
    """Geographic latitude/longitude (degrees) of points on a rotated-pole grid.

    The rotated grid's north pole sits at geographic ``(pole_lat, pole_lon)`` and its
    ``(0, 0)`` point at ``(90 - pole_lat, pole_lon - 180)`` (UM convention, ``BGOR`` = 0):

    ``sin(lat) = sin(pole_lat) sin(rlat) + cos(pole_lat) cos(rlat) cos(rlon)``

    ``lon = pole_lon - 180 + atan2(cos(rlat) sin(rlon),
    sin(pole_lat) cos(rlat) cos(rlon) - cos(pole_lat) sin(rlat))``

    Longitudes are returned in [-180, 180).
    """
    phi, lam = np.deg2rad(np.asarray(rlat, float)), np.deg2rad(np.asarray(rlon, float))
    p = np.deg2rad(pole_lat)
    sin_lat = np.sin(p) * np.sin(phi) + np.cos(p) * np.cos(phi) * np.cos(lam)
    lat = np.rad2deg(np.arcsin(np.clip(sin_lat, -1.0, 1.0)))
    dlon = np.arctan2(
        np.cos(phi) * np.sin(lam),
        np.sin(p) * np.cos(phi) * np.cos(lam) - np.cos(p) * np.sin(phi),
    )
    lon = pole_lon - 180.0 + np.rad2deg(dlon)
    return lat, (lon + 180.0) % 360.0 - 180.0


def _field_name(stash: int, lbuser7: int) -> tuple[str, str]:
    if stash in STASH_NAMES:
        return STASH_NAMES[stash]
    return f"m{lbuser7:02d}s{stash // 1000:02d}i{stash % 1000:03d}", ""


def open_pp(path: str | os.PathLike) -> xr.Dataset:
    """Read a PP file into an xarray Dataset, one variable per STASH code.

    Fields of one STASH code are stacked over validity time and model level (``LBLEV``)
    into ``(time, model_level_number, grid_latitude, grid_longitude)``, dropping axes of
    length one. Grid coordinates are the (rotated) latitude/longitude vectors; the rotated
    pole is kept in the attrs ``grid_north_pole_latitude``/``_longitude`` and 2-D geographic
    ``latitude``/``longitude`` coordinates are attached.
    """
    fields = read_pp(path)
    if not fields:
        raise PPFormatError(f"{os.fspath(path)}: no PP fields found")
    first = fields[0]
    x, y = first.x, first.y
    for f in fields[1:]:
        if f.data.shape != first.data.shape or not (np.allclose(f.x, x) and np.allclose(f.y, y)):
            raise PPFormatError(
                f"{os.fspath(path)}: field {f.stash_string} is on a different grid from "
                f"{first.stash_string}; open_pp needs one grid per file"
            )
    pole = {"grid_north_pole_latitude": first["BPLAT"], "grid_north_pole_longitude": first["BPLON"]}
    rot = first.is_rotated
    ydim, xdim = ("grid_latitude", "grid_longitude") if rot else ("latitude", "longitude")
    variables: dict[str, xr.DataArray] = {}
    for stash in dict.fromkeys(f.stash for f in fields):
        group = [f for f in fields if f.stash == stash]
        times = sorted({f.validity_time for f in group})
        levels = sorted({f["LBLEV"] for f in group})
        cube = np.full((len(times), len(levels), *first.data.shape), np.nan, np.float32)
        blev = np.full(len(levels), np.nan)
        sigma = np.full(len(levels), np.nan)
        for f in group:
            it, il = times.index(f.validity_time), levels.index(f["LBLEV"])
            cube[it, il] = f.data
            blev[il], sigma[il] = f["BLEV"], f["BHLEV"]
        name, units = _field_name(stash, group[0]["LBUSER7"])
        da = xr.DataArray(
            cube,
            dims=("time", "model_level_number", ydim, xdim),
            coords={
                "time": np.array(times, "datetime64[ns]"),
                "model_level_number": np.array(levels, np.int64),
                "level_height": ("model_level_number", blev, {"units": "m"}),
                "sigma": ("model_level_number", sigma, {"units": "1"}),
            },
            attrs={"standard_name": name, "units": units, "STASH": group[0].stash_string},
        )
        da = da.isel({d: 0 for d in ("time", "model_level_number") if da.sizes[d] == 1})
        if "model_level_number" not in da.dims:
            da = da.drop_vars(["model_level_number", "level_height", "sigma"])
        variables[name] = da
    ds = xr.Dataset(variables)
    ds = ds.assign_coords({ydim: (ydim, y), xdim: (xdim, x)})
    if rot:
        lat, lon = rotated_to_geographic(
            y[:, None],
            x[None, :],
            pole_lat=pole["grid_north_pole_latitude"],
            pole_lon=pole["grid_north_pole_longitude"],
        )
        ds = ds.assign_coords(
            latitude=((ydim, xdim), lat, LAT_ATTRS),
            longitude=((ydim, xdim), lon, LON_ATTRS),
        )
        ds.attrs.update(pole)
    ds[ydim].attrs.update(units="degrees", standard_name=ydim)
    ds[xdim].attrs.update(units="degrees", standard_name=xdim)
    ds.attrs["source"] = os.path.basename(os.fspath(path))
    return ds
