"""What a run reports: a progress bar with samples/s, TensorBoard scalars and images, and
for the diffusion tasks the loss by noise level (:class:`LossBySigma`).

Only rank 0 writes; other ranks get a :class:`Monitor` whose methods do nothing.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from corrdiff_xr.config import EDMConfig
    from corrdiff_xr.training.distributed import ProcessInfo

__all__ = ["LossBySigma", "Monitor", "sigma_bin_edges"]


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
    ) -> None:
        self.active = active
        self._writer: SummaryWriter | None = None
        self._bar: tqdm | None = None
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


def _rounded(value: float) -> float:
    return float(f"{value:.2g}")


def sigma_bin_edges(P_mean: float, P_std: float) -> list[float]:
    """Noise-level bin edges ``exp(P_mean + k P_std)``, ``k = -2..2``, to two digits: the
    six bins they make hold about 2, 14, 34, 34, 14 and 2 % of the training noise levels."""
    return [_rounded(math.exp(P_mean + k * P_std)) for k in (-2, -1, 0, 1, 2)]


class LossBySigma:
    """The training loss by noise-level bin, summed on the device between two logs.

    Each row of the elementwise loss (a sample, or a patch of one) has one noise level; its
    loss is summed over channels and pixels and added to the bin of its level
    (:func:`sigma_bin_edges` of the EDM settings; rows whose loss is not finite are left
    out). :meth:`flush` gives, per bin that got rows, ``loss_by_sigma/<lo>-<hi>``, the mean
    row loss times ``rows_per_sample`` (the loss of a sample whose levels all fall in the bin,
    on the scale of ``train/loss``), and ``count_by_sigma/<lo>-<hi>``, the number of rows: so
    the count-weighted mean of the bins is the mean loss since the last log.

    Parameters
    ----------
    edm
        The run's :class:`~corrdiff_xr.config.EDMConfig` (``P_mean``, ``P_std``).
    rows_per_sample
        Loss rows per sample (``training.patch_num`` for patched diffusion, else 1).
    device
        Where the sums are kept (no synchronisation until :meth:`flush`).
    """

    def __init__(
        self, edm: EDMConfig, *, rows_per_sample: int = 1, device: torch.device | str = "cpu"
    ) -> None:
        edges = sigma_bin_edges(edm.P_mean, edm.P_std)
        bounds = [0.0, *edges, math.inf]
        self.names = [f"{lo:g}-{hi:g}" for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.rows_per_sample = rows_per_sample
        self._edges = torch.tensor(edges, dtype=torch.float64, device=device)
        self._totals = torch.zeros(2, len(self.names), dtype=torch.float64, device=device)

    def add(self, sigma: torch.Tensor, loss: torch.Tensor) -> None:
        """Add the rows of the elementwise ``loss`` (rows, ...) with noise levels ``sigma``."""
        rows = loss.detach().flatten(1).double().sum(1)
        finite = torch.isfinite(rows)
        which = torch.bucketize(sigma.detach().double().reshape(-1), self._edges, right=True)
        # a one-hot sum rather than index_add_: deterministic on every device
        onehot = (which[:, None] == torch.arange(len(self.names), device=which.device)) & finite[
            :, None
        ]
        self._totals[0] += torch.where(onehot, rows[:, None], 0.0).sum(0)
        self._totals[1] += onehot.sum(0)

    def flush(self, info: ProcessInfo | None = None) -> dict[str, float]:
        """The scalars since the last flush (summed over processes when ``info.distributed``;
        every rank must call it then), and start again."""
        totals = self._totals.clone()
        self._totals.zero_()
        if info is not None and info.distributed:
            torch.distributed.all_reduce(totals)
        sums, counts = totals.cpu().tolist()
        out: dict[str, float] = {}
        for name, total, count in zip(self.names, sums, counts):
            if count:
                out[f"loss_by_sigma/{name}"] = total / count * self.rows_per_sample
                out[f"count_by_sigma/{name}"] = count
        return out
