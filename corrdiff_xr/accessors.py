"""The ``.corrdiff`` accessor on xarray Datasets and DataArrays: forwarding only.

An accessor holds nothing but the wrapped object (its state would not survive ``ds[var]`` or
arithmetic); each method forwards to the library function named in its docstring, importing
heavy modules (torch, dask.distributed, matplotlib) only when called. The scoring methods are
shared: ``ds.corrdiff.crps(truth)`` and ``ds["t2m"].corrdiff.crps(truth["t2m"])`` call the same
:mod:`corrdiff_xr.scoring` function, which returns a Dataset or a DataArray like its input.
Data, downscaling and plotting work on whole Datasets only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import xarray as xr

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from corrdiff_xr.data import DownscalingData
    from corrdiff_xr.inference.packages import ModelLike

__all__ = ["CorrDiffAccessor", "CorrDiffArrayAccessor"]

Data = TypeVar("Data", xr.Dataset, xr.DataArray)


class _Scoring(Generic[Data]):
    """Scoring methods of both accessors (``self`` is the forecast/ensemble)."""

    def __init__(self, obj: Data):
        self._obj: Data = obj

    def crps(self, truth: Data, **kwargs: Any) -> Data:
        """Continuous ranked probability score; see ``scoring.crps``."""
        from corrdiff_xr.scoring import crps

        # a Dataset or a DataArray like its input
        return cast(Data, crps(self._obj, truth, **kwargs))

    def mae(self, truth: Data, **kwargs: Any) -> Data:
        """Mean absolute error of the ensemble mean; see ``scoring.mae``."""
        from corrdiff_xr.scoring import mae

        return cast(Data, mae(self._obj, truth, **kwargs))

    def rmse(self, truth: Data, **kwargs: Any) -> Data:
        """Root-mean-square error of the ensemble mean; see ``scoring.rmse``."""
        from corrdiff_xr.scoring import rmse

        return cast(Data, rmse(self._obj, truth, **kwargs))

    def spread(self, **kwargs: Any) -> Data:
        """Ensemble spread (standard deviation); see ``scoring.spread``."""
        from corrdiff_xr.scoring import spread

        return cast(Data, spread(self._obj, **kwargs))

    def spread_skill(self, truth: Data, **kwargs: Any) -> Data:
        """Spread-skill ratio with the sqrt(1 + 1/n) correction; see ``scoring.spread_skill``."""
        from corrdiff_xr.scoring import spread_skill

        return cast(Data, spread_skill(self._obj, truth, **kwargs))

    def rank_histogram(self, truth: Data, **kwargs: Any) -> Data:
        """Rank histogram of truth within the ensemble; see ``scoring.rank_histogram``."""
        from corrdiff_xr.scoring import rank_histogram

        return cast(Data, rank_histogram(self._obj, truth, **kwargs))

    def score(self, metric: str, truth: Data | None = None, **kwargs: Any) -> Data:
        """Any metric of ``scoring.METRIC_TABLE`` by name (``"fss"``, ``"brier"``, ...), with
        its options as keywords; e.g. ``ds.corrdiff.score("fss", truth, windows=[1, 9])``."""
        from corrdiff_xr.scoring import METRIC_TABLE

        if metric not in METRIC_TABLE:
            raise ValueError(f"unknown metric {metric!r}; choose from {list(METRIC_TABLE)}")
        return cast(Data, METRIC_TABLE[metric](self._obj, truth, **kwargs))

    def summary(self, truth: Data, **kwargs: Any) -> xr.Dataset:
        """Tidy (metric, variable, time) table of scores; see ``scoring.summary``."""
        from corrdiff_xr.scoring import summary

        return summary(self._obj, truth, **kwargs)

    def power_spectrum(self, **kwargs: Any) -> Data:
        """Radially averaged power spectrum; see ``scoring.power_spectrum``."""
        from corrdiff_xr.scoring import power_spectrum

        return cast(Data, power_spectrum(self._obj, **kwargs))


@xr.register_dataarray_accessor("corrdiff")
class CorrDiffArrayAccessor(_Scoring[xr.DataArray]):
    """``da.corrdiff.*``: scoring of one variable's ensemble (``crps``, ``rmse``, ...)."""


@xr.register_dataset_accessor("corrdiff")
class CorrDiffAccessor(_Scoring[xr.Dataset]):
    """``ds.corrdiff.*``: downscaling, validation, scoring and plotting of a Dataset."""

    # -- data ------------------------------------------------------------------------------
    def pair(self, **kwargs: Any) -> DownscalingData:
        """Validated lazy :class:`~corrdiff_xr.data.DownscalingData`; see ``data.open_pair``."""
        from corrdiff_xr.data import open_pair

        return open_pair(self._obj, **kwargs)

    def validate(self, **kwargs: Any) -> xr.Dataset:
        """Check the canonical layout, raising a clear error; see ``data.validate``."""
        from corrdiff_xr.data import validate

        return validate(self._obj, **kwargs)

    # -- inference -------------------------------------------------------------------------
    def downscale(self, model: ModelLike, **kwargs: Any) -> xr.Dataset:
        """Lazy CorrDiff ensemble on the fine grid; see ``inference.downscale``.

        ``model`` is a loaded ``CorrDiff``, a checkpoint path, or a published CorrDiff package
        (``model.open_package``; then ``self`` is the coarse archive, put on the package's
        grids by ``Package.pair``). Keywords: ``members``,
        ``seed``, ``output`` (``"ensemble"``, ``"mean"``, ``"residual"``), ``sampler``,
        ``steps``, ``patch``, ``overlap``, ``batch_size``, ``device``, ``chunks``. Returns at
        once a dask-backed Dataset with dims ``(member, time, y, x)``; each member depends only
        on (seed, time, member) and the settings (``batch_size`` members share a network call,
        which moves float rounding), never on chunking or workers. Write it with ``.to_zarr()``.
        """
        from corrdiff_xr.inference import downscale

        return downscale(self._obj, model, **kwargs)

    # -- presentation ----------------------------------------------------------------------
    def plot(self, kind: str = "maps", **kwargs: Any) -> Figure:
        """Figure of this ensemble, any of ``plot.KINDS`` (``maps``, ``spectra``,
        ``reliability``, ``fss`` ...); pass ``truth=``/``inputs=``/``times=`` to add panels
        and ``path=`` to save a PNG; see ``plot.plot``."""
        from corrdiff_xr import plot

        return plot.plot(self._obj, kind, **kwargs)
