"""The generic CorrDiff package layout (Earth2Studio's ``CorrDiff``).

Files: ``regression.mdlus`` and ``diffusion.mdlus`` (PhysicsNeMo networks), ``metadata.json``
(the variables and sampler settings; keys in :data:`METADATA`), ``stats.json``
(``{"input"|"output"|"invariants": {name: {"mean", "std"}}}``), ``output_latlon_grid.nc``
(``lat``/``lon``: 1-D increasing = rectilinear, or 2-D), ``input_latlon_grid.nc`` (optional:
else the metadata's ``latlon_res`` gives a regular grid around the output grid, as
Earth2Studio derives it) and ``invariants.nc`` (optional; all its variables, in file order,
unless ``invariant_variables`` names them). Inputs are interpolated to the output grid and
the invariants appended after them, all normalised with the package's statistics.

How the settings map onto ours: ``sampler_type="stochastic"`` is PhysicsNeMo's
``stochastic_sampler``, EDM's Heun sampler, here run without churn (Earth2Studio passes no
``S_churn``) as ``solver="heun"``; ``"deterministic"`` is ``deterministic_sampler`` with the
metadata's ``solver``. Both samplers clip the sigma range to the residual network's own
``sigma_min``/``sigma_max`` arguments; the defaults are 0.002..800 (stochastic) and
0.002..80 (deterministic). Member ``i`` starts from a generator seeded ``seed + i``
(:func:`member_seeds`).

``inference_mode`` picks the networks (:data:`NETWORKS`): ``"both"`` is mean + residual;
``"regression"`` the mean alone (a regression-only model: members are refused, as they would
all be the mean); ``"diffusion"`` the diffusion network alone, sampling the target itself from
the inputs (a *direct* model, ``edm.objective="direct"``, as the COSMO diffusion variants).
Earth2Studio 0.19 loads both files in every mode and, in ``"diffusion"`` mode, returns the
residual sample without the mean, conditioned on the regression mean when
``hr_mean_conditioning`` is true; without it that is the direct model's sample, which is what
runs here (so ``regression.mdlus`` may be left out); with it the output would be a residual,
not a field, and the package is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import xarray as xr

from corrdiff_xr.model.packages._build import (
    check_bounds,
    check_regular,
    codec_for,
    input_grid,
    invariants_dataset,
    output_grid,
    sampler_for,
)
from corrdiff_xr.model.packages._files import PackageError, PackageFiles

if TYPE_CHECKING:
    import torch

    from corrdiff_xr.codec import Codec
    from corrdiff_xr.model.core import CorrDiff
    from corrdiff_xr.model.mdlus_files import MdlusCheckpoint
    from corrdiff_xr.model.packages.package import Package

__all__ = ["METADATA", "NETWORKS", "detect", "member_seeds", "read"]

_NAMES = "a list of variable names"
#: every key ``metadata.json`` may hold: (kind, default); kind names what is allowed
METADATA: dict[str, tuple[str, Any]] = {
    "input_variables": (_NAMES, None),
    "output_variables": (_NAMES, None),
    "invariant_variables": (_NAMES + " or null", None),
    "number_of_samples": ("a positive integer", 1),
    "number_of_steps": ("a positive integer", 18),
    "solver": ("'euler' or 'heun'", "euler"),
    "sampler_type": ("'stochastic' or 'deterministic'", "stochastic"),
    "inference_mode": ("'both', 'regression' or 'diffusion'", "both"),
    "hr_mean_conditioning": ("true or false", True),
    "seed": ("an integer or null", None),
    "sigma_min": ("a positive number or null", None),
    "sigma_max": ("a positive number or null", None),
    "grid_spacing_tolerance": ("a non-negative number", 1e-5),
    "grid_bounds_margin": ("a non-negative number", 0.0),
    "latlon_res": ("a positive number", None),
}
_CHOICES = {
    "solver": ("euler", "heun"),
    "sampler_type": ("stochastic", "deterministic"),
    "inference_mode": ("both", "regression", "diffusion"),
}
#: ``{(section, name): (mean, std)}`` of ``stats.json``
Stats = dict[tuple[str, str], tuple[float, float]]
FILES = ("regression.mdlus", "diffusion.mdlus", "metadata.json", "stats.json")
#: the network files each ``inference_mode`` runs
NETWORKS = {
    "both": ("regression.mdlus", "diffusion.mdlus"),
    "regression": ("regression.mdlus",),
    "diffusion": ("diffusion.mdlus",),
}


def detect(files: PackageFiles) -> bool:
    """Whether ``files`` look like a generic package (a diffusion-only one may lack
    ``regression.mdlus``)."""
    return "metadata.json" in files and ("regression.mdlus" in files or "diffusion.mdlus" in files)


def member_seeds(seed: int, members: int) -> list[int]:
    """Earth2Studio's generator seed of each member: ``seed + i``."""
    return [int(seed) + i for i in range(members)]


