"""Patches of a 2-D domain: where they lie, how they are weighted, how they are cut.

One module serves training (random patches, :func:`random_origins` / :func:`take_patches`)
and inference (a fixed grid, :class:`PatchGrid`, whose patches
:mod:`corrdiff_xr.inference.block` samples alone and fuses with the grid's weights, block by
block). Arrays are ``(..., H, W)``: the last two axes are the fine-grid ``y`` and ``x``
dimensions (:data:`corrdiff_xr.dims.Y`, :data:`corrdiff_xr.dims.X`).

The patch grid is global: the origins depend only on the domain shape, the patch shape and the
overlap/halo settings, so any one patch can be computed alone (:meth:`PatchGrid.indices`), e.g.
by a Dask task, and its ``(row, col)`` origin is the offset a positional embedding needs.
Origins may be negative or run past the far edge; the pixels outside the domain are filled by
mirror reflection (like ``torch.nn.functional.pad(mode="reflect")`` but valid for any pad
width, so a patch larger than the domain works too).

Layouts (per axis, domain length L, patch length p, halo b, overlap o):

``compact`` (default)
    Each patch keeps its inner ``p - 2b`` pixels; the ``b``-pixel halo on each side is
    context only and gets zero weight when fusing, so a model whose receptive field fits in
    the halo gives seam-free results. Kept parts overlap by at least ``o``; the fewest patches
    that cover the domain are used, the last one shifted back to end at the domain edge.
``physicsnemo``
    The reference's ``GridPatching2D`` grid: stride ``p - o - b``, ``ceil(L / stride)``
    patches starting at ``-b``, every pixel of every patch averaged in with equal weight.
    For parity with the reference's outputs.

Fusing divides the weighted sum of patches by the summed weights (in float64, so that fusing
the patches of a field gives it back exactly); weights are positive on every kept pixel, so
overlap 0 gives no NaNs (a bug of the reference fixed in its PR #703).

Patch batches are sample-major: for B samples and P patches, row ``b * P + k`` is patch k of
sample b (the reference orders patch-major).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from corrdiff_xr.config import PatchConfig

__all__ = [
    "PatchGrid",
    "global_context",
    "patch_positions",
    "random_origins",
    "reflect_index",
    "take_patches",
]


def reflect_index(start: int, size: int, length: int) -> np.ndarray:
    """Indices into an axis of ``length`` for positions ``start`` to ``start + size - 1``.

    Positions outside ``[0, length)`` are mirrored about the end pixels (edge not repeated),
    as often as needed, so any ``start`` and ``size`` are valid.
    """
    if length < 1:
        raise ValueError(f"cannot index an axis of length {length}")
    pos = np.arange(start, start + size)
    if length == 1:
        return np.zeros(size, dtype=np.int64)
    period = 2 * (length - 1)
    pos = np.mod(pos, period)
    return np.where(pos >= length, period - pos, pos).astype(np.int64)


def patch_positions(
    offsets: Tensor, shape: Sequence[int], domain: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Global row and column of every pixel of patches at ``offsets``, mirrored like the data.

    Parameters
    ----------
    offsets
        ``(N, 2)`` integer ``(row, col)`` origins (may be negative or run past the edge).
    shape
        Patch shape ``(h, w)``.
    domain
        Domain shape ``(H, W)``.

    Returns
    -------
    tuple of Tensor
        ``rows`` ``(N, h)`` and ``cols`` ``(N, w)`` (int64), equal to :func:`reflect_index`
        per patch: a padded pixel gets the position of the pixel whose data it holds. This is
        what a positional embedding should be indexed with (the reference's ``global_index``
        is the same).
    """
    out = []
    for axis, (size, length) in enumerate(zip(shape, domain)):
        pos = offsets[:, axis : axis + 1].long() + torch.arange(int(size), device=offsets.device)
        if length == 1:
            out.append(torch.zeros_like(pos))
            continue
        period = 2 * (int(length) - 1)
        pos = torch.remainder(pos, period)
        out.append(torch.where(pos >= length, period - pos, pos))
    return out[0], out[1]


#: a torch tensor or a numpy array, the same type out as in
Array = TypeVar("Array", Tensor, np.ndarray)


