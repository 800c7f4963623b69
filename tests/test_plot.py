"""Tests for corrdiff_xr.plot: PNGs written atomically, panels, labels with units."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import xarray as xr

import corrdiff_xr  # noqa: F401  (registers ds.corrdiff)
from corrdiff_xr import plot, scoring
from corrdiff_xr.dims import MEMBER, TIME, X_COARSE, Y_COARSE, X, Y

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_case(members=3, nt=2, n=16):
    rng = np.random.default_rng(0)
    coords = {
        TIME: np.array("2022-03-01", dtype="datetime64[ns]")
        + np.arange(nt) * np.timedelta64(1, "h"),
        Y: (Y, np.arange(n) * 2000.0, {"units": "m", "long_name": "projection y"}),
        X: (X, np.arange(n) * 2000.0, {"units": "m", "long_name": "projection x"}),
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


def test_maps_have_a_panel_per_variable_and_column_with_unit_labels(tmp_path):
    fc, truth, inputs = make_case()
    fig = plot.plot_maps(fc, truth, inputs=inputs, members=2)
    # rows t2m, tp; columns input, truth, mean, member 0, member 1, spread
    maps = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(maps) == 2 * 6
    titles = [ax.get_title() for ax in maps[:6]]
    assert titles == [
        "input: t2m_coarse",
        "truth",
        "ensemble mean",
        "member 0",
        "member 1",
        "spread",
    ]
    assert not maps[6].axison  # tp has no matching input: that panel stays empty
    colorbars = [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert "2 metre temperature [K]" in colorbars
    assert "precip [kg m-2]" in colorbars and "spread [kg m-2]" in colorbars
    assert maps[-1].get_xlabel() == "projection x [m]"
    assert maps[0].get_ylabel() == "t2m\nprojection y [m]"


def test_rows_share_one_colour_scale_and_precipitation_starts_at_zero():
    fc, truth, _ = make_case()
    fig = plot.plot_maps(fc, truth, members=1)
    maps = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    t2m_limits = {ax.collections[0].get_clim() for ax in maps[:3]}  # truth, mean, member
    assert len(t2m_limits) == 1
    tp_mesh = maps[4].collections[0]
    assert tp_mesh.get_clim()[0] == 0.0
    assert tp_mesh.get_cmap().name == "YlGnBu"


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


def test_accessor_plot_dispatches_and_saves_atomically(tmp_path):
    fc, truth, _ = make_case()
    target = tmp_path / "out" / "ranks.png"
    fig = fc.corrdiff.plot("rank_histogram", truth=truth, path=target)
    assert fig is not None and target.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in target.parent.iterdir()) == ["ranks.png"]
    with pytest.raises(ValueError, match="unknown plot kind 'violin'"):
        plot.plot(fc, "violin")


def test_maps_of_a_cftime_axis_are_picked_and_titled_in_its_calendar(tmp_path):
    fc, truth, inputs = make_case()
    times = xr.date_range("2001-02-29", periods=2, freq="1D", calendar="360_day", use_cftime=True)
    fc, truth, inputs = (d.assign_coords({TIME: times}) for d in (fc, truth, inputs))
    fig = plot.plot_maps(fc, truth, inputs=inputs, time="2001-02-30", members=2)
    assert fig._suptitle.get_text() == "CorrDiff ensemble at 2001-02-30T00:00 (360_day)"
    truth_panel = next(ax for ax in fig.axes if ax.get_title() == "truth")
    drawn = truth_panel.collections[0].get_array()
    np.testing.assert_array_equal(np.asarray(drawn).ravel(), truth["t2m"].values[1].ravel())
    fc.corrdiff.plot("maps", path=tmp_path / "m.png", time=1)
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG_MAGIC
