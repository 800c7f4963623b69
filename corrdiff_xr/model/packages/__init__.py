"""Published CorrDiff packages, opened as models that run here.

:func:`open_package` reads a package (a directory, a zip, or an fsspec URL to either) into a
:class:`Package`: an ordinary :class:`~corrdiff_xr.model.CorrDiff` (its networks through the
safe ``.mdlus`` importer, nothing unpickled; its codec the package's variables and statistics;
its sampler defaults the package's) with the package's grids, invariants and settings.

Each layout is one module in :data:`LAYOUTS` with ``detect(files) -> bool``,
``read(files, *, map_location) -> Package`` and ``member_seeds(seed, members) -> list[int]``
(how the publisher's code seeds member ``i``), and ``VARIANTS`` where one package holds several
models (CorrDiff COSMO-ERA5: ``"rea6/mean"`` ...; ``open_package(variant=...)`` picks one, its
``read`` takes ``variant``); a new layout is one file and one entry here.
Layouts are tried in order, the most specific first. :func:`export_package`
(:mod:`~corrdiff_xr.model.packages.export`) writes a model trained here as a generic package.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from corrdiff_xr.model.packages import cmip6, cosmo, generic, hrrr, taiwan
from corrdiff_xr.model.packages._files import PackageError, PackageFiles, open_files
from corrdiff_xr.model.packages.export import ExportError, export_package
from corrdiff_xr.model.packages.package import Package

if TYPE_CHECKING:
    import torch

__all__ = [
    "LAYOUTS",
    "ExportError",
    "Package",
    "PackageError",
    "PackageFiles",
    "export_package",
    "member_seeds",
    "open_package",
]

#: layout name -> module (``detect``, ``read``, ``member_seeds``), most specific first
LAYOUTS: dict[str, ModuleType] = {
    "taiwan": taiwan,
    "cosmo": cosmo,
    "hrrr": hrrr,
    "cmip6": cmip6,
    "generic": generic,
}


def open_package(
    source: str | os.PathLike,
    *,
    storage_options: Mapping[str, Any] | None = None,
    layout: str | None = None,
    map_location: str | torch.device = "cpu",
    variant: str | None = None,
) -> Package:
    """Open a published CorrDiff package.

    Parameters
    ----------
    source : str or path
        A package directory or zip, as a path or an fsspec URL (``memory://``, ``s3://`` ...).
    storage_options : mapping, optional
        fsspec options for ``source``.
    layout : str, optional
        A key of :data:`LAYOUTS`; detected from the files when omitted.
    map_location : str or torch.device
        Device of the model.
    variant : str, optional
        Which model of a package that holds several (a layout's ``VARIANTS``, e.g. CorrDiff
        COSMO-ERA5's ``"rea2/diffusion"``); the layout's default when omitted.

    Returns
    -------
    Package

    Raises
    ------
    PackageError
        One line naming the file and key that are missing or do not fit.
    """
    if layout is not None and layout not in LAYOUTS:
        raise PackageError(f"unknown package layout {layout!r}; known: {sorted(LAYOUTS)}")
    with open_files(source, storage_options) as files:
        if layout is None:
            layout = next((k for k, m in LAYOUTS.items() if m.detect(files)), None)
            if layout is None:
                raise PackageError(
                    f"{files.source} is not a CorrDiff package of a known layout "
                    f"({sorted(LAYOUTS)}): a generic one holds metadata.json and "
                    "regression.mdlus or diffusion.mdlus, NGC's Taiwan one "
                    "corrdiff_inference_package/"
                )
        choices = getattr(LAYOUTS[layout], "VARIANTS", ())
        if variant is not None and variant not in choices:
            raise PackageError(
                f"variant {variant!r} is not one of the {layout} layout's {list(choices)}"
            )
        options = {"variant": variant} if variant is not None else {}
        return LAYOUTS[layout].read(files, map_location=map_location, **options)


def member_seeds(
    package: Package, members: int | None = None, seed: int | None = None
) -> list[int]:
    """The seeds the package's own code (Earth2Studio) gives members ``range(members)``
    (default ``package.members``) from ``seed`` (default ``package.seed``); one generator each
    (:func:`corrdiff_xr.sampling.make_generators`) reproduces its latents."""
    seed = package.seed if seed is None else seed
    if seed is None:
        raise ValueError(f"the package {package.source} has no seed; give one")
    count = package.members if members is None else members
    return LAYOUTS[package.layout].member_seeds(seed, count)
