"""The checkpoint header: what a safetensors checkpoint says about its model, checked.

A :class:`~corrdiff_xr.model.CorrDiff` checkpoint is one safetensors file whose metadata holds
a JSON header (the codec, the grid shape, the network, EDM and sampler configs, versions)
under :data:`HEADER_KEY`. A header is data from outside: every value's type and size is
checked here (:func:`header_kwargs`) before anything is built, and every failure names the
file and the key.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from corrdiff_xr.config import EDMConfig, NetworkConfig, SamplerConfig, from_dict
from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.model.safety import (
    MAX_HEADER_BYTES,
    CheckpointError,
    check_network,
    count,
    img_shape,
    parse_json,
)

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "HEADER_KEY",
    "SAMPLE_DOMAINS",
    "header_codec",
    "header_kwargs",
    "read_checkpoint_header",
]

CHECKPOINT_FORMAT = "corrdiff_xr.checkpoint"
#: 2 adds the ``target_mask`` tensor, 3 the calibrated ``sampler`` defaults, 4 the
#: ``sample_domain``; a model without any of them is still written as version 1, so that
#: readers of version 1 can load it
CHECKPOINT_VERSION = 4
HEADER_KEY = "corrdiff_xr"
#: where the sampler runs: the output grid, or the padded image of framed networks
#: (:mod:`corrdiff_xr.model.sample_domain`)
SAMPLE_DOMAINS = ("grid", "padded")

_Config = TypeVar("_Config", EDMConfig, NetworkConfig, SamplerConfig)


def header_codec(data: dict[str, Any] | None, *, source: str) -> Codec | None:
    """The codec of a validated header (imported late: it pulls in xarray)."""
    if data is None:
        return None
    from corrdiff_xr.codec import Codec

    try:
        return Codec.from_dict(data)
    except (CorrDiffError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{source}: codec in the header is unusable: {err}") from err


def _check_codec(data: Any, *, source: str) -> tuple[int, int]:
    """Types of a header's codec (names, statistics); returns its (in, out) channel counts."""
    what = f"{source}: codec"
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} must be a JSON object, got {type(data).__name__}")
    names = {}
    for key in ("inputs", "targets", "static", "features"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CheckpointError(
                f"{what}.{key} must be a list of variable names, got {value!r:.200}"
            )
        names[key] = value
    stats = data.get("stats")
    if not isinstance(stats, dict) or not all(
        isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        for v in stats.values()
    ):
        raise CheckpointError(
            f"{what}.stats must map each variable to [mean, std], got {stats!r:.200}"
        )
    c_in = len(names["inputs"]) + len(names["static"]) + len(names["features"])
    c_out = len(names["targets"])
    count(c_in, f"{what}: number of input channels", error=CheckpointError)
    count(c_out, f"{what}: number of output channels", error=CheckpointError)
    return c_in, c_out


def _config(cls: type[_Config], data: Any, *, source: str, key: str) -> _Config:
    """A config dataclass from header data, with errors naming the file and key."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: {key} must be a JSON object, got {data!r:.200}")
    try:
        cfg = from_dict(cls, data, path=key)
    except CorrDiffError as err:
        raise CheckpointError(f"{source}: {err}") from err
    if isinstance(cfg, NetworkConfig):
        check_network(cfg, f"{source}: {key}")
    elif isinstance(cfg, EDMConfig) and not all(
        math.isfinite(v) for v in (cfg.sigma_data, cfg.P_mean, cfg.P_std)
    ):
        raise CheckpointError(
            f"{source}: {key}.sigma_data, P_mean and P_std must be finite, got {data!r:.200}"
        )
    return cfg


def header_kwargs(header: Any, *, source: str) -> dict[str, Any]:
    """:class:`CorrDiff` keyword arguments from a header, every value's type and size checked.

    ``codec`` stays plain data (see :func:`header_codec`); ``in_channels`` / ``out_channels`` are
    always given (from the codec when there is one), which is all a meta build needs.
    """
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{source}: the header must be a JSON object, got {type(header).__name__}"
        )
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{source}: not a corrdiff_xr checkpoint (format={header.get('format')!r:.100})"
        )
    version = count(header.get("format_version", 0), f"{source}: format_version", low=0, high=2**31)
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {version} is newer than this corrdiff_xr "
            f"understands ({CHECKPOINT_VERSION}); upgrade corrdiff_xr"
        )
    missing = sorted({"img_shape", "regression_network", "edm"} - set(header))
    if header.get("codec") is None:
        missing += sorted({"in_channels", "out_channels"} - set(header))
    if missing:
        raise CheckpointError(f"{source}: the header lacks {missing}")
    codec = header.get("codec")
    keys = ("in_channels", "out_channels")
    if codec is not None:
        channels = _check_codec(codec, source=source)
        for key, n in zip(keys, channels):
            if header.get(key, n) != n:
                raise CheckpointError(
                    f"{source}: {key}={header[key]!r:.100} disagrees with the codec's {n}"
                )
    else:
        channels = (count(header[keys[0]], f"{source}: {keys[0]}"),
                    count(header[keys[1]], f"{source}: {keys[1]}"))  # fmt: skip
    res, reg = header.get("residual_network"), header["regression_network"]
    edm = _config(EDMConfig, header["edm"], source=source, key="edm")
    return {
        "codec": codec,
        "img_shape": img_shape(header["img_shape"], f"{source}: img_shape"),
        "regression_network": None  # a direct model has none
        if reg is None and edm.objective == "direct"
        else _config(NetworkConfig, reg, source=source, key="regression_network"),
        "residual_network": None
        if res is None
        else _config(NetworkConfig, res, source=source, key="residual_network"),
        "edm": edm,
        "in_channels": channels[0],
        "out_channels": channels[1],
        "target_mask": _flag(header.get("target_mask", False), f"{source}: target_mask"),
        "sampler": None
        if header.get("sampler") is None
        else _config(SamplerConfig, header["sampler"], source=source, key="sampler"),
        "sample_domain": _choice(header.get("sample_domain", "grid"), SAMPLE_DOMAINS, source),
    }


def _choice(value: Any, choices: tuple[str, ...], source: str) -> str:
    if value not in choices:
        raise CheckpointError(
            f"{source}: sample_domain must be one of {list(choices)}, got {value!r:.100}"
        )
    return str(value)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise CheckpointError(f"{what} must be true or false, got {value!r:.100}")
    return value


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    """Codec, grid shape and configs stored in a checkpoint, read and checked without loading
    weights."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a safetensors checkpoint: {err}") from err
    if HEADER_KEY not in meta:
        raise CheckpointError(f"{path} has no corrdiff_xr header; was it written by CorrDiff.save?")
    header = parse_json(meta[HEADER_KEY].encode(), f"{path}: header", limit=MAX_HEADER_BYTES)
    header_kwargs(header, source=str(path))
    return header
