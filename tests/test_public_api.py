"""The public API at the top of the package: every name resolves, and importing it is light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import corrdiff_xr as cx


@pytest.mark.parametrize("name", sorted(cx.API))
def test_every_public_name_is_the_object_its_module_defines(name):
    import importlib

    value = getattr(cx, name)
    assert value is getattr(importlib.import_module(cx.API[name]), name)
    assert name in dir(cx) and name in cx.__all__


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'downscal'"):
        cx.downscal  # noqa: B018


def test_importing_the_package_loads_no_torch():
    code = "import sys, corrdiff_xr; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
