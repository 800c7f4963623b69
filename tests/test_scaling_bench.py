"""benchmarks/scaling.py: its whole code path at tiny sizes writes the JSON the docs show,
with exponents fitted from the points it measured."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _scaling():
    spec = importlib.util.spec_from_file_location("scaling", ROOT / "benchmarks" / "scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling") / "scaling.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/scaling.py", "--tiny", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(out.read_text())


def test_fit_exponent_recovers_a_known_power_law_and_refuses_one_point():
    fit = _scaling().fit_exponent
    assert fit([1, 2, 4, 8], [3 * v**1.5 for v in [1, 2, 4, 8]]) == pytest.approx(1.5)
    assert fit([10, 1000], [5.0, 5.0]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="two or more positive points"):
        fit([4], [1.0])


def test_summary_flags_exactly_the_exponents_above_the_limit():
    results = {"domain": {"exponent_time": 1.2, "exponent_peak_increment": 0.1, "points": []},
               "members": {"exponent_time": 1.05}}  # fmt: skip
    out = _scaling().summary(results)
    assert out["exponents"] == {"domain.exponent_time": 1.2, "domain.exponent_peak_increment": 0.1,
                                "members.exponent_time": 1.05}  # fmt: skip
    assert out["flagged_above_1.1"] == "domain.exponent_time" and out["flagged_count"] == 1


def test_each_axis_fits_its_exponents_from_its_measured_points(tiny_run):
    fit = _scaling().fit_exponent
    for axis, x in (("domain", "pixels"), ("members", "members")):
        points = tiny_run[axis]["points"]
        assert [p[x] for p in points] == ([32**2, 64**2] if axis == "domain" else [1, 2])
        for p in points:
            assert p["to_zarr_s"] > 0 and p["peak_mib"] >= p["before_mib"] > 0
        xs = [p[x] for p in points]
        assert tiny_run[axis]["exponent_time"] == pytest.approx(
            fit(xs, [p["to_zarr_s"] for p in points])
        )
        assert tiny_run["exponents"][f"{axis}.exponent_time"] == tiny_run[axis]["exponent_time"]
    # 32 x 32 output chunks: one block for 32^2, four for 64^2
    assert [p["blocks"] for p in tiny_run["domain"]["points"]] == [1, 4]


def test_the_network_axis_orders_networks_by_size_and_fits_time_against_flops(tiny_run):
    net = tiny_run["network"]
    tiny, mini = net["points"]
    assert (tiny["network"], mini["network"]) == ("tiny", "mini") and net["patch"] == 32
    assert mini["parameters_millions"] > 10 * tiny["parameters_millions"]
    assert mini["forward_gflop"] > 10 * tiny["forward_gflop"] > 0
    slope = _scaling().fit_exponent(
        [tiny["forward_gflop"], mini["forward_gflop"]], [tiny["forward_s"], mini["forward_s"]]
    )
    assert net["exponent_forward_vs_gflop"] == pytest.approx(slope)


def test_the_workers_axis_reports_the_speedup_of_its_two_clusters(tiny_run):
    w = tiny_run["workers"]
    assert [p["workers"] for p in w["points"]] == [1, 2]
    assert w["speedup"] == pytest.approx(w["workers_1_s"] / w["workers_2_s"])
    assert all(p["peak_mib"] > 0 and p["blocks"] == 4 for p in w["points"])


def test_the_run_records_its_machine_and_flags_consistently(tiny_run):
    machine = tiny_run["machine"]
    assert machine["cores"] >= 1 and machine["torch_threads_per_task"] == 1
    assert len(machine["load_average_start"]) == 3
    over = sorted(k for k, v in tiny_run["exponents"].items() if v > 1.1)
    assert tiny_run["flagged_count"] == len(over)
    assert tiny_run["flagged_above_1.1"] == (", ".join(over) or "none")
