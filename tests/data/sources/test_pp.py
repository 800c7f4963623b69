"""Our PP reader against known facts about iris-sample-data's ``uk_hires.pp``."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from corrdiff_xr.data.sources.pp import (
    PPFormatError,
    open_pp,
    read_pp,
    rotated_to_geographic,
)

iris_sample_data = pytest.importorskip("iris_sample_data")
UK_HIRES = os.path.join(iris_sample_data.path, "uk_hires.pp")


@pytest.fixture(scope="module")
def fields():
    return read_pp(UK_HIRES)


@pytest.fixture(scope="module")
def ds():
    return open_pp(UK_HIRES)


def _nearest(ds, lat, lon):
    d2 = (ds.latitude - lat) ** 2 + ((ds.longitude - lon) * np.cos(np.deg2rad(lat))) ** 2
    return np.unravel_index(int(np.argmin(d2.values)), d2.shape)


def test_file_holds_seven_levels_by_three_hours_of_theta_plus_orography(fields):
    assert len(fields) == 22
    stash = [f.stash_string for f in fields]
    assert stash.count("m01s00i004") == 21 and stash.count("m01s00i033") == 1
    theta = [f for f in fields if f.stash == 4]
    assert sorted({f["LBLEV"] for f in theta}) == [1, 4, 7, 10, 13, 16, 19]
    assert len({f.validity_time for f in theta}) == 3


def test_header_words_are_consistent_with_the_data_record(fields):
    for f in fields:
        assert f.data.shape == (f["LBROW"], f["LBNPT"]) == (204, 187)
        assert f["LBPACK"] == 0 and f["LBREL"] == 3
        # forecast period equals validity minus reference time
        hours = (f.validity_time - f.reference_time) / np.timedelta64(1, "h")
        assert hours == f["LBFT"]
        # y is regular from the header; x is irregular and comes from the extra data
        assert np.allclose(np.diff(f.y), f["BDY"]) and f["BDY"] == pytest.approx(0.0135)
        assert f["BDX"] == 0.0 and f.x.size == f["LBNPT"]
        assert np.allclose(np.diff(f.x), 0.0135, atol=1e-4)
        assert (f["BPLAT"], f["BPLON"]) == (37.5, 177.5)


def test_theta_values_are_plausible_and_increase_with_height(ds):
    theta = ds.air_potential_temperature
    assert theta.dims == ("time", "model_level_number", "grid_latitude", "grid_longitude")
    assert 270.0 < float(theta.min()) and float(theta.max()) < 330.0
    assert not np.isnan(theta.values).any()
    # the atmosphere is statically stable on average: theta grows with model level
    profile = theta.mean(["time", "grid_latitude", "grid_longitude"]).values
    assert np.all(np.diff(profile) > 0)
    assert np.all(np.diff(theta.level_height.values) > 0)


def test_rotated_grid_lands_on_northern_england_and_wales(ds):
    assert 52.0 < float(ds.latitude.min()) and float(ds.latitude.max()) < 56.0
    assert -7.5 < float(ds.longitude.min()) and float(ds.longitude.max()) < -2.0
    orog = ds.surface_altitude
    # the highest point is within ~20 km of Snowdon (53.07N, 4.08W)
    iy, ix = np.unravel_index(int(np.argmax(orog.values)), orog.shape)
    assert abs(float(ds.latitude[iy, ix]) - 53.07) < 0.2
    assert abs(float(ds.longitude[iy, ix]) + 4.08) < 0.3
    # the Irish Sea is sea (zero orography), the Lake District fells are high land
    assert float(orog[_nearest(ds, 53.9, -5.0)]) == 0.0
    assert float(orog[_nearest(ds, 54.45, -3.21)]) > 300.0


def test_rotation_preserves_distances_and_maps_the_grid_origin():
    lat, lon = rotated_to_geographic(
        np.array([0.0, 90.0]), np.array([0.0, 0.0]), pole_lat=37.5, pole_lon=177.5
    )
    assert np.allclose([lat[0], lon[0]], [52.5, -2.5]) and lat[1] == pytest.approx(37.5)
    rlat, rlon = np.array([1.0, 2.5]), np.array([-1.0, 0.5])
    glat, glon = rotated_to_geographic(rlat, rlon, pole_lat=37.5, pole_lon=177.5)

    def arc(la, lo):
        la, lo = np.deg2rad(la), np.deg2rad(lo)
        c = np.sin(la[0]) * np.sin(la[1]) + np.cos(la[0]) * np.cos(la[1]) * np.cos(lo[0] - lo[1])
        return np.arccos(c)

    assert arc(glat, glon) == pytest.approx(arc(rlat, rlon), rel=1e-9)


def test_truncated_file_raises_a_clear_error(tmp_path):
    path = tmp_path / "cut.pp"
    with open(UK_HIRES, "rb") as src:
        path.write_bytes(src.read(300000))
    with pytest.raises(PPFormatError, match="cut.pp.*data of field 1"):
        read_pp(path)


def test_packed_field_is_refused_naming_lbpack(tmp_path):
    path = tmp_path / "packed.pp"
    shutil.copy(UK_HIRES, path)
    with open(path, "r+b") as fh:  # LBPACK is header word 21, after the 4-byte marker
        fh.seek(4 + 20 * 4)
        fh.write(np.array([1], ">i4").tobytes())
    with pytest.raises(PPFormatError, match="LBPACK=1"):
        read_pp(path)


def test_non_pp_file_is_refused(tmp_path):
    path = tmp_path / "junk.pp"
    path.write_bytes(b"CDF\x01" + bytes(400))
    with pytest.raises(PPFormatError, match="junk.pp"):
        read_pp(path)


def test_negative_record_length_is_refused_without_reading_on(tmp_path):
    path = tmp_path / "neg.pp"
    path.write_bytes(np.array([-8], ">i4").tobytes() + bytes(64))
    with pytest.raises(PPFormatError, match="record length -8 before header of field 0"):
        read_pp(path)
