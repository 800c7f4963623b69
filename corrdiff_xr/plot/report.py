"""One self-contained HTML page of a verification, written by ``score --report DIR``.

The page (``index.html``) holds everything inline, images as base64 PNG, styles in the page,
so it can be mailed or archived alone. Its sections, each a ``<section id=...>``:

* ``scores``: time-mean scores per forecast (and region), with block-bootstrap intervals
  and intervals of differences when ``score`` computed them;
* ``maps``: maps at the chosen times with coastlines and borders
  (:func:`~corrdiff_xr.plot.plot_maps`);
* ``spectra``: power spectra over the forecast's times;
* ``calibration``: rank and PIT histograms;
* ``reliability``: CORP reliability diagrams of events ``value >= threshold``;
* ``fss``: fractions skill score against neighbourhood size;
* ``spread-skill``: RMSE of the ensemble mean and spread at each time.

Without thresholds, each variable's event is exceeding the truth's 90th percentile over the
forecast's times (stated on the page). Diagnostics that need two members are replaced by
a sentence saying so for a one-member forecast.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from corrdiff_xr.dims import MEMBER, TIME
from corrdiff_xr.plot import _style as st
from corrdiff_xr.plot import curves
from corrdiff_xr.plot.maps import TimeKey, plot_maps, when_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from corrdiff_xr.scoring.probabilistic import Thresholds

__all__ = ["SECTIONS", "write_report"]

#: (id, heading, what it answers) of every section, in page order
SECTIONS = (
    ("scores", "Scores", "How good is the forecast on average, and how sure is that number?"),
    ("maps", "Maps", "Does one forecast look like the weather it downscales?"),
    ("spectra", "Power spectra", "Does the ensemble have the truth's small-scale variance?"),
    ("calibration", "Rank and PIT histograms", "Is the truth a typical member?"),
    ("reliability", "Reliability", "When it says 30 %, does it happen 30 % of the time?"),
    ("fss", "Fractions skill score", "From which scale on is the forecast placed right?"),
    ("spread-skill", "Spread and skill by time", "Does the spread match the error, time by time?"),
)

_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
p.question { color: #555; font-style: italic; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
caption { text-align: left; font-weight: bold; padding: .3em 0; }
img { max-width: 100%; display: block; margin: .5em 0; }
dl.meta dt { float: left; clear: left; width: 10em; color: #555; } dl.meta dd { margin-left: 10em; }
"""


