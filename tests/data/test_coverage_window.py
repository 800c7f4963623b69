"""A coverage error names the window that fits in the fine archive's own positions, also
when a window was given already."""

from __future__ import annotations

import ast

import pytest
from test_geographic_pairing import LAMBERT_SOUTH, SAFRICA, cfgrib, era5

from corrdiff_xr.data import CoverageError
from corrdiff_xr.data.archives import open_archives


def _named_window(coarse, fine, window) -> dict:
    with pytest.raises(CoverageError, match="covers the fine window") as err:
        open_archives({"dataset": coarse, "variables": {"t2m": "c"}}, fine, window=window)
    return ast.literal_eval(str(err.value).split("covers the fine window ")[1].split(" (")[0])


def test_the_window_named_after_a_given_window_counts_from_the_fine_archives_start():
    coarse = era5((-35, -15), (0, 50), 0.5)  # the fine domain reaches -37.3
    fine = cfgrib(LAMBERT_SOUTH, SAFRICA, (60, 40), 12e3, name="tas")
    given = {"y": [2, 60], "x": [5, 40]}
    named = _named_window(coarse, fine, given)
    assert named["y"][0] >= 2 and named["x"][0] >= 5  # inside the given window, not the cut's
    assert named["y"][1] <= 60 and named["x"][1] <= 40
    pair = open_archives({"dataset": coarse, "variables": {"t2m": "c"}}, fine, window=named)
    assert pair.dataset.sizes["y"] == named["y"][1] - named["y"][0]
