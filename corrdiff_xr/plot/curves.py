"""Diagnostic curves (re-exported by :mod:`corrdiff_xr.plot`): power spectra, rank and PIT
histograms, reliability diagrams, FSS against scale and spread-skill by time.

Every function takes the forecast and truth (and computes the score it draws through
:mod:`corrdiff_xr.scoring`), or the score itself where noted. A truth or input with other
times than the forecast is taken at the forecast's times by label first, so a spectrum or a
histogram never averages over times the forecast does not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import xarray as xr

from corrdiff_xr.dims import MEMBER, TIME, X, Y, input_for
from corrdiff_xr.plot import _style as st
from corrdiff_xr.plot.maps import when_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from corrdiff_xr.scoring.probabilistic import Thresholds


@overload
def on_forecast_times(ds: xr.Dataset, forecast: xr.Dataset, role: str) -> xr.Dataset: ...
@overload
def on_forecast_times(ds: None, forecast: xr.Dataset, role: str) -> None: ...
def on_forecast_times(ds: xr.Dataset | None, forecast: xr.Dataset, role: str) -> xr.Dataset | None:
    """``ds`` at the forecast's time labels (by label), or ``ds`` without a time axis."""
    if ds is None or TIME not in ds.dims or TIME not in forecast.dims:
        return ds
    want = forecast.indexes[TIME]
    have = ds.indexes[TIME]
    if want.equals(have):
        return ds
    missing = want[~want.isin(have)]
    if len(missing):
        raise KeyError(
            f"the {role} lacks {len(missing)} of the forecast's {len(want)} times "
            f"(first {missing[0]}); it covers {have[0]} ... {have[-1]}"
        )
    return ds.sel({TIME: want})


def _axes(n: int, width: float = 3.6, height: float = 3.2) -> tuple[Figure, np.ndarray]:
    plt = st.pyplot()
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, layout="constrained")
    return fig, axes[0]


def _names(ds: xr.Dataset, variables: Sequence[str] | None) -> list[str]:
    return list(variables) if variables is not None else list(map(str, ds.data_vars))


def plot_spectra(
    forecast: xr.Dataset,
    truth: xr.Dataset | None = None,
    *,
    inputs: xr.Dataset | None = None,
    variables: Sequence[str] | None = None,
    spacing: float | tuple[float, float] | None = None,
    member_dim: str = MEMBER,
) -> Figure:
    """Log-log radially averaged power spectra per variable, averaged over the forecast's
    times: every member (thin), the ensemble mean, the truth and the matched input
    (dashed), all over the same times; see :func:`corrdiff_xr.scoring.power_spectrum`."""
    from matplotlib.ticker import NullFormatter

    from corrdiff_xr.scoring import power_spectrum

    names = _names(forecast, variables)
    # the spectra of members and mean, per variable, would each rerun a lazy ensemble's model
    # tasks: run them once
    forecast = forecast[names].persist()
    truth = on_forecast_times(truth, forecast, "truth")
    inputs = on_forecast_times(inputs, forecast, "inputs")
    fig, axes = _axes(len(names), 4.2, 3.6)

    def spectrum(var: xr.DataArray, **extra: Any) -> xr.DataArray:
        # stop at the Nyquist wavenumber: beyond it only the grid's corner modes remain
        spec = power_spectrum(var, spacing=spacing, member_dim=member_dim, **extra).compute()
        nyquist = spec["wavenumber"].attrs["nyquist"]
        return spec.where(spec["wavenumber"] <= nyquist * (1 + 1e-9), drop=True)

    for ax, name in zip(axes, names):
        fc = forecast[name]
        members = spectrum(fc)
        k = members["wavenumber"]
        for i in range(members.sizes[member_dim]):
            ax.loglog(k, members.isel({member_dim: i}), color="tab:orange", lw=0.6, alpha=0.5,
                      label="members" if i == 0 else None)  # fmt: skip
        ax.loglog(k, spectrum(fc.mean(member_dim)), color="tab:red", lw=1.6, label="ensemble mean")
        if truth is not None and name in truth:
            spec = spectrum(truth[name])
            ax.loglog(spec["wavenumber"], spec, color="black", lw=1.8, label="truth")
        input_name = None if inputs is None else input_for(name, map(str, inputs.data_vars))
        if inputs is not None and input_name is not None:
            var = inputs[input_name]
            spec = spectrum(var, spatial_dims=st.grid_dims(var))
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


