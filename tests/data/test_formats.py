"""Archives in any format (NetCDF, GRIB, kerchunk references, Icechunk) open through one
table of formats and pair exactly as the same data in Zarr does.

The fixtures are real files written by each format's own tools: GRIB 2 messages encoded by
ecCodes from its ``regular_ll_sfc_grib2`` sample (an analysis: one time per message), a
NetCDF-4 file, a kerchunk reference made by ``kerchunk.hdf.SingleHdf5ToZarr`` and an Icechunk
repository committed on local disk.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.data import StoreError
from corrdiff_xr.data.archives import open_archives
from corrdiff_xr.data.sources.formats import FORMATS, open_store
from corrdiff_xr.data.sources.native_example import native_archives

eccodes = pytest.importorskip("eccodes")
pytest.importorskip("cfgrib")
pytest.importorskip("kerchunk")
icechunk = pytest.importorskip("icechunk")

#: GRIB short names (what ecCodes encodes) of the coarse archive's variables
GRIB_NAMES = {"2m_temperature": "2t", "10m_u_component_of_wind": "10u"}


def write_grib(path, coarse: xr.Dataset) -> str:
    """One GRIB 2 message per time and variable on the coarse archive's global 1-degree grid."""
    lat, lon = coarse["latitude"].values, coarse["longitude"].values
    grid = {
        "Ni": lon.size, "Nj": lat.size,
        "latitudeOfFirstGridPointInDegrees": float(lat[0]),
        "longitudeOfFirstGridPointInDegrees": float(lon[0]),
        "latitudeOfLastGridPointInDegrees": float(lat[-1]),
        "longitudeOfLastGridPointInDegrees": float(lon[-1]),
        "iDirectionIncrementInDegrees": float(lon[1] - lon[0]),
        "jDirectionIncrementInDegrees": float(lat[0] - lat[1]),
    }  # fmt: skip
    with open(path, "wb") as f:
        for i, t in enumerate(coarse["time"].values):
            stamp = str(np.datetime_as_string(t, "h"))
            when = {
                "dataDate": int(stamp[:10].replace("-", "")),
                "dataTime": int(stamp[11:13]) * 100,
            }
            for name, short in GRIB_NAMES.items():
                h = eccodes.codes_grib_new_from_samples("regular_ll_sfc_grib2")
                eccodes.codes_set_key_vals(h, {**grid, **when, "shortName": short})
                eccodes.codes_set_values(h, coarse[name].isel(time=i).values.astype(float).ravel())
                eccodes.codes_write(h, f)
                eccodes.codes_release(h)
    return str(path)


def write_reference(nc_path, out_path) -> str:
    from kerchunk.hdf import SingleHdf5ToZarr

    refs = SingleHdf5ToZarr(str(nc_path), inline_threshold=0).translate()
    out_path.write_text(json.dumps(refs))
    return str(out_path)


def write_icechunk(ds: xr.Dataset, path) -> str:
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    session = repo.writable_session("main")
    ds.to_zarr(session.store, consolidated=False, mode="w")
    session.commit("orography")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    arch = native_archives(nt=12)
    fine = arch["fine"].copy()
    fine["time"].encoding["units"] = "hours since 2001-01-01"  # time and its bounds alike
    fine.to_netcdf(root / "fine.nc", engine="h5netcdf")
    zarr = {}
    for name, ds in arch.items():
        zarr[name] = str(root / f"{name}.zarr")
        ds.to_zarr(zarr[name], mode="w")
    return {
        "arch": arch,
        "zarr": zarr,
        "grib": write_grib(root / "era5.grib2", arch["coarse"]),
        "nc": str(root / "fine.nc"),
        "refs": write_reference(root / "fine.nc", root / "fine.json"),
        "ice": write_icechunk(arch["orography"], root / "orog.icechunk"),
        "root": root,
    }


