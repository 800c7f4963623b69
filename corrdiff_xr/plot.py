"""Figures for downscaled ensembles: maps, power spectra and rank histograms (matplotlib Agg).

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` and only computes the
small slices it draws (one time step for maps, spectra averaged over time); lazy inputs stay
lazy until then. :func:`save_figure` writes a PNG atomically (temp file + rename) and
:func:`save_report` writes the three standard figures of an ensemble to a folder. The
``ds.corrdiff.plot(kind)`` accessor forwards to :func:`plot`.

Colour conventions: each variable's row of maps (input, truth, ensemble mean, members) shares
one colour scale so panels compare at a glance; precipitation uses a sequential map starting
at zero, winds a diverging map centred on zero, temperatures a warm-cold map; the spread gets
its own sequential scale.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from corrdiff_xr._atomic import atomic_path
from corrdiff_xr.data.times import calendar_of, is_cftime, parse_times
from corrdiff_xr.dims import MEMBER, TIME, X_COARSE, Y_COARSE, X, Y

__all__ = [
    "KINDS",
    "plot",
    "plot_maps",
    "plot_rank_histogram",
    "plot_spectra",
    "save_figure",
    "save_report",
]

KINDS = ("maps", "spectra", "rank_histogram")
_PRECIP_WORDS = ("precip", "rain", "snowfall")
_PRECIP_NAMES = {"tp", "pr", "prcp", "precip", "precipitation", "rainfall", "tprate"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


# -- labels and colours -------------------------------------------------------------------
def _label(var: xr.DataArray, name: str | None = None) -> str:
    long_name = var.attrs.get("long_name", name or var.name or "")
    units = var.attrs.get("units")
    return f"{long_name} [{units}]" if units else str(long_name)


def _kind_of(name: str, var: xr.DataArray) -> str:
    standard = str(var.attrs.get("standard_name", "")).lower()
    lname = name.lower()
    if lname in _PRECIP_NAMES or any(w in standard for w in _PRECIP_WORDS):
        return "precip"
    if "wind" in standard or lname in {"u10", "v10", "u", "v", "10u", "10v", "u10m", "v10m"}:
        return "wind"
    if "temperature" in standard or lname in {"t2m", "2t", "t2", "tas", "temperature_2m"}:
        return "temperature"
    return "other"


_CMAPS = {"precip": "YlGnBu", "wind": "RdBu_r", "temperature": "RdYlBu_r", "other": "viridis"}


def _limits(kind: str, arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([np.ravel(a) for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [1, 99.5])
    if kind == "precip":
        lo = 0.0
    elif kind == "wind":
        lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _match_input(name: str, inputs: xr.Dataset | None) -> str | None:
    """The input variable shown beside target ``name``: same name, else ``name`` + suffix."""
    if inputs is None:
        return None
    if name in inputs.data_vars:
        return name
    candidates = sorted(n for n in inputs.data_vars if str(n).startswith(f"{name}_"))
    return candidates[0] if candidates else None


def _grid_dims(var: xr.DataArray) -> tuple[str, str]:
    if Y in var.dims and X in var.dims:
        return Y, X
    if Y_COARSE in var.dims and X_COARSE in var.dims:
        return Y_COARSE, X_COARSE
    raise ValueError(f"variable {var.name!r} has no (y, x) grid dims: {var.dims}")


def _coord_label(var: xr.DataArray, dim: str) -> str:
    if dim in var.coords:
        c = var[dim]
        name = c.attrs.get("long_name", c.attrs.get("standard_name", dim))
        units = c.attrs.get("units")
        return f"{name} [{units}]" if units else str(name)
    return f"{dim} [pixel]"


def _aspect(field: xr.DataArray, ydim: str) -> float:
    """Data aspect that keeps lat/lon cells roughly square on the page (1 for metres)."""
    if ydim in field.coords and str(field[ydim].attrs.get("units", "")).startswith("degree"):
        return 1.0 / max(np.cos(np.deg2rad(float(field[ydim].mean()))), 0.1)
    return 1.0


def _height_ratio(field: xr.DataArray) -> float:
    """Height / width of a map panel of ``field`` on the page."""
    ydim, xdim = _grid_dims(field)
    if ydim in field.coords and xdim in field.coords:
        extent_y = float(np.ptp(field[ydim].values)) or 1.0
        extent_x = float(np.ptp(field[xdim].values)) or 1.0
        return extent_y / extent_x * _aspect(field, ydim)
    return field.sizes[ydim] / field.sizes[xdim]


def _draw(ax, field: xr.DataArray, *, cmap: str, vmin: float, vmax: float):
    ydim, xdim = _grid_dims(field)
    field = field.transpose(ydim, xdim)
    ys = field[ydim].values if ydim in field.coords else np.arange(field.sizes[ydim])
    xs = field[xdim].values if xdim in field.coords else np.arange(field.sizes[xdim])
    mesh = ax.pcolormesh(xs, ys, field.values, cmap=cmap, vmin=vmin, vmax=vmax, shading="auto")
    ax.set_aspect(_aspect(field, ydim))
    ax.tick_params(labelsize=7)
    return mesh


# -- maps -----------------------------------------------------------------------------------
def _pick_time(ds: xr.Dataset | None, time: int | str | np.datetime64):
    if ds is None or TIME not in ds.dims:
        return ds
    if isinstance(time, (int, np.integer)):
        return ds.isel({TIME: int(time)})
    if isinstance(time, str):  # one time of the axis' calendar, not xarray's partial-date slice
        (time,) = parse_times([time], like=ds[TIME].values)
    return ds.sel({TIME: time})


def plot_maps(
    forecast: xr.Dataset,
    truth: xr.Dataset | None = None,
    *,
    inputs: xr.Dataset | None = None,
    time: int | str | np.datetime64 = 0,
    members: int = 2,
    variables: Sequence[str] | None = None,
    member_dim: str = MEMBER,
):
    """Maps at one time: one row per variable; columns input, truth, ensemble mean, the first
    ``members`` members and the ensemble spread (standard deviation).

    Parameters
    ----------
    forecast : Dataset
        Ensemble with ``member_dim`` on the fine grid.
    truth, inputs : Dataset, optional
        Truth with the forecast's names; inputs matched by name (``t2m`` or ``t2m_*``), on
        the fine or coarse grid. Columns without data are left out.
    time : int or label
        Position (int) or label of the time step drawn (an ISO 8601 string is read in the
        time axis' calendar: ``"2001-02-30T06"`` on a 360_day axis).
    members : int
        How many individual members to show.
    variables : sequence of str, optional
        Variables (rows) to draw; default all forecast variables.
    """
    plt = _pyplot()
    names = list(variables) if variables is not None else list(forecast.data_vars)
    # one load per Dataset: the variables of a downscaled ensemble share their model tasks,
    # so loading them one by one would run the model once per variable
    fc_t = _pick_time(forecast[names], time).load()
    tr_t = _pick_time(truth, time)
    in_t = _pick_time(inputs, time)
    n_members = min(members, fc_t.sizes[member_dim])
    columns = []
    if in_t is not None and any(_match_input(n, in_t) for n in names):
        columns.append("input")
    if tr_t is not None:
        columns.append("truth")
    columns += ["ensemble mean"] + [f"member {i}" for i in range(n_members)]
    show_spread = fc_t.sizes[member_dim] > 1
    if show_spread:
        columns.append("spread")
    nrow, ncol = len(names), len(columns)
    panel_w = 2.3
    panel_h = float(np.clip(panel_w * _height_ratio(fc_t[names[0]]), 1.4, 4.6))
    fig, axes = plt.subplots(
        nrow,
        ncol,
        figsize=(panel_w * ncol + 2.0, panel_h * nrow + 0.7),
        squeeze=False,
        layout="constrained",
        sharex=True,
        sharey=True,
    )
    for row, name in enumerate(names):
        fc = fc_t[name].load()
        kind = _kind_of(name, fc)
        panels: dict[str, xr.DataArray] = {}
        if "input" in columns:
            input_name = _match_input(name, in_t)
            if input_name is not None:
                panels["input"] = in_t[input_name].load()
        if tr_t is not None and name in tr_t:
            panels["truth"] = tr_t[name].load()
        panels["ensemble mean"] = fc.mean(member_dim)
        for i in range(n_members):
            panels[f"member {i}"] = fc.isel({member_dim: i})
        vmin, vmax = _limits(kind, [p.values for p in panels.values()])
        mesh = None
        for col, title in enumerate(columns):
            ax = axes[row, col]
            if title == "spread":
                sd = fc.std(member_dim, ddof=1)
                smesh = _draw(ax, sd, cmap="Purples", vmin=0.0, vmax=_limits("precip", [sd])[1])
                fig.colorbar(smesh, ax=ax, shrink=0.9).set_label(
                    f"spread [{fc.attrs.get('units', '')}]", fontsize=8
                )
            elif title in panels:
                mesh = _draw(ax, panels[title], cmap=_CMAPS[kind], vmin=vmin, vmax=vmax)
            else:
                ax.set_axis_off()
            if title == "input" and title in panels:
                ax.set_title(f"input: {panels['input'].name}", fontsize=9)
            elif row == 0 or title == "input":
                ax.set_title(title, fontsize=9)
            if row == nrow - 1:
                ax.set_xlabel(_coord_label(fc, _grid_dims(fc)[1]), fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{name}\n{_coord_label(fc, _grid_dims(fc)[0])}", fontsize=8)
        data_axes = [axes[row, c] for c, t in enumerate(columns) if t != "spread"]
        fig.colorbar(mesh, ax=data_axes, shrink=0.9, pad=0.01).set_label(
            _label(fc, name), fontsize=8
        )
    when = fc_t[TIME].values if TIME in fc_t.coords else None
    title = "CorrDiff ensemble"
    if when is not None and np.issubdtype(np.asarray(when).dtype, np.datetime64):
        title += f" at {np.datetime_as_string(when, unit='m')}"
    elif when is not None and is_cftime(when):  # noleap, 360_day ...: the calendar's own date
        title += f" at {np.asarray(when).item().strftime('%Y-%m-%dT%H:%M')} ({calendar_of(when)})"
    fig.suptitle(title, fontsize=11)
    return fig


# -- spectra --------------------------------------------------------------------------------
def plot_spectra(
    forecast: xr.Dataset,
    truth: xr.Dataset | None = None,
    *,
    inputs: xr.Dataset | None = None,
    variables: Sequence[str] | None = None,
    spacing: float | tuple[float, float] | None = None,
    member_dim: str = MEMBER,
):
    """Log-log radially averaged power spectra per variable (time mean): every member (thin),
    the ensemble mean, the truth and the matched input (dashed); see
    :func:`corrdiff_xr.scoring.power_spectrum`.
    """
    from corrdiff_xr.scoring import power_spectrum

    plt = _pyplot()
    names = list(variables) if variables is not None else list(forecast.data_vars)
    # the spectra of members and mean, per variable, would each rerun a lazy ensemble's model
    # tasks: run them once
    forecast = forecast[names].persist()
    fig, axes = plt.subplots(
        1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False, layout="constrained"
    )
    from matplotlib.ticker import NullFormatter

    kw = {"spacing": spacing, "member_dim": member_dim}

    def spectrum(var: xr.DataArray, **extra: Any) -> xr.DataArray:
        # stop at the Nyquist wavenumber: beyond it only the grid's corner modes remain
        spec = power_spectrum(var, **kw, **extra).compute()
        return spec.where(
            spec["wavenumber"] <= spec["wavenumber"].attrs["nyquist"] * (1 + 1e-9), drop=True
        )

    for ax, name in zip(axes[0], names):
        fc = forecast[name]
        members = spectrum(fc)
        k = members["wavenumber"]
        for i in range(members.sizes[member_dim]):
            label = "members" if i == 0 else None
            ax.loglog(k, members.isel({member_dim: i}), color="tab:orange", lw=0.6, alpha=0.5,
                      label=label)  # fmt: skip
        ax.loglog(k, spectrum(fc.mean(member_dim)), color="tab:red", lw=1.6, label="ensemble mean")
        if truth is not None and name in truth:
            spec = spectrum(truth[name])
            ax.loglog(spec["wavenumber"], spec, color="black", lw=1.8, label="truth")
        input_name = _match_input(name, inputs)
        if input_name is not None:
            var = inputs[input_name]
            spec = spectrum(var, spatial_dims=_grid_dims(var))
            ax.loglog(spec["wavenumber"], spec, color="tab:blue", lw=1.4, ls="--",
                      label=f"input ({input_name})")  # fmt: skip
        ax.xaxis.set_minor_formatter(NullFormatter())
        length = str(k.attrs["units"]).removeprefix("cycles per ")
        top = ax.secondary_xaxis("top", functions=(_reciprocal, _reciprocal))
        top.set_xlabel(f"wavelength [{length}]", fontsize=8)
        top.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"wavenumber [{k.attrs['units']}]")
        ax.set_ylabel(f"power spectral density [{members.attrs.get('units', '')}]")
        ax.set_title(fc.attrs.get("long_name", name), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _reciprocal(values):
    with np.errstate(divide="ignore"):
        return 1.0 / np.asarray(values, dtype=float)


# -- rank histograms ------------------------------------------------------------------------
def plot_rank_histogram(
    forecast_or_histogram: xr.Dataset,
    truth: xr.Dataset | None = None,
    *,
    variables: Sequence[str] | None = None,
    member_dim: str = MEMBER,
    seed: int = 0,
):
    """Bar chart of relative rank frequencies per variable, with the flat 1/(M+1) line of a
    calibrated ensemble. Pass a histogram (dimension ``rank``) or a forecast and truth."""
    from corrdiff_xr.scoring import rank_histogram

    plt = _pyplot()
    hist = forecast_or_histogram
    if "rank" not in hist.dims:
        if truth is None:
            raise ValueError("plot_rank_histogram needs truth= to rank a forecast")
        hist = rank_histogram(hist, truth, member_dim=member_dim, seed=seed)
    names = list(variables) if variables is not None else list(hist.data_vars)
    hist = hist[names]
    hist = hist.sum([d for d in hist.dims if d != "rank"])  # e.g. per-time histograms
    hist = (hist / hist.sum("rank")).compute()
    fig, axes = plt.subplots(
        1, len(names), figsize=(3.4 * len(names), 3.0), squeeze=False, layout="constrained"
    )
    for ax, name in zip(axes[0], names):
        h = hist[name]
        ranks = h["rank"].values
        ax.bar(ranks, h.values, width=0.85, color="tab:blue", alpha=0.8)
        ax.axhline(1.0 / len(ranks), color="black", ls="--", lw=1, label="calibrated")
        ax.set_xlabel("rank of truth among members")
        ax.set_ylabel("relative frequency [1]")
        ax.set_title(name, fontsize=10)
        ax.set_xticks(ranks)
        ax.legend(fontsize=7)
    return fig


# -- dispatch and files ---------------------------------------------------------------------
def plot(ds: xr.Dataset, kind: str = "maps", *, path: str | os.PathLike | None = None, **kw: Any):
    """Draw figure ``kind`` (``maps``, ``spectra`` or ``rank_histogram``) of ``ds``, saving
    it as a PNG at ``path`` when given; returns the Figure. Keyword arguments go to
    :func:`plot_maps`, :func:`plot_spectra` or :func:`plot_rank_histogram`."""
    functions = {
        "maps": plot_maps,
        "spectra": plot_spectra,
        "rank_histogram": plot_rank_histogram,
    }
    if kind not in functions:
        raise ValueError(f"unknown plot kind {kind!r}; choose from {KINDS}")
    fig = functions[kind](ds, **kw)
    if path is not None:
        save_figure(fig, path)
    return fig


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (sibling temp file, then rename); close it."""
    plt = _pyplot()
    target = Path(path)
    try:
        with atomic_path(target) as staged:
            fig.savefig(staged, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return target


def save_report(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    directory: str | os.PathLike,
    *,
    inputs: xr.Dataset | None = None,
    time: int | str = 0,
    member_dim: str = MEMBER,
    dpi: int = 120,
) -> list[Path]:
    """Write ``maps.png``, ``spectra.png`` and ``rank_histogram.png`` to ``directory``."""
    out = Path(directory)
    save = functools.partial(save_figure, dpi=dpi)
    written = [
        save(
            plot_maps(forecast, truth, inputs=inputs, time=time, member_dim=member_dim),
            out / "maps.png",
        ),
        save(
            plot_spectra(forecast, truth, inputs=inputs, member_dim=member_dim),
            out / "spectra.png",
        ),
    ]
    if forecast.sizes[member_dim] > 1:
        written.append(
            save(
                plot_rank_histogram(forecast, truth, member_dim=member_dim),
                out / "rank_histogram.png",
            )
        )
    return written
