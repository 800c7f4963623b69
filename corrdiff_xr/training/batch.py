"""One training batch of normalised tensors, and the naive per-sample xbatcher road."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import xarray as xr

from corrdiff_xr.dims import TIME, X, Y

__all__ = ["Batch", "xbatcher_batches"]


@dataclasses.dataclass
class Batch:
    """One batch of normalised tensors.

    Attributes
    ----------
    inputs : (N, C_in, h, w) float32, regridded inputs and static fields.
    targets : (N, C_out, h, w) float32.
    offsets : (N, 2) int64 global (row, col) of each sample's top-left pixel.
    time_index : (N,) int64 position of each sample along ``time`` of the loader's pair.
    lead_time : (N,) int64 lead-time labels, or None when the data have none.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    offsets: torch.Tensor
    time_index: torch.Tensor
    lead_time: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """Copy of the batch on ``device``."""
        move = lambda t: None if t is None else t.to(device, non_blocking=True)
        return Batch(*(move(getattr(self, f.name)) for f in dataclasses.fields(self)))


def xbatcher_batches(pair: Any, codec: Any, *, batch_size: int) -> Iterator[Batch]:
    """Sequential full-image batches through ``xbatcher.BatchGenerator``, one time step per
    read (the slow, simple path; kept as the baseline of ``benchmarks/loader.py``)."""
    import xbatcher

    inputs = xr.merge([pair.inputs_on_fine, pair.static_fields], compat="override")
    sizes = {TIME: 1, Y: pair.fine.sizes[Y], X: pair.fine.sizes[X]}
    gen_in = xbatcher.BatchGenerator(inputs, input_dims=sizes, preload_batch=False)
    gen_out = xbatcher.BatchGenerator(pair.fine, input_dims=sizes, preload_batch=False)
    buf_x, buf_y, times = [], [], []
    for t, (bx, by) in enumerate(zip(gen_in, gen_out)):
        buf_x.append(codec.encode_inputs(bx.load()))
        buf_y.append(codec.encode_targets(by.load()))
        times.append(t)
        if len(times) == batch_size:
            yield _stack(buf_x, buf_y, times)
            buf_x, buf_y, times = [], [], []
    if times:
        yield _stack(buf_x, buf_y, times)


def _stack(xs: list, ys: list, times: list) -> Batch:
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32))
    y = torch.from_numpy(np.concatenate(ys).astype(np.float32))
    return Batch(x, y, torch.zeros((len(x), 2), dtype=torch.int64), torch.tensor(times))
