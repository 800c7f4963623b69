"""What a training run is: its identity, recorded in its output directory, checked on resume.

A training output directory holds one run. When the run starts it is marked as a ``train``
output (:func:`corrdiff_xr._outputs.mark_directory`) and :data:`IDENTITY_FILE` records, as
readable JSON:

``identity``
    what makes the checkpoints this run's and no other's: the task; the data (source, the
    training period, variables by role, fine and coarse grid shapes, the training period's
    time axis); the codec's channel order and attributes, and its transforms and bounds
    when it has any (left out otherwise, so records written before they existed still
    match); the network, EDM and patch
    settings; for diffusion the digest of the regression checkpoint file
    (:func:`corrdiff_xr._identity.file_digest`; a run recorded with its SHA-256, as earlier
    versions did, still resumes: :func:`read_record`). Not the
    duration, which is extended on purpose, nor execution settings (``network.compile``,
    ``channels_last``, ``checkpoint_activations``, workers), nor ``data.storage_options``/``catalog_params``, which
    may hold credentials or cache paths.
``settings``
    optimiser, schedule, batch, seed, precision and weight-average (``ema``, when on)
    settings: a resume may change them (a new learning rate, a longer duration) and is told
    what changed.
``codec``
    the full codec with its statistics, fixed by the first checkpoint (for reading; a
    resume takes the codec from the checkpoint itself, never from the data again).
``history``
    the identities a forced resume replaced, with the sample count at which it happened.

Re-running into the directory compares the new identity with the recorded one *before* any
weight is loaded (:func:`corrdiff_xr._identity.differences`, as a store's request is): a
difference refuses the resume with what differs and the two ways on
(another ``training.output_dir`` for a new run, or ``training.resume=force`` to continue the
checkpoint anyway).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corrdiff_xr._identity import ABSENT, DIGEST, file_digest, matches_file, plain
from corrdiff_xr._identity import differences as _differences
from corrdiff_xr._outputs import check_output, mark_directory
from corrdiff_xr._redact import redact_record
from corrdiff_xr.config import ConfigError, TrainRunConfig, to_dict
from corrdiff_xr.dims import COARSE_DIMS, TIME, X, Y
from corrdiff_xr.errors import OutputExistsError

if TYPE_CHECKING:
    from corrdiff_xr.data import DownscalingData

__all__ = [
    "IDENTITY_FILE",
    "KIND",
    "RunIdentityError",
    "check_resume",
    "codec_identity",
    "differences",
    "prepare_output_dir",
    "read_record",
    "run_identity",
    "run_settings",
    "write_record",
]

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
KIND = "train"
_FORMAT = "corrdiff_xr.train_identity"
_SHOWN = 6  # differences spelled out in one error line
# network fields that change how it runs, not what it is (a checkpoint fits either way)
_EXECUTION = ("compile", "channels_last", "checkpoint_activations")


class RunIdentityError(ConfigError):
    """A training output directory holds another run than the one configured."""


# -- the output directory ----------------------------------------------------------------
def prepare_output_dir(out: Path) -> bool:
    """Whether ``out`` holds a training run to resume; refuse anything else that exists.

    A missing path or an empty directory starts a new run. A file, a directory under a file,
    another product, or a non-empty directory that is no training run are refused with one
    line (:class:`~corrdiff_xr.errors.OutputExistsError`).
    """
    for parent in out.parents:
        if os.path.lexists(parent) and not parent.is_dir():
            raise OutputExistsError(
                f"training.output_dir {out} lies under {parent}, which is a file, not a "
                "directory; choose another training.output_dir"
            )
    return check_output(out, kind=KIND, overwrite=True, what="training.output_dir")


# -- identity and settings ---------------------------------------------------------------
def _source(source: str) -> str:
    # a local store is the same store from any working directory
    if source.startswith("catalog:") or ("://" in source and not source.startswith("file://")):
        return redact_record(source)  # a digest stands for a password or token in the URL
    return str(Path(source.removeprefix("file://")).expanduser().resolve())


def codec_identity(
    inputs: Sequence[str],
    targets: Sequence[str],
    static: Sequence[str],
    attrs: Mapping[str, Mapping[str, str]],
    *,
    transforms: Mapping[str, Any] | None = None,
    bounds: Mapping[str, Any] | None = None,
    features: Sequence[str] = (),
) -> dict[str, Any]:
    """The compared part of a codec: channel order, attributes (units, long_name) and, when
    set, transforms, bounds and time features (what is trained), as the codec records them."""
    return {
        "inputs": list(inputs),
        "targets": list(targets),
        "static": list(static),
        "attrs": {n: dict(attrs.get(n, {})) for n in (*inputs, *targets, *static)},
        **_declared(transforms, bounds, features),
    }


def _declared(
    transforms: Mapping[str, Any] | None,
    bounds: Mapping[str, Any] | None,
    features: Sequence[str] = (),
) -> dict[str, Any]:
    # canonical (Codec.to_dict's) form, so the config's spelling and the checkpoint's compare
    from corrdiff_xr.transforms import parse_bounds, parse_transforms

    out: dict[str, Any] = {}
    if transforms:
        out["transforms"] = {n: t.to_dict() for n, t in parse_transforms(transforms).items()}
    if bounds:
        out["bounds"] = {n: list(b) for n, b in parse_bounds(bounds).items()}
    if features:
        out["features"] = list(features)
    return plain(out)


def _pair_attrs(pair: DownscalingData) -> dict[str, dict[str, str]]:
    # the attributes Codec.from_pair gives each variable
    return {
        n: {
            k: str(pair.dataset[n].attrs[k])
            for k in ("units", "long_name")
            if k in pair.dataset[n].attrs
        }
        for n in pair.names
    }


def run_identity(
    cfg: TrainRunConfig,
    pair: DownscalingData,
    *,
    codec: dict[str, Any] | None = None,
    regression_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The identity of a run of ``cfg`` on the (training-period) ``pair``.

    ``codec`` is the :func:`codec_identity` of the codec the run uses when it does not come
    from ``pair`` (diffusion: the regression checkpoint's, whose transforms and bounds the run
    keeps: ``data.transforms``/``data.bounds``, when set, must equal them); by default it is
    the codec a new run derives from ``pair`` with ``data.transforms`` and ``data.bounds``.
    ``regression_file``, the regression checkpoint of a diffusion run, is known by content.
    """
    declared = _declared(cfg.data.transforms, cfg.data.bounds, cfg.data.features)
    if codec is not None:
        for key, value in declared.items():
            if plain(codec.get(key, {})) != value:
                raise ConfigError(
                    f"data.{key} {value} differs from the regression checkpoint's codec "
                    f"({codec.get(key, {})}), which fixes them for this run; drop data.{key} or "
                    "make it equal"
                )
    sizes = pair.dataset.sizes
    times = pair.dataset[TIME].values
    from corrdiff_xr.edm import edm_dict
    from corrdiff_xr.nn.backbones import network_dict  # arch, options: left out at defaults

    network = {k: v for k, v in network_dict(cfg.network).items() if k not in _EXECUTION}
    if network.get("padding") == "reflect":  # runs recorded before padding existed match it
        del network["padding"]
    identity = {
        "task": cfg.task,
        "data": {
            "source": _source(cfg.data.source),
            "train_period": cfg.data.train_period,
            "lead_time": cfg.data.lead_time,
            "inputs": list(pair.inputs),
            "targets": list(pair.targets),
            "static": list(pair.static),
            "grid": [int(sizes[Y]), int(sizes[X])],
            "coarse_grid": [int(sizes[d]) for d in COARSE_DIMS],
            "time": {"steps": int(times.size), "first": str(times[0]), "last": str(times[-1])},
        },
        "codec": codec
        or codec_identity(pair.inputs, pair.targets, pair.static, _pair_attrs(pair), **declared),
        "network": network,
        "edm": edm_dict(cfg.edm),  # objective, nu: left out at defaults
        "patch": to_dict(cfg.patch),
        "training": {"patch_num": cfg.training.patch_num},
        "regression_checkpoint": None
        if regression_file is None
        else {DIGEST: file_digest(regression_file)[0]},
    }
    return plain(identity)


