"""A built wheel carries what an installed corrdiff_xr needs: weights, configs, catalogs and
the ``py.typed`` marker (PEP 561: type checkers read an installed package's annotations)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_an_installed_wheel_finds_its_catalogs_model_and_configs(tmp_path):
    # build from a copy: setuptools leaves build/ and *.egg-info next to the sources
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for name in ("corrdiff_xr", "catalogs"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("corrdiff_xr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.stem for p in (REPO / "catalogs").glob("*.yaml"))
    assert {"demo", "samples", "cloud", "archives"} <= set(shipped)
    for catalog in shipped:  # a catalog added to catalogs/ but not to setup.cfg fails here
        assert any(n.endswith(f"data/share/corrdiff_xr/catalogs/{catalog}.yaml") for n in names)
    assert "corrdiff_xr/weights/tiny_demo.safetensors" in names
    assert "corrdiff_xr/weights/tiny_demo_student.safetensors" in names  # the demo's default
    assert "corrdiff_xr/py.typed" in names

    prefix = tmp_path / "prefix"
    # --ignore-installed: never uninstall the running environment's corrdiff_xr (pip would)
    subprocess.run(
        [*pip, "install", "--no-deps", "--ignore-installed", "--prefix", str(prefix), str(wheel)],
        check=True,
    )
    site = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    script = (
        "import corrdiff_xr, pathlib\n"
        "from corrdiff_xr.data.catalog import catalog_dir, open_entry\n"
        "from corrdiff_xr.model import shipped_model_path\n"
        "from corrdiff_xr.model import CorrDiff\n"
        "print(pathlib.Path(corrdiff_xr.__file__).parent)\n"
        "print(catalog_dir())\n"
        "pair = open_entry('demo', 'demo_tiny', cache_dir='cache')\n"
        "print(sorted(pair.targets))\n"
        "print(type(CorrDiff.load(shipped_model_path())).__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": site}
    out = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout.split("\n")
    assert Path(out[0]).is_relative_to(prefix)  # the installed copy, not this checkout
    assert Path(out[1]) == (prefix / "share" / "corrdiff_xr" / "catalogs").resolve()
    assert out[2] == "['t2m', 'tp', 'u10', 'v10']"
    assert out[3] == "CorrDiff"
    # and this environment's own install is untouched
    subprocess.run(
        [sys.executable, "-c", "import corrdiff_xr.data.catalog"], check=True, cwd=tmp_path
    )


def test_torch_is_pinned_in_the_constraints_file_only():
    """The package takes a torch range; the README's commands pin the CPU wheel through
    constraints.txt (any other spec downloads GBs of CUDA)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    requires = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    (torch,) = [r for r in requires if r.startswith("torch")]
    assert "==" not in torch and ">=" in torch
    pins = (REPO / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in pins
    readme = (REPO / "README.md").read_text()
    assert readme.count("pip install -q -c constraints.txt") >= 2
