"""What a run reports: a progress bar with samples/s, TensorBoard scalars and images.

Only rank 0 writes; other ranks get a :class:`Monitor` whose methods do nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["Monitor"]


class Monitor:
    """Progress bar plus TensorBoard writer under ``log_dir`` (rank 0 only)."""

    def __init__(
        self,
        log_dir: str | Path,
        *,
        total: int,
        initial: int = 0,
        active: bool = True,
        progress: bool = True,
    ):
        self.active = active
        self._writer = self._bar = None
        self._t0, self._n0 = time.perf_counter(), initial
        if not active:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="sample", dynamic_ncols=True)

    def advance(self, n: int, nimg: int, **postfix: float) -> None:
        """Move the bar to ``nimg`` samples, showing samples/s and ``postfix`` values."""
        if self._bar is None:
            return
        self._bar.update(n)
        rate = (nimg - self._n0) / max(time.perf_counter() - self._t0, 1e-9)
        self._bar.set_postfix(
            {"samples/s": f"{rate:.1f}", **{k: f"{v:.4g}" for k, v in postfix.items()}}
        )

    def scalars(self, nimg: int, **values: float) -> None:
        """TensorBoard scalars at step ``nimg``."""
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, float(value), nimg)

    def image(self, name: str, field: torch.Tensor | np.ndarray, nimg: int) -> None:
        """A 2-D field as a grey image scaled to its own range."""
        if self._writer is None:
            return
        arr = np.asarray(
            field.detach().float().cpu() if isinstance(field, torch.Tensor) else field,
            dtype=np.float32,
        )
        lo, hi = np.nanmin(arr), np.nanmax(arr)
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        self._writer.add_image(name, arr[None], nimg, dataformats="CHW")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
        if self._bar is not None:
            self._bar.close()
