"""An exponential moving average (EMA) of the trained network's weights, as EDM keeps one.

After every optimiser step the average moves toward the trained ("raw") weights,

.. math:: w_{ema} \\leftarrow w + \\beta\\,(w_{ema} - w), \\qquad
    \\beta = 0.5^{\\,b / \\max(h, 10^{-8})},

with ``b`` the samples of one step (``training.total_batch_size``) and ``h`` the half-life in
samples (``training.ema``): a weight update ``h`` samples old counts half as much as the
newest. With ``training.ema_rampup_ratio`` ``r`` the half-life is at most ``r`` times the
samples seen before the step (EDM's ``ema_rampup_ratio``, 0.05 there), so the average soon
forgets its random start; the first step then copies the weights.

Where the two sets of weights go: the average is what the run validates with and saves as
``model.safetensors`` (every checkpoint's and the final one, so ``generate`` samples with
it); the raw weights, which the optimiser continues from, go into each checkpoint's
``trainer.pt`` (``raw_weights``) and are restored on resume. Only parameters are averaged;
buffers are constants of the network (filters, frequencies).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["WeightAverage", "ema_beta"]


def ema_beta(batch: int, nimg: int, *, halflife: float, rampup_ratio: float | None = None) -> float:
    """The decay of one step of ``batch`` samples taken after ``nimg`` samples.

    Parameters
    ----------
    batch
        Samples in the step.
    nimg
        Samples seen before the step.
    halflife
        Half-life of the average in samples.
    rampup_ratio
        When given, the half-life is at most ``rampup_ratio * nimg`` (0 at the first step:
        the average becomes the weights).
    """
    if rampup_ratio is not None:
        halflife = min(halflife, nimg * rampup_ratio)
    return 0.5 ** (batch / max(halflife, 1e-8))


class WeightAverage:
    """The running average of a module's parameters (a copy of each, same dtype and device).

    Parameters
    ----------
    module
        The trained module; the average starts at its current weights.
    """

    def __init__(self, module: torch.nn.Module):
        self.average = {n: p.detach().clone() for n, p in module.named_parameters()}

    def update(self, module: torch.nn.Module, beta: float) -> None:
        """One EMA step toward ``module``'s weights: ``average = w + beta (average - w)``."""
        with torch.no_grad():
            for name, p in module.named_parameters():
                avg = self.average[name]
                avg.copy_(p.detach().lerp(avg, beta))

    def reset(self, module: torch.nn.Module) -> None:
        """Restart the average at ``module``'s current weights (a resume restores it so)."""
        with torch.no_grad():
            for name, p in module.named_parameters():
                self.average[name].copy_(p.detach())

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module) -> Iterator[None]:
        """``module`` holds the average inside the block and its own weights again after it
        (copied back bit for bit, in place: the optimiser's references stay valid)."""
        params = dict(module.named_parameters())
        raw = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.average[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(raw[name])
