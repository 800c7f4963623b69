"""NVIDIA's CorrDiff COSMO-ERA5 package (``nvidia/corrdiff-cosmo-era5``; Earth2Studio 0.19's
``CorrDiffCosmoEra5``): ERA5 downscaled onto the rotated-pole COSMO-REA6 / REA2 grids.

One package holds four models: a folder per resolution (``rea6/``, ``rea2/``), each with
``metadata.json`` (:mod:`~corrdiff_xr.model.packages.cosmo_meta`), ``stats.json``
(``{"era5" | <the mode's stats section>: {name: {"mean", "std"}}}``), ``grids.nc``
(``lat_input``/``lon_input``: the 1-D regular ERA5 grid; ``lat_output``/``lon_output``: the
2-D native target grid), the invariants and a PhysicsNeMo ``.mdlus`` per mode. ``variant``
picks one (:data:`VARIANTS`, default ``"rea6/mean"`` as Earth2Studio's); it becomes an
ordinary :class:`~corrdiff_xr.model.CorrDiff`:

* ``mean``: the bare ``DiT`` (run at noise level 0 on the conditioning alone) as a
  regression-only model; ``diffusion``: ``EDMPreconditioner(ConcatConditionWrapper(DiT))``
  as a *direct* model (``edm.objective: direct``): it samples the target itself, not a
  residual of the mean. Both through the safe DiT importer
  (:func:`~corrdiff_xr.model.mdlus_dit.import_dit_mdlus`); the sampler defaults are the
  metadata's (EDM Heun or Euler, Karras schedule, ``number_of_steps``), and member ``i``
  starts from a generator seeded ``seed + i`` (:func:`member_seeds`).
* The network's conditioning is ``ERA5 | pre invariants | cos_zenith | post invariants``,
  where the pre invariants hold ``sin_lat, cos_lat, sin_lon, cos_lon`` (computed from the
  output grid, as Earth2Studio does, not read) and the stored fields; ``cos_zenith`` is the
  larger cosine of the solar zenith angle of the valid time and the hour before (the time
  feature ``cos_zenith_max_1h``, unnormalised). Our codec's order is ``inputs | static |
  features``, so where post invariants exist the network is imported with the columns of its
  patch embedding (its one linear map over input channels) permuted to the codec's order:
  a fixed permutation of its input, computed once, exact. The published DiTs have no
  learned positions (rotary ones with NATTEN) and were built for a training crop; Earth2Studio
  runs them on the whole native grid by rebinding their latent grid, and here they are
  imported for that grid (``input_size``), which no weight depends on.
* Invariants: the ``invariants`` metadata names an extended file of physical fields with
  ``lat``/``lon``; the native grid is its window at ``native_offset`` of ``native_shape``, and a
  ``<name>_norm`` channel is ``<name>`` z-scored with ``norm_stats_file``'s ``channels``
  (``zscore`` with ``mean``/``std``; ``identity`` otherwise), here the codec's statistics of a
  static field ``<name>`` kept in physical units. Without that entry ``invariants.nc`` holds the
  channels normalised already.
* Outputs: the mode's statistics; ``channel_transforms`` as codec transforms (for modes whose
  outputs are transformed), ``constraints`` bounds and the transforms' clamps as codec bounds,
  the solar gate as codec gates (:class:`~corrdiff_xr.transforms.Gate`), all applied on
  decoding in that order, as Earth2Studio's ``postprocess_output``. Outputs keep the package's
  COSMO names and units; Earth2Studio relabels them through its ``CosmoLexicon`` (``CLCT`` in
  % becomes ``tcc`` as a fraction).

Earth2Studio also offers sub-domains (``set_domain``, down to ``patch_size *
attn_kernel_size`` cells a side, kept in :attr:`Package.metadata`) and derived hub-height
winds; those are not offered here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from corrdiff_xr.model.packages._build import coarse_grid, fine_grid
from corrdiff_xr.model.packages._files import PackageError, PackageFiles

if TYPE_CHECKING:
    import torch

    from corrdiff_xr.codec import Codec
    from corrdiff_xr.model.packages.package import Package
from corrdiff_xr.model.packages.cosmo_meta import (
    COS_ZENITH,
    COS_ZENITH_FEATURE,
    MODES,
    POSITION_CHANNELS,
    RESOLUTIONS,
    CosmoSettings,
    cosmo_settings,
)

__all__ = [
    "DEFAULT_VARIANT",
    "VARIANTS",
    "detect",
    "member_seeds",
    "network_order",
    "position_channels",
    "read",
]

#: ``"<resolution>/<mode>"`` of every model a package can hold
VARIANTS = tuple(f"{r}/{m}" for r in RESOLUTIONS for m in MODES)
DEFAULT_VARIANT = "rea6/mean"
_EMBEDDING = "tokenizer.x_embedder.proj.weight"


def detect(files: PackageFiles) -> bool:
    """A ``rea6/`` or ``rea2/`` folder with its ``metadata.json``."""
    return any(f"{r}/metadata.json" in files for r in RESOLUTIONS)


def member_seeds(seed: int, members: int) -> list[int]:
    """Earth2Studio's generator seed of each member: ``seed + i``."""
    return [int(seed) + i for i in range(members)]


