"""What a training step minimises: ``loss(net, batch)``, the elementwise loss of the task,
with the noise level of each of its rows (None for regression), by which the training loop
logs the loss (``loss_by_sigma/...``).

``regression`` is the mean UNet's squared error on whole images; ``diffusion`` and
``patched_diffusion`` are the EDM residual loss on the frozen regression mean (on
``training.patch_num`` random patches per image for the latter). With
``edm.objective: direct`` the model's mean is zero (:class:`~corrdiff_xr.model.core.ZeroMean`),
so the same loss is EDM on the target itself; with ``edm.nu`` its noise is Student-t
(:mod:`corrdiff_xr.edm`); with ``edm.flow`` it is rectified flow written as EDM (the same
loss with the flow preconditioning and weight). Missing targets (NaN) contribute nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

import torch

from corrdiff_xr import edm
from corrdiff_xr.config import TrainRunConfig

if TYPE_CHECKING:
    from corrdiff_xr.model import CorrDiff
    from corrdiff_xr.training.batch import Batch

#: ``loss(net, batch) -> (elementwise loss, sigma or None)``; ``net`` is the trained network
#: (maybe DDP-wrapped), called with the task's keywords
Objective: TypeAlias = (
    "Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, torch.Tensor | None]]"
)

__all__ = ["objective"]


def objective(cfg: TrainRunConfig, model: CorrDiff) -> Objective:
    """``loss(net, batch) -> (elementwise loss, sigma)`` for the task; ``net`` may be
    DDP-wrapped; ``sigma`` is ``(rows,)``, one noise level per leading row of the loss."""
    if cfg.task == "regression":

        def regression(net: torch.nn.Module, b: Batch) -> tuple[torch.Tensor, None]:
            mean = lambda x: net(x, offsets=b.offsets, lead_time=b.lead_time)
            return edm.regression_loss(mean, b.inputs, b.targets, reduction="none"), None

        return regression
    patch = cfg.patch.shape if cfg.task == "patched_diffusion" else None
    patches = cfg.training.patch_num if patch is not None else 1

    def residual(net: torch.nn.Module, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mean = model.predict_mean(b.inputs, offsets=b.offsets, lead_time=b.lead_time)
        lead = None if b.lead_time is None else b.lead_time.repeat_interleave(patches)
        drawn: list[
            torch.Tensor
        ] = []  # the noise levels residual_loss draws (in its order: patches, sigma, noise)

        def denoiser(
            x_noisy: torch.Tensor,
            sigma: torch.Tensor,
            *,
            condition: torch.Tensor,
            offsets: torch.Tensor | None,
        ) -> torch.Tensor:
            drawn.append(sigma.detach())
            return net(x_noisy, sigma, condition=condition, offsets=offsets, lead_time=lead)

        loss = edm.residual_loss(
            denoiser,
            b.inputs,
            b.targets,
            edm=cfg.edm,
            mean=mean,
            patch=patch,
            num_patches=patches,
            reduction="none",
        )
        return loss, drawn[0]

    return residual
