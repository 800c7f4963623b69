"""Where the whole-domain regression mean is cut into overlapping tiles, to bound its memory.

With ``PatchConfig(mean="whole")`` one task per time chunk computes the regression mean over
the whole fine grid, as the network was trained. In one call its activations grow with the
domain (a normal-size SongUNet holds a few KB per pixel: over 10 GB at 1056 x 1792). Above
one window the task therefore runs the network on overlapping windows and keeps each window's
*core*: cores of :data:`MEAN_CORE` pixels tile the domain, each read with :data:`MEAN_HALO`
pixels of context on every side (clipped at the domain edge, where the window sees the real
border as the single call does). Core and halo are multiples of the network's downsampling
factor ``2 ** (levels - 1)``, so every window's pooling lattice lines up with the single
call's; each window passes its global origin as the offset of the positional embedding. The
task's memory is then one window's activations plus its domain-sized arrays (inputs and
output: tens of floats per pixel, not thousands).

Threshold. A domain that fits in one window (``MEAN_CORE + 2 MEAN_HALO`` = 256 pixels along
both axes) keeps the single call: exact, and no larger than a window. So peak memory grows
with the domain up to one window and not beyond (a 4x domain in
``benchmarks/lazy_downscale.py``). The windows cost ``(256 / 128) ** 2`` = 4x the single
call's regression compute on large domains: one call per time, shared by all members,
against the residual's ``2 N - 1`` sampler calls per member.

Accuracy. A finite halo cannot reproduce the single call: SongUNet's group norms (and
attention, where the config has it) take statistics over the whole image they see, and the
convolutional receptive field of a trained-size network spans hundreds of pixels (radius 78
for the shipped demo's three levels of one block, more than its 64 x 64 grid; 725 for the
five-level ``normal`` network of four blocks a level; measured by back-propagating one
output pixel with the group norms made pointwise). The error is therefore measured, not
bounded: :data:`DEMO_TOLERANCE` holds it for the shipped demo model, where it falls with the
halo, and tests/inference/test_tiled_mean.py checks it. The default halo, 64 pixels, is four
pixels of a five-level network's bottleneck, the ratio of the demo's 16-pixel row (rms 0.11
against a field std of 0.82; max 0.69). Cutting cores from aligned, clipped windows measured
closer to the single call than fusing ramp-weighted patches of the
:class:`~corrdiff_xr.patching.PatchGrid` (reflected edges, unaligned origins): rms 0.115 vs
0.14 and half the error jump across seams, at the demo's 16-pixel halo. The tiled mean is a
deterministic function of (inputs, domain, tiles), each window one row of a call on the CPU
as before, so results stay independent of chunking and workers.

Networks with global attention over the whole image (the DiT backbones) have no finite halo
at all: they keep the single call (:func:`mean_tiles` returns None).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEMO_TOLERANCE",
    "MEAN_CORE",
    "MEAN_HALO",
    "axis_windows",
    "mean_tiles",
    "windows",
]

#: core side of a whole-domain mean tile, in fine-grid pixels
MEAN_CORE = 128
#: context read on every side of a core, in fine-grid pixels
MEAN_HALO = 64
#: (rms, max) abs difference in normalised units of the tiled mean from the single call, on
#: the shipped demo model (64 x 64, two times of synthetic inputs, field std 0.82) with
#: 16-pixel cores, by halo in pixels; measured 0.28/3.3, 0.17/1.3, 0.11/0.69
DEMO_TOLERANCE = {0: (0.31, 3.6), 8: (0.19, 1.4), 16: (0.13, 0.76)}

Span = tuple[int, int]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def mean_tiles(
    network: Mapping[str, Any] | None,
    domain: tuple[int, int],
    *,
    core: int | None = None,
    halo: int | None = None,
) -> tuple[int, int] | None:
    """(core, halo) in pixels of the whole-domain mean's tiles, or None for the single call.

    ``network`` is the regression network's config as a checkpoint header holds it; ``core``
    and ``halo`` default to :data:`MEAN_CORE` and :data:`MEAN_HALO`. Only SongUNet backbones
    are tiled; core and halo are rounded up to multiples of its downsampling factor. None
    when the domain fits in one window ``core + 2 halo`` along both axes, or for other
    backbones (global attention: no finite halo).
    """
    if network is None or network.get("arch", "songunet") != "songunet":
        return None
    core = MEAN_CORE if core is None else core
    halo = MEAN_HALO if halo is None else halo
    align = 2 ** (len(network.get("channel_mult", (1,))) - 1)
    core, halo = _round_up(max(1, core), align), _round_up(max(0, halo), align)
    if all(n <= core + 2 * halo for n in domain):
        return None
    return core, halo


def axis_windows(n: int, core: int, halo: int) -> list[tuple[Span, Span]]:
    """(core, window) half-open spans tiling an axis of ``n`` pixels.

    One span covering the axis when ``n <= core + 2 halo``; else cores ``[i core, (i + 1)
    core)`` (the last one shorter) each in a window ``halo`` pixels wider on both sides,
    clipped to ``[0, n)``.
    """
    if core < 1 or halo < 0:
        raise ValueError(f"mean tiles need core >= 1 and halo >= 0, got {core} and {halo}")
    if n <= core + 2 * halo:
        return [((0, n), (0, n))]
    return [
        ((s, min(s + core, n)), (max(0, s - halo), min(n, s + core + halo)))
        for s in range(0, n, core)
    ]


def windows(domain: tuple[int, int], tiles: tuple[int, int] | None) -> list[tuple[Span, ...]]:
    """(core rows, core cols, window rows, window cols) of every tile, row-major.

    ``tiles`` None is the single call: one window, the whole domain.
    """
    H, W = domain
    if tiles is None:
        return [((0, H), (0, W), (0, H), (0, W))]
    rows, cols = (axis_windows(n, *tiles) for n in (H, W))
    return [(rc, cc, rw, cw) for rc, rw in rows for cc, cw in cols]


def overhead(domain: tuple[int, int], tiles: tuple[int, int] | None) -> float:
    """Pixels the tiles' windows run over / pixels of the domain (the compute cost)."""
    run = sum((rw[1] - rw[0]) * (cw[1] - cw[0]) for _, _, rw, cw in windows(domain, tiles))
    return run / math.prod(domain)
