"""Maps of an ensemble at chosen times beside its truth, inputs and errors (re-exported as
:func:`corrdiff_xr.plot.plot_maps`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, overload

import numpy as np
import xarray as xr

from corrdiff_xr.data.times import calendar_of, is_cftime, parse_times
from corrdiff_xr.dims import MEMBER, TIME, input_for
from corrdiff_xr.plot import _style as st
from corrdiff_xr.plot.geo import MapFrame, draw_coastlines, frame_of, style_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import QuadMesh
    from matplotlib.colors import Colormap, Normalize
    from matplotlib.figure import Figure

TimeKey = int | str | np.datetime64
#: a label of a time axis (datetime64, or a cftime date); None for data without time
TimeLabel = object


def forecast_times(forecast: xr.Dataset, times: Sequence[TimeKey]) -> list[TimeLabel]:
    """Labels of the forecast's own time axis for positions (int) or labels (ISO 8601
    strings are read in the axis' calendar: ``"2001-02-30T06"`` on a 360_day axis)."""
    if TIME not in forecast.dims:
        return [None]
    axis = forecast[TIME].values
    labels: list[TimeLabel] = []
    for t in times:
        if isinstance(t, (int, np.integer)):
            if not -len(axis) <= int(t) < len(axis):
                raise IndexError(f"time position {t} is outside the forecast's {len(axis)} times")
            labels.append(axis[int(t)])
            continue
        if isinstance(t, str):
            (t,) = parse_times([t], like=axis)
        if not np.isin(np.asarray([t], dtype=axis.dtype), axis).all():
            raise KeyError(f"time {t} is not a forecast time (it has {axis[0]} ... {axis[-1]})")
        labels.append(t)
    return labels


@overload
def at_time(ds: xr.Dataset, when: TimeLabel, role: str) -> xr.Dataset: ...
@overload
def at_time(ds: None, when: TimeLabel, role: str) -> None: ...
def at_time(ds: xr.Dataset | None, when: TimeLabel, role: str) -> xr.Dataset | None:
    """``ds`` at the forecast's time label ``when``: by label, never by position (a truth
    archive rarely starts where the forecast does)."""
    if ds is None or when is None or TIME not in ds.dims:
        return ds
    try:
        return ds.sel({TIME: [when]}).isel({TIME: 0})
    except KeyError:
        axis = ds[TIME].values
        raise KeyError(
            f"the {role} has no time {when_text(when)}, a forecast time (it covers "
            f"{when_text(axis[0])} ... {when_text(axis[-1])})"
        ) from None


def when_text(when: TimeLabel) -> str:
    if np.issubdtype(np.asarray(when).dtype, np.datetime64):
        return str(np.datetime_as_string(np.asarray(when), unit="m"))
    if is_cftime(np.asarray(when)):  # noleap, 360_day ...: the calendar's own date
        date = np.asarray(when).item().strftime("%Y-%m-%dT%H:%M")
        return f"{date} ({calendar_of(np.asarray(when))})"
    return str(when)


def _columns(
    names: list[str],
    fc_t: xr.Dataset,
    tr_t: xr.Dataset | None,
    in_t: xr.Dataset | None,
    n_members: int,
    errors: bool,
    member_dim: str,
) -> list[str]:
    columns = []
    if in_t is not None and any(input_for(n, map(str, in_t.data_vars)) for n in names):
        columns.append("input")
    if tr_t is not None:
        columns.append("truth")
    columns += ["ensemble mean"] + [f"member {i}" for i in range(n_members)]
    if errors and tr_t is not None:
        columns.append("error")
    if fc_t.sizes[member_dim] > 1:
        columns.append("spread")
    return columns