def position_channels(lat: np.ndarray, lon: np.ndarray) -> dict[str, np.ndarray]:
    """``sin_lat, cos_lat, sin_lon, cos_lon`` of a grid in degrees, float32 as Earth2Studio
    computes them (torch, in float32)."""
    import torch

    lat_r, lon_r = (torch.deg2rad(torch.as_tensor(a, dtype=torch.float32)) for a in (lat, lon))
    fields = (torch.sin(lat_r), torch.cos(lat_r), torch.sin(lon_r), torch.cos(lon_r))
    return {n: f.numpy() for n, f in zip(POSITION_CHANNELS, fields, strict=True)}


def _grids(files: PackageFiles, name: str) -> tuple[xr.Dataset, xr.Dataset]:
    """The ERA5 input grid and the native output grid of ``grids.nc``."""
    files.require(name)
    ds, where = files.netcdf(name), files.where(name)
    missing = [v for v in ("lat_input", "lon_input", "lat_output", "lon_output") if v not in ds]
    if missing:
        raise PackageError(f"{where} lacks {missing}; it holds {sorted(map(str, ds.variables))}")
    lat_in, lon_in, lat, lon = (
        np.asarray(ds[v].values, np.float32)
        for v in ("lat_input", "lon_input", "lat_output", "lon_output")
    )
    for axis, v in (("lat_input", lat_in), ("lon_input", lon_in)):
        steps = np.diff(v.astype(np.float64))
        if v.ndim != 1 or v.size < 2 or not np.all(steps > 0):
            raise PackageError(f"{where}: {axis} must be 1-D and strictly increasing")
        if not np.allclose(steps, steps[0], rtol=1e-3, atol=0.0):
            raise PackageError(f"{where}: {axis} must be evenly spaced (Earth2Studio requires it)")
    if lat.ndim != 2 or lat.shape != lon.shape:
        raise PackageError(
            f"{where}: lat_output {lat.shape} and lon_output {lon.shape} must be the same 2-D shape"
        )
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        raise PackageError(f"{where}: lat_output/lon_output hold non-finite values")
    for axis, out, inp in (("lat", lat, lat_in), ("lon", lon, lon_in)):
        if out.min() <= inp[0] or out.max() >= inp[-1]:
            raise PackageError(
                f"{where}: the output grid's {axis} [{out.min():g}, {out.max():g}] is not "
                f"strictly inside the input grid's [{inp[0]:g}, {inp[-1]:g}]"
            )
    return coarse_grid(lat_in, lon_in), fine_grid(lat, lon)


