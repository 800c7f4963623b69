"""Published CorrDiff packages where a checkpoint is expected.

:func:`resolve` lets :func:`~corrdiff_xr.inference.downscale` (and so the accessor,
``generate`` and ``calibrate``) take a package like a checkpoint trained here: a
:class:`~corrdiff_xr.model.packages.package.Package`, or the path of one (a directory or a zip;
a checkpoint of ours is one safetensors file), becomes its model, and data that is not yet
paired is put on the package's grids by :meth:`Package.pair
<corrdiff_xr.model.packages.package.Package.pair>`.
"""

from __future__ import annotations

import os
import zipfile
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import xarray as xr

    from corrdiff_xr.data import DownscalingData
    from corrdiff_xr.model import CorrDiff
    from corrdiff_xr.model.packages.package import Package

__all__ = ["DataLike", "ModelLike", "is_package_path", "resolve"]

#: what ``downscale`` samples with: a loaded model, a package, or the path of either
ModelLike: TypeAlias = "CorrDiff | Package | str | os.PathLike[str]"
#: what ``downscale`` reads: a canonical Dataset (or a package's coarse archive), or a pair
DataLike: TypeAlias = "xr.Dataset | DownscalingData"


def is_package_path(path: object) -> bool:
    """Whether ``path`` names a package (a directory or a zip) rather than a checkpoint file."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    path = os.fspath(path)
    if "://" in path:  # checkpoints are local files; a URL can only be a package
        return True
    return os.path.isdir(path) or (os.path.isfile(path) and zipfile.is_zipfile(path))


def resolve(
    model: ModelLike, data: DataLike
) -> tuple[CorrDiff | str | os.PathLike[str], DataLike, str | None]:
    """``(model, data, source)``: a package replaced by its model, the data put on its grids
    and the package's source (None for a checkpoint)."""
    if isinstance(model, (str, os.PathLike)) and is_package_path(model):
        from corrdiff_xr.model.packages import open_package

        model = open_package(model)
    from corrdiff_xr.model.packages.package import Package

    if not isinstance(model, Package):
        return model, data, None
    from corrdiff_xr.data import DownscalingData

    if not isinstance(data, DownscalingData):
        data = model.pair(data)
    return model.model, data, model.source
