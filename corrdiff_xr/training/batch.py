"""One training batch of normalised tensors."""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["Batch"]


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
        move = lambda t: t.to(device, non_blocking=True)
        lead = None if self.lead_time is None else move(self.lead_time)
        return Batch(
            move(self.inputs), move(self.targets), move(self.offsets), move(self.time_index), lead
        )
