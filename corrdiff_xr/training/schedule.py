"""Learning-rate schedule and batch arithmetic, as pure functions of the sample count.

The reference ramps the learning rate up linearly over ``rampup`` samples and then decays it
step-wise by ``decay`` every ``decay_every`` samples. Its loop multiplies the optimiser's
current rate in place when the ramp-up is 0, so with ``decay < 1`` the rate shrinks
geometrically at every step; here the rate is computed afresh from the sample count, so it
depends on nothing but ``nimg``.
"""

from __future__ import annotations

__all__ = ["accumulation_rounds", "learning_rate"]


def learning_rate(
    nimg: int, *, lr: float, rampup: int = 0, decay: float = 1.0, decay_every: int = 1
) -> float:
    """Learning rate after ``nimg`` training samples.

    ``lr * min(nimg / rampup, 1) * decay ** floor((nimg - rampup) / decay_every)``, the decay
    factor applying once ``nimg >= rampup``.
    """
    if nimg < 0 or rampup < 0 or decay_every < 1:
        raise ValueError(
            f"need nimg >= 0, rampup >= 0 and decay_every >= 1, got {nimg}, {rampup}, {decay_every}"
        )
    rate = lr * min(nimg / rampup, 1.0) if rampup > 0 else lr
    if nimg >= rampup:
        rate *= decay ** ((nimg - rampup) // decay_every)
    return float(rate)


def accumulation_rounds(total_batch_size: int, per_device: int, world_size: int) -> int:
    """Gradient-accumulation rounds so ``per_device x rounds x world_size == total``."""
    per_step = per_device * world_size
    if per_device < 1 or total_batch_size < 1 or total_batch_size % per_step:
        raise ValueError(
            f"total_batch_size {total_batch_size} is not a multiple of batch_size_per_device "
            f"{per_device} x world size {world_size}"
        )
    return total_batch_size // per_step
