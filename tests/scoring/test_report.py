"""``score --report``: one self-contained HTML page, every section there, every image real;
``score`` refuses a store that ``generate`` did not finish."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from corrdiff_xr import cli
from corrdiff_xr.dims import MEMBER, TIME, X, Y
from corrdiff_xr.plot.report import SECTIONS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def north_sea(*, members=4, nt=6, seed=0):
    """A small ensemble on a 0.25° grid over the southern North Sea and its coasts."""
    rng = np.random.default_rng(seed)
    lat1, lon1 = np.arange(55.0, 51.0, -0.25), np.arange(0.0, 6.0, 0.25)
    lat2, lon2 = np.meshgrid(lat1, lon1, indexing="ij")
    times = np.datetime64("2010-03-11T00", "ns") + np.arange(nt) * np.timedelta64(6, "h")
    coords = {TIME: times, "lat": ((Y, X), lat2), "lon": ((Y, X), lon2)}
    shape = (nt, *lat2.shape)
    centre = rng.normal(size=shape)
    attrs = {"t2m": {"units": "K"}, "tp": {"units": "mm", "long_name": "total precipitation"}}

    def fields(extra=()):
        noise = rng.normal(size=(*extra, *shape))
        dims = (*(MEMBER,) * bool(extra), TIME, Y, X)
        return {
            "t2m": (dims, 280 + centre + noise, attrs["t2m"]),
            "tp": (dims, np.maximum(centre + noise, 0) * 3, attrs["tp"]),
        }

    return xr.Dataset(fields((members,)), coords=coords), xr.Dataset(fields(), coords=coords)


class _Page(HTMLParser):
    """Sections (ids), tables, images and text of a page."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.tables, self.text = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "img":
            self.images.append((self.sections[-1], attrs["src"]))
        elif tag == "table":
            self.tables += 1
        elif tag in ("link", "script") and (attrs.get("href") or attrs.get("src")):
            raise AssertionError(f"the page loads an outside resource: {attrs}")

    def handle_data(self, data):
        self.text.append(data)


def _image(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1])
    assert data[:8] == PNG_MAGIC
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


@pytest.fixture
def report(tmp_path):
    fc, truth = north_sea()
    fc.to_zarr(tmp_path / "pred.zarr")
    truth.to_zarr(tmp_path / "truth.zarr")
    folder = tmp_path / "report"
    argv = ["score", str(tmp_path / "pred.zarr"), "--truth", str(tmp_path / "truth.zarr")]
    argv += ["--report", str(folder), "--report-times", "0,2010-03-12T06", "--confidence", "0.9"]
    argv += ["--resamples", "50", "--metrics", "crps,rmse,spread_skill"]
    assert cli.main(argv) == 0
    return folder / "index.html"


def test_the_report_page_has_every_section_and_every_image_is_a_real_png(report):
    page = _Page()
    page.feed(report.read_text())
    assert page.sections == [sid for sid, _, _ in SECTIONS]
    drawn = {section for section, _ in page.images}
    assert drawn == {"maps", "spectra", "calibration", "reliability", "fss", "spread-skill"}
    for section, src in page.images:
        pixels = _image(src)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100, section
        assert pixels.std() > 5, f"{section}: a blank image"
    assert page.tables == 1
    text = " ".join(page.text)
    assert "90 % block bootstrap over time" in text
    assert "crps" in text and "[" in text  # a score with its interval
    assert "truth's 90th percentile" in text
    assert "missing" not in report.read_text()  # nothing left undrawn


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="headless Chromium is not installed (apt chromium)"
)
def test_the_report_opens_in_a_headless_browser_with_every_image_loaded(report, tmp_path):
    # the browser itself counts the images it decoded (naturalWidth > 0) and the sections
    probe = report.with_name("probe.html")
    script = (
        "<script>window.addEventListener('load', () => {const im = [...document.images];"
        "document.title = 'loaded ' + im.filter(i => i.complete && i.naturalWidth > 0).length"
        " + '/' + im.length + ' sections ' + document.querySelectorAll('section h2').length;});"
        "</script>"
    )
    probe.write_text(report.read_text().replace("</body>", script + "</body>"))
    run = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    n_images = report.read_text().count("<img ")
    assert f"<title>loaded {n_images}/{n_images} sections {len(SECTIONS)}</title>" in run.stdout


def test_score_refuses_a_store_with_missing_blocks_naming_them(tmp_path, capsys):
    from corrdiff_xr.inference.store import progress, progress_dir, write_zarr

    fc, truth = north_sea(nt=4)
    store = tmp_path / "ens.zarr"
    write_zarr(fc.chunk({TIME: 1, MEMBER: -1}), store, request={"test": 1})
    truth.to_zarr(tmp_path / "truth.zarr")
    argv = ["score", str(store), "--truth", str(tmp_path / "truth.zarr")]
    assert cli.main(argv) == 0  # complete: scored
    capsys.readouterr()
    lost = sorted(progress(store))[2]
    (progress_dir(store) / lost).unlink()  # as if the run crashed before that block
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"is incomplete: 1 of 4 blocks were never written ({lost})" in err
    assert len(err.strip().splitlines()) == 1
