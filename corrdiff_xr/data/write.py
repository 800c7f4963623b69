"""The one atomic Dataset writer: a whole Dataset to a new Zarr store or NetCDF file.

:func:`write_dataset` builds the output at a hidden sibling path and renames it onto the
destination only once complete (:func:`corrdiff_xr._atomic.atomic_path`), so a failure (bad
chunk, full disk, interrupt) leaves the destination as it was. The output carries the
product marker ``kind`` (:data:`corrdiff_xr._outputs.PRODUCT_ATTR`), and an existing
destination is replaced only when it is a ``kind`` product and ``overwrite`` is True
(:func:`corrdiff_xr._outputs.check_output`); a new one is renamed in only if the destination
is still absent then, so a result another run finished meanwhile is kept. Streaming,
resumable block writes of lazy downscaled ensembles are
:func:`corrdiff_xr.inference.write_zarr`'s job.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import xarray as xr

from corrdiff_xr._atomic import TargetExistsError, atomic_path

__all__ = ["NETCDF_SUFFIXES", "is_netcdf", "write_dataset"]

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")


def is_netcdf(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a NetCDF file (by suffix) rather than a Zarr store."""
    return str(path).lower().endswith(NETCDF_SUFFIXES)


def write_dataset(
    ds: xr.Dataset,
    dest: str | os.PathLike,
    *,
    kind: str,
    overwrite: bool = False,
    stats: xr.Dataset | None = None,
    what: str = "destination",
) -> Path:
    """Write ``ds`` to ``dest`` atomically: ``.nc`` -> NetCDF, anything else -> Zarr.

    Parameters
    ----------
    ds
        The Dataset (lazy or in memory); a NetCDF output is built in memory first, so only
        small results (score tables) should go there.
    dest
        Local path of the store or file.
    kind
        Product marker written into the output's global attributes.
    overwrite
        Replace an earlier ``kind`` output at ``dest`` (never anything else).
    stats
        Normalisation statistics written to the Zarr group ``stats`` (Zarr only).
    what
        How error messages call ``dest`` (``"--out"``, ``"score output"`` ...).

    Raises
    ------
    OutputExistsError
        ``dest`` exists and may not be replaced.
    """
    from corrdiff_xr._outputs import PRODUCT_ATTR, check_output
    from corrdiff_xr.errors import OutputExistsError

    dest = Path(dest).expanduser().absolute()
    earlier = check_output(dest, kind=kind, overwrite=overwrite, what=what)
    ds = ds.assign_attrs({PRODUCT_ATTR: kind})
    try:
        _write(ds, dest, stats, replace=earlier)
    except TargetExistsError:
        raise OutputExistsError(
            f"{what} {dest} appeared while this run wrote it (another run's result?); it is "
            "kept and nothing was written (choose another path, or pass --overwrite)"
        ) from None
    return dest


def _write(ds: xr.Dataset, dest: Path, stats: xr.Dataset | None, *, replace: bool) -> None:
    # replace=False: renamed in only if dest is still absent, so a concurrent result stays
    with atomic_path(dest, replace=replace) as staged:
        if is_netcdf(dest):
            if stats is not None:
                raise ValueError("statistics are written to Zarr stores only")
            # built in memory so a failed write is an OSError naming its cause; the NetCDF
            # library reports a full disk as "HDF error"
            staged.write_bytes(bytes(ds.to_netcdf(engine="netcdf4")))
            return
        # fixed-width unicode has no Zarr v3 spec yet; variable-length strings do
        labels = {k: v.astype(object) for k, v in ds.variables.items() if v.dtype.kind == "U"}
        with warnings.catch_warnings():
            # consolidated metadata is a zarr-python extension to v3; it saves remote reads
            warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
            ds.assign_coords(labels).to_zarr(staged, mode="w", consolidated=True)
        if stats is not None:
            from corrdiff_xr.data.stats import write_stats

            write_stats(staged, stats)