def _png(fig: Figure, dpi: int) -> str:
    """``fig`` as a base64 PNG data URI; the figure is closed."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        st.pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value: float | None, bounds: tuple[float, float] | None) -> str:
    text = "" if value is None else f"{value:.4g}"
    if bounds is not None and np.all(np.isfinite(bounds)):
        text += f" <span class='interval'>[{bounds[0]:.4g}, {bounds[1]:.4g}]</span>"
    return text.strip()


def _table(
    scores: xr.Dataset, caption: str, *, interval: str = "interval", values: bool = True
) -> str:
    """One HTML table: metrics by variable, time means (``values``), with the bounds of
    ``scores[interval]`` when present."""
    table = scores["score"]
    if TIME in table.dims:
        table = table.mean(TIME)
    bounds = scores[interval] if interval in scores else None
    variables = [str(v) for v in table["variable"].values]
    units = table["units"].values if "units" in table.coords else [""] * len(variables)
    head = "".join(
        f"<th>{html.escape(v)}{f' [{html.escape(str(u))}]' if u else ''}</th>"
        for v, u in zip(variables, units)
    )
    rows = []
    for metric in table["metric"].values:
        cells = []
        for v in variables:
            value = float(table.sel(metric=metric, variable=v)) if values else None
            pair = None
            if bounds is not None:
                b = bounds.sel(metric=metric, variable=v)
                pair = (float(b.sel(bound="lower")), float(b.sel(bound="upper")))
            cells.append(f"<td>{_cell(value, pair)}</td>")
        rows.append(f"<tr><td>{html.escape(str(metric))}</td>{''.join(cells)}</tr>")
    return (
        f"<table><caption>{html.escape(caption)}</caption><tr><th>metric</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )


def _score_tables(scores: xr.Dataset) -> str:
    """Every table of ``scores``: one per forecast and region."""
    loops = [d for d in ("forecast", "region") if d in scores["score"].dims]
    if not loops:
        return _table(scores, "time-mean scores")
    parts = []
    stacked = scores.stack(_case=loops) if len(loops) > 1 else scores.rename({loops[0]: "_case"})
    for i in range(stacked.sizes["_case"]):
        one = stacked.isel(_case=i)
        key = one["_case"].values.item()
        label = ", ".join(f"{d} {k}" for d, k in zip(loops, key if len(loops) > 1 else (key,)))
        one = one.drop_vars([c for c in one.coords if c in ("_case", *loops)])
        parts.append(_table(one, f"time-mean scores: {label}"))
        if "difference_interval" in one and i > 0 and bool((one["difference_interval"] != 0).any()):
            reference = scores.attrs.get("difference_reference", "the first forecast")
            caption = f"interval of the difference with {reference}: {label}"
            parts.append(_table(one, caption, interval="difference_interval", values=False))
    return "".join(parts)


def _meta(scores: xr.Dataset, forecast: xr.Dataset) -> str:
    items = {
        "prediction": scores.attrs.get("prediction", ""),
        "truth": scores.attrs.get("truth", ""),
        "members": forecast.sizes.get(MEMBER, 1),
        "times": _time_span(forecast),
        "CRPS estimator": scores.attrs.get("crps_estimator", ""),
        "area weighted": "yes" if scores.attrs.get("area_weighted") else "no",
    }
    if "confidence" in scores.attrs:
        items["intervals"] = (
            f"{100 * float(scores.attrs['confidence']):g} % block bootstrap over time, blocks of "
            f"{scores.attrs.get('block_length')} times, {scores.attrs.get('resamples')} resamples"
        )
    body = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items()
    )
    return f"<dl class='meta'>{body}</dl>"


def _time_span(ds: xr.Dataset) -> str:
    if TIME not in ds.coords:
        return "one"
    t = ds[TIME].values
    first, last = when_text(t[0]), when_text(t[-1])
    return f"{t.size}: {first} ... {last}" if t.size > 1 else first


def _default_thresholds(forecast: xr.Dataset, truth: xr.Dataset) -> dict[str, list[float]]:
    """Each variable's truth 90th percentile over the forecast's times (3 digits)."""
    on = curves.on_forecast_times(truth[list(forecast.data_vars)], forecast, "truth")
    out = {}
    for name, v in on.data_vars.items():
        q = float(np.nanpercentile(v.values, 90))
        out[str(name)] = [float(f"{q:.3g}")]
    return out


def _figure(make: Callable[[], Figure], dpi: int) -> str:
    """An ``<img>`` of ``make()``, or a sentence saying why there is none."""
    try:
        return f"<img alt='figure' src='{_png(make(), dpi)}'>"
    except ValueError as err:  # e.g. no event at a threshold, too few members
        return f"<p class='missing'>Not drawn: {html.escape(str(err))}</p>"


def _sections(
    scores: xr.Dataset,
    forecast: xr.Dataset,
    truth: xr.Dataset,
    inputs: xr.Dataset | None,
    times: Sequence[TimeKey],
    thresholds: Thresholds | None,
    windows: Sequence[int] | None,
    weights: xr.DataArray | None,
    dpi: int,
) -> dict[str, str]:
    """HTML body of every section of :data:`SECTIONS`, by id."""
    ensemble = forecast.sizes.get(MEMBER, 1) > 1
    thresholds_note = ""
    if thresholds is None:
        thresholds = _default_thresholds(forecast, truth)
        shown = ", ".join(f"{k} >= {v[0]:g}" for k, v in thresholds.items())
        thresholds_note = f"<p>Events: the truth's 90th percentile ({html.escape(shown)}).</p>"
    need_members = "<p class='missing'>Not drawn: needs an ensemble of two or more members.</p>"
    body = {
        "scores": _meta(scores, forecast) + _score_tables(scores),
        "maps": _figure(lambda: plot_maps(forecast, truth, inputs=inputs, times=times), dpi),
        "spectra": _figure(lambda: curves.plot_spectra(forecast, truth, inputs=inputs), dpi),
        "calibration": (
            _figure(lambda: curves.plot_rank_histogram(forecast, truth), dpi)
            + _figure(lambda: curves.plot_pit_histogram(forecast, truth), dpi)
        ),
        "reliability": thresholds_note
        + _figure(
            lambda: curves.plot_reliability(
                forecast, truth, thresholds=thresholds, weights=weights
            ),
            dpi,
        ),
        "fss": _figure(
            lambda: curves.plot_fss(
                forecast, truth, windows=windows, thresholds=None if thresholds_note else thresholds
            ),
            dpi,
        ),
        "spread-skill": (
            _figure(lambda: curves.plot_spread_skill(forecast, truth, weights=weights), dpi)
            if ensemble
            else need_members
        ),
    }
    if not ensemble:
        body["calibration"] = need_members
    return body


def write_report(
    path: str | os.PathLike,
    scores: xr.Dataset,
    forecast: xr.Dataset,
    truth: xr.Dataset,
    *,
    inputs: xr.Dataset | None = None,
    times: Sequence[TimeKey] = (0,),
    thresholds: Thresholds | None = None,
    windows: Sequence[int] | None = None,
    weights: xr.DataArray | None = None,
    title: str = "CorrDiff verification",
    dpi: int = 90,
) -> Path:
    """Write the report page of ``scores`` (a computed ``summary``/``score`` table) and the
    ``forecast``/``truth`` it scored to ``path``; returns the path.

    ``times`` are the forecast times drawn as maps (positions or labels), ``thresholds``
    the events of the reliability diagrams and FSS (a list, or per variable; default each
    variable's truth 90th percentile, the FSS then at the 90th percentile of each field),
    ``windows`` the FSS neighbourhood sizes."""
    body = _sections(scores, forecast, truth, inputs, times, thresholds, windows, weights, dpi)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for sid, heading, question in SECTIONS:
        parts.append(
            f"<section id='{sid}'><h2>{html.escape(heading)}</h2>"
            f"<p class='question'>{html.escape(question)}</p>{body[sid]}</section>"
        )
    parts.append(
        "<footer><p>Coastlines and borders: Natural Earth 1:110m (public domain). "
        "Written by corrdiff-xr score --report.</p></footer></body></html>"
    )
    target = Path(path)
    target.write_text("".join(parts), encoding="utf-8")
    return target
