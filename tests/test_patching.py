"""Patching: the grid's weights give exact round trips and seam-free fusion of a local model,
the reference's layout, global patch positions. Tiling and fusing a whole domain is
``patch_reference`` (the package fuses block by block in ``inference/block.py``, checked
against it in ``tests/inference/test_downscaling.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from patch_reference import extract_patch, fuse, map_patches, patched_denoiser, tile

from corrdiff_xr.config import PatchConfig
from corrdiff_xr.patching import (
    PatchGrid,
    global_context,
    patch_positions,
    random_origins,
    reflect_index,
    take_patches,
)

GRIDS = [
    # domain, patch, overlap, boundary, weights, layout
    ((16, 16), (8, 8), 0, 0, "uniform", "compact"),
    ((16, 16), (8, 8), 0, 0, "ramp", "compact"),  # ramps over zero overlap: no NaNs
    ((13, 21), (8, 6), 2, 1, "ramp", "compact"),  # non-square, patch not dividing domain
    ((13, 21), (8, 6), 2, 1, "uniform", "physicsnemo"),
    ((12, 10), (6, 6), 0, 0, "uniform", "physicsnemo"),  # overlap 0 in the reference layout
    ((5, 3), (16, 8), 0, 0, "uniform", "compact"),  # patch bigger than the domain
    ((5, 3), (16, 8), 1, 2, "ramp", "compact"),
    ((7, 9), None, 0, 0, "uniform", "compact"),  # no patching: one patch = domain
]


def build(domain, patch, overlap, boundary, weights, layout) -> PatchGrid:
    return PatchGrid.build(
        domain, patch, overlap=overlap, boundary=boundary, weights=weights, layout=layout
    )


@pytest.mark.parametrize("spec", GRIDS)
def test_fuse_of_tile_is_the_identity_exactly(spec):
    grid = build(*spec)
    x = torch.randn(2, 3, *grid.domain)
    patches = tile(x, grid)
    assert patches.shape == (2 * grid.num_patches, 3, *grid.patch)
    out = fuse(patches, grid)
    assert torch.equal(out, x)


@pytest.mark.parametrize("spec", GRIDS)
def test_every_domain_pixel_gets_positive_weight(spec):
    grid = build(*spec)
    cover = np.zeros(grid.domain)
    for k in range(grid.num_patches):
        rows, cols = grid.indices(k)
        r0, c0 = grid.origins[k]
        inside_r = (np.arange(grid.patch[0]) + r0 >= 0) & (
            np.arange(grid.patch[0]) + r0 < grid.domain[0]
        )
        inside_c = (np.arange(grid.patch[1]) + c0 >= 0) & (
            np.arange(grid.patch[1]) + c0 < grid.domain[1]
        )
        w = grid.weight * np.outer(inside_r, inside_c)
        np.add.at(cover, (rows[:, None], cols[None, :]), w)
    assert cover.min() > 0


def test_compact_layout_uses_the_fewest_patches_ending_at_the_edge():
    grid = PatchGrid.build((64, 50), (16, 16), overlap=4)
    assert grid.starts == ((0, 12, 24, 36, 48), (0, 12, 24, 34))
    halo = PatchGrid.build((40, 40), (16, 16), overlap=2, boundary=3)
    # kept part 10 px, stride 8: kept parts start at 0, 8, 16, 24, 30 (last shifted back)
    assert halo.starts[0] == (-3, 5, 13, 21, 27)
    assert halo.weight_y[:3] == (0.0, 0.0, 0.0) and halo.weight_y[-3:] == (0.0, 0.0, 0.0)


def test_physicsnemo_layout_reproduces_the_reference_grid_arithmetic():
    # stride = patch - overlap - boundary, ceil(L / stride) patches from -boundary
    grid = PatchGrid.build((64, 40), (16, 12), overlap=4, boundary=2, layout="physicsnemo")
    assert grid.starts == (tuple(range(-2, 60, 10)), tuple(range(-2, 36, 6)))
    assert set(grid.weight_y) == {1.0}


def test_fused_local_model_equals_the_unpatched_model_away_from_the_boundary():
    torch.manual_seed(0)
    # Three 3x3 convolutions: receptive radius 3, translation-equivariant in the interior.
    convs = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Conv2d(4, 4, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Conv2d(4, 1, 3, padding=1),
    ).double()
    x = torch.randn(2, 2, 30, 37, dtype=torch.float64)
    with torch.no_grad():
        full = convs(x)
        for weights in ("uniform", "ramp"):
            grid = PatchGrid.build(x.shape[-2:], (14, 12), overlap=2, boundary=3, weights=weights)
            assert grid.num_patches > 4
            fused = map_patches(lambda p, offsets: convs(p), x, grid=grid, batch_size=5)
            r = 3
            torch.testing.assert_close(
                fused[..., r:-r, r:-r], full[..., r:-r, r:-r], rtol=0, atol=1e-12
            )
            # the halo matters: without it the patch edges leak into the result
            bare = PatchGrid.build(x.shape[-2:], (8, 6), weights=weights)
            leaky = map_patches(lambda p, offsets: convs(p), x, grid=bare)
            assert (leaky[..., r:-r, r:-r] - full[..., r:-r, r:-r]).abs().max() > 1e-3


def test_map_patches_passes_global_offsets_and_does_not_depend_on_batch_size():
    grid = PatchGrid.build((11, 17), (6, 8), overlap=2, boundary=1, weights="ramp")
    x = torch.randn(3, 1, 11, 17, dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)

    def fn(p, s, offsets):
        rows = offsets[:, 0, None, None, None] + torch.arange(p.shape[-2])[:, None]
        cols = offsets[:, 1, None, None, None] + torch.arange(p.shape[-1])
        return s[:, None, None, None] * p + 100 * rows + cols

    expected = scale[:, None, None, None] * x + 100 * torch.arange(11)[:, None] + torch.arange(17)
    for batch_size in (None, 1, 4, 7):
        out = map_patches(fn, x, scale, grid=grid, batch_size=batch_size)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-9)


def test_any_patch_can_be_computed_alone():
    grid = PatchGrid.build((13, 21), (8, 6), overlap=2, boundary=1)
    x = torch.randn(2, 3, 13, 21)
    rows = tile(x, grid).reshape(2, grid.num_patches, 3, 8, 6)
    for k in (0, 5, grid.num_patches - 1):
        assert torch.equal(extract_patch(x, grid, k), rows[:, k])
        assert np.array_equal(extract_patch(x.numpy(), grid, k), rows[:, k].numpy())


def test_reflect_index_matches_torch_reflect_padding_and_extends_it():
    x = torch.arange(7.0)[None, None]
    padded = F.pad(x, (3, 5), mode="reflect")[0, 0]
    assert torch.equal(x[0, 0, reflect_index(-3, 15, 7)], padded)
    # wider than the axis: keeps mirroring (0 1 2 1 0 1 2 ...)
    assert reflect_index(-4, 10, 3).tolist() == [0, 1, 2, 1, 0, 1, 2, 1, 0, 1]
    assert reflect_index(-2, 4, 1).tolist() == [0, 0, 0, 0]


def test_patch_positions_are_the_reflected_indices_of_each_patch():
    grid = PatchGrid.build((13, 21), (8, 6), overlap=2, boundary=1)
    offsets = torch.as_tensor(grid.origins)
    rows, cols = patch_positions(offsets, grid.patch, grid.domain)
    assert rows.shape == (grid.num_patches, 8) and cols.shape == (grid.num_patches, 6)
    for k in range(grid.num_patches):
        r, c = grid.indices(k)
        assert rows[k].tolist() == r.tolist() and cols[k].tolist() == c.tolist()
    assert rows[0].tolist() == [1, 0, 1, 2, 3, 4, 5, 6]  # origin -1: mirrored about row 0


def test_patch_bigger_than_the_domain_is_filled_by_reflection():
    grid = PatchGrid.build((5, 3), (8, 8))
    assert grid.num_patches == 1
    x = torch.randn(1, 1, 5, 3)
    p = tile(x, grid)
    assert torch.equal(p[0, 0, :5, :3], x[0, 0])
    assert torch.equal(p[0, 0, 5], x[0, 0, 3, reflect_index(0, 8, 3)])


def test_random_origins_are_seeded_and_keep_patches_inside_the_domain():
    a = random_origins((20, 9), (8, 4), 500, generator=torch.Generator().manual_seed(1))
    b = random_origins((20, 9), (8, 4), 500, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.long
    assert a[:, 0].min() == 0 and a[:, 0].max() == 12
    assert a[:, 1].min() == 0 and a[:, 1].max() == 5
    assert torch.equal(
        random_origins((4, 9), (8, 4), 5, generator=torch.Generator())[:, 0],
        torch.zeros(5, dtype=torch.long),
    )


def test_take_patches_are_sample_major_slices():
    x = torch.randn(2, 3, 10, 12)
    origins = torch.tensor([[0, 0], [2, 5], [6, 8]])
    p = take_patches(x, origins, (4, 4))
    assert p.shape == (6, 3, 4, 4)
    for b in range(2):
        for k, (r, c) in enumerate(origins.tolist()):
            assert torch.equal(p[b * 3 + k], x[b, :, r : r + 4, c : c + 4])


def test_global_context_resizes_the_whole_field_to_the_patch():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(global_context(x, (4, 4)), x)
    assert global_context(torch.randn(2, 3, 20, 30), (8, 6)).shape == (2, 3, 8, 6)


def test_patch_grid_follows_patch_config():
    config = PatchConfig(shape=(8, 6), overlap=2, boundary=1, weights="ramp")
    assert PatchGrid.from_config((13, 21), config) == PatchGrid.build(
        (13, 21), (8, 6), overlap=2, boundary=1, weights="ramp"
    )


def test_patch_grid_of_a_default_patch_config_ramps_over_a_quarter_of_the_smaller_side():
    assert PatchGrid.from_config((30, 41), PatchConfig(shape=(12, 20))) == PatchGrid.build(
        (30, 41), (12, 20), overlap=3, weights="ramp"
    )
    assert PatchGrid.from_config((30, 41), PatchConfig(shape=(12, 20), boundary=2, overlap=0)) == (
        PatchGrid.build((30, 41), (12, 20), boundary=2, weights="ramp")
    )


def test_the_reference_grid_keeps_its_layout_and_uniform_weights_when_set_explicitly():
    # what the parity tests build: the reference's stride, every pixel weighted alike
    config = PatchConfig(
        shape=(8, 8), overlap=2, boundary=1, weights="uniform", layout="physicsnemo"
    )
    grid = PatchGrid.from_config((16, 24), config)
    assert grid == PatchGrid.build((16, 24), (8, 8), overlap=2, boundary=1, layout="physicsnemo")
    # stride p - o - b = 5 from -b, ceil(L / 5) patches per axis
    assert grid.starts == ((-1, 4, 9, 14), (-1, 4, 9, 14, 19)) and set(grid.weight_y) == {1.0}


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="leaves no room"):
        PatchGrid.build((16, 16), (8, 8), overlap=4, boundary=2)
    grid = PatchGrid.build((16, 16), (8, 8))
    with pytest.raises(IndexError, match="patch 4 out of range"):
        grid.indices(4)


def test_patched_denoiser_of_a_pointwise_model_equals_the_whole_domain_model():
    from corrdiff_xr.config import SamplerConfig
    from corrdiff_xr.sampling import heun, karras_sigmas

    def pointwise(x, sigma, *, condition, offsets):
        return x / (1 + sigma[:, None, None, None] ** 2) + condition[:, :1] * condition[:, 1:2]

    grid = PatchGrid.build((12, 18), (8, 8), overlap=2, boundary=1, weights="ramp")
    x = torch.randn(2, 1, 12, 18, dtype=torch.float64)
    cond = torch.randn(2, 2, 12, 18, dtype=torch.float64)
    sig = karras_sigmas(SamplerConfig(num_steps=4, sigma_max=5.0))
    whole = heun(lambda v, s: pointwise(v, s, condition=cond, offsets=None), x * 5.0, sig)
    patched = heun(patched_denoiser(pointwise, grid, condition=cond, batch_size=5), x * 5.0, sig)
    torch.testing.assert_close(patched, whole, rtol=0, atol=1e-12)


def test_patched_denoiser_appends_context_and_passes_patch_offsets():
    grid = PatchGrid.build((8, 8), (4, 4))
    cond = torch.randn(2, 3, 8, 8)
    context = torch.randn(2, 1, 4, 4)
    calls = []

    def spy(x, sigma, *, condition, offsets):
        calls.append((condition, offsets))
        return x

    patched_denoiser(spy, grid, condition=cond, context=context)(
        torch.zeros(2, 1, 8, 8), torch.ones(2)
    )
    condition, offsets = calls[0]
    assert condition.shape == (8, 4, 4, 4)
    assert torch.equal(condition[:, 3:], context.repeat_interleave(4, dim=0))
    assert torch.equal(condition[5, :3], cond[1, :, 0:4, 4:8])  # sample 1, patch 1
    assert offsets.tolist() == [[0, 0], [0, 4], [4, 0], [4, 4]] * 2


# -- parity with the reference's GridPatching2D (physicsnemo 2.2.2) -------------------------
REFERENCE_GRIDS = [  # img_shape, patch, overlap_pix, boundary_pix
    ((16, 16), (8, 8), 0, 0),
    ((13, 21), (8, 6), 2, 1),
    ((20, 12), (8, 8), 3, 0),
    ((16, 24), (10, 8), 0, 2),
]


def _reference_order(grid: PatchGrid, batch: int) -> torch.Tensor:
    """Our row of each reference row: the reference is x-major over patches, batch innermost."""
    ny, nx = grid.shape
    return torch.tensor(
        [b * ny * nx + iy * nx + ix for ix in range(nx) for iy in range(ny) for b in range(batch)]
    )


@pytest.mark.parametrize("img_shape,patch,overlap,boundary", REFERENCE_GRIDS)
def test_physicsnemo_layout_tiles_and_fuses_like_grid_patching_2d(
    img_shape, patch, overlap, boundary
):
    from physicsnemo_ref import physicsnemo

    if physicsnemo() is None:
        pytest.skip("physicsnemo (reference implementation) cannot be imported")
    from physicsnemo.diffusion.multi_diffusion import GridPatching2D

    ref = GridPatching2D(
        img_shape=img_shape, patch_shape=patch, overlap_pix=overlap, boundary_pix=boundary
    )
    grid = PatchGrid.build(
        img_shape, patch, overlap=overlap, boundary=boundary, layout="physicsnemo"
    )
    assert grid.num_patches == ref.patch_num
    order = _reference_order(grid, 2)
    x = torch.randn(2, 3, *img_shape, dtype=torch.float64)
    assert torch.equal(tile(x, grid)[order], ref.apply(x))
    # fusing arbitrary (not tile-consistent) patches: the same weighted average
    patches = torch.randn(2 * grid.num_patches, 3, *patch, dtype=torch.float64)
    torch.testing.assert_close(
        fuse(patches, grid), ref.fuse(patches[order], batch_size=2), rtol=0, atol=1e-12
    )
    # the reference's global (row, col) index of every patch pixel is our reflected index
    gi = ref.global_index()
    for k_ref, k in enumerate(_reference_order(grid, 1).tolist()):
        rows, cols = grid.indices(k)
        assert torch.equal(gi[k_ref, 0], torch.as_tensor(rows)[:, None].expand(*patch))
        assert torch.equal(gi[k_ref, 1], torch.as_tensor(cols)[None, :].expand(*patch))