def _stats(files: PackageFiles, name: str, s: CosmoSettings) -> dict[str, tuple[float, float]]:
    files.require(name)
    raw, where = files.json(name), files.where(name)
    out = {}
    for section, names in (("era5", s.era5), (s.stats_key, s.outputs)):
        block = raw.get(section) if isinstance(raw, dict) else None
        for n in names:
            entry = block.get(n) if isinstance(block, dict) else None
            values = [entry.get(k) if isinstance(entry, dict) else None for k in ("mean", "std")]
            numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
            ok = len(numbers) == 2
            if not ok or not (np.isfinite(numbers).all() and numbers[1] > 0):
                raise PackageError(
                    f"{where} has no usable {section}.{n} (need {{'mean': number, 'std': number "
                    f"> 0}} for {s.resolution}/{s.mode}; found {entry!r:.100})"
                )
            # float32, as Earth2Studio normalises with them
            out[n] = (float(np.float32(numbers[0])), float(np.float32(numbers[1])))
    return out


def _stored_names(s: CosmoSettings) -> list[str]:
    return [n for n in s.pre + s.post if n not in POSITION_CHANNELS]


def _extended_invariants(
    files: PackageFiles, s: CosmoSettings, fine: xr.Dataset, prefix: str
) -> tuple[dict[str, str], dict, dict]:
    """``({network name: codec name}, {codec name: (dims, values, attrs)}, stats)`` of the
    stored invariants, windowed from the extended physical file."""
    spec = s.invariants
    assert spec is not None  # called only when metadata.json has invariants
    name, norm_name = prefix + spec["file"], prefix + spec["norm_stats_file"]
    files.require(name, " (metadata.json invariants.file)")
    files.require(norm_name, " (metadata.json invariants.norm_stats_file)")
    ds, where = files.netcdf(name), files.where(name)
    norm = files.json(norm_name)
    channels = norm.get("channels") if isinstance(norm, dict) else None
    if not isinstance(channels, dict):
        raise PackageError(f"{files.where(norm_name)} must hold a 'channels' object")
    (i0, j0), (ny, nx) = spec["native_offset"], spec["native_shape"]
    if (ny, nx) != (fine.sizes["y"], fine.sizes["x"]):
        raise PackageError(
            f"{files.where(prefix + 'metadata.json')} invariants.native_shape {[ny, nx]} is not "
            f"the output grid's {[fine.sizes['y'], fine.sizes['x']]} (grids.nc)"
        )
    window = (slice(i0, i0 + ny), slice(j0, j0 + nx))
    for axis in ("lat", "lon"):
        values = np.asarray(ds[axis].values) if axis in ds.variables else None
        if values is None or values.ndim != 2 or values[window].shape != (ny, nx):
            raise PackageError(f"{where}: 2-D {axis} holding the window {window} is missing")
        if not np.allclose(values[window], fine[axis].values, atol=1e-3):
            raise PackageError(
                f"{where}: its {axis} at native_offset {[i0, j0]} is not grids.nc's "
                f"{axis}_output (largest gap {np.abs(values[window] - fine[axis].values).max():g})"
            )
    names, fields, stats = {}, {}, {}
    for net_name in _stored_names(s):
        phys = net_name[:-5] if net_name.endswith("_norm") else net_name
        if phys not in ds.data_vars or ds[phys].ndim != 2:
            raise PackageError(f"{where} has no 2-D variable {phys!r} (for {net_name})")
        rule = channels.get(phys, {"method": "identity"})
        method = rule.get("method") if isinstance(rule, dict) else None
        if method == "zscore":
            mean, std = (rule.get(k) for k in ("mean", "std"))
            ok = all(isinstance(v, int | float) and np.isfinite(v) for v in (mean, std))
            if not ok or std <= 0:
                raise PackageError(f"{files.where(norm_name)} channels.{phys}: unusable z-score")
        elif method == "identity":
            mean, std = 0.0, 1.0
        else:
            raise PackageError(
                f"{files.where(norm_name)} channels.{phys}.method must be 'zscore' or 'identity'"
            )
        values = np.asarray(ds[phys].values[window], np.float32)
        names[net_name], stats[phys] = phys, (float(mean), float(std))
        fields[phys] = (("y", "x"), values, dict(ds[phys].attrs))
    return names, fields, stats


