"""Parity with Earth2Studio 0.19's generic ``CorrDiff`` in ``inference_mode: "diffusion"``.

Earth2Studio loads both networks in every mode; in ``"diffusion"`` mode it returns the
residual network's sample alone, conditioned on the inputs only when the package sets
``hr_mean_conditioning: false`` (its regression then runs but nothing uses it). Ours opens such
a package as a direct model (no regression network, zero mean: see
:mod:`corrdiff_xr.model.packages.generic`). Member ``i`` is seeded ``seed + i`` by both, through
one ``torch.Generator`` per member, so the same seeds must give the same members, to 1e-5 in
units of each output's std. The ``"regression"`` mode's mean is compared in
tests/parity/test_parity_earth2studio.py.

Earth2Studio is a test dependency: when it cannot be imported these tests fail, never skip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from package_fixtures import write_generic_package
from test_parity_earth2studio import _earth2studio, _encoded, _normalised, _physical_inputs

from corrdiff_xr.model.packages import member_seeds, open_package
from corrdiff_xr.sampling import make_generators

ATOL = 1e-5


@pytest.fixture(scope="module")
def e2s(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # any cache Earth2Studio keeps stays in tmp
        mp.setenv("EARTH2STUDIO_CACHE", str(tmp_path_factory.mktemp("e2s_cache")))
        yield _earth2studio()


def test_diffusion_mode_members_equal_earth2studio(e2s, tmp_path):
    Package, CorrDiff, _ = e2s
    # 2-D output grid and 18 steps, as in test_parity_earth2studio.py (Earth2Studio's
    # interpolation wants 2-D lat/lon; few large steps would amplify float32 rounding)
    path = write_generic_package(
        tmp_path,
        grid=(32, 32),
        curvilinear=True,
        hr_mean_conditioning=False,
        metadata={"number_of_steps": 18, "inference_mode": "diffusion"},
    )
    ref = CorrDiff.load_model(Package(str(path)), device="cpu")
    assert ref.inference_mode == "diffusion" and not ref.hr_mean_conditioning
    (path / "regression.mdlus").unlink()  # Earth2Studio has read it; ours needs none
    ours = open_package(path)
    assert ours.model.edm_config.objective == "direct"
    x = _physical_inputs(ours, np.random.default_rng(6))
    ref_members = ref._forward(torch.from_numpy(x))

    encoded = _encoded(ours, x)
    seeds = member_seeds(ours)
    assert seeds == [ours.seed, ours.seed + 1]
    with torch.no_grad():
        members = ours.model.sample(
            encoded.expand(len(seeds), -1, -1, -1), generators=make_generators(seeds)
        )
    assert members.abs().mean() > 0.1 and (members[0] - members[1]).abs().mean() > 0.1
    torch.testing.assert_close(members, _normalised(ours, ref_members), atol=ATOL, rtol=0)
