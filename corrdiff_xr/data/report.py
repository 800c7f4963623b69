"""What a source holds and what training and inference would do with it, as plain text.

:func:`describe` reports on anything :func:`corrdiff_xr.data.open_source` opens (a canonical
store, a catalog entry, a pair of native archives): roles, grids (dims, coordinate systems,
orientation, grid mapping), time range, calendar and step, chunking, masks, statistics,
what pairing changed, and for each problem the fix. :func:`describe_archive` reports on one
native archive that is not a pair yet: the axes found from its CF metadata, per variable,
and what :func:`corrdiff_xr.data.open_archives` would do with it. Reading is limited to
coordinates, plus one time step per target for the masks (``scan=True`` reads them all).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from corrdiff_xr._cf import grid_mapping_variables, grid_mappings
from corrdiff_xr.data.integrity import (
    ABSENT_KEY,
    ChunkSizeError,
    check_read,
    human_size,
    read_budget,
)
from corrdiff_xr.data.layout import DataError
from corrdiff_xr.data.pair import DownscalingData
from corrdiff_xr.dims import LAT, LAT_COARSE, LON, LON_COARSE, TIME, X_COARSE, Y_COARSE, X, Y

if TYPE_CHECKING:
    import cftime

__all__ = ["describe", "describe_archive", "describe_refused"]

#: network presets whose divisibility a grid is checked against (NetworkConfig.preset)
_PRESETS = ("mini", "normal")
_MIB = 2**20
#: gigabytes ``inspect`` reads at most unless ``--scan-budget`` says otherwise
SCAN_BUDGET_GB = 16.0


def _orientation(values: np.ndarray) -> str:
    return "descending" if values.size > 1 and values[1] < values[0] else "ascending"


def _axis(ds: xr.Dataset, dim: str) -> str:
    coord = ds[dim]
    kind = coord.attrs.get("standard_name") or coord.attrs.get("long_name") or "index"
    units = coord.attrs.get("units", "")
    values = np.asarray(coord.values)
    return f"{dim}: {kind} [{units}] {values[0]:.4g}..{values[-1]:.4g} ({_orientation(values)})"


def _grid_mapping(ds: xr.Dataset) -> str:
    kinds = grid_mapping_variables(ds)
    for name in grid_mappings(ds):  # the fine grid's, not the coarse CRS
        return f"grid mapping '{name}' ({kinds[name]})"
    return "no grid mapping variable"


def _box(ds: xr.Dataset, lat: str, lon: str) -> str:
    return (
        f"lat {float(ds[lat].min()):.3f}..{float(ds[lat].max()):.3f}, "
        f"lon {float(ds[lon].min()):.3f}..{float(ds[lon].max()):.3f}"
    )


def _overlap(ds: xr.Dataset) -> tuple[list[str], list[str]]:
    """The share of the fine domain the coarse grid covers (half a cell beyond its edge)."""
    from corrdiff_xr.data.positions import coverage_mask

    try:
        share = float(coverage_mask(xr.Dataset(coords=ds.coords)).mean())
    except DataError as err:  # lat/lon that do not match the CRS, say: a problem, not a crash
        return [], [f"overlap of the grids cannot be computed: {err}"]
    line = f"overlap: the coarse grid covers {100 * share:.1f} % of the fine domain"
    if share == 1:
        return [line], []
    return [line], [
        f"the coarse grid covers {100 * share:.1f} % of the fine domain; fine pixels beyond "
        "it take edge values: give a coarse archive around the whole domain"
    ]


def _time_lines(ds: xr.Dataset) -> list[str]:
    from corrdiff_xr.data.times import calendar_of, to_ns

    times = ds[TIME].values
    ns = to_ns(times)
    steps = np.unique(np.diff(ns)) // 1_000_000_000 if ns.size > 1 else np.array([])
    step = (
        "one step" if steps.size == 0
        else f"every {_duration(steps[0])}" if steps.size == 1
        else f"irregular steps ({_duration(steps.min())}..{_duration(steps.max())})"
    )  # fmt: skip
    first, last = (_when(t) for t in (times[0], times[-1]))
    return [f"time: {times.size} steps, {first} .. {last}, calendar {calendar_of(times)}, {step}"]


def _duration(seconds: int) -> str:
    """``21600`` -> ``"6 hours"``: the largest unit that counts it whole."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds and seconds % size == 0:
            n = int(seconds) // size
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{seconds} seconds"


def _when(value: np.datetime64 | cftime.datetime) -> str:
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="m"))
    return value.strftime("%Y-%m-%dT%H:%M")  # cftime