def _invariants(
    files: PackageFiles, s: CosmoSettings, fine: xr.Dataset, prefix: str
) -> tuple[dict[str, str], xr.Dataset, dict]:
    """``({network name: codec name}, invariants Dataset, stats)`` of every pre/post channel."""
    if s.invariants is not None:
        names, fields, stats = _extended_invariants(files, s, fine, prefix)
    else:  # the older layout: normalised channels under their own names
        name = prefix + "invariants.nc"
        files.require(name, " (metadata.json has no invariants entry)")
        ds, where = files.netcdf(name), files.where(name)
        names, fields, stats = {}, {}, {}
        for n in _stored_names(s):
            if n not in ds.data_vars or ds[n].shape != (fine.sizes["y"], fine.sizes["x"]):
                raise PackageError(f"{where} has no {n!r} on the output grid")
            names[n], stats[n] = n, (0.0, 1.0)
            fields[n] = (("y", "x"), np.asarray(ds[n].values, np.float32), dict(ds[n].attrs))
    for n, values in position_channels(fine["lat"].values, fine["lon"].values).items():
        names[n], stats[n] = n, (0.0, 1.0)
        fields[n] = (("y", "x"), values, {"units": "1"})
    for n, (_, values, _) in fields.items():
        if not np.all(np.isfinite(values)):
            raise PackageError(f"{files.source}: invariant {n!r} holds NaN or infinite values")
    ordered = {n: names[n] for n in s.pre + s.post}
    return ordered, xr.Dataset({n: fields[n] for n in ordered.values()}, coords=fine.coords), stats


def _codec(s: CosmoSettings, invariants: xr.Dataset, stats: dict) -> Codec:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data.names import long_name, units_of

    attrs = {}
    for n in s.era5:
        known = {"units": units_of(n), "long_name": long_name(n)}
        attrs[n] = {k: v for k, v in known.items() if v}
    for key, field in invariants.data_vars.items():
        attrs[str(key)] = {
            k: str(field.attrs[k]) for k in ("units", "long_name") if k in field.attrs
        }
    try:
        return Codec(
            s.era5,
            s.outputs,
            tuple(str(n) for n in invariants.data_vars),
            stats,
            attrs,
            transforms=dict(s.transforms),
            bounds=dict(s.bounds),
            features=(COS_ZENITH_FEATURE,),
            gates=dict(s.gates),
        )
    except ValueError as err:  # a name clash, unusable statistics ...
        raise PackageError(f"the variables of the package ({s.resolution}): {err}") from err


def network_order(s: CosmoSettings, static: Mapping[str, str], codec) -> list[int]:
    """For each codec input channel, its channel in the network's conditioning."""
    to_network = {**{n: n for n in s.era5}, **{c: n for n, c in static.items()}}
    to_network[COS_ZENITH_FEATURE] = COS_ZENITH
    background = list(s.background)
    return [background.index(to_network[c]) for c in codec.in_channels]


