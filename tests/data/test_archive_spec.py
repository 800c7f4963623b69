"""Archive specs lose nothing quietly: unknown keys, unstorable or clashing names, windows that
are not two whole positions and static fields with gaps are refused, each in one line naming
the key, name or dim and the fix."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import yaml

from corrdiff_xr.data import DataError, EmptySelectionError, NameClashError
from corrdiff_xr.data.archive_spec import given_options
from corrdiff_xr.data.archives import open_archives
from corrdiff_xr.data.layout import MissingValueError
from corrdiff_xr.data.sources.native_example import native_archives

COARSE_MAP = {"2m_temperature": "t2m", "10m_u_component_of_wind": "u10"}


@pytest.fixture(scope="module")
def arch():
    return native_archives(nt=3, fine_step_hours=1)


def _open(arch, coarse=None, **kw):
    coarse = coarse if coarse is not None else {"dataset": arch["coarse"], "variables": COARSE_MAP}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return open_archives(coarse, arch["fine"], **kw)


@pytest.mark.parametrize(
    ("name", "problem"),
    [("t2m/level", "holds '/'"), ("", "is empty"), (".t2m", "starts with '.'"), (5, "is a int")],
)
def test_a_variables_map_gives_only_names_a_store_can_hold(arch, name, problem):
    variables = {"2m_temperature": name}
    with pytest.raises(NameClashError, match=f"coarse archive: variables: .*{problem}") as err:
        _open(arch, {"dataset": arch["coarse"], "variables": variables})
    assert repr(name) in str(err.value) and "\n" not in str(err.value)


def test_an_unmapped_native_name_that_no_store_can_hold_asks_for_a_map(arch):
    odd = arch["coarse"].rename({"2m_temperature": "surface/t2m"})
    with pytest.raises(NameClashError, match=r"variables=\{'surface/t2m': 'surface_t2m'\}"):
        _open(arch, {"dataset": odd})
    pair = _open(arch, {"dataset": odd, "variables": {"surface/t2m": "t2m"}})  # the fix works
    assert pair.inputs == ("t2m",)


def test_two_native_variables_mapped_to_one_name_are_refused(arch):
    both = {"2m_temperature": "x", "10m_u_component_of_wind": "x"}
    with pytest.raises(NameClashError, match="both '2m_temperature' and '10m_u_component_of_wind'"):
        _open(arch, {"dataset": arch["coarse"], "variables": both})


def test_an_unknown_key_is_refused_with_the_closest_known_one(arch):
    with pytest.raises(DataError, match="unknown key 'varibles' \\(did you mean 'variables'\\?\\)"):
        _open(arch, {"dataset": arch["coarse"], "varibles": COARSE_MAP})
    with pytest.raises(EmptySelectionError, match="unknown key 'strat' .*'start'"):
        _open(arch, time={"strat": "2001-02-27"})


def test_a_typo_beside_a_catalog_entry_reference_is_refused(tmp_path):
    from corrdiff_xr.data import CatalogError
    from corrdiff_xr.data.catalog import catalog_dir, open_entry

    spec = yaml.safe_load((catalog_dir() / "archives.yaml").read_text())
    coarse = spec["entries"]["pair"]["kwargs"]["coarse"]
    coarse["varibles"] = coarse.pop("variables")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(CatalogError, match="coarse: unknown key 'varibles' .*'variables'"):
        open_entry(path, "pair")


@pytest.mark.parametrize(
    "bounds",
    [[-8, -1], [-1, 5], ["0", "5"], [False, True], [0.0, 5.0], [3, 3], [0, 999], [0], "05"],
    ids=["negative", "negative-start", "strings", "booleans", "floats", "empty", "past-end",
         "one-bound", "text"],
)  # fmt: skip
def test_a_window_is_two_whole_positions_within_the_grid(arch, bounds):
    with pytest.raises(EmptySelectionError, match=r"window y=.*0 <= start < stop <= 32") as err:
        _open(arch, window={"y": bounds})
    assert "\n" not in str(err.value)


def test_a_valid_window_keeps_its_rows(arch):
    pair = _open(arch, window={"y": np.array([2, 10]), "x": (np.int64(0), 16)})
    assert (pair.dataset.sizes["y"], pair.dataset.sizes["x"]) == (8, 16)
    np.testing.assert_array_equal(pair.dataset["y"].values, arch["fine"]["rlat"].values[2:10])


def test_static_fields_with_gaps_are_refused_when_opened(arch):
    orog = arch["orography"].copy()
    values = orog["orog"].values.copy()
    values[20:23, 20:24] = np.nan  # inside the fine domain (the margin is 8 cells)
    values[25, 30] = np.inf
    gappy = orog.assign(orog=orog["orog"].copy(data=values))
    with pytest.raises(
        MissingValueError, match="static archive 0: static field 'orog' holds 12 NaN and 1 inf"
    ):
        _open(arch, static=gappy)
    # a gap outside the fine domain is never read into the pair
    values = orog["orog"].values.copy()
    values[0, 0] = np.nan
    pair = _open(arch, static=orog.assign(orog=orog["orog"].copy(data=values)))
    assert np.isfinite(pair.dataset["orog"].values).all()


def test_two_archives_of_one_role_giving_one_name_are_refused_naming_both(arch):
    t2m = {"dataset": arch["coarse"], "variables": {"2m_temperature": "t2m"}}
    with pytest.raises(NameClashError, match="coarse archive 0 and coarse archive 1 both give"):
        _open(arch, [t2m, t2m])  # identical values would have merged without a word
    with pytest.raises(NameClashError, match="static archive 0 and static archive 1 .*'orog'"):
        _open(arch, static=[arch["orography"], arch["orography"] * 2])
    renamed = {"dataset": arch["orography"], "variables": {"orog": "orog_2"}}
    pair = _open(arch, static=[arch["orography"], renamed])  # the fix works
    assert {"orog", "orog_2"} <= set(pair.dataset.data_vars)


def test_given_options_drop_what_a_catalog_left_unset_at_any_depth():
    options = {
        "anon": False,  # a value, not unset
        "endpoint_url": "",
        "token": None,
        "client_kwargs": {"region_name": "", "timeout": 0},
        "config_kwargs": {"s3": {"addressing_style": None}},
    }
    assert given_options(options) == {"anon": False, "client_kwargs": {"timeout": 0}}
    assert given_options({"endpoint_url": "", "client_kwargs": {}}) is None
    assert given_options(None) is None
