"""Reading PhysicsNeMo ``.mdlus`` archives and loading checked weights: what every ``.mdlus``
importer shares (:mod:`corrdiff_xr.model.mdlus` for the CorrDiff UNets,
:mod:`corrdiff_xr.model.mdlus_dit` for the DiTs).

:func:`read_mdlus` reads ``args.json``, ``metadata.json`` and ``model.pt`` straight from the
archive within the bounds of :mod:`corrdiff_xr.model.archives` (tensors with
``weights_only=True``); nested modules that ``Module.save`` writes at the top level of
``args.json`` (``__physicsnemo.Module__.model`` ...) are kept in
:attr:`MdlusCheckpoint.modules`. :func:`build_and_load` builds a model once its meta-device
twin fits the weights, then loads them.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import torch

from corrdiff_xr.model import archives
from corrdiff_xr.model.archives import load_torch_weights, member_limit, open_members, read_json
from corrdiff_xr.model.safety import (
    CheckpointError,
    Net,
    build_checked,
    stored_bytes,
    tensor_specs,
)

__all__ = ["MdlusCheckpoint", "MdlusError", "as_checkpoint", "build_and_load", "read_mdlus"]


class MdlusError(CheckpointError):
    """A ``.mdlus`` checkpoint cannot be imported (unknown class, bad weights, unsafe pickle)."""


@dataclass(frozen=True)
class MdlusCheckpoint:
    """Contents of a ``.mdlus`` file: class name, constructor args, metadata, tensors."""

    name: str
    args: dict[str, Any]
    metadata: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    source: str
    modules: dict[str, Any] = field(default_factory=dict)  # nested ``__physicsnemo.Module__.*``


_WANTED = ("args.json", "metadata.json", "model.pt")


def read_mdlus(path: str | os.PathLike, *, file: IO[bytes] | None = None) -> MdlusCheckpoint:
    """Read a ``.mdlus`` archive, or ``file`` (an open seekable one, e.g. a package zip's
    member read in place; ``path`` then names it), without extracting it.

    Members are read within the bounds of :mod:`corrdiff_xr.model.archives`, tensors with
    ``weights_only=True``; every refusal is an :class:`MdlusError` naming the file.
    """
    path = os.fspath(path)
    if file is None and not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with (
        open_members(path, set(_WANTED), error=MdlusError)
        if file is None
        else contextlib.nullcontext(_file_members(file, path))
    ) as files:
        for required in ("args.json", "model.pt"):
            if required not in files:
                raise MdlusError(f"{path} has no {required}; found {sorted(files)}")
        args = read_json(files["args.json"], f"{path}: args.json", error=MdlusError)
        meta = {}
        if "metadata.json" in files:
            meta = read_json(files["metadata.json"], f"{path}: metadata.json", error=MdlusError)
        got = args if isinstance(args, dict) else {}
        name, kwargs = got.get("__name__"), got.get("__args__")
        if not isinstance(name, str) or not isinstance(kwargs, dict):
            raise MdlusError(
                f"{path}: args.json needs a class name in __name__ and an __args__ object "
                f"(it holds {sorted(got) if got else type(args).__name__})"
            )
        sd = load_torch_weights(files["model.pt"], source=path, error=MdlusError)
    nested = {k: v for k, v in got.items() if k.startswith("__physicsnemo.Module__.")}
    meta = meta if isinstance(meta, dict) else {}
    return MdlusCheckpoint(name, dict(kwargs), meta, sd, path, nested)


def _file_members(raw: IO[bytes], source: str) -> dict[str, IO[bytes]]:
    """What :func:`~corrdiff_xr.model.archives.open_members` yields, for an open file."""
    limit = member_limit(raw.seek(0, 2))
    raw.seek(0)
    try:
        tar = archives._open_tar(raw, limit, source=source, error=MdlusError)
        if tar is not None:
            found = archives._tar_members(tar, set(_WANTED), limit, source=source, error=MdlusError)
        elif zipfile.is_zipfile(raw):
            found = archives._zip_members(raw, set(_WANTED), limit, source=source, error=MdlusError)
        else:
            raise MdlusError(f"{source} is neither a zip nor a tar archive (or is truncated)")
    except archives._BROKEN as err:
        raise MdlusError(f"{source}: the archive is truncated or corrupt: {err}") from err
    return found


#: the regression's first layer that latent channels are padded into (SongUNet, DiT)
_FIRST_LAYERS = ("regression.net.enc.L0_conv.weight", "regression.net.patch_embed.weight")


def as_checkpoint(source: str | os.PathLike[str] | MdlusCheckpoint) -> MdlusCheckpoint:
    """``source`` if it is a :class:`MdlusCheckpoint`, else the file it names, read."""
    return source if isinstance(source, MdlusCheckpoint) else read_mdlus(source)


def build_and_load(
    make: Callable[[], Net],
    weights: dict[str, torch.Tensor],
    *,
    pad_latent: int,
    keep_regression: bool,
    source: str,
) -> Net:
    """The model ``make()`` builds, once its meta-device twin fits ``weights``, loaded.

    ``pad_latent`` zero input channels are prepended to the first convolution (condition-only
    reference networks); ``keep_regression`` keeps the fresh regression when none was given.
    """
    from corrdiff_xr.model.core import load_weights

    found = tensor_specs(weights)
    latent = next((k for k in _FIRST_LAYERS if k in found), None)
    if pad_latent and latent in found and len(found[latent][0]) == 4:
        # checked as padded, padded only once it passed (its shape comes from the file)
        (o, i, *k), dtype = found[latent]
        found[latent] = ((o, i + pad_latent, *k), dtype)
    model = build_checked(
        make,
        found,
        available_bytes=stored_bytes(weights),
        source=source,
        optional_prefix="regression." if keep_regression else None,
        error=MdlusError,
    )
    if keep_regression:
        own = model.state_dict()
        weights.update({k: v for k, v in own.items() if k.startswith("regression.")})
    if pad_latent and latent in weights:
        w = weights[latent]
        weights[latent] = torch.cat([w.new_zeros(w.shape[0], pad_latent, *w.shape[2:]), w], dim=1)
    load_weights(model, weights, source=source)
    return model
