"""Figures for downscaled ensembles (matplotlib Agg): maps, spectra, histograms, diagrams.

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` and only computes the
small slices it draws (chosen times for maps, spectra averaged over the forecast's times);
lazy inputs stay lazy until then. Truth and inputs are always taken at the forecast's own
time labels, never by position. :func:`save_figure` writes a PNG atomically (temp file +
rename), :func:`save_report` the three standard figures of an ensemble to a folder and
:func:`corrdiff_xr.plot.report.write_report` one self-contained HTML page. The
``ds.corrdiff.plot(kind)`` accessor forwards to :func:`plot`.

Conventions: maps of fields with latitude/longitude are drawn on lon/lat axes with
coastlines and borders (shipped, offline: :mod:`corrdiff_xr.plot.geo`), projected grids in
km; values in display units (K as degC, m of precipitation as mm). Each variable's row
(input, truth, ensemble mean, members) shares one colour scale: precipitation log-scaled
sequential, winds diverging round zero, temperatures warm-cold; the error of the mean and
the spread have scales of their own.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import xarray as xr

from corrdiff_xr._atomic import atomic_path
from corrdiff_xr.dims import MEMBER
from corrdiff_xr.plot._style import pyplot as _pyplot
from corrdiff_xr.plot.curves import (
    plot_fss,
    plot_pit_histogram,
    plot_rank_histogram,
    plot_reliability,
    plot_spectra,
    plot_spread_skill,
)
from corrdiff_xr.plot.maps import plot_maps

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "KINDS",
    "plot",
    "plot_fss",
    "plot_maps",
    "plot_pit_histogram",
    "plot_rank_histogram",
    "plot_reliability",
    "plot_spectra",
    "plot_spread_skill",
    "save_figure",
    "save_report",
]


class _Plot(Protocol):
    def __call__(self, ds: xr.Dataset, /, *args: Any, **kwargs: Any) -> Figure: ...


_FUNCTIONS: dict[str, _Plot] = {
    "maps": plot_maps,
    "spectra": plot_spectra,
    "rank_histogram": plot_rank_histogram,
    "pit_histogram": plot_pit_histogram,
    "reliability": plot_reliability,
    "fss": plot_fss,
    "spread_skill": plot_spread_skill,
}
KINDS = tuple(_FUNCTIONS)


def plot(
    ds: xr.Dataset, kind: str = "maps", *, path: str | os.PathLike | None = None, **kw: Any
) -> Figure:
    """Draw figure ``kind`` (one of :data:`KINDS`) of ``ds``, saving it as a PNG at ``path``
    when given; returns the Figure. Keyword arguments (``truth=``, ``inputs=``, ``times=``,
    ``thresholds=`` ...) go to the ``plot_*`` function of that kind."""
    if kind not in _FUNCTIONS:
        raise ValueError(f"unknown plot kind {kind!r}; choose from {KINDS}")
    fig = _FUNCTIONS[kind](ds, **kw)
    if path is not None:
        save_figure(fig, path)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
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
    times: Sequence[int | str] | None = None,
    member_dim: str = MEMBER,
    dpi: int = 120,
) -> list[Path]:
    """Write ``maps.png`` (at ``times``, default ``[time]``), ``spectra.png`` and
    ``rank_histogram.png`` to ``directory``."""
    out = Path(directory)
    save = functools.partial(save_figure, dpi=dpi)
    maps = plot_maps(forecast, truth, inputs=inputs, time=time, times=times, member_dim=member_dim)
    written = [
        save(maps, out / "maps.png"),
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