def grib_coarse(path: str) -> list[dict]:
    """The GRIB file as two coarse archives: one hypercube (shortName) each."""
    return [
        {"url": path, "backend_kwargs": {"filter_by_keys": {"shortName": "2t"}},
         "variables": {"t2m": "tas_coarse"}},
        {"url": path, "backend_kwargs": {"filter_by_keys": {"shortName": "10u"}},
         "variables": {"u10": "uas_coarse"}},
    ]  # fmt: skip


def quiet_pair(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # coarse times the fine archive lacks
        return open_archives(*args, **kw)


@pytest.mark.parametrize(
    ("key", "spec", "name", "source"),
    [
        ("nc", {}, "tas", "fine"),  # engine from the suffix
        ("nc", {"engine": "netcdf4"}, "uas", "fine"),
        ("refs", {"engine": "kerchunk"}, "tas", "fine"),
        ("ice", {"engine": "icechunk"}, "orog", "orography"),
        ("grib", {"backend_kwargs": {"filter_by_keys": {"shortName": "2t"}}}, "t2m", "coarse"),
    ],
)
def test_each_format_opens_lazily_to_the_values_written(files, key, spec, name, source):
    ds = open_store(files[key], what="archive", **spec)
    assert ds[name].chunks is not None  # dask-backed: nothing read yet
    assert all(ds[c].chunks is None for c in ds.coords)  # coordinates read at open
    written = files["arch"][source]
    native = {"t2m": "2m_temperature"}.get(name, name)
    # GRIB simple packing keeps ~16 bits: a few mK on a 90 K range
    atol = 0.01 if key == "grib" else 0
    np.testing.assert_allclose(ds[name].values, written[native].values, atol=atol)


def test_a_pair_from_grib_kerchunk_and_icechunk_equals_the_zarr_pair(files):
    formats = quiet_pair(
        grib_coarse(files["grib"]),
        {"url": files["refs"], "engine": "kerchunk"},
        {"url": files["ice"], "engine": "icechunk"},
    )
    zarr = quiet_pair(
        [{"url": files["zarr"]["coarse"], "variables": {"2m_temperature": "tas_coarse"}},
         {"url": files["zarr"]["coarse"], "variables": {"10m_u_component_of_wind": "uas_coarse"}}],
        files["zarr"]["fine"], files["zarr"]["orography"],
    )  # fmt: skip
    assert (formats.inputs, formats.targets, formats.static) == (
        ("tas_coarse", "uas_coarse"),
        ("tas", "uas"),
        ("orog",),
    )
    assert formats.dataset["time"].size == 4  # the fine archive's 3-hourly times
    for name in ("tas", "uas", "orog"):
        np.testing.assert_array_equal(formats.dataset[name].values, zarr.dataset[name].values)
    for name in formats.inputs:
        np.testing.assert_allclose(
            formats.dataset[name].values, zarr.dataset[name].values, atol=0.01
        )


def test_unknown_engines_and_backend_kwargs_are_refused_naming_the_known_ones(files):
    with pytest.raises(StoreError, match=r"fine archive: unknown engine 'grib'.*'cfgrib'"):
        open_archives(files["grib"], {"url": files["nc"], "engine": "grib"})
    # cfgrib would write its index beside the file: indexpath is no backend kwarg here
    with pytest.raises(
        StoreError, match=r"backend_kwargs of engine 'cfgrib': unknown key 'indexpath'.*filter_by"
    ):
        open_store(files["grib"], backend_kwargs={"indexpath": "elsewhere/x.idx"})
    with pytest.raises(StoreError, match=r"engine 'icechunk': unknown key 'brnch'.*'branch'"):
        open_store(files["ice"], engine="icechunk", backend_kwargs={"brnch": "main"})
    assert not list(files["root"].glob("*.idx"))  # opening GRIB wrote no index


def test_unreadable_files_are_refused_in_one_line_naming_the_fix(files, tmp_path):
    with pytest.raises(StoreError, match=r"several hypercubes.*filter_by_keys") as info:
        open_store(files["grib"])  # 2t and 10u: two heights in one file
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match=r"GRIB file '.*missing.grib2' does not exist"):
        open_store(str(tmp_path / "missing.grib2"))
    with pytest.raises(StoreError, match=r"engine 'cfgrib' reads local files only.*kerchunk"):
        open_store("s3://bucket/era5.grib2")
    classic = tmp_path / "classic.nc"
    files["arch"]["orography"].to_netcdf(classic, format="NETCDF3_64BIT", engine="scipy")
    with pytest.raises(StoreError, match=r"NetCDF-3 file needs engine 'netcdf4'"):
        open_store(str(classic))
    assert open_store(str(classic), engine="netcdf4")["orog"].shape == (48, 48)