def _panels(
    name: str,
    fc: xr.DataArray,
    tr_t: xr.Dataset | None,
    in_t: xr.Dataset | None,
    n_members: int,
    member_dim: str,
) -> dict[str, xr.DataArray]:
    """The fields of one row in display units, by column title."""
    kind = st.kind_of(name, fc)
    panels: dict[str, xr.DataArray] = {}
    input_name = None if in_t is None else input_for(name, map(str, in_t.data_vars))
    if in_t is not None and input_name is not None:
        panels["input"] = st.display(in_t[input_name].load(), kind)
    if tr_t is not None and name in tr_t:
        panels["truth"] = st.display(tr_t[name].load(), kind)
    mean = fc.mean(member_dim, keep_attrs=True)
    panels["ensemble mean"] = st.display(mean, kind)
    for i in range(n_members):
        panels[f"member {i}"] = st.display(fc.isel({member_dim: i}), kind)
    if tr_t is not None and "truth" in panels:
        truth = (
            tr_t[name]
            .load()
            .assign_coords({c: mean[c] for c in mean.coords if c in tr_t[name].coords})
        )
        panels["error"] = st.display((mean - truth).assign_attrs(fc.attrs), kind, difference=True)
    if fc.sizes[member_dim] > 1:
        sd = fc.std(member_dim, ddof=1).assign_attrs(fc.attrs)
        panels["spread"] = st.display(sd, kind, difference=True)
    return panels


def _draw_panel(
    fig: Figure,
    ax: Axes,
    field: xr.DataArray,
    cmap: Colormap | str,
    norm: Normalize | None,
    coastlines: bool,
) -> tuple[QuadMesh, MapFrame]:
    ydim, xdim = st.grid_dims(field)
    frame = frame_of(field, ydim, xdim)
    values = field.transpose(ydim, xdim).values
    mesh = ax.pcolormesh(frame.xs, frame.ys, values, cmap=cmap, norm=norm, shading="auto")
    style_axes(ax, frame)
    if coastlines:
        draw_coastlines(ax, frame)
    return mesh, frame


def _row(
    fig: Figure,
    axes: Sequence[Axes],
    columns: list[str],
    name: str,
    panels: dict[str, xr.DataArray],
    coastlines: bool,
    first_row: bool,
) -> None:
    """Draw one variable's row; colour bars for the shared scale, the error and the spread."""
    kind = st.kind_of(name, panels["ensemble mean"])
    shared = [t for t in columns if t in panels and t not in ("error", "spread")]
    cmap, norm = st.colours(kind, [panels[t].values for t in shared])
    mesh, units = None, panels["ensemble mean"].attrs.get("units", "")
    for ax, title in zip(axes, columns):
        if title not in panels:
            ax.set_axis_off()
            continue
        if title == "error":
            ecmap, enorm = st.symmetric([panels[title].values])
            emesh, frame = _draw_panel(fig, ax, panels[title], ecmap, enorm, coastlines)
            fig.colorbar(emesh, ax=ax, shrink=0.85).set_label(f"mean - truth [{units}]", fontsize=7)
        elif title == "spread":
            top = st.limits("precip", [panels[title].values])[1]
            smesh, frame = _draw_panel(fig, ax, panels[title], st.SPREAD_CMAP, None, coastlines)
            smesh.set_clim(0.0, top)
            fig.colorbar(smesh, ax=ax, shrink=0.85).set_label(f"spread [{units}]", fontsize=7)
        else:
            mesh, frame = _draw_panel(fig, ax, panels[title], cmap, norm, coastlines)
        if title == "input":
            ax.set_title(f"input: {panels['input'].name}", fontsize=8)
        elif first_row:
            ax.set_title(title, fontsize=9)
        ax.set_xlabel(frame.xlabel, fontsize=7)
        ax.set_ylabel(frame.ylabel, fontsize=7)
    extend = "min" if kind == "precip" else "neither"
    assert mesh is not None  # the ensemble mean is always drawn on the shared scale
    bar = fig.colorbar(mesh, ax=[axes[columns.index(t)] for t in shared], shrink=0.85,
                       pad=0.01, extend=extend)  # fmt: skip
    bar.set_label(st.label(panels["ensemble mean"], name), fontsize=8)


