"""A plain multi-diffusion reference for tests: tile a domain, run a function, fuse the patches.

The package fuses patches in one place, :mod:`corrdiff_xr.inference.block`, block by block
from :class:`~corrdiff_xr.patching.PatchGrid`'s origins and weights. This module is the
textbook version of the same arithmetic on a whole domain (tile every patch, weighted average
back in float64), written from the grid's public fields only, so tests can check the grid
(exact round trips, seam-free fusion of a local model, the reference's ``GridPatching2D``
layout) and compare the package's block fusion against it. :func:`patched_denoiser` is the
reference's per-step patch fusion (every sampler step tiles, denoises and fuses), for the
parity tests with PhysicsNeMo's patched samplers; ``downscale`` samples patches alone and
fuses once.

Batches are sample-major: for B samples and P patches, row ``b * P + k`` is patch k of
sample b.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from corrdiff_xr.patching import PatchGrid, reflect_index


def _check_domain(x, grid: PatchGrid) -> None:
    if x.ndim < 2 or tuple(x.shape[-2:]) != grid.domain:
        raise ValueError(
            f"x has spatial shape {tuple(x.shape[-2:])}, expected the grid's domain "
            f"{grid.domain} (y, x)"
        )


def extract_patch(x, grid: PatchGrid, k: int):
    """Patch ``k`` of ``x`` (``(..., H, W)`` tensor or array) -> ``(..., h, w)``."""
    _check_domain(x, grid)
    rows, cols = grid.indices(k)
    if isinstance(x, Tensor):
        return x[..., torch.as_tensor(rows), :][..., torch.as_tensor(cols)]
    return np.take(np.take(x, rows, axis=-2), cols, axis=-1)


def _extent(grid: PatchGrid) -> tuple[int, int, int, int]:
    """Rows ``y0:y1`` and columns ``x0:x1`` (global, may leave the domain) all patches span."""
    y0, x0 = min(grid.starts[0]), min(grid.starts[1])
    return y0, max(grid.starts[0]) + grid.patch[0], x0, max(grid.starts[1]) + grid.patch[1]


def tile(x: Tensor, grid: PatchGrid) -> Tensor:
    """All patches of ``x`` ``(B, C, H, W)`` -> ``(B * P, C, h, w)``, sample-major."""
    _check_domain(x, grid)
    y0, y1, x0, x1 = _extent(grid)
    rows = torch.as_tensor(reflect_index(y0, y1 - y0, grid.domain[0]))
    cols = torch.as_tensor(reflect_index(x0, x1 - x0, grid.domain[1]))
    padded = x[..., rows, :][..., cols]
    h, w = grid.patch
    parts = [padded[..., r - y0 : r - y0 + h, c - x0 : c - x0 + w] for r, c in grid.origins]
    return torch.stack(parts, dim=1).reshape(x.shape[0] * grid.num_patches, x.shape[1], h, w)


def fuse(patches: Tensor, grid: PatchGrid) -> Tensor:
    """Weighted average of patches ``(B * P, C, h, w)`` -> ``(B, C, H, W)`` (float64 sums)."""
    P = grid.num_patches
    if patches.ndim != 4 or patches.shape[0] % P or tuple(patches.shape[-2:]) != grid.patch:
        raise ValueError(
            f"fuse expects (B * {P}, C, {grid.patch[0]}, {grid.patch[1]}) patches, got shape "
            f"{tuple(patches.shape)}"
        )
    B, C = patches.shape[0] // P, patches.shape[1]
    y0, y1, x0, x1 = _extent(grid)
    h, w = grid.patch
    weight = torch.as_tensor(grid.weight, dtype=torch.float64)
    total = torch.zeros(B, C, y1 - y0, x1 - x0, dtype=torch.float64)
    norm = torch.zeros(y1 - y0, x1 - x0, dtype=torch.float64)
    per_sample = patches.reshape(B, P, C, h, w)
    for k, (r, c) in enumerate(grid.origins):
        sl = (..., slice(r - y0, r - y0 + h), slice(c - x0, c - x0 + w))
        total[sl] += weight * per_sample[:, k].double()
        norm[sl] += weight
    H, W = grid.domain
    crop = (..., slice(-y0, -y0 + H), slice(-x0, -x0 + W))
    return (total[crop] / norm[crop]).to(patches.dtype)


def map_patches(
    fn: Callable[..., Tensor],
    *arrays: Tensor,
    grid: PatchGrid,
    batch_size: int | None = None,
    tiled: Sequence[bool] | None = None,
) -> Tensor:
    """``fn(*patch_rows, offsets=origins)`` in batches of ``batch_size`` patches, fused.

    Arrays on the grid's domain are tiled (or those ``tiled`` says), the others repeated for
    every patch of their sample; ``offsets`` is each row's int64 global ``(row, col)`` origin.
    """
    if tiled is None:
        tiled = [a.ndim >= 3 and tuple(a.shape[-2:]) == grid.domain for a in arrays]
    B, P = arrays[list(tiled).index(True)].shape[0], grid.num_patches
    rows = [tile(a, grid) if t else a.repeat_interleave(P, dim=0) for a, t in zip(arrays, tiled)]
    offsets = torch.as_tensor(grid.origins).repeat(B, 1)
    step = batch_size or B * P
    outs = [
        fn(*(r[i : i + step] for r in rows), offsets=offsets[i : i + step])
        for i in range(0, B * P, step)
    ]
    return fuse(torch.cat(outs), grid)


def patched_denoiser(
    denoiser: Callable[..., Tensor],
    grid: PatchGrid,
    *,
    condition: Tensor,
    context: Tensor | None = None,
    batch_size: int | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """A whole-domain ``denoise(x, sigma)`` that tiles, denoises and fuses at every call.

    ``denoiser(x_patch, sigma, condition=..., offsets=...)`` sees each patch's slice of
    ``condition`` ``(N, C, H, W)``, with ``context`` ``(N, C_ctx, h, w)`` (the whole field
    resized to a patch, :func:`corrdiff_xr.patching.global_context`) appended if given.
    """

    def fn(x_p: Tensor, sigma_p: Tensor, cond_p: Tensor, *ctx: Tensor, offsets: Tensor) -> Tensor:
        if ctx:
            cond_p = torch.cat([cond_p, ctx[0].to(cond_p.dtype)], dim=1)
        return denoiser(x_p, sigma_p, condition=cond_p, offsets=offsets)

    extra = () if context is None else (context,)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        tiled = (True, False, True) + (False,) * len(extra)
        return map_patches(
            fn, x, sigma, condition, *extra, grid=grid, batch_size=batch_size, tiled=tiled
        )

    return denoise