def _refs(files) -> dict:
    return json.loads(open(files["refs"]).read())


def test_reference_targets_are_checked_before_anything_is_read(files, tmp_path):
    doc = _refs(files)
    key = next(k for k, v in doc["refs"].items() if isinstance(v, list))
    for target, message in (
        (f"simplecache::file://{files['nc']}", "chained or unsupported"),
        ("ssh://host/data.nc", "chained or unsupported"),
    ):
        bad = {**doc, "refs": {**doc["refs"], key: [target, 0, 8]}}
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(StoreError, match=message):
            open_store(str(path), engine="kerchunk")
    # plain {{name}} templates are filled; anything more is refused, not rendered
    templated = {**doc, "templates": {"u": files["nc"]}}
    templated["refs"] = {k: ["{{u}}", *v[1:]] if isinstance(v, list) else v
                         for k, v in doc["refs"].items()}  # fmt: skip
    (tmp_path / "t.json").write_text(json.dumps(templated))
    ds = open_store(str(tmp_path / "t.json"), engine="kerchunk")
    np.testing.assert_array_equal(ds["tas"].values, files["arch"]["fine"]["tas"].values)
    templated["refs"][key] = ["{{ u.__class__ }}", 0, 8]
    (tmp_path / "t.json").write_text(json.dumps(templated))
    with pytest.raises(StoreError, match="template beyond"):
        open_store(str(tmp_path / "t.json"), engine="kerchunk")


def test_a_remote_reference_reads_remote_targets_never_local_files(files, s3_server):
    bucket = s3_server.new_bucket("refs")
    fs, options = s3_server.filesystem(), s3_server.storage_options
    fs.put(files["nc"], f"{bucket}/fine.nc")
    doc = _refs(files)
    local = json.dumps(doc)
    remote = local.replace(json.dumps(files["nc"]), json.dumps(f"s3://{bucket}/fine.nc"))
    fs.pipe({f"{bucket}/local.json": local.encode(), f"{bucket}/remote.json": remote.encode()})
    with pytest.raises(
        StoreError, match=r"points at the local file .*fine.nc.*reference is remote"
    ):
        open_store(f"s3://{bucket}/local.json", engine="kerchunk", storage_options=options)
    ds = open_store(f"s3://{bucket}/remote.json", engine="kerchunk", storage_options=options)
    np.testing.assert_array_equal(ds["tas"].values, files["arch"]["fine"]["tas"].values)
    # fsspec's own spelling, and the NetCDF file itself over S3
    spelled = {"fo": f"s3://{bucket}/remote.json", "target_options": options,
               "remote_options": options}  # fmt: skip
    assert open_store("reference://", engine="kerchunk", storage_options=spelled)["uas"].shape
    nc = open_store(f"s3://{bucket}/fine.nc", storage_options=options)
    np.testing.assert_array_equal(nc["uas"].values, files["arch"]["fine"]["uas"].values)


def test_every_engine_is_one_row_of_the_table():
    assert sorted(FORMATS) == ["cfgrib", "h5netcdf", "icechunk", "kerchunk", "netcdf4", "zarr"]
    assert all(callable(f.open) and f.description for f in FORMATS.values())