def _gather(x: Array, rows: np.ndarray, cols: np.ndarray) -> Array:
    """``x[..., rows, :][..., cols]`` for a torch tensor or a numpy array."""
    if isinstance(x, Tensor):
        r = torch.as_tensor(rows, device=x.device)
        c = torch.as_tensor(cols, device=x.device)
        return x.index_select(-2, r).index_select(-1, c)
    return np.take(np.take(x, rows, axis=-2), cols, axis=-1)


def _compact_starts(length: int, patch: int, halo: int, overlap: int) -> tuple[int, ...]:
    core = patch - 2 * halo
    if length <= core:
        return (-halo,)
    stride = core - overlap
    n = math.ceil((length - core) / stride) + 1
    return tuple(min(i * stride, length - core) - halo for i in range(n))


def _physicsnemo_starts(length: int, patch: int, halo: int, overlap: int) -> tuple[int, ...]:
    stride = patch - overlap - halo
    return tuple(i * stride - halo for i in range(math.ceil(length / stride)))


def _axis_weights(patch: int, halo: int, overlap: int, ramp: bool) -> np.ndarray:
    w = np.zeros(patch)
    core = patch - 2 * halo
    j = np.arange(core)
    w[halo : halo + core] = (
        np.minimum(1.0, np.minimum(j + 1, core - j) / (overlap + 1)) if ramp else 1.0
    )
    return w