def _reciprocal(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 1.0 / np.asarray(values, dtype=float)


def _bars(
    hist: xr.Dataset, dim: str, names: list[str], *, xlabel: str, flat: str
) -> tuple[Figure, np.ndarray]:
    """Relative frequencies along ``dim``, one panel per variable, with the flat line of a
    calibrated ensemble."""
    hist = hist[names]
    hist = hist.sum([d for d in hist.dims if d != dim])  # e.g. per-time histograms
    hist = (hist / hist.sum(dim)).compute()
    fig, axes = _axes(len(names), 3.4, 3.0)
    for ax, name in zip(axes, names):
        h = hist[name]
        where = h[dim].values
        width = 0.85 * (np.diff(where).min() if where.size > 1 else 1.0)
        ax.bar(where, h.values, width=width, color="tab:blue", alpha=0.8)
        ax.axhline(1.0 / len(where), color="black", ls="--", lw=1, label=flat)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("relative frequency [1]")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7)
    return fig, axes


def plot_rank_histogram(
    forecast_or_histogram: xr.Dataset,
    truth: xr.Dataset | None = None,
    *,
    variables: Sequence[str] | None = None,
    member_dim: str = MEMBER,
    seed: int = 0,
) -> Figure:
    """Bar chart of relative rank frequencies per variable, with the flat 1/(M+1) line of a
    calibrated ensemble. Pass a histogram (dimension ``rank``) or a forecast and truth."""
    from corrdiff_xr.scoring import rank_histogram

    hist = forecast_or_histogram
    if "rank" not in hist.dims:
        if truth is None:
            raise ValueError("plot_rank_histogram needs truth= to rank a forecast")
        truth = on_forecast_times(truth, hist, "truth")
        hist = rank_histogram(hist, truth, member_dim=member_dim, seed=seed)
    names = _names(hist, variables)
    fig, axes = _bars(hist, "rank", names, xlabel="rank of truth among members", flat="calibrated")
    for ax in axes:
        ax.set_xticks(hist["rank"].values)
    return fig


def plot_pit_histogram(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    *,
    bins: int = 10,
    variables: Sequence[str] | None = None,
    member_dim: str = MEMBER,
) -> Figure:
    """PIT histogram per variable (:func:`corrdiff_xr.scoring.pit_histogram`); a U shape is
    an under-dispersed ensemble, a hump an over-dispersed one."""
    from corrdiff_xr.scoring import pit_histogram

    truth = on_forecast_times(truth, forecast, "truth")
    hist = pit_histogram(forecast, truth, bins=bins, member_dim=member_dim)
    names = _names(hist, variables)
    fig, _ = _bars(hist, "pit_bin", names, xlabel="probability integral transform", flat="uniform")
    return fig


def plot_reliability(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    *,
    thresholds: Thresholds,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
) -> Figure:
    """Reliability diagrams (CORP, :func:`corrdiff_xr.scoring.reliability`) of the events
    ``value >= threshold``: one panel per variable and threshold, the recalibrated event
    frequency against the forecast probability, the diagonal of a reliable forecast, and
    the share of cases at each probability (sharpness) as bars."""
    from corrdiff_xr.scoring import reliability

    truth = on_forecast_times(truth, forecast, "truth")
    table = reliability(forecast, truth, thresholds=thresholds, weights=weights,
                        member_dim=member_dim).compute()  # fmt: skip
    panels = [(n, t) for n, v in table.data_vars.items() for t in v["threshold"].values
              if bool(v.sel(threshold=t).notnull().any())]  # fmt: skip
    fig, axes = _axes(max(len(panels), 1), 3.4, 3.4)
    for ax, (name, t) in zip(axes, panels):
        v = table[name].sel(threshold=t)
        p = v["probability"].values
        ax.bar(p, v.sel(statistic="fraction"), width=0.6 / max(len(p) - 1, 1), color="0.8",
               label="share of cases")  # fmt: skip
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="reliable")
        ax.plot(p, v.sel(statistic="corp"), "o-", color="tab:red", ms=3, label="CORP")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("forecast probability")
        ax.set_ylabel("observed frequency")
        units = forecast[name].attrs.get("units", "")
        ax.set_title(f"{name} >= {t:g} {units}", fontsize=10)
        ax.legend(fontsize=7)
    return fig


