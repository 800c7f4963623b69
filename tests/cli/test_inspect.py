"""``corrdiff-xr inspect``: the report on a pair of native archives, a single archive and a
canonical store, with the fix for each problem found."""

from __future__ import annotations

import warnings

import pytest

from corrdiff_xr.cli import main
from corrdiff_xr.data.sources.native_example import native_archives


@pytest.fixture(scope="module")
def odd_archives(tmp_path_factory):
    """37x49 km-scale grid (no UNet halves it) in the 360_day calendar."""
    root = tmp_path_factory.mktemp("odd")
    paths = {}
    for name, ds in native_archives(nt=12, ny=37, nx=49, calendar="360_day").items():
        paths[name] = str(root / f"{name}.zarr")
        ds.to_zarr(paths[name])
    return paths


def _inspect(argv, capsys) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["inspect", *argv]) == 0
    return capsys.readouterr().out


def test_a_pair_of_native_archives_is_reported_with_fixes(odd_archives, capsys):
    params = [f"coarse_url={odd_archives['coarse']}", f"fine_url={odd_archives['fine']}",
              f"orography_url={odd_archives['orography']}"]  # fmt: skip
    out = _inspect(["catalog:archives/pair", "--param", *params], capsys)
    assert "targets (fine): ['tas', 'uas']" in out
    assert "grid mapping 'rotated_pole' (rotated_latitude_longitude)" in out
    assert "y_coarse: latitude [degrees_north] 53..48 (descending)" in out
    assert "calendar 360_day, every 180 min" in out and "2001-02-27T00:00" in out
    assert "tas: 42.5 % NaN (first time): trained with the masked loss" in out
    assert "crop 37x49 -> 36x48 (a pair's window={'y': [0, 36], 'x': [0, 48]})" in out
    assert "squeezed singleton dim 'height'" in out and "cut (53, 65) -> fine grid" in out


def test_a_single_archive_is_described_by_its_cf_axes(odd_archives, capsys):
    out = _inspect([odd_archives["fine"]], capsys)
    assert out.startswith("not a canonical pair: source")
    assert "tas ('time', 'height', 'rlat', 'rlon') float32: axes T=time, X=rlon, Y=rlat" in out
    assert "other dims ['height']: select one value each" in out
    assert "rotated_pole: grid mapping" in out and "open_archives(coarse, fine)" in out


def test_a_canonical_store_fits_every_preset(tmp_path, capsys):
    from corrdiff_xr.data import synthetic_dataset

    synthetic_dataset(ny=16, nx=16, nt=2, factor=4).to_zarr(tmp_path / "c.zarr")
    out = _inspect([str(tmp_path / "c.zarr"), "--scan"], capsys)
    assert "network preset 'normal' (5 levels): 16x16 fits" in out
    assert "t2m: complete (all times)" in out and out.rstrip().endswith("problems: none")