def run_settings(cfg: TrainRunConfig) -> dict[str, Any]:
    """Settings a resume may change (with a notice): optimiser, schedule, batch, seed."""
    t = cfg.training
    keys = (
        "duration",
        "total_batch_size",
        "batch_size_per_device",
        "lr",
        "lr_rampup",
        "lr_decay",
        "lr_decay_every",
        "betas",
        "eps",
        "grad_clip",
        "seed",
        "precision",
    )
    training = {k: getattr(t, k) for k in keys}
    for key in ("ema", "ema_rampup_ratio"):  # left out when off: older records match
        if getattr(t, key) is not None:
            training[key] = getattr(t, key)
    training["loader"] = {"block_size": t.loader.block_size}  # the sample order
    reg = t.regression_checkpoint
    training["regression_checkpoint"] = None if reg is None else str(Path(reg).resolve())
    network = {k: getattr(cfg.network, k) for k in _EXECUTION}
    return plain({"training": training, "network": network})


# -- comparing ---------------------------------------------------------------------------
def _describe(key: str, old: object, new: object) -> str:
    if old is ABSENT or new is ABSENT:
        return f"{key} {'absent' if old is ABSENT else repr(old)} -> {'absent' if new is ABSENT else repr(new)}"
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and all(isinstance(v, str) for v in old + new)
    ):
        gone, added = [v for v in old if v not in new], [v for v in new if v not in old]
        if not gone and not added:
            return f"{key} in another order {old} -> {new}"
        return f"{key} {old} -> {new}" + "".join(
            f" ({what} {names})"
            for what, names in (("without", gone), ("with new", added))
            if names
        )
    return f"{key} {old!r} -> {new!r}"


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key old -> new"`` for every dotted key whose value differs (in ``new``'s order)."""
    return [_describe(k, a, b) for k, a, b in _differences(old, new)]