def _prepared(ck, s: CosmoSettings, order: list[int], shape: tuple[int, int]):
    """``ck`` with its patch embedding's condition columns in the codec's order and, for a
    DiT without learned positions (crop-size agnostic), built for the whole output grid."""
    import torch

    keys = [k for k in ck.state_dict if k == _EMBEDDING or k.endswith("." + _EMBEDDING)]
    if len(keys) != 1 or ck.state_dict[keys[0]].ndim != 4:
        raise PackageError(f"{ck.source}: no DiT patch embedding ({_EMBEDDING}) to read")
    weight = ck.state_dict[keys[0]]
    offset = weight.shape[1] - len(order)  # the diffusion's latent comes first
    if offset != (0 if s.mode == "mean" else len(s.outputs)):
        raise PackageError(
            f"{ck.source} takes {weight.shape[1]} channels; metadata.json gives "
            f"{len(order)} conditioning channels ({len(s.era5)} era5_variables, "
            f"{len(s.pre) + len(s.post)} invariants, cos_zenith)"
            + ("" if s.mode == "mean" else f" after {len(s.outputs)} output_variables")
        )
    columns = torch.tensor(list(range(offset)) + [offset + i for i in order])
    state = {**ck.state_dict, keys[0]: weight[:, columns].contiguous()}
    args, modules = dict(ck.args), {k: dict(v) for k, v in ck.modules.items()}
    holder = args if ck.name == "DiT" else None
    for v in modules.values():
        if v.get("__name__") == "DiT" and isinstance(v.get("__args__"), dict):
            v["__args__"] = holder = dict(v["__args__"])
    if holder is None:
        raise PackageError(f"{ck.source}: args.json holds no DiT")
    patch = holder.get("patch_size", 8)
    if (patch if isinstance(patch, int) else tuple(patch)) not in (
        s.patch_size,
        (s.patch_size,) * 2,
    ):
        raise PackageError(
            f"{ck.source} has patch_size {patch!r} but metadata.json says {s.patch_size}"
        )
    tokenizer = holder.get("tokenizer_kwargs")
    pos = tokenizer.get("pos_embed", "learnable") if isinstance(tokenizer, dict) else None
    if holder.get("attention_backend") == "natten2d_rope" or pos == "none":
        holder["input_size"] = list(shape)  # no weight depends on the grid
    return dataclasses.replace(ck, args=args, modules=modules, state_dict=state)


def _variant(variant: str | None) -> tuple[str, str]:
    variant = DEFAULT_VARIANT if variant is None else variant
    if variant not in VARIANTS:
        raise PackageError(
            f"CorrDiff COSMO-ERA5 variant {variant!r} is not one of {list(VARIANTS)}"
        )
    resolution, mode = variant.split("/")
    return resolution, mode


def read(
    files: PackageFiles,
    *,
    map_location: str | torch.device = "cpu",
    variant: str | None = None,
) -> Package:
    """The :class:`~corrdiff_xr.model.packages.Package` of ``variant`` (``"rea6/mean"`` ...)."""
    from corrdiff_xr.model.mdlus import MdlusError
    from corrdiff_xr.model.mdlus_dit import import_dit_mdlus
    from corrdiff_xr.model.packages.package import Package

    resolution, mode = _variant(variant)
    prefix = f"{resolution}/"
    files.require(prefix + "metadata.json", f" (the {resolution} models)")
    meta = files.json(prefix + "metadata.json")
    s = cosmo_settings(meta, resolution, mode, files.where(prefix + "metadata.json"))
    coarse, fine = _grids(files, prefix + "grids.nc")
    stats = _stats(files, prefix + "stats.json", s)
    static, invariants, static_stats = _invariants(files, s, fine, prefix)
    codec = _codec(s, invariants, {**stats, **static_stats})
    files.require(prefix + s.checkpoint, f" (metadata.json checkpoints.{resolution}_{mode})")
    shape = (fine.sizes["y"], fine.sizes["x"])
    ck = _prepared(files.mdlus(prefix + s.checkpoint), s, network_order(s, static, codec), shape)
    try:
        networks = (ck, None) if mode == "mean" else (None, ck)
        model = import_dit_mdlus(*networks, codec=codec, map_location=map_location)
    except MdlusError as err:
        raise PackageError(f"{err} (the {resolution}/{mode} network of the package)") from err
    if model.img_shape != shape:
        raise PackageError(
            f"{ck.source} runs on {model.img_shape[0]} x {model.img_shape[1]} but grids.nc's "
            f"output grid is {shape[0]} x {shape[1]} (its learned positions fix the size)"
        )
    model.sampler_config = s.sampler
    return Package(
        model=model,
        layout="cosmo",
        source=files.source,
        input_grid=coarse,
        output_grid=fine,
        invariants=invariants,
        members=s.members,
        seed=None,
        inference_mode="regression" if mode == "mean" else "diffusion",
        input_names={n: n for n in s.era5},
        metadata={
            **{k: v for k, v in meta.items() if isinstance(k, str)},
            "variant": f"{resolution}/{mode}",
            "min_domain_cells": s.patch_size * s.attn_kernel_size,
        },
    )
