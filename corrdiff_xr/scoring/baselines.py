"""Baselines a downscaling must beat: bilinear interpolation of the coarse inputs.

:func:`bilinear_baseline` takes a :class:`~corrdiff_xr.data.DownscalingData` and returns its
coarse inputs regridded to the fine grid (lazily, as ``pair.inputs_on_fine``), each renamed
after the target it approximates, so it scores like a deterministic forecast; it keeps the
fine grid's CF grid mapping (:func:`corrdiff_xr._cf.with_grid_mapping`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import xarray as xr

from corrdiff_xr._cf import with_grid_mapping
from corrdiff_xr.dims import input_for

if TYPE_CHECKING:
    from corrdiff_xr.data.pair import DownscalingData

__all__ = ["baseline_from_inputs", "bilinear_baseline"]


def _required_input(target: str, inputs: xr.Dataset) -> str:
    name = input_for(target, map(str, inputs.data_vars))
    if name is None:
        raise KeyError(
            f"no unique coarse input for target {target!r} (looked for {target!r}, "
            f"'{target}_coarse' or '{target}_*'); inputs are {sorted(map(str, inputs.data_vars))}"
        )
    return name


def bilinear_baseline(pair: DownscalingData, targets: tuple[str, ...] | None = None) -> xr.Dataset:
    """The coarse inputs bilinearly regridded to the fine grid, named as the targets (lazy)."""
    base = baseline_from_inputs(pair.inputs_on_fine, tuple(targets or pair.targets))
    return with_grid_mapping(base, pair.dataset)  # the pair's, should its regridding drop it


def baseline_from_inputs(inputs_on_fine: xr.Dataset, targets: tuple[str, ...]) -> xr.Dataset:
    """Inputs already regridded to the fine grid (``pair.inputs_on_fine``, or the reference
    NetCDF's ``input`` group) renamed as the targets they approximate (lazy); raises KeyError
    naming a target without a unique input."""
    fine = inputs_on_fine
    out = xr.Dataset({t: fine[_required_input(t, fine)].rename(t) for t in targets})
    out = with_grid_mapping(out, fine)  # on the fine grid: its projection, like a prediction
    return out.assign_attrs(title="bilinear interpolation of the coarse inputs")