def plot_maps(
    forecast: xr.Dataset,
    truth: xr.Dataset | None = None,
    *,
    inputs: xr.Dataset | None = None,
    time: TimeKey = 0,
    times: Sequence[TimeKey] | None = None,
    members: int = 2,
    variables: Sequence[str] | None = None,
    errors: bool = True,
    coastlines: bool = True,
    member_dim: str = MEMBER,
) -> Figure:
    """Maps at chosen times: one row per (time, variable); columns input, truth, ensemble
    mean, the first ``members`` members, the error of the mean and the ensemble spread.

    Parameters
    ----------
    forecast : Dataset
        Ensemble with ``member_dim`` on the fine grid.
    truth, inputs : Dataset, optional
        Truth with the forecast's names; inputs matched by name (``t2m`` or ``t2m_*``), on
        the fine grid or their own coarse grid (e.g. ``pair.coarse``). Both are taken at the
        forecast's time labels, never by position. Columns without data are left out.
    time, times : int or label, or a sequence of them
        Positions (int) or labels of the forecast's times drawn (``times`` wins; an ISO
        8601 string is read in the axis' calendar: ``"2001-02-30T06"`` on a 360_day axis).
    members : int
        How many individual members to show.
    variables : sequence of str, optional
        Variables to draw; default all forecast variables.
    errors : bool
        Add the error of the ensemble mean (mean - truth) on a diverging scale.
    coastlines : bool
        Draw coastlines and borders on grids with latitude/longitude (see
        :mod:`corrdiff_xr.plot.geo`).

    Values are shown in display units (K as degC, m of precipitation as mm); winds on a
    scale centred on zero, precipitation on a log scale (below 0.1 mm white).
    """
    plt = st.pyplot()
    names = list(variables) if variables is not None else list(map(str, forecast.data_vars))
    whens = forecast_times(forecast, list(times) if times is not None else [time])
    n_members = min(members, forecast.sizes[member_dim])
    rows: list[tuple[TimeLabel, xr.Dataset, xr.Dataset | None, xr.Dataset | None]] = []
    for when in whens:
        # one load per Dataset and time: the variables of a downscaled ensemble share their
        # model tasks, so loading them one by one would run the model once per variable
        fc_t = at_time(forecast[names], when, "forecast").load()
        rows.append((when, fc_t, at_time(truth, when, "truth"), at_time(inputs, when, "inputs")))
    columns = _columns(names, *rows[0][1:], n_members, errors, member_dim)
    frame = frame_of(rows[0][1][names[0]], *st.grid_dims(rows[0][1][names[0]]))
    panel_w = 2.5
    panel_h = float(np.clip(panel_w * frame.height_ratio, 1.5, 4.6))
    nrow = len(names) * len(rows)
    fig, axes = plt.subplots(
        nrow, len(columns), figsize=(panel_w * len(columns) + 2.4, panel_h * nrow + 0.8),
        squeeze=False, layout="constrained",
    )  # fmt: skip
    for i, (when, fc_t, tr_t, in_t) in enumerate(rows):
        for j, name in enumerate(names):
            r = i * len(names) + j
            panels = _panels(name, fc_t[name], tr_t, in_t, n_members, member_dim)
            _row(fig, axes[r], columns, name, panels, coastlines, first_row=r == 0)
            stamp = f"\n{when_text(when)}" if when is not None and len(rows) > 1 else ""
            first = next(ax for ax in axes[r] if ax.axison)  # the input panel may be empty
            first.set_ylabel(f"{name}{stamp}\n{first.get_ylabel()}", fontsize=8)
    title = "CorrDiff ensemble"
    if len(rows) == 1 and whens[0] is not None:
        title += f" at {when_text(whens[0])}"
    fig.suptitle(title, fontsize=11)
    return fig