def plot_fss(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    *,
    windows: Sequence[int] | None = None,
    thresholds: Thresholds | None = None,
    percentiles: Sequence[float] | None = None,
    member_dim: str = MEMBER,
) -> Figure:
    """Fractions skill score against neighbourhood size (:func:`corrdiff_xr.scoring.fss`),
    one line per threshold or percentile, with the ``0.5 + f0 / 2`` skill line of a
    random forecast, ``f0`` the truth's event fraction (Roberts and Lean 2008)."""
    from matplotlib.ticker import NullFormatter

    from corrdiff_xr.scoring import fss

    truth = on_forecast_times(truth, forecast, "truth")
    if windows is None:  # odd sizes, doubling, up to a third of the smaller side
        side = min(forecast.sizes[Y], forecast.sizes[X])
        windows = sorted({1, *(2 * (2**i) + 1 for i in range(10) if 2 * 2**i + 1 <= side // 3)})
    if percentiles is None and thresholds is not None:
        score = fss(forecast, truth, windows=list(windows), member_dim=member_dim,
                    thresholds=thresholds)  # fmt: skip
    else:
        score = fss(forecast, truth, windows=list(windows), member_dim=member_dim,
                    percentiles=list(percentiles or (90.0,)))  # fmt: skip
    score = score.compute()
    fig, axes = _axes(len(score.data_vars), 3.6, 3.2)
    for ax, (name, v) in zip(axes, score.data_vars.items()):
        level = "threshold" if "threshold" in v.dims else "percentile"
        unit = f" {forecast[name].attrs.get('units', '')}" if level == "threshold" else "th pct"
        for t in v[level].values:
            ax.plot(v["window"], v.sel({level: t}), "o-", ms=3, label=f"{t:g}{unit}")
        ax.axhline(0.5, color="0.5", ls=":", lw=1, label="useful (0.5)")
        ax.set_xscale("log")
        ax.set_xticks(v["window"].values, [str(w) for w in v["window"].values])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("neighbourhood size [grid points]")
        ax.set_ylabel("FSS")
        ax.set_ylim(0, 1.02)
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7)
    return fig


def plot_spread_skill(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    *,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
) -> Figure:
    """RMSE of the ensemble mean and the ensemble spread at each time, per variable: a
    calibrated ensemble's two lines lie on each other."""
    from corrdiff_xr import scoring

    truth = on_forecast_times(truth, forecast, "truth")
    rmse = scoring.rmse(forecast, truth, dim=[Y, X], weights=weights, member_dim=member_dim)
    spread = scoring.spread(forecast, dim=[Y, X], weights=weights, member_dim=member_dim)
    rmse, spread = rmse.compute(), spread.compute()
    fig, axes = _axes(len(rmse.data_vars), 4.0, 3.0)
    when = rmse[TIME].values
    dated = np.issubdtype(when.dtype, np.datetime64)
    at = when if dated else np.arange(when.size)  # cftime: positions, labelled in its calendar
    for ax, name in zip(axes, rmse.data_vars):
        ax.plot(at, rmse[name].values, "o-", ms=3, color="black", label="RMSE of mean")
        ax.plot(at, spread[name].values, "s-", ms=3, color="tab:orange", label="spread")
        if not dated:
            ax.set_xticks(at, [when_text(t) for t in when])
        ax.set_ylabel(f"[{forecast[name].attrs.get('units', '')}]")
        ax.set_title(name, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    return fig