def _number(value: Any, *, integer: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and (not integer or isinstance(value, int))


def _valid(key: str, value: Any) -> bool:
    kind = METADATA[key][0]
    if key in _CHOICES:
        return value in _CHOICES[key]
    if kind.startswith(_NAMES):
        if value is None:
            return kind.endswith("null")
        return (
            isinstance(value, list)
            and all(isinstance(v, str) and v for v in value)
            and len(set(value)) == len(value)
            and (bool(value) or key == "invariant_variables")
        )
    if value is None and kind.endswith("or null"):
        return True
    if kind == "true or false":
        return isinstance(value, bool)
    if "integer" in kind:
        return _number(value, integer=True) and (value > 0 or "positive" not in kind)
    return _number(value) and (value > 0 if "positive" in kind else value >= 0)


def metadata(files: PackageFiles) -> dict[str, Any]:
    """``metadata.json`` checked against :data:`METADATA`, with its defaults filled in."""
    files.require("metadata.json")
    where = files.where("metadata.json")
    raw = files.json("metadata.json")
    if not isinstance(raw, dict):
        raise PackageError(f"{where} must hold a JSON object, not {type(raw).__name__}")
    unknown = sorted(set(raw) - set(METADATA))
    if unknown:
        raise PackageError(
            f"{where} has unknown key(s) {unknown}; known keys are {sorted(METADATA)}"
        )
    for key in ("input_variables", "output_variables"):
        if key not in raw:
            raise PackageError(f"{where} lacks the key {key!r} ({_NAMES})")
    for key, value in raw.items():
        if not _valid(key, value):
            raise PackageError(
                f"{where} key {key!r} must be {METADATA[key][0]} (unique names), not {value!r}"
            )
    return {**{k: default for k, (_, default) in METADATA.items()}, **raw}


def _stats(files: PackageFiles, meta: Mapping[str, Any], invariants: list[str]) -> Stats:
    """``{(section, name): (mean, std)}`` for every listed variable, from ``stats.json``."""
    files.require("stats.json")
    where = files.where("stats.json")
    raw = files.json("stats.json")
    wanted = {
        "input": meta["input_variables"],
        "output": meta["output_variables"],
        "invariants": invariants,
    }
    out = {}
    for section, names in wanted.items():
        block = raw.get(section) if isinstance(raw, dict) else None
        for name in names:
            entry = block.get(name) if isinstance(block, dict) else None
            values: list[Any] = [  # JSON values
                entry.get(k) if isinstance(entry, dict) else None for k in ("mean", "std")
            ]
            if not all(_number(v) for v in values):
                raise PackageError(
                    f"{where} has no usable {section}.{name} (need {{'mean': number, 'std': "
                    f"number}}; found {entry!r})"
                )
            out[section, name] = (float(values[0]), float(values[1]))
    return out


def _grids(files: PackageFiles, meta: Mapping[str, Any]) -> tuple[xr.Dataset, xr.Dataset]:
    files.require("output_latlon_grid.nc")
    out = output_grid(files, "output_latlon_grid.nc")
    if "input_latlon_grid.nc" in files:
        coarse = input_grid(files, "input_latlon_grid.nc")
    elif meta["latlon_res"] is not None:
        coarse = _inferred_input_grid(out, float(meta["latlon_res"]))
    else:
        raise PackageError(
            f"{files.source} has no input_latlon_grid.nc and metadata.json has no 'latlon_res': "
            "one of them must give the input grid"
        )
    check_regular(coarse, meta["grid_spacing_tolerance"], files.where("input_latlon_grid.nc"))
    check_bounds(coarse, out, meta["grid_bounds_margin"], files.source)
    return coarse, out


def _inferred_input_grid(out: xr.Dataset, res: float) -> xr.Dataset:
    """Earth2Studio's input grid for ``latlon_res``: whole multiples of ``res`` one step past
    the output grid on every side (torch's ``arange``, so the points are the same)."""
    import torch

    axes = {}
    for name in ("lat", "lon"):
        values = torch.as_tensor(out[name].values)
        lo = (torch.floor(values.min() / res) - 1) * res
        hi = (torch.ceil(values.max() / res) + 1) * res
        # torch's stub lacks 0-dim tensor bounds, which arange takes (and infers dtype from)
        axes[name] = (name, torch.arange(lo, hi + res, res).numpy())  # type: ignore[call-overload]
    return xr.Dataset(coords=axes)


def _invariant_names(files: PackageFiles, meta: Mapping[str, Any]) -> tuple[list[str], Any]:
    listed = meta["invariant_variables"]
    if "invariants.nc" not in files:
        if listed:
            files.require("invariants.nc", f" but metadata.json invariant_variables lists {listed}")
        return [], None
    ds = files.netcdf("invariants.nc")
    names = [str(n) for n in ds.data_vars] if listed is None else list(listed)
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise PackageError(
            f"{files.where('invariants.nc')} lacks {missing} listed in metadata.json "
            f"invariant_variables; it holds {list(ds.data_vars)}"
        )
    return names, ds


def _check_channels(
    files: PackageFiles,
    regression: MdlusCheckpoint | None,
    residual: MdlusCheckpoint | None,
    codec: Codec,
    hr_mean: bool,
) -> None:
    """The networks' channel counts against metadata.json's variables, named on failure."""
    from corrdiff_xr.model.mdlus import _regression_part, _residual_part

    n_in, n_out = len(codec.in_channels), len(codec.out_channels)
    variables = f"{len(codec.inputs)} input_variables + {len(codec.static)} invariant_variables"
    checks = []
    if regression is not None:
        _, reg_in, reg_out, *_ = _regression_part(regression)
        checks += [
            ("regression.mdlus takes", reg_in, n_in, variables),
            ("regression.mdlus gives", reg_out, n_out, "output_variables"),
        ]
    if residual is not None:
        _, _, cond, res_out, *_ = _residual_part(residual)
        mean = f" + {n_out} output_variables" if hr_mean else ""
        checks += [
            ("diffusion.mdlus gives", res_out, n_out, "output_variables"),
            ("diffusion.mdlus is conditioned on", cond, n_in + (n_out if hr_mean else 0),
             f"{variables}{mean} (hr_mean_conditioning={hr_mean})"),
        ]  # fmt: skip
    for what, got, want, given in checks:
        if got != want:
            raise PackageError(
                f"{files.source}: {what} {got} channels but metadata.json gives {want} ({given})"
            )


def _networks(
    files: PackageFiles, meta: Mapping[str, Any]
) -> tuple[MdlusCheckpoint | None, MdlusCheckpoint | None]:
    """The (regression, diffusion) checkpoints ``inference_mode`` runs (None: not run)."""
    mode = meta["inference_mode"]
    if mode == "diffusion" and meta["hr_mean_conditioning"]:
        raise PackageError(
            f"{files.where('metadata.json')} inference_mode 'diffusion' with "
            "hr_mean_conditioning true would output a residual conditioned on the regression "
            "mean, not a field; a diffusion-only package sets hr_mean_conditioning false"
        )
    for name in NETWORKS[mode]:
        files.require(name, f" (metadata.json inference_mode {mode!r} runs it)")
    regression, residual = (
        files.mdlus(name) if name in NETWORKS[mode] else None
        for name in ("regression.mdlus", "diffusion.mdlus")
    )
    return regression, residual


def _direct_model(residual: MdlusCheckpoint, codec: Codec) -> CorrDiff:
    """A diffusion-only package's network as a direct model (no regression, zero mean)."""
    from corrdiff_xr.config import EDMConfig
    from corrdiff_xr.model.core import CorrDiff
    from corrdiff_xr.model.mdlus import _residual_part
    from corrdiff_xr.model.mdlus_files import build_and_load

    cfg, edm, _, _, shape, weights = _residual_part(residual)
    direct = EDMConfig(
        sigma_data=edm.sigma_data,
        scale_condition=edm.scale_condition,
        hr_mean_conditioning=False,
        objective="direct",
    )
    return build_and_load(
        lambda: CorrDiff(
            codec, img_shape=shape, regression_network=None, residual_network=cfg, edm=direct
        ),
        weights,
        pad_latent=0,
        keep_regression=False,
        source=residual.source,
    )


def read(files: PackageFiles, *, map_location: str | torch.device = "cpu") -> Package:
    """The :class:`~corrdiff_xr.model.packages.Package` in ``files`` (generic layout)."""
    from corrdiff_xr.model.mdlus import import_mdlus
    from corrdiff_xr.model.packages.package import Package

    for name in ("metadata.json", "stats.json"):
        files.require(name)
    meta = metadata(files)
    coarse, fine = _grids(files, meta)
    invariant_names, inv_file = _invariant_names(files, meta)
    stats = _stats(files, meta, invariant_names)
    units = {
        n: str(inv_file[n].attrs["units"]) for n in invariant_names if "units" in inv_file[n].attrs
    }
    codec, input_names = codec_for(
        meta["input_variables"], meta["output_variables"], invariant_names, stats, units
    )
    regression, residual = _networks(files, meta)
    _check_channels(files, regression, residual, codec, meta["hr_mean_conditioning"])
    if regression is None and residual is not None:
        model = _direct_model(residual, codec).eval().to(map_location)
    else:
        model = import_mdlus(
            regression,
            residual,
            codec=codec,
            hr_mean_conditioning=meta["hr_mean_conditioning"],
            map_location=map_location,
        )
    shape = tuple(fine.sizes[d] for d in ("y", "x"))
    if shape != model.img_shape:
        what = "regression.mdlus" if regression is not None else "diffusion.mdlus"
        raise PackageError(
            f"{files.where('output_latlon_grid.nc')} is {shape[0]} x {shape[1]} but the networks "
            f"run on {model.img_shape[0]} x {model.img_shape[1]} (img_resolution in {what})"
        )
    if residual is not None:
        model.sampler_config = sampler_for(
            meta["sampler_type"],
            meta["solver"],
            meta["number_of_steps"],
            (meta["sigma_min"], meta["sigma_max"]),
            residual.args,
        )
    inv = invariants_dataset(inv_file, invariant_names, fine, files.where("invariants.nc"))
    return Package(
        model=model,
        layout="generic",
        source=files.source,
        input_grid=coarse,
        output_grid=fine,
        invariants=inv,
        members=meta["number_of_samples"],
        seed=meta["seed"],
        inference_mode=meta["inference_mode"],
        input_names=input_names,
        metadata=dict(meta),
    )