@dataclasses.dataclass(frozen=True)
class PatchGrid:
    """A fixed set of patches covering a ``(H, W)`` domain.

    Build with :meth:`build` or :meth:`from_config`; the fields are plain data.

    Attributes
    ----------
    domain : tuple[int, int]
        ``(H, W)`` of the full domain.
    patch : tuple[int, int]
        ``(h, w)`` of every patch.
    starts : tuple[tuple[int, ...], tuple[int, ...]]
        Patch origins along y and along x (global pixel indices, may be < 0 or run past
        the edge). Patch ``k`` has origin ``(starts[0][k // nx], starts[1][k % nx])``.
    weight_y, weight_x : tuple[float, ...]
        Per-axis fusion weights of length ``h`` and ``w``; the 2-D weight is their product.
    """

    domain: tuple[int, int]
    patch: tuple[int, int]
    starts: tuple[tuple[int, ...], tuple[int, ...]]
    weight_y: tuple[float, ...]
    weight_x: tuple[float, ...]

    @classmethod
    def build(
        cls,
        domain: Sequence[int],
        patch: Sequence[int] | None = None,
        *,
        overlap: int = 0,
        boundary: int = 0,
        weights: Literal["uniform", "ramp"] = "uniform",
        layout: Literal["compact", "physicsnemo"] = "compact",
    ) -> PatchGrid:
        """Patch grid for ``domain`` (see the module docstring for the layouts).

        ``patch`` None means one patch of the domain's shape (no patching). The keyword
        defaults build the plain tiling (no overlap, equal weights) that the reference's
        grid compares with; a run's defaults are :class:`~corrdiff_xr.config.PatchConfig`'s
        (:meth:`from_config`).
        """
        domain = tuple(int(d) for d in domain)
        if len(domain) != 2 or min(domain) < 1:
            raise ValueError(f"domain must be two positive lengths (H, W), got {domain}")
        config = PatchConfig(
            # checked there: two positive sides
            shape=cast("tuple[int, int] | None", tuple(patch) if patch is not None else None),
            overlap=overlap,
            boundary=boundary,
            weights=weights,
            layout=layout,
        )
        return cls.from_config(domain, config)

    @classmethod
    def from_config(cls, domain: Sequence[int], config: PatchConfig) -> PatchGrid:
        """Patch grid for ``domain`` from a :class:`~corrdiff_xr.config.PatchConfig`.

        An ``overlap`` of None is a quarter of the smaller patch side
        (:attr:`~corrdiff_xr.config.PatchConfig.overlap_pixels`).
        """
        sides = tuple(int(d) for d in domain)
        if len(sides) != 2 or min(sides) < 1:
            raise ValueError(f"domain must be two positive lengths (H, W), got {sides}")
        dom = (sides[0], sides[1])
        if config.shape is None:
            return cls(dom, dom, ((0,), (0,)), (1.0,) * dom[0], (1.0,) * dom[1])
        if config.layout not in ("compact", "physicsnemo"):
            raise ValueError(f"unknown patch layout {config.layout!r}")
        patch = (int(config.shape[0]), int(config.shape[1]))
        b, o = config.boundary, config.overlap_pixels
        place = _compact_starts if config.layout == "compact" else _physicsnemo_starts
        # physicsnemo averages its halo in with the rest, so no zero-weight halo there.
        halo = b if config.layout == "compact" else 0
        ramp = config.weights == "ramp"
        starts = (place(dom[0], patch[0], b, o), place(dom[1], patch[1], b, o))
        wy, wx = (tuple(_axis_weights(p, halo, o, ramp).tolist()) for p in patch)
        return cls(dom, patch, starts, wy, wx)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of patches along y and x."""
        return len(self.starts[0]), len(self.starts[1])

    @property
    def num_patches(self) -> int:
        """Total number of patches P."""
        return self.shape[0] * self.shape[1]

    @property
    def origins(self) -> np.ndarray:
        """``(P, 2)`` int64 global ``(row, col)`` of each patch's top-left pixel."""
        sy, sx = np.meshgrid(self.starts[0], self.starts[1], indexing="ij")
        return np.stack([sy.ravel(), sx.ravel()], axis=1).astype(np.int64)

    @property
    def weight(self) -> np.ndarray:
        """``(h, w)`` fusion weight of one patch."""
        return np.outer(self.weight_y, self.weight_x)

    def indices(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row and column indices into the domain of the pixels of patch ``k``."""
        if not 0 <= k < self.num_patches:
            raise IndexError(f"patch {k} out of range for a grid of {self.num_patches} patches")
        r0, c0 = self.origins[k]
        return (
            reflect_index(int(r0), self.patch[0], self.domain[0]),
            reflect_index(int(c0), self.patch[1], self.domain[1]),
        )


def global_context(x: Tensor, patch: Sequence[int]) -> Tensor:
    """The whole field bilinearly resized to one patch, ``(B, C, H, W)`` -> ``(B, C, h, w)``.

    The reference's patch-based CorrDiff appends this to every patch's conditioning so each
    patch sees the large-scale situation (``additional_input`` in its patching classes).
    """
    return F.interpolate(x, size=tuple(int(p) for p in patch), mode="bilinear")


def random_origins(
    domain: Sequence[int],
    patch: Sequence[int],
    num: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``num`` random patch origins ``(num, 2)`` (int64 rows, cols) for training.

    Uniform over the positions where the patch lies inside the domain (rows drawn first, then
    columns, as the reference's ``RandomPatching2D``); a patch longer than the domain along
    an axis starts at 0 there and is filled by reflection.
    """
    if num < 1:
        raise ValueError(f"need at least one patch, got num={num}")
    highs = [max(int(d) - int(p), 0) + 1 for d, p in zip(domain, patch)]
    draws = [
        torch.randint(0, hi, (num,), dtype=torch.long, generator=generator, device=device)
        for hi in highs
    ]
    return torch.stack(draws, dim=1)


def take_patches(x: Tensor, origins: Tensor, patch: Sequence[int]) -> Tensor:
    """Patches of ``x`` ``(B, C, H, W)`` at ``origins`` ``(P, 2)`` -> ``(B * P, C, h, w)``.

    Sample-major: row ``b * P + k`` is the patch at ``origins[k]`` of sample b. Pixels outside
    the domain are mirrored, so any origin is valid.
    """
    if x.ndim != 4:
        raise ValueError(f"take_patches expects (B, C, H, W), got shape {tuple(x.shape)}")
    if origins.ndim != 2 or origins.shape[1] != 2:
        raise ValueError(f"origins must be (P, 2) (row, col), got shape {tuple(origins.shape)}")
    h, w = (int(p) for p in patch)
    H, W = x.shape[-2:]
    parts = [
        _gather(x, reflect_index(int(r), h, H), reflect_index(int(c), w, W))
        for r, c in origins.tolist()
    ]
    return torch.stack(parts, dim=1).reshape(x.shape[0] * len(parts), x.shape[1], h, w)
