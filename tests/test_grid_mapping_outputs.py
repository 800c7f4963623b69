"""A dataset's CF grid mapping (a scalar coordinate the targets name in ``grid_mapping``) is
carried to every output on the fine grid: downscale's Dataset, generate's Zarr store and
reference NetCDF groups, and the bilinear baseline; and readers resolve it after the trip."""

from __future__ import annotations

import cf_xarray  # noqa: F401  (registers ds.cf)
import numpy as np
import pytest
import xarray as xr

from corrdiff_xr._cf import grid_mappings, with_grid_mapping
from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.dims import TIME, X, Y
from corrdiff_xr.scoring.baselines import baseline_from_inputs, bilinear_baseline
from corrdiff_xr.scoring.inputs import open_reference_netcdf
from corrdiff_xr.testing import tiny_corrdiff

N = 16
POLE = "rotated_pole"
POLE_ATTRS = {
    "grid_mapping_name": "rotated_latitude_longitude",
    "grid_north_pole_latitude": 39.25,
    "grid_north_pole_longitude": 198.0,
}
AXIS_ATTRS = {
    Y: {"standard_name": "grid_latitude", "units": "degrees", "axis": "Y"},
    X: {"standard_name": "grid_longitude", "units": "degrees", "axis": "X"},
}


def rotated_dataset() -> xr.Dataset:
    """The synthetic dataset as on a rotated-pole grid: the mapping coordinate, the targets
    naming it and the y, x of the rotated grid."""
    ds = synthetic_dataset(ny=N, nx=N, nt=4, factor=4, seed=1, chunks={TIME: 2})
    ds = ds.assign_coords({POLE: ((), np.int32(0), POLE_ATTRS)})
    ds = ds.assign_coords({d: (d, ds[d].values, AXIS_ATTRS[d]) for d in (Y, X)})
    return ds.assign(
        {n: ds[n].assign_attrs(grid_mapping=POLE) for n in ("t2m", "u10", "v10", "tp")}
    )


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    root = tmp_path_factory.mktemp("rotated")
    rotated_dataset().to_zarr(root / "data.zarr", consolidated=False)
    pair = open_pair(str(root / "data.zarr"))
    tiny_corrdiff(Codec.from_pair(pair), (N, N)).save(root / "model.safetensors")
    return root, pair


def _check(ds: xr.Dataset, where: str) -> None:
    """``ds`` holds the mapping coordinate as it came and every (y, x) variable names it."""
    assert POLE in ds.coords, where
    assert ds[POLE].attrs == POLE_ATTRS, where
    fine = [n for n, v in ds.data_vars.items() if {Y, X} <= set(v.dims)]
    assert fine, where
    for name in fine:
        assert ds[name].attrs["grid_mapping"] == POLE, (where, name)
        assert ds[name].cf["grid_mapping"].attrs == POLE_ATTRS, (where, name)
    assert ds.cf.grid_mapping_names == {"rotated_latitude_longitude": [POLE]}, where


def test_with_grid_mapping_leaves_data_without_one_alone_and_names_the_one_a_variable_asks():
    plain = synthetic_dataset(ny=8, nx=8, nt=2, factor=4)
    assert grid_mappings(plain) == {}
    assert with_grid_mapping(plain[["t2m"]], plain).identical(plain[["t2m"]])
    source = rotated_dataset()
    alone = with_grid_mapping(source[["orography"]], source)
    assert alone["orography"].attrs["grid_mapping"] == POLE  # the only mapping there is
    assert "grid_mapping" not in source["orography"].attrs  # the source is not changed
    tm = {"grid_mapping_name": "transverse_mercator"}
    source = source.assign_coords(crs=((), np.int32(0), tm))
    picked = source[["t2m", "t2m_coarse", "orography"]].assign(
        u10=source["u10"].assign_attrs(grid_mapping="crs")
    )
    out = with_grid_mapping(picked, source)
    assert set(grid_mappings(out)) == {POLE, "crs"}
    assert out["crs"].attrs == tm and out[POLE].attrs == POLE_ATTRS
    assert out["t2m"].attrs["grid_mapping"] == POLE  # its namesake in the source names it
    assert out["u10"].attrs["grid_mapping"] == "crs"  # its own attribute comes first
    assert "grid_mapping" not in out["t2m_coarse"].attrs  # not on the fine grid
    assert "grid_mapping" not in out["orography"].attrs  # two mappings, none named: no guess