def _chunk_lines(ds: xr.Dataset, names: Iterable[str]) -> tuple[list[str], list[str]]:
    lines, problems = [], []
    for name in names:
        var = ds[name]
        if var.chunks is None:
            lines.append(f"  {name}: in memory {dict(var.sizes)}")
            continue
        chunk = {d: max(c) for d, c in zip(var.dims, var.chunks)}
        size = float(np.prod(list(chunk.values()))) * var.dtype.itemsize
        lines.append(f"  {name}: {var.dtype} chunks {chunk} ({size / _MIB:.2f} MiB)")
        if size > 256 * _MIB:
            problems.append(
                f"{name}: chunks of {size / _MIB:.0f} MiB are large; rechunk time smaller "
                f"(e.g. {{'time': 1}}) so a task reads less"
            )
        if TIME in chunk and chunk[TIME] > 64:
            problems.append(
                f"{name}: {chunk[TIME]} times per chunk; training draws random times, so 1-8 "
                "per chunk reads far less"
            )
    return lines, problems


def _mask_lines(pair: DownscalingData, scan: bool, budget: float) -> list[str]:
    """NaN share per target, streamed chunk by chunk after a check of the declared size."""
    names = list(pair.targets)
    parts = {n: pair.dataset[n] if scan else pair.dataset[n].isel({TIME: 0}) for n in names}
    size = sum(v.size * v.dtype.itemsize for v in parts.values())
    where = "all times" if scan else "first time"
    check_read(
        size, f"inspect{' --scan' if scan else ''} of the targets {names} ({where})",
        budget=budget, raise_with="pass --scan-budget GB to raise it",
    )  # fmt: skip
    lines = [f"masks ({where}: {human_size(size)} read, budget {human_size(budget)}):"]
    for name, var in parts.items():
        try:
            nan = float(var.isnull().mean())
        except ChunkSizeError as err:
            raise ChunkSizeError(f"target '{name}': {err}") from None
        if nan == 0:
            lines.append(f"  {name}: complete ({where})")
        else:
            lines.append(
                f"  {name}: {100 * nan:.1f} % NaN ({where}): trained with the masked loss; "
                "generated values are NaN where it never has a value"
            )
    return lines


def _absent_problems(ds: xr.Dataset, names: Iterable[str]) -> list[str]:
    """Absent chunks open_dataset accepted (they read as NaN): worth a look all the same."""
    problems = []
    for name in names:
        if ABSENT_KEY in ds[name].encoding:
            count, total, first, fill = ds[name].encoding[ABSENT_KEY]
            problems.append(
                f"{name}: {count} of {total} chunks are absent from the store"
                f"{f' (the first at {first})' if first else ''} and read as {fill}; if the "
                "store was not written so on purpose, re-copy it"
            )
    return problems


