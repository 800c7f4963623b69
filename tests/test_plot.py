"""Tests for corrdiff_xr.plot: PNGs written atomically, panels, labels with units."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import xarray as xr
from matplotlib.colors import LogNorm

import corrdiff_xr  # noqa: F401  (registers ds.corrdiff)
from corrdiff_xr import plot, scoring
from corrdiff_xr.dims import MEMBER, TIME, X_COARSE, Y_COARSE, X, Y

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_case(members=3, nt=2, n=16):
    rng = np.random.default_rng(0)
    coords = {
        TIME: np.array("2022-03-01", dtype="datetime64[ns]")
        + np.arange(nt) * np.timedelta64(1, "h"),
        Y: (Y, np.arange(n) * 2000.0 + 4.2e6, {"units": "m", "long_name": "projection y"}),
        X: (X, np.arange(n) * 2000.0 + 1.1e6, {"units": "m", "long_name": "projection x"}),
    }
    attrs = {
        "t2m": {"units": "K", "long_name": "2 metre temperature"},
        "tp": {"units": "kg m-2", "standard_name": "precipitation_amount", "long_name": "precip"},
    }
    truth = xr.Dataset(
        {
            "t2m": ((TIME, Y, X), 280 + rng.normal(size=(nt, n, n)), attrs["t2m"]),
            "tp": ((TIME, Y, X), rng.gamma(1.0, size=(nt, n, n)), attrs["tp"]),
        },
        coords=coords,
    )
    fc = xr.concat([truth + 0.5 * rng.normal(size=(nt, n, n)) for _ in range(members)], MEMBER)
    for name in fc.data_vars:
        fc[name].attrs = attrs[name]
    coarse = {
        Y_COARSE: (Y_COARSE, np.arange(n // 4) * 8000.0, {"units": "m"}),
        X_COARSE: (X_COARSE, np.arange(n // 4) * 8000.0, {"units": "m"}),
        TIME: coords[TIME],
    }
    inputs = xr.Dataset(
        {"t2m_coarse": ((TIME, Y_COARSE, X_COARSE), 280 + rng.normal(size=(nt, 4, 4)))},
        coords=coarse,
    )
    inputs["t2m_coarse"].attrs = {"units": "K"}
    return fc, truth, inputs


def taiwan_case(*, members=3, nt=4, start="2010-03-11T00"):
    """A forecast on a 0.25° lat/lon grid round Taiwan (descending latitude, 2-D lat/lon),
    its coarse inputs on a 1° grid (own coordinates), and a catalog-like truth that starts
    earlier than the forecast and runs past it."""
    rng = np.random.default_rng(1)
    lat1, lon1 = np.arange(26.0, 21.0, -0.25), np.arange(118.0, 123.5, 0.25)
    ny, nx = lat1.size, lon1.size
    lat2, lon2 = np.meshgrid(lat1, lon1, indexing="ij")
    fc_times = np.datetime64(start, "ns") + np.arange(nt) * np.timedelta64(6, "h")
    tr_times = np.datetime64("2010-03-08T12", "ns") + np.arange(40) * np.timedelta64(6, "h")
    grid = {Y: np.arange(ny), X: np.arange(nx), "lat": ((Y, X), lat2), "lon": ((Y, X), lon2)}
    attrs = {
        "t2m": {"units": "K", "long_name": "2 metre temperature"},
        "u10": {"units": "m s-1", "long_name": "10 metre U wind component"},
        "tp": {"units": "m", "long_name": "total precipitation"},
    }
    base = {"t2m": 288.0, "u10": 0.0, "tp": 0.0}

    def fields(times, extra=()):
        out = {}
        for name, at in attrs.items():
            # each time differs from the next, the same in truth and forecast at one label
            hours = (times - tr_times[0]) / np.timedelta64(1, "h")
            trend = 0.5 * np.sin(hours / 12.0)[:, None, None] + hours[:, None, None] / 60.0
            v = base[name] + trend + rng.normal(size=(*extra, len(times), ny, nx))
            if name == "tp":
                v = np.maximum(v - 1.0, 0.0) / 1000.0
            out[name] = ((*(MEMBER,) * bool(extra), TIME, Y, X), v, at)
        return out

    truth = xr.Dataset(fields(tr_times), coords={**grid, TIME: tr_times})
    fc = xr.Dataset(fields(fc_times, (members,)), coords={**grid, TIME: fc_times})
    clat, clon = np.arange(26.0, 20.5, -1.0), np.arange(118.0, 124.0, 1.0)
    c2lat, c2lon = np.meshgrid(clat, clon, indexing="ij")
    inputs = xr.Dataset(
        {"t2m_coarse": ((TIME, Y_COARSE, X_COARSE), 288 + rng.normal(size=(40, 6, 6)), attrs["t2m"])},
        coords={TIME: tr_times, "lat_coarse": ((Y_COARSE, X_COARSE), c2lat),
                "lon_coarse": ((Y_COARSE, X_COARSE), c2lon)},
    )  # fmt: skip
    return fc, truth, inputs


def _maps(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _colorbar_labels(fig):
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_maps_have_a_panel_per_variable_and_column_with_unit_labels(tmp_path):
    fc, truth, inputs = make_case()
    fig = plot.plot_maps(fc, truth, inputs=inputs, members=2)
    # rows t2m, tp; columns input, truth, mean, member 0, member 1, error, spread
    maps = _maps(fig)
    assert len(maps) == 2 * 7
    titles = [ax.get_title() for ax in maps[:7]]
    assert titles == [
        "input: t2m_coarse",
        "truth",
        "ensemble mean",
        "member 0",
        "member 1",
        "error",
        "spread",
    ]
    assert not maps[7].axison  # tp has no matching input: that panel stays empty
    colorbars = _colorbar_labels(fig)
    assert "2 metre temperature [degC]" in colorbars  # display units: K shown as degC
    assert "mean - truth [degC]" in colorbars and "spread [mm]" in colorbars
    assert "precip [mm]" in colorbars
    assert maps[-1].get_xlabel() == "projection x [km]"  # km, not metres with a 1e6 offset
    assert maps[1].get_ylabel() == "projection y [km]"
    fig.canvas.draw()
    assert all(not ax.xaxis.get_offset_text().get_text() for ax in maps if ax.axison)
    truth_mesh = maps[1].collections[0]
    np.testing.assert_allclose(
        np.asarray(truth_mesh.get_array()).ravel(), truth["t2m"].values[0].ravel() - 273.15
    )


def test_colour_maps_follow_the_kind_of_variable():
    fc, truth, _ = taiwan_case()
    fig = plot.plot_maps(fc, truth, members=1)
    maps = _maps(fig)  # per row: truth, mean, member 0, error, spread
    t2m, u10, tp = maps[0:5], maps[5:10], maps[10:15]
    assert len({ax.collections[0].get_clim() for ax in t2m[:3]}) == 1  # one scale per row
    assert t2m[0].collections[0].get_cmap().name.startswith("RdYlBu_r")
    lo, hi = u10[0].collections[0].get_clim()
    assert lo == pytest.approx(-hi) and u10[0].collections[0].get_cmap().name == "RdBu_r"
    tp_mesh = tp[0].collections[0]
    assert isinstance(tp_mesh.norm, LogNorm) and tp_mesh.get_cmap().name.startswith("YlGnBu")
    error_lo, error_hi = t2m[3].collections[0].get_clim()
    assert error_lo == pytest.approx(-error_hi)
    error = fc["t2m"].isel(time=0).mean(MEMBER) - truth["t2m"].sel(time=fc.time[0])
    np.testing.assert_allclose(np.asarray(t2m[3].collections[0].get_array()).ravel(),
                               error.values.ravel())  # fmt: skip


def test_truth_and_inputs_are_drawn_at_the_forecasts_times_never_by_position():
    fc, truth, inputs = taiwan_case()
    fig = plot.plot_maps(fc, truth, inputs=inputs, time=0, members=1, variables=["t2m"])
    assert fig._suptitle.get_text() == "CorrDiff ensemble at 2010-03-11T00:00"
    maps = _maps(fig)
    want = truth["t2m"].sel(time="2010-03-11T00").values - 273.15
    np.testing.assert_allclose(np.asarray(maps[1].collections[0].get_array()).ravel(), want.ravel())
    drawn_input = np.asarray(maps[0].collections[0].get_array()).ravel()
    np.testing.assert_allclose(
        drawn_input, inputs["t2m_coarse"].sel(time="2010-03-11T00").values.ravel() - 273.15
    )
    late = fc.assign_coords(time=fc.time + np.timedelta64(3650, "D"))
    with pytest.raises(KeyError, match="the truth has no time 2020-03-08T00:00"):
        plot.plot_maps(late, truth)


def test_spectra_average_the_truth_over_the_forecasts_times_only():
    fc, truth, inputs = taiwan_case()
    fig = plot.plot_spectra(fc[["t2m"]], truth, inputs=inputs)
    ax = [a for a in fig.axes if a.get_xscale() == "log" and a.get_yscale() == "log"][0]
    drawn = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    on_fc_times = scoring.power_spectrum(truth["t2m"].sel(time=fc.time)).compute()
    on_fc_times = on_fc_times.where(
        on_fc_times.wavenumber <= on_fc_times.wavenumber.attrs["nyquist"] * (1 + 1e-9), drop=True
    )
    np.testing.assert_allclose(drawn["truth"], on_fc_times.values)
    every_time = scoring.power_spectrum(truth["t2m"]).compute().values[: len(drawn["truth"])]
    assert not np.allclose(drawn["truth"], every_time)  # the bug: all 40 truth times


def test_maps_at_chosen_times_draw_coastlines_on_lat_lon_axes():
    fc, truth, inputs = taiwan_case()
    fig = plot.plot_maps(fc, truth, inputs=inputs, times=[0, "2010-03-11T18"], members=1,
                         variables=["t2m"])  # fmt: skip
    maps = _maps(fig)
    n_cols = 6  # input, truth, mean, member 0, error, spread
    assert len(maps) == 2 * n_cols
    for row, when in enumerate(["2010-03-11T00", "2010-03-11T18"]):
        drawn = np.asarray(maps[row * n_cols + 1].collections[0].get_array()).ravel()
        np.testing.assert_allclose(drawn, truth["t2m"].sel(time=when).values.ravel() - 273.15)
        assert when.replace("T", " ") in maps[row * n_cols].get_ylabel().replace("T", " ")
    fig.canvas.draw()
    panel = maps[1]
    xticks = [t.get_text() for t in panel.get_xticklabels() if t.get_text()]
    yticks = [t.get_text() for t in panel.get_yticklabels() if t.get_text()]
    assert xticks and all(t.endswith("°E") for t in xticks)
    assert yticks and all(t.endswith("°N") for t in yticks)
    coast = [line for line in panel.get_lines() if line.get_linestyle() == "-"]
    lon, lat = coast[0].get_xdata(), coast[0].get_ydata()
    inside = (lon > 120) & (lon < 122.5) & (lat > 21.8) & (lat < 25.4)
    assert inside.sum() >= 3  # Taiwan's coast, from the shipped Natural Earth lines
    assert panel.get_xlim() == pytest.approx((117.875, 123.375))  # clipped to the domain
    # the coarse input on its own grid: same frame and aspect, not squashed
    assert maps[0].get_aspect() == pytest.approx(panel.get_aspect(), rel=0.01)
    assert maps[0].get_xlim() == pytest.approx((117.5, 123.5))  # its own 1° cells
    height = [ax.get_position().height for ax in maps[:5]]
    assert max(height) == pytest.approx(min(height), rel=0.15)


def test_longitudes_in_0_360_across_greenwich_stay_one_domain():
    fc, truth, _ = taiwan_case(members=2, nt=1)
    lon = (fc["lon"] - 118.0 + 355.0) % 360.0  # 355 .. 0.25: crosses 0°E
    fc, truth = (d.assign_coords(lon=lon, lat=d["lat"] + 25) for d in (fc, truth))
    fig = plot.plot_maps(fc, truth, members=1, variables=["t2m"])
    xlim = _maps(fig)[0].get_xlim()
    assert xlim[1] - xlim[0] < 8  # not stretched over 360 degrees
    fig.canvas.draw()
    ticks = [t.get_text() for t in _maps(fig)[0].get_xticklabels() if t.get_text()]
    assert any(t.endswith("°W") for t in ticks) and any(t.endswith("°E") for t in ticks)


def test_spectra_are_log_log_with_wavenumber_units():
    fc, truth, inputs = make_case()
    fig = plot.plot_spectra(fc, truth, inputs=inputs)
    main = [ax for ax in fig.axes if ax.get_xscale() == "log" and ax.get_yscale() == "log"]
    assert len(main) == 2
    assert main[0].get_xlabel() == "wavenumber [cycles per km]"
    assert main[0].get_ylabel() == "power spectral density [(K)^2 km]"
    labels = [line.get_label() for line in main[0].get_lines()]
    assert {"members", "ensemble mean", "truth", "input (t2m_coarse)"} <= set(labels)


def test_rank_histogram_figure_has_a_bar_per_rank():
    fc, truth, _ = make_case(members=4)
    fig = plot.plot_rank_histogram(fc, truth)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].patches) == 5
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert sum(heights) == pytest.approx(1.0)
    assert fig.axes[0].get_ylabel() == "relative frequency [1]"
    per_time = scoring.rank_histogram(fc, truth, dim=[Y, X])  # (rank, time): summed to draw
    again = plot.plot_rank_histogram(per_time)
    assert [p.get_height() for p in again.axes[0].patches] == pytest.approx(heights)


def test_verification_diagrams_draw_the_scores_they_name():
    fc, truth, _ = taiwan_case(members=4, nt=3)
    fig = plot.plot_reliability(fc, truth, thresholds={"tp": [0.0005, 0.001]})
    assert [ax.get_title() for ax in fig.axes] == ["tp >= 0.0005 m", "tp >= 0.001 m"]
    table = scoring.reliability(fc, truth.sel(time=fc.time), thresholds={"tp": [0.0005, 0.001]})
    corp = [line for line in fig.axes[0].get_lines() if line.get_label() == "CORP"][0]
    np.testing.assert_allclose(
        corp.get_ydata(), table["tp"].isel(threshold=0).sel(statistic="corp")
    )
    fig = plot.plot_fss(fc, truth, windows=[1, 3, 5], percentiles=[90])
    line = fig.axes[0].get_lines()[0]
    want = scoring.fss(fc, truth.sel(time=fc.time), windows=[1, 3, 5])["t2m"].squeeze("percentile")
    np.testing.assert_allclose(line.get_ydata(), want.values)
    fig = plot.plot_pit_histogram(fc, truth, bins=5)
    assert sum(p.get_height() for p in fig.axes[0].patches) == pytest.approx(1.0)
    fig = plot.plot_spread_skill(fc, truth)
    rmse = scoring.rmse(fc, truth.sel(time=fc.time), dim=[Y, X])["t2m"]
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), rmse.values)


def test_accessor_plot_dispatches_and_saves_atomically(tmp_path):
    fc, truth, _ = make_case()
    target = tmp_path / "out" / "ranks.png"
    fig = fc.corrdiff.plot("rank_histogram", truth=truth, path=target)
    assert fig is not None and target.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in target.parent.iterdir()) == ["ranks.png"]
    with pytest.raises(ValueError, match="unknown plot kind 'violin'"):
        plot.plot(fc, "violin")
    fc.corrdiff.plot("pit_histogram", truth=truth, path=tmp_path / "pit.png")
    assert (tmp_path / "pit.png").read_bytes()[:8] == PNG_MAGIC


def test_maps_of_a_cftime_axis_are_picked_and_titled_in_its_calendar(tmp_path):
    fc, truth, inputs = make_case()
    times = xr.date_range("2001-02-29", periods=2, freq="1D", calendar="360_day", use_cftime=True)
    fc, truth, inputs = (d.assign_coords({TIME: times}) for d in (fc, truth, inputs))
    fig = plot.plot_maps(fc, truth, inputs=inputs, time="2001-02-30", members=2)
    assert fig._suptitle.get_text() == "CorrDiff ensemble at 2001-02-30T00:00 (360_day)"
    truth_panel = next(ax for ax in fig.axes if ax.get_title() == "truth")
    drawn = truth_panel.collections[0].get_array()
    want = truth["t2m"].values[1].ravel() - 273.15
    np.testing.assert_allclose(np.asarray(drawn).ravel(), want)
    fc.corrdiff.plot("maps", path=tmp_path / "m.png", time=1)
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG_MAGIC
    fig = plot.plot_spread_skill(fc, truth)  # cftime times: labelled in their calendar
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][1] == "2001-02-30T00:00 (360_day)"
