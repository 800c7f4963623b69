"""Unquoted YAML dates (``2001-01-01`` reads as a datetime.date) are taken as the ISO strings
written, in config files and in ``key=value`` overrides."""

from __future__ import annotations

import datetime

from corrdiff_xr.config import parse_overrides
from corrdiff_xr.training import load_run_config


def test_unquoted_dates_in_a_config_file_and_overrides_are_iso_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "task: regression\ntraining: {output_dir: out}\n"
        "data:\n  source: x.zarr\n  train_period: [2020-01-01, 2020-01-05 06:00:00]\n"
        "  catalog_params: {start: 2001-01-01}\n"
    )
    cfg = load_run_config(str(path), ["data.valid_period=[2020-01-06, 2020-01-07]"])
    assert cfg.data.train_period == ("2020-01-01", "2020-01-05T06:00:00")
    assert cfg.data.valid_period == ("2020-01-06", "2020-01-07")
    assert cfg.data.catalog_params == {"start": "2001-01-01"}
    assert parse_overrides(["time.start=2001-01-01"]) == {"time": {"start": "2001-01-01"}}


def test_an_archive_period_given_as_dates_selects_those_times():
    from corrdiff_xr.data.archives import open_archives
    from corrdiff_xr.data.sources.native_example import native_archives

    a = native_archives(nt=4, ny=16, nx=16)
    pair = open_archives(
        {"dataset": a["coarse"], "variables": {"2m_temperature": "tas_c"}},
        {"dataset": a["fine"], "variables": {"tas": "tas"}},
        time={"start": datetime.datetime(2001, 2, 27, 3)},
    )
    assert str(pair.dataset["time"].values[0]).startswith("2001-02-27T03:00")
