"""The documentation site builds with warnings as errors, and carries what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-b", "html"]
    run = subprocess.run([*cmd, str(REPO / "docs"), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, f"sphinx warnings or errors:\n{run.stderr[-4000:]}"
    return out


def test_every_notebook_is_a_page(site):
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        page = site / "notebooks" / f"{nb.stem}.html"
        assert page.exists(), f"{nb.name} is not rendered (add it to docs/index.md)"


def test_the_benchmarks_page_shows_every_results_file_and_its_figures(site):
    html = (site / "benchmarks.html").read_text()
    for path in (REPO / "benchmarks" / "results").glob("*.json"):
        assert path.stem in html
    packages = json.loads((REPO / "benchmarks" / "results" / "packages.json").read_text())
    ratio = packages["members_per_s_vs_earth2studio"]
    assert "members_per_s_vs_earth2studio" in html and f"{ratio:.4g}" in html


def test_the_api_reference_documents_the_public_names(site):
    import corrdiff_xr as cx

    pages = "".join(p.read_text() for p in (site / "generated").glob("*.html"))
    for name in cx.API:
        module = cx.API[name]
        defined_in = getattr(cx, name).__module__
        assert f'id="{defined_in}.{name}"' in pages, f"{module}.{name} has no API entry"
