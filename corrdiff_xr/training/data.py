"""The data a training run reads: the configured pair(s), then only the codec's variables.

:func:`open_training_data` opens ``cfg.data`` (a catalog entry or a Zarr path/URL) as the
training pair and, with ``data.valid_period``, a validation pair. :func:`codec_variables`
then restricts a pair to the variables of the codec the run trains with, in its channel
order: the codec is fixed by the run's first checkpoint (or, for diffusion, the regression
checkpoint), so the data must hold each of its variables, in the same role.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from corrdiff_xr.config import ConfigError, TrainRunConfig

__all__ = ["codec_variables", "open_training_data"]


def open_training_data(cfg: TrainRunConfig):
    """(train pair, validation pair or None) for ``cfg.data``.

    With ``data.train_period`` the training pair's statistics (and so the codec) are those of
    that period alone, computed from its data; stored statistics serve only a run without it.

    ``catalog:NAME/ENTRY`` (NAME a bundled catalog such as ``demo`` or ``cloud``, or a
    catalog YAML path) opens the entry with ``data.catalog_params``; anything else is a Zarr
    path or fsspec URL opened with ``data.storage_options``.
    """
    from corrdiff_xr import data as cdata

    d = cfg.data
    names = {"inputs": d.inputs, "targets": d.targets, "static": d.static}
    if d.source.startswith("catalog:"):
        from corrdiff_xr.data.catalog import TRUST_ENV, open_entry

        catalog, _, entry = d.source[len("catalog:"):].rpartition("/")
        if not catalog or not entry:
            raise ConfigError(f"data.source {d.source!r} is not of the form catalog:NAME/ENTRY")
        if "trust" in d.catalog_params:  # a shared config file must not opt a catalog in
            raise ConfigError(f"data.catalog_params.trust: to trust a catalog, list it in ${TRUST_ENV}")
        pair = open_entry(catalog, entry, **d.catalog_params)
        if any(v is not None for v in names.values()):
            pair = cdata.open_pair(pair.dataset, stats=pair.stored_stats, **names)
    else:
        if d.catalog_params:
            raise ConfigError("data.catalog_params only apply to a catalog:NAME/ENTRY source")
        pair = cdata.open_pair(d.source, storage_options=d.storage_options or None, **names)
    # normalisation statistics of the training period only: validation must not leak into them
    train_pair = pair.sel(time=slice(*d.train_period), stats="selection") if d.train_period else pair
    valid_pair = pair.sel(time=slice(*d.valid_period)) if d.valid_period else None
    return train_pair, valid_pair


def codec_variables(pair: Any, codec: Any, *, source: str) -> Any:
    """``pair`` restricted to the codec's variables, in the codec's order (each must be there)."""
    from corrdiff_xr.data import MissingVariableError

    have = {"input": pair.inputs, "target": pair.targets, "static": pair.static}
    for role, names in (("input", codec.inputs), ("target", codec.targets), ("static", codec.static)):
        missing = [n for n in names if n not in have[role]]
        if missing:
            raise MissingVariableError(
                f"the model's codec needs {role} variable(s) {missing}, which data.source {source} does not "
                f"provide (its {role} variables: {list(have[role])}); the codec is fixed by the run's first "
                "checkpoint (or the regression checkpoint), so the data must hold its variables")
    names = [*codec.inputs, *codec.targets, *codec.static]
    if list(pair.names) == names:
        return pair
    stats = None if pair.stored_stats is None else pair.stored_stats[names]
    return dataclasses.replace(pair, dataset=pair.dataset[names], inputs=codec.inputs, targets=codec.targets,
                               static=codec.static, stored_stats=stats, weights=pair.regrid_weights)