@pytest.mark.parametrize("output", ["ensemble", "mean", "residual"])
def test_every_downscale_output_keeps_the_grid_mapping_and_the_axes_attrs(rotated, output):
    root, pair = rotated
    out = pair.dataset.corrdiff.downscale(
        root / "model.safetensors", output=output, steps=2, patch=8, members=2
    )
    _check(out, output)
    for d in (Y, X):
        assert out[d].attrs == AXIS_ATTRS[d]


def test_generate_carries_the_grid_mapping_through_zarr_and_every_netcdf_group(rotated, tmp_path):
    root, pair = rotated
    out, nc = tmp_path / "out.zarr", tmp_path / "out.nc"
    argv = [
        "generate",
        "--data",
        str(root / "data.zarr"),
        "--checkpoint",
        str(root / "model.safetensors"),
        "--steps",
        "2",
        "--patch",
        "8",
        "--members",
        "2",
        "--times",
        "2020-01-01T01",
        "2020-01-01T02",
        "--torch-threads",
        "1",
        "--zarr",
        str(out),
        "--netcdf",
        str(nc),
    ]
    assert main(argv) == 0
    written = xr.open_zarr(out, consolidated=True)
    _check(written, "zarr")
    for group in ("truth", "prediction", "input"):
        ds = xr.open_dataset(nc, group=group)
        _check(ds, group)
        for d in (Y, X):  # the projection's coordinates travel with it
            assert ds[d].attrs == AXIS_ATTRS[d], (group, d)
            np.testing.assert_array_equal(ds[d].values, pair.dataset[d].values)
    # the scorer reads the mapping as a coordinate, not as a variable to score
    groups = open_reference_netcdf(nc)
    assert POLE not in groups["prediction"].data_vars and POLE in groups["prediction"].coords
    assert main(["score", str(nc), "-o", str(tmp_path / "scores.nc")]) == 0
    scores = xr.open_dataset(tmp_path / "scores.nc")
    assert sorted(scores["variable"].values) == sorted(written.data_vars)


def test_the_bilinear_baseline_keeps_the_grid_mapping(rotated, tmp_path):
    _, pair = rotated
    _check(bilinear_baseline(pair), "bilinear_baseline")
    # from inputs that carry the mapping coordinate but do not name it (the regridded inputs)
    inputs = pair.inputs_on_fine.assign_coords({POLE: pair.dataset[POLE]})
    for name in inputs.data_vars:
        inputs[name].attrs.pop("grid_mapping", None)
    _check(baseline_from_inputs(inputs, pair.targets), "baseline_from_inputs")


def test_a_variable_naming_its_mapping_in_the_extended_cf_form_keeps_it():
    """CF's extended form (``"rotated_pole: rlat rlon"``) names the mapping as surely as the short
    form; with two mappings in the source, the named one is chosen, not left out."""
    import numpy as np
    import xarray as xr

    from corrdiff_xr._cf import with_grid_mapping

    rotated = xr.DataArray(0, attrs={"grid_mapping_name": "rotated_latitude_longitude"})
    lambert = xr.DataArray(0, attrs={"grid_mapping_name": "lambert_conformal_conic"})
    field = xr.DataArray(np.zeros((2, 3)), dims=("y", "x"))
    source = xr.Dataset(
        {"tas": field.assign_attrs(grid_mapping="rotated_pole: y x")},
        coords={"rotated_pole": rotated, "lambert": lambert},
    )
    out = with_grid_mapping(xr.Dataset({"tas": field}), source)
    assert out["tas"].attrs["grid_mapping"] == "rotated_pole"
    own = xr.Dataset({"tas": field.assign_attrs(grid_mapping="lambert: y x")})
    assert with_grid_mapping(own, source)["tas"].attrs["grid_mapping"] == "lambert"