def _shape_lines(ny: int, nx: int) -> tuple[list[str], list[str]]:
    lines: list[str] = []
    problems: list[str] = []
    from corrdiff_xr.config import NetworkConfig

    for name in _PRESETS:
        levels = len(NetworkConfig.preset(name).channel_mult)
        m = 2 ** (levels - 1)
        if ny % m == 0 and nx % m == 0:
            lines.append(f"  network preset '{name}' ({levels} levels): {ny}x{nx} fits")
            continue
        fit, pad = (ny // m * m, nx // m * m), (-(-ny // m) * m, -(-nx // m) * m)
        # padded by default (network.padding), so a note, not a problem
        lines.append(
            f"  network preset '{name}' ({levels} levels): {ny}x{nx} is padded to "
            f"{pad[0]}x{pad[1]} and cropped back; with network.padding='none' crop {ny}x{nx} -> "
            f"{fit[0]}x{fit[1]} (a pair's window={{'y': [0, {fit[0]}], 'x': [0, {fit[1]}]}})"
        )
    return lines, problems


def describe(
    pair: DownscalingData, *, scan: bool = False, budget_gb: float = SCAN_BUDGET_GB
) -> str:
    """A report on ``pair`` (see the module docstring).

    Array reads (the targets' masks, the static fields) are refused past ``budget_gb``
    gigabytes of declared size, before anything is read.
    """
    from corrdiff_xr.data.archives import NOTES_ATTR

    ds = pair.dataset
    budget = read_budget(budget_gb)
    lines = [
        f"inputs (coarse): {list(pair.inputs)}",
        f"targets (fine): {list(pair.targets)}",
        f"static: {list(pair.static)}",
        f"fine grid {ds.sizes[Y]} x {ds.sizes[X]}, {_grid_mapping(ds)}",
        f"  {_axis(ds, Y)}",
        f"  {_axis(ds, X)}",
        f"  {_box(ds, LAT, LON)}",
        f"coarse grid {ds.sizes[Y_COARSE]} x {ds.sizes[X_COARSE]}, regridded by "
        f"{pair.regrid_weights.scheme} (placed by {pair.regrid_weights.method})",
        f"  {_axis(ds, Y_COARSE)}",
        f"  {_axis(ds, X_COARSE)}",
        f"  {_box(ds, LAT_COARSE, LON_COARSE)}",
    ]
    overlap, problems = _overlap(ds)
    lines += [*overlap, *_time_lines(ds), "chunks:"]
    chunks, chunk_problems = _chunk_lines(ds, pair.names)
    problems += chunk_problems
    lines += chunks
    problems += _absent_problems(ds, pair.names)
    lines += _mask_lines(pair, scan, budget)
    stored = pair.stored_stats is not None
    lines.append(
        "statistics: stored with the data" if stored
        else "statistics: none stored; training computes them over its period (one pass)"
    )  # fmt: skip
    lines.append("training and inference:")
    shape_lines, shape_problems = _shape_lines(ds.sizes[Y], ds.sizes[X])
    lines += shape_lines
    problems += shape_problems
    static = sum(ds[n].size * ds[n].dtype.itemsize for n in pair.static)
    check_read(
        static, f"inspect of the static fields {list(pair.static)}", budget=budget,
        raise_with="pass --scan-budget GB to raise it",
    )  # fmt: skip
    for name in pair.static:  # 2-D fields: cheap to read
        if bool(ds[name].isnull().any()):
            problems.append(f"static field '{name}' holds NaN; fill it (e.g. 0 over the sea)")
    notes = ds.attrs.get(NOTES_ATTR, "")
    if notes:
        lines += ["pairing:", *(f"  {n}" for n in notes.splitlines())]
    lines += ["problems:", *(f"  - {p}" for p in problems)] if problems else ["problems: none"]
    return "\n".join(lines)


def describe_refused(error: DataError, ds: xr.Dataset | None = None) -> str:
    """A pair refused at open for its grids (coverage, lat/lon unlike the CRS) as a problem:
    with the store ``ds`` (not a catalog pair), each grid's lat/lon box and their overlap."""
    lines, problems = [], []
    if ds is not None and all(c in ds.coords for c in (LAT, LON, LAT_COARSE, LON_COARSE)):
        lines += [f"fine grid: {_box(ds, LAT, LON)}",
                  f"coarse grid: {_box(ds, LAT_COARSE, LON_COARSE)}"]  # fmt: skip
        try:
            lines += _overlap(ds)[0]
        except KeyError:  # an axis missing: the error below says which
            pass
    problems.append(f"the pair cannot be opened: {error}")
    return "\n".join([*lines, "problems:", *(f"  - {p}" for p in problems)])


def describe_archive(ds: xr.Dataset, error: DataError | None = None) -> str:
    """A report on one native archive: CF axes per variable and how to pair it."""
    from corrdiff_xr.data.sources.native import _metadata_vars, find_axes

    _, bounds = _metadata_vars(ds)  # the names open_archives treats as bounds
    kinds = grid_mapping_variables(ds)
    lines = []
    if error is not None:
        lines += [f"not a canonical pair: {error}", ""]
    lines.append(f"one archive: dims {dict(ds.sizes)}")
    for mapping, kind in kinds.items():
        lines.append(f"  {mapping}: grid mapping ({kind}), kept")
    for bound in bounds:  # as open_archives treats them: nothing to select or drop by hand
        lines.append(
            f"  {bound} {ds[bound].dims}: bounds; a fine archive's 1-D bounds are kept as "
            "coordinates, the rest dropped"
        )
    for name, var in ds.data_vars.items():
        if name in bounds:
            continue
        if var.ndim < 2:
            if name not in kinds:
                lines.append(f"  {name}: not gridded, dims {var.dims}")
            continue
        try:
            axes = find_axes(ds, tuple(var.dims), what=f"'{name}'")
        except DataError as err:
            lines.append(f"  {name} {var.dims}: {err}")
            continue
        found = ", ".join(f"{a}={d}" for a, d in sorted(axes.items()))
        rest = [d for d in var.dims if d not in axes.values()]
        extra = "".join(
            f"; {d!r} has one value: squeezed" if var.sizes[d] == 1
            else f"; other dim {d!r} ({var.sizes[d]} values): select one (select={{{d!r}: ...}})"
            for d in rest
        )  # fmt: skip
        lines.append(f"  {name} {var.dims} {var.dtype}: axes {found}{extra}")
    if TIME in ds.coords or any(np.issubdtype(c.dtype, np.datetime64) for c in ds.coords.values()):
        lines.append("pair it with another archive: corrdiff_xr.data.open_archives(coarse, fine),")
        lines.append("or a catalog entry like catalogs/archives.yaml (reader ArchivePairReader)")
    return "\n".join(lines)
