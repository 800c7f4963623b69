"""Validation during training: MAE of the regression mean, CRPS of diffusion ensembles.

Scores are computed in physical units: predictions are decoded with the codec (the one
tensor -> xarray boundary) against the validation targets as template, then scored with
:mod:`corrdiff_xr.scoring` (CRPS with properscoring's estimator, which rewards spread less
than the "fair" M-1 one for the few members used here). The same first
``validation_batches`` batches of the time-ordered validation period are used every time,
and ensemble members are drawn from generators keyed by (seed, time index, member)
(:data:`corrdiff_xr.noise.VALIDATION`), so successive validations are comparable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import xarray as xr

from corrdiff_xr.dims import MEMBER, TIME
from corrdiff_xr.noise import VALIDATION, keyed_generator

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.config import TrainRunConfig
    from corrdiff_xr.data import DownscalingData
    from corrdiff_xr.model import CorrDiff
    from corrdiff_xr.protocols import RandomSource

__all__ = ["validate"]


def _generator(seed: int, time_index: int, member: int, device: torch.device) -> torch.Generator:
    return keyed_generator(VALIDATION, seed, time_index, member, device=device)


@torch.no_grad()
def validate(
    cfg: TrainRunConfig,
    model: CorrDiff,
    pair: DownscalingData,
    codec: Codec,
    *,
    device: torch.device,
    batch_size: int = 1,
) -> tuple[dict[str, float], torch.Tensor | None]:
    """``({metric_name: value}, image)`` on the validation pair; image is a 2-D tensor
    (first predicted field of the first sample) for TensorBoard."""
    from corrdiff_xr import scoring
    from corrdiff_xr.training.loader import ChunkShuffleLoader

    t = cfg.training
    loader = ChunkShuffleLoader(
        pair, codec, batch_size=batch_size, shuffle=False, epochs=1, lead_time=cfg.data.lead_time
    )
    was_training = model.training
    model.eval()
    members = 1 if cfg.task == "regression" else t.validation_members
    sums: dict[str, float] = {}
    count, image = 0, None
    generators: list[RandomSource]
    for i, batch in enumerate(loader):
        if i >= t.validation_batches:
            break
        b = batch.to(device)
        mean = model.predict_mean(b.inputs, offsets=b.offsets, lead_time=b.lead_time)
        preds = [mean]
        if cfg.task != "regression":
            preds = []
            for m in range(members):
                generators = [_generator(t.seed, int(ti), m, device) for ti in batch.time_index]
                preds.append(
                    model.sample(
                        b.inputs,
                        mean=mean,
                        offsets=b.offsets,
                        lead_time=b.lead_time,
                        sampler=cfg.sampler,
                        generators=generators,
                    )
                )
        template = pair.fine.isel({TIME: batch.time_index.numpy()}).load()
        forecast = xr.concat(
            [codec.decode_targets(p.float().cpu().numpy(), template) for p in preds], dim=MEMBER
        )
        scores = {"mae": scoring.mae(forecast, template)}
        if members > 1:
            scores["crps"] = scoring.crps(forecast, template)
        for metric, ds in scores.items():
            for name, value in ds.compute().data_vars.items():
                key = f"{metric}/{name}"
                sums[key] = sums.get(key, 0.0) + float(value) * len(batch)
        count += len(batch)
        if image is None:
            image = preds[0][0, 0].float().cpu()
    model.train(was_training)
    return {k: v / max(count, 1) for k, v in sums.items()}, image
