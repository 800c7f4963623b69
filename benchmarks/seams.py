"""Benchmark of seams in patched sampling: shared noise versus independent noise per patch.

The shipped demo model downscales the demo's held-out hours (64 x 64 fine grid) three ways,
with the same members, seed and sampler: whole-domain (one patch), patched 32 x 32 (a domain
of 4x the patch area) with independent noise per patch (the reference's way) and patched
with the shared noise field (:class:`corrdiff_xr.noise.FieldNoise`, the default), all with
the regression mean of the whole domain (the default); ``shared_mean_patches`` computes the
regression mean patch by patch instead (``PatchConfig(mean="patches")``, what patched
sampling did before). Written to ``--json PATH``:

``seam_gradient_ratio`` (and ``..._independent``, ``..._whole``)
    mean absolute horizontal gradient of the members (both axes, every target, normalised
    per target by its std) on the patch-boundary lines (the first and last row/column of
    every patch inside the domain) over that inside the patches. On whole-domain output,
    which has no seams, it is the natural ratio of these lines; a seam makes it larger.
    Target <= 1.1.
``patched_vs_whole_crps_ratio`` (and ``..._independent``, ``..._mean_patches``)
    CRPS (properscoring, mean over targets of CRPS / std) of patched over whole-domain
    sampling. Target <= 1.03. Each setting's fair CRPS is recorded too (``crps_fair``).
``band_gradient_ratio``, ``band_spread_ratio`` per setting
    member |gradient| and ensemble spread in the overlap bands (pixels two or more patches
    cover) over those elsewhere: averaging independent patches smooths the bands and
    shrinks their spread (the "grid of squares"), which the line gradient above misses.
``spread_skill`` per setting, and the wall time of each.

Usage::

    python benchmarks/seams.py --json benchmarks/results/seams.json [--members 8 --times 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

PATCH = 32


def _boundary_lines(starts, domain: int) -> np.ndarray:
    """Pixel lines (rows or columns) at the edges of patches starting at ``starts``."""
    lines = {s for s in starts if 0 < s < domain} | {
        s + PATCH - 1 for s in starts if 0 <= s + PATCH - 1 < domain - 1
    }
    return np.array(sorted(lines))


def _edges(lines: np.ndarray, n: int) -> np.ndarray:
    """Which of the n - 1 differences along an axis touch a boundary line."""
    edge = np.zeros(n - 1, bool)
    edge[np.clip(lines - 1, 0, n - 2)] = True  # between s-1 and s (a patch starts at s)
    edge[np.clip(lines, 0, n - 2)] = True  # between s and s+1 (a patch ends at s)
    return edge


def _seam_ratio(ens, names, std, rows: np.ndarray, cols: np.ndarray) -> float:
    """Mean |gradient| across the boundary lines over the mean elsewhere (module doc)."""
    on, off = [], []
    for name in names:
        f = ens[name].values / std[name]  # (member, time, y, x)
        gx, gy = np.abs(np.diff(f, axis=-1)), np.abs(np.diff(f, axis=-2))
        ex, ey = _edges(cols, f.shape[-1]), _edges(rows, f.shape[-2])
        on += [gx[..., ex].ravel(), gy[..., ey, :].ravel()]
        off += [gx[..., ~ex].ravel(), gy[..., ~ey, :].ravel()]
    return float(np.nanmean(np.concatenate(on)) / np.nanmean(np.concatenate(off)))


def _coverage(grid, shape) -> np.ndarray:
    """How many patches' kept (non-zero weight) parts cover each pixel."""
    count = np.zeros(shape, int)
    wy, wx = np.asarray(grid.weight_y) > 0, np.asarray(grid.weight_x) > 0
    for r0 in grid.starts[0]:
        for c0 in grid.starts[1]:
            rows = np.arange(r0, r0 + PATCH)[wy]
            cols = np.arange(c0, c0 + PATCH)[wx]
            rows, cols = (
                rows[(rows >= 0) & (rows < shape[0])],
                cols[(cols >= 0) & (cols < shape[1])],
            )
            count[np.ix_(rows, cols)] += 1
    return count


