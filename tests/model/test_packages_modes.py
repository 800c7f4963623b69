"""A generic package's ``inference_mode``: which networks it runs, and refusals of files that
do not fit the mode.

Fixture packages come from tests/package_fixtures.py (PhysicsNeMo networks saved by
PhysicsNeMo's ``Module.save``); the ``"diffusion"`` mode's members against Earth2Studio are in
tests/parity/test_parity_earth2studio_modes.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from package_fixtures import era5_archive, write_generic_package
from physicsnemo_ref import requires_physicsnemo

from corrdiff_xr.config import ConfigError, SamplerConfig
from corrdiff_xr.inference import downscale
from corrdiff_xr.model.core import ZeroMean
from corrdiff_xr.model.packages import PackageError, member_seeds, open_package
from corrdiff_xr.sampling import make_generators

pytestmark = requires_physicsnemo

GRID = (16, 16)


def _package(path, mode: str, *, hr_mean_conditioning: bool = True, drop: str | None = None):
    out = write_generic_package(
        path,
        grid=GRID,
        model_channels=8,
        hr_mean_conditioning=hr_mean_conditioning,
        metadata={"inference_mode": mode},
    )
    if drop is not None:
        (out / drop).unlink()
    return out


def _inputs(package) -> torch.Tensor:
    shape = (1, len(package.model.codec.in_channels), *GRID)
    return torch.randn(shape, generator=torch.Generator().manual_seed(3))


def test_regression_mode_runs_the_mean_only_and_needs_no_diffusion_file(tmp_path):
    both = open_package(_package(tmp_path / "both", "both"))
    package = open_package(_package(tmp_path / "reg", "regression", drop="diffusion.mdlus"))
    assert package.inference_mode == "regression" and package.model.residual is None
    x = _inputs(package)
    with torch.no_grad():  # the same regression.mdlus (fixture seed): the same mean
        torch.testing.assert_close(
            package.model.predict_mean(x), both.model.predict_mean(x), atol=0, rtol=0
        )
        members = package.model.sample(x, generators=make_generators([1]))
    torch.testing.assert_close(members, package.model.predict_mean(x), atol=0, rtol=0)
    with pytest.raises(ConfigError, match="regression-only"):
        downscale(package.pair(era5_archive(1)), package, output="ensemble")


def test_diffusion_mode_samples_the_target_directly_without_a_regression(tmp_path):
    path = _package(tmp_path / "dif", "diffusion", hr_mean_conditioning=False)
    package = open_package(path)
    model = package.model
    assert model.edm_config.objective == "direct" and isinstance(model.regression, ZeroMean)
    assert not any(k.startswith("regression.") for k in model.state_dict())
    x, seeds = _inputs(package), member_seeds(package)
    sampler = SamplerConfig(num_steps=4)
    with torch.no_grad():
        assert model.predict_mean(x).abs().max() == 0  # a direct model's "mean" is zero
        members = model.sample(x.repeat(2, 1, 1, 1), generators=make_generators(seeds))
        again = model.sample(x, generators=make_generators(seeds[:1]), sampler=sampler)
    assert members.abs().mean() > 0.1 and (members[0] - members[1]).abs().mean() > 0.1
    (path / "regression.mdlus").unlink()  # not needed: the same model without it
    alone = open_package(path)
    with torch.no_grad():
        torch.testing.assert_close(
            alone.model.sample(x, generators=make_generators(seeds[:1]), sampler=sampler),
            again,
            atol=0,
            rtol=0,
        )
    out = downscale(alone.pair(era5_archive(1)), alone, members=2, steps=2).compute()
    assert all(np.isfinite(out[n].values).all() for n in alone.outputs)


@pytest.mark.parametrize(
    ("mode", "hr_mean", "drop", "words"),
    [
        ("both", True, "regression.mdlus", ("has no regression.mdlus", "inference_mode 'both'")),
        ("both", True, "diffusion.mdlus", ("has no diffusion.mdlus", "inference_mode 'both'")),
        (
            "diffusion",
            False,
            "diffusion.mdlus",
            ("has no diffusion.mdlus", "inference_mode 'diffusion'"),
        ),
        (
            "regression",
            True,
            "regression.mdlus",
            ("has no regression.mdlus", "inference_mode 'regression'"),
        ),
        ("diffusion", True, None, ("metadata.json", "hr_mean_conditioning true", "residual")),
    ],
    ids=["both_no_regression", "both_no_diffusion", "diffusion_no_file", "regression_no_file",
         "diffusion_with_mean"],
)  # fmt: skip
def test_files_that_do_not_fit_the_mode_are_refused_in_one_line(
    tmp_path, mode, hr_mean, drop, words
):
    path = _package(tmp_path / "pkg", mode, hr_mean_conditioning=hr_mean, drop=drop)
    with pytest.raises(PackageError) as info:
        open_package(path)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_diffusion_only_package_lacking_regression_is_still_detected_as_generic(tmp_path):
    path = _package(tmp_path / "pkg", "diffusion", hr_mean_conditioning=False)
    (path / "regression.mdlus").unlink()
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["inference_mode"] == "diffusion"
    assert open_package(path).layout == "generic"
