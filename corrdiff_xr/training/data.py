"""The data a training run reads: the configured pair(s), then only the codec's variables.

:func:`open_training_data` opens ``cfg.data`` (a catalog entry or a Zarr path/URL) as the
training pair and, with ``data.valid_period``, a validation pair. :func:`codec_variables`
then restricts a pair to the variables of the codec the run trains with, in its channel
order: the codec is fixed by the run's first checkpoint (or, for diffusion, the regression
checkpoint), so the data must hold each of its variables, in the same role. A new regression
run's codec comes from :func:`new_codec`: the training period's statistics, of transformed
values for the variables ``data.transforms`` names.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from corrdiff_xr.config import ConfigError, TrainRunConfig

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import DownscalingData

__all__ = ["codec_variables", "new_codec", "open_training_data", "valid_target_pixels"]


def open_training_data(cfg: TrainRunConfig) -> tuple[DownscalingData, DownscalingData | None]:
    """(train pair, validation pair or None) for ``cfg.data``.

    With ``data.train_period`` the training pair's statistics (and so the codec) are those of
    that period alone, computed from its data; stored statistics serve only a run without it.

    ``data.source`` is anything :func:`corrdiff_xr.data.open_source` opens: ``catalog:NAME/ENTRY``
    (NAME a bundled catalog such as ``demo`` or ``cloud``, or a catalog YAML path) with
    ``data.catalog_params``, or a Zarr path or fsspec URL with ``data.storage_options``. A
    source those options do not fit is a :class:`ConfigError`.
    """
    from corrdiff_xr.data import SourceError, open_source

    d = cfg.data
    try:
        pair = open_source(
            d.source,
            params=d.catalog_params,
            storage_options=d.storage_options,
            inputs=d.inputs,
            targets=d.targets,
            static=d.static,
            what="data.source",
            params_what="data.catalog_params",
        )
    except SourceError as err:  # the config names a source its options do not fit
        raise ConfigError(str(err)) from err
    # normalisation statistics of the training period only: validation must not leak into them
    train_pair = _period(pair, d.train_period, "train_period", stats="selection")
    valid_pair = _period(pair, d.valid_period, "valid_period") if d.valid_period else None
    return train_pair, valid_pair


def new_codec(cfg: TrainRunConfig, pair: DownscalingData) -> Codec:
    """The codec a new run derives from its training pair, with ``data.transforms`` and
    ``data.bounds``: a transformed variable's statistics are computed from its transformed
    values (one lazy pass), never read from the store's raw ``"stats"`` group."""
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.config import SettingError

    try:
        return Codec.from_pair(
            pair,
            transforms=cfg.data.transforms,
            bounds=cfg.data.bounds,
            features=cfg.data.features,
        )
    except SettingError as err:  # a transform or bound naming no variable of the run
        raise err.under("data") from None


def _period(
    pair: DownscalingData, period: tuple[str, str] | None, key: str, *, stats: str = "keep"
) -> DownscalingData:
    """``pair`` over an inclusive period of ISO 8601 times, read in the time axis' calendar
    (xarray's partial-date selection: ``"2001-02-30"`` is a whole day of a 360_day axis)."""
    from corrdiff_xr.data.times import calendar_of, is_cftime
    from corrdiff_xr.dims import TIME
    from corrdiff_xr.errors import CorrDiffError

    if period is None:
        return pair
    try:
        return pair.sel({TIME: slice(*period)}, stats=stats)
    except (ValueError, KeyError, TypeError) as err:
        if isinstance(err, CorrDiffError):  # the data layer's own, e.g. an empty selection
            raise
        first = pair.dataset[TIME].values[0]
        example = first.isoformat() if is_cftime(first) else np.datetime_as_string(first, "s")
        raise ConfigError(
            f"data.{key} {list(period)} is not a period of the data's "
            f"{calendar_of(first)}-calendar time axis ({err}); give ISO 8601 times that "
            f"calendar has, e.g. {example!r}"
        ) from None


def codec_variables(pair: DownscalingData, codec: Codec, *, source: str) -> DownscalingData:
    """``pair`` restricted to the codec's variables, in the codec's order (each must be there)."""
    from corrdiff_xr.data import MissingVariableError

    have = {"input": pair.inputs, "target": pair.targets, "static": pair.static}
    for role, names in (
        ("input", codec.inputs),
        ("target", codec.targets),
        ("static", codec.static),
    ):
        missing = [n for n in names if n not in have[role]]
        if missing:
            raise MissingVariableError(
                f"the model's codec needs {role} variable(s) {missing}, which data.source {source} does not "
                f"provide (its {role} variables: {list(have[role])}); the codec is fixed by the run's first "
                "checkpoint (or the regression checkpoint), so the data must hold its variables"
            )
    order = [*codec.inputs, *codec.targets, *codec.static]
    if list(pair.names) == order:
        return pair
    stats = None if pair.stored_stats is None else pair.stored_stats[order]
    return dataclasses.replace(
        pair,
        dataset=pair.dataset[order],
        inputs=codec.inputs,
        targets=codec.targets,
        static=codec.static,
        stored_stats=stats,
        weights=pair.regrid_weights,
    )


def valid_target_pixels(pair: DownscalingData) -> np.ndarray | None:
    """``(C_out, H, W)`` booleans: where each target holds a value at one training time or
    more (a fixed mask, such as the sea of a land-only field, is False); None when every pixel
    does. One streaming pass over the targets."""
    import dask

    from corrdiff_xr.dims import TIME

    fine = pair.fine
    found = dask.compute(*[fine[n].notnull().any(TIME).data for n in pair.targets])
    valid = np.stack([np.asarray(v, dtype=bool) for v in found])
    return None if valid.all() else valid