def _band_ratios(ens, names, std, band: np.ndarray) -> tuple[float, float]:
    """Member |gradient| and ensemble spread in the overlap bands over those elsewhere."""
    grad_on, grad_off, spread_on, spread_off = [], [], [], []
    for name in names:
        f = ens[name].values / std[name]
        g = np.abs(np.diff(f, axis=-1))[..., :-1, :] + np.abs(np.diff(f, axis=-2))[..., :-1]
        inner = band[:-1, :-1]
        grad_on.append(g[..., inner].ravel())
        grad_off.append(g[..., ~inner].ravel())
        spread = f.std(axis=0)
        spread_on.append(spread[..., band].ravel())
        spread_off.append(spread[..., ~band].ravel())
    ratio = lambda a, b: float(np.nanmean(np.concatenate(a)) / np.nanmean(np.concatenate(b)))  # noqa: E731
    return ratio(grad_on, grad_off), ratio(spread_on, spread_off)


def run(members: int, times: int, steps: int) -> dict:
    import corrdiff_xr  # noqa: F401  (the accessor)
    from corrdiff_xr import demo
    from corrdiff_xr.config import PatchConfig
    from corrdiff_xr.inference.calibrate import ensemble_scores, target_std
    from corrdiff_xr.patching import PatchGrid

    pair = demo.open_demo_data(times=times)
    truth = pair.fine.load()
    names = list(pair.targets)
    model = demo.shipped_model_path()
    std = target_std(model)
    sampler = dict(demo.DEMO_SAMPLER, **({"num_steps": steps} if steps else {}))
    settings = {
        "whole": None,
        "independent": PatchConfig(shape=(PATCH, PATCH), noise="independent"),
        "shared": PatchConfig(shape=(PATCH, PATCH), noise="shared"),
        "shared_mean_patches": PatchConfig(shape=(PATCH, PATCH), mean="patches"),
    }
    shape = (truth.sizes["y"], truth.sizes["x"])
    grid = PatchGrid.from_config(shape, settings["shared"].resolved())
    rows, cols = (_boundary_lines(grid.starts[i], shape[i]) for i in (0, 1))
    band = _coverage(grid, shape) >= 2
    out: dict = {"boundary_rows": rows.tolist(), "boundary_cols": cols.tolist(), "patch": PATCH,
                 "members": members, "times": times, "sampler": sampler}  # fmt: skip
    for label, patch in settings.items():
        t0 = time.perf_counter()
        ens = pair.dataset.corrdiff.downscale(
            model, members=members, seed=0, sampler=sampler, patch=patch
        ).compute(scheduler="sync")
        wall = time.perf_counter() - t0
        scores = ensemble_scores(ens, truth, std)
        band_grad, band_spread = _band_ratios(ens, names, std, band)
        out[label] = {"seam_ratio": _seam_ratio(ens, names, std, rows, cols), **scores,
                      "band_gradient_ratio": band_grad,
                      "band_spread_ratio": band_spread, "wall_s": wall}  # fmt: skip
        print(label, out[label], flush=True)
    whole = out["whole"]["crps"]
    out["seam_gradient_ratio"] = out["shared"]["seam_ratio"]
    out["seam_gradient_ratio_independent"] = out["independent"]["seam_ratio"]
    out["seam_gradient_ratio_whole"] = out["whole"]["seam_ratio"]
    out["patched_vs_whole_crps_ratio"] = out["shared"]["crps"] / whole
    out["patched_vs_whole_crps_ratio_independent"] = out["independent"]["crps"] / whole
    out["patched_vs_whole_crps_ratio_mean_patches"] = out["shared_mean_patches"]["crps"] / whole
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--times", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="default: the demo's sampler's")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    result = run(args.members, args.times, args.steps)
    result["machine"] = {"load_avg": os.getloadavg(), "cpus": os.cpu_count(),
                         "python": platform.python_version()}  # fmt: skip
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps({k: v for k, v in result.items() if "ratio" in k}, indent=2))


if __name__ == "__main__":
    main()
