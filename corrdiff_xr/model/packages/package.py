"""An opened CorrDiff package: the model and the grids, fields and settings around it.

:class:`Package` is what :func:`~corrdiff_xr.model.packages.open_package` returns for every
layout. Its :attr:`~Package.model` is an ordinary :class:`~corrdiff_xr.model.CorrDiff` whose
codec names the package's variables (inputs, then invariants as static fields, then outputs)
with the package's statistics; :meth:`Package.pair` puts a user's coarse archive on the
package's own grids, so ``downscale``, ``generate`` and ``calibrate`` treat a package like a
checkpoint trained here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import xarray as xr

    from corrdiff_xr.codec import Codec
    from corrdiff_xr.config import SamplerConfig
    from corrdiff_xr.data import DownscalingData
    from corrdiff_xr.model.core import CorrDiff

__all__ = ["Package"]


@dataclass(frozen=True, eq=False)
class Package:
    """A published (or exported) CorrDiff package, opened.

    Attributes
    ----------
    model
        The networks, codec (package variable names and statistics) and, as its sampler
        defaults, the package's solver, steps and sigma range.
    layout
        Which layout it was read as (a key of ``LAYOUTS``: ``"generic"``, ``"taiwan"`` ...).
    source
        Where it was read from (credentials redacted).
    input_grid
        The package's coarse grid: coordinates ``lat``/``lon``, 1-D (regular, increasing) or
        2-D on ``(y_coarse, x_coarse)``.
    output_grid
        The fine grid the networks run on: 2-D ``lat(y, x)``/``lon(y, x)``, 1-D ``y``/``x``.
    invariants
        Fields ``(y, x)`` on ``output_grid``, named as ``model.codec.static``.
    members
        The package's default ensemble size (``number_of_samples``).
    seed
        The package's seed, or None.
    inference_mode
        ``"both"`` (mean + residual), ``"regression"`` (the mean only: :attr:`model` has no
        residual network) or ``"diffusion"`` (the target sampled directly: :attr:`model` is a
        direct model, ``edm.objective="direct"``).
    name_map
        Default ``{package name: archive selector}`` (see :mod:`corrdiff_xr.data.names`).
    input_names
        ``{codec input name: package input name}`` for every input. They differ where a
        package input shares its name with an output or invariant (``t2m`` in and out): the
        codec's input is then ``t2m_coarse``, as the canonical layout names inputs.
    metadata
        The package's own description (provenance only).
    pair_with
        The layout's own ``pair(package, coarse, *, name_map, regrid, truth, **options)``
        where its inputs are prepared otherwise than :func:`~corrdiff_xr.data.package_pair.
        package_pair` does (None: that function).
    """

    model: CorrDiff
    layout: str
    source: str
    input_grid: xr.Dataset
    output_grid: xr.Dataset
    invariants: xr.Dataset
    members: int = 1
    seed: int | None = None
    inference_mode: str = "both"
    name_map: Mapping[str, Any] = field(default_factory=dict)
    input_names: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    pair_with: Callable[..., DownscalingData] | None = None

    @property
    def sampler(self) -> SamplerConfig | None:
        """The package's sampler defaults (also the model's)."""
        return self.model.sampler_config

    @property
    def codec(self) -> Codec:
        """The model's codec: the package's variable names and statistics."""
        if self.model.codec is None:
            raise ValueError(f"the package {self.source} has a model without a codec")
        return self.model.codec

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.codec.inputs

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.codec.targets

    def pair(
        self,
        coarse: xr.Dataset,
        *,
        name_map: Mapping[str, Any] | None = None,
        regrid: str | None = None,
        truth: xr.Dataset | None = None,
        **layout_options: Any,
    ) -> DownscalingData:
        """``coarse`` (a user's archive, native names and grid) on the package's grids.

        The package's inputs are found in ``coarse`` through ``name_map`` (merged over the
        package's default map), taken at the package's input grid points (``regrid=
        "bilinear"`` interpolates an archive that lacks them), and paired with the output
        grid and the invariants; statistics are the package's. ``truth``: km-scale fields of
        the package's outputs on its output grid, which become the pair's targets (for
        ``calibrate`` and scoring). Lazy: no array is read. A layout that prepares its inputs
        otherwise (:attr:`pair_with`, e.g. the CMIP6 one's time windows) does it, and takes
        ``layout_options`` (``lead_times=`` for CMIP6).
        """
        from corrdiff_xr.data.package_pair import package_pair

        if self.pair_with is not None:
            options = {"name_map": {**self.name_map, **(name_map or {})}, "regrid": regrid}
            return self.pair_with(self, coarse, **options, truth=truth, **layout_options)
        if layout_options:
            raise TypeError(
                f"the {self.layout} package's pair takes no options {sorted(layout_options)}"
            )

        return package_pair(
            coarse,
            codec=self.codec,
            input_grid=self.input_grid,
            output_grid=self.output_grid,
            invariants=self.invariants,
            name_map={**self.name_map, **(name_map or {})},
            regrid=regrid,
            input_names=self.input_names,
            truth=truth,
        )
