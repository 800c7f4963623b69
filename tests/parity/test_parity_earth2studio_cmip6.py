"""Parity with Earth2Studio 0.19's ``CorrDiffCMIP6`` on the same CMIP6 -> ERA5 package.

A fixture package (tests/package_fixtures_cmip6.py: PhysicsNeMo 2.2.2 networks with random
weights, saved by PhysicsNeMo, in the published layout) is loaded by Earth2Studio on the CPU
and by :func:`open_package`. Earth2Studio gets the archive's three daily steps around an anchor
as its ``[-24, 0, +24] h`` input window; ours takes the user's road: the daily archive paired by
:meth:`Package.pair` (time windows, sea-ice/snow smoothing, the input grid resized as an image,
time features at the valid time) and ``downscale(output="mean")`` through the framed networks.
The regression means agree to 1e-5 in units of each output's std at two lead times (-12 h:
hour 0; +5 h: hour 17), which exercises every quirk at once: a wrong channel order, flip,
padding, feature or invariant orientation would move them by O(0.1).

Members: Earth2Studio samples on the padded 72 x 144 image (latents drawn there, the
regression mean used uncropped as the condition, the sum cropped at the end); the package's
model does the same (``sample_domain="padded"``, :mod:`corrdiff_xr.model.sample_domain`).
Earth2Studio seeds member ``j`` with ``seed + j`` through PhysicsNeMo's
``StackedRandomGenerator`` (one ``torch.Generator`` per member, latents then churn noise from
it), which ``make_generators`` of the same seeds reproduces, so the members must agree too.

Earth2Studio is a test dependency: when it cannot be imported these tests fail, never skip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from package_fixtures_cmip6 import CMIP6_INPUTS, cmip6_archive, write_cmip6_package
from physicsnemo_ref import physicsnemo

from corrdiff_xr.inference import downscale
from corrdiff_xr.model.packages import member_seeds, open_package
from corrdiff_xr.model.packages.cmip6 import NONNEGATIVE
from corrdiff_xr.sampling import make_generators

ATOL = 1e-5
LEADS = (-12, 5)


@pytest.fixture(scope="module")
def e2s(tmp_path_factory):
    if physicsnemo() is None:  # registers the torchvision schemas Earth2Studio's import needs
        pytest.fail("PhysicsNeMo cannot be imported, so Earth2Studio cannot either")
    from earth2studio.models.auto import Package
    from earth2studio.models.dx import CorrDiffCMIP6

    with pytest.MonkeyPatch.context() as mp:  # any cache Earth2Studio keeps stays in tmp
        mp.setenv("EARTH2STUDIO_CACHE", str(tmp_path_factory.mktemp("e2s_cache")))
        yield Package, CorrDiffCMIP6


def test_cmip6_regression_mean_through_pair_and_downscale_equals_earth2studio(e2s, tmp_path):
    Package, CorrDiffCMIP6 = e2s
    path = write_cmip6_package(tmp_path / "cmip6")
    leads = np.array([np.timedelta64(h, "h") for h in LEADS])
    ref = CorrDiffCMIP6.load_model(Package(str(path)), output_lead_times=leads, device="cpu")
    ref.inference_mode, ref.number_of_samples = "regression", 1
    archive = cmip6_archive(3)
    window = np.stack([[archive[v].values[k] for v in CMIP6_INPUTS] for k in range(3)])
    anchor = archive.time.values[1]
    # a fresh copy per call: Earth2Studio smooths the sea ice of its input tensor in place, so
    # its own __call__ smooths it again for every further lead time of one input
    ref_means = [
        ref._forward(torch.tensor(window)[None], (anchor + lead).astype("datetime64[s]").item())
        for lead in leads
    ]

    ours = open_package(path)
    out = downscale(ours.pair(archive, lead_times=LEADS), ours, output="mean").compute()
    np.testing.assert_array_equal(out.time.values, anchor + leads)
    np.testing.assert_array_equal(out["lat"].values[:, 0], ref.lat_output_numpy)  # south first
    for i, ref_mean in enumerate(ref_means):
        for c, name in enumerate(ours.outputs):
            mean, std = ours.model.codec.stats[name]
            got = (out[name].values[i].astype(np.float64) - mean) / std
            want = (ref_mean[0, 0, c].double().numpy() - mean) / std
            assert np.abs(want).mean() > 0.005  # not trivially zero
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"{name} {LEADS[i]}")
    # the hour of day matters: the two valid times give different means
    assert np.abs(out["t2m"].values[0] - out["t2m"].values[1]).max() > 1e-3


def test_cmip6_members_sampled_on_the_padded_image_equal_earth2studio(e2s, tmp_path):
    Package, CorrDiffCMIP6 = e2s
    # 18 steps, Earth2Studio's default: a few large steps would amplify float32 rounding
    path = write_cmip6_package(tmp_path / "cmip6", metadata={"number_of_steps": 18})
    lead = np.timedelta64(LEADS[1], "h")
    ref = CorrDiffCMIP6.load_model(Package(str(path)), output_lead_times=np.array([lead]))
    ours = open_package(path)
    ref.seed, ref.number_of_samples = ours.seed, ours.members  # load_model leaves it unseeded
    archive = cmip6_archive(3)
    window = np.stack([[archive[v].values[k] for v in CMIP6_INPUTS] for k in range(3)])
    anchor = archive.time.values[1]
    valid = (anchor + lead).astype("datetime64[s]").item()
    ref_members = ref._forward(torch.tensor(window)[None], valid)[0]  # (member, C, lat, lon)

    pair = ours.pair(archive, lead_times=(LEADS[1],))
    x = torch.from_numpy(
        ours.model.codec.encode_inputs(xr.merge([pair.inputs_on_fine, pair.static_fields]))
    )
    seeds = member_seeds(ours)
    assert ours.model.sample_domain == "padded" and seeds == [ours.seed, ours.seed + 1]
    with torch.no_grad():
        mean = ours.model.predict_mean(x)
        members = ours.model.sample(
            x.expand(len(seeds), -1, -1, -1), generators=make_generators(seeds)
        )
    assert (members - mean).abs().mean() > 0.1  # the residual is not trivially zero
    assert (members[0] - members[1]).abs().mean() > 0.1  # members differ
    for c, name in enumerate(ours.outputs):
        mu, std = ours.model.codec.stats[name]
        got = members[:, c].double() * std + mu
        if name in NONNEGATIVE:  # Earth2Studio clamps these outputs, as our codec's bounds
            got = got.clamp(min=0)
        want = ref_members[:, c].double()
        torch.testing.assert_close((got - mu) / std, (want - mu) / std, atol=ATOL, rtol=0)