# -- the record --------------------------------------------------------------------------
def read_record(
    out: Path, *, regression_file: str | os.PathLike | None = None
) -> dict[str, Any] | None:
    """The identity record of the run in ``out``, or None when there is none (readable).

    A regression checkpoint recorded by an earlier digest (SHA-256) that ``regression_file``
    matches is read as recorded by the current one, so that run resumes.
    """
    path = out / IDENTITY_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise RunIdentityError(
            f"{path} cannot be read ({err}); pass training.resume=force to "
            "continue the run without the identity check"
        ) from err
    if not isinstance(record, dict) or record.get("format") != _FORMAT or "identity" not in record:
        raise RunIdentityError(
            f"{path} is not a training identity record; pass training.resume=force "
            "to continue the run without the identity check"
        )
    recorded = record["identity"].get("regression_checkpoint")
    if (
        regression_file is not None
        and isinstance(recorded, dict)
        and DIGEST not in recorded
        and matches_file(recorded, regression_file)
    ):
        record["identity"]["regression_checkpoint"] = {DIGEST: file_digest(regression_file)[0]}
    return record


def write_record(
    out: Path,
    *,
    identity: dict[str, Any],
    settings: dict[str, Any],
    codec: dict[str, Any],
    history: Sequence[dict[str, Any]] = (),
    new: bool = False,
) -> None:
    """Write the identity record (and, for a new run, create and mark the directory)."""
    from corrdiff_xr._atomic import write_bytes

    if new:
        out.mkdir(parents=True, exist_ok=True)
        mark_directory(out, KIND)  # first, so a run killed right here is still a training run
    record = {
        "format": _FORMAT,
        "version": 1,
        "identity": identity,
        "settings": settings,
        "codec": codec,
        "history": list(history),
    }
    write_bytes(out / IDENTITY_FILE, (json.dumps(record, indent=1) + "\n").encode(), fsync=False)


def check_resume(
    out: Path,
    record: dict[str, Any] | None,
    *,
    identity: dict[str, Any],
    settings: dict[str, Any],
    mode: str,
    nimg: int,
) -> list[dict[str, Any]]:
    """Check that the run recorded in ``out`` may be resumed as configured; log what changed.

    Returns the history to record (one entry more after a forced resume over differences).

    Raises
    ------
    RunIdentityError
        The identity differs (or was never recorded) and ``mode`` is not ``"force"``.
    """
    where = f"training.output_dir {out}"
    if record is None:
        if mode != "force":
            raise RunIdentityError(
                f"{where} holds checkpoints but no {IDENTITY_FILE}, so it is unknown what run they "
                "belong to; choose another training.output_dir for a new run, or pass "
                "training.resume=force to continue them"
            )
        log.warning("%s: no %s; continuing its checkpoints as forced", where, IDENTITY_FILE)
        return []
    history = list(record.get("history", []))
    changed = differences(record["identity"], identity)
    if changed and mode != "force":
        shown = "; ".join(changed[:_SHOWN])
        more = f"; and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else ""
        raise RunIdentityError(
            f"{where} holds another training run ({IDENTITY_FILE} differs: {shown}{more}). "
            "Choose another training.output_dir for a new run, or pass training.resume=force to "
            "continue this run's checkpoint with the new settings (e.g. fine-tuning on new data)"
        )
    if changed:
        log.warning(
            "%s: resuming as forced although the run differs: %s. The checkpoint's codec and "
            "weights are kept (the frozen regression network included)",
            where,
            "; ".join(changed),
        )
        history.append(
            {"nimg": nimg, "forced": True, "identity": record["identity"], "differences": changed}
        )
    notices = differences(record.get("settings", {}), settings)
    if notices:
        log.warning("%s: resuming with changed settings: %s", where, "; ".join(notices))
    return history
