"""Lazy CorrDiff downscaling over Dask blocks: ``ds.corrdiff.downscale(model)``.

:func:`downscale` returns at once a dask-backed Dataset on the fine grid, dims
``(member, time, y, x)``; nothing runs until it is computed or written (``.to_zarr()``
streams it block by block). Each output block - a time chunk x a spatial chunk x a chunk of
members - is one task that:

1. reads the regridded inputs and static fields over the block plus a halo (the task depends
   on exactly the input chunks the halo overlaps, so any input chunking works; the graph is
   built key by key in :mod:`corrdiff_xr.inference.graph`);
2. finds the model in its process's cache (the task carries a checkpoint path and stamp,
   never the weights: see :mod:`corrdiff_xr.inference.cache`);
3. samples every patch of the *global* patch grid (:class:`corrdiff_xr.patching.PatchGrid`,
   whose origins depend only on the domain, patch shape and overlap) that touches the block:
   regression mean (cut from the whole-domain mean, which one task per time chunk computes
   as the regression was trained: on the whole grid, in overlapping tiles above one tile's
   window, :mod:`corrdiff_xr.inference.tiled_mean`; or, with ``PatchConfig(mean=
   "patches")``, computed on the patch) + residual, noise keyed by (seed, time, member,
   patch origin), the trajectories of one (time, patch) batched by member groups
   ``[g B, (g + 1) B) & [0, N)`` (``B = batch_size``, ``N = members``);
4. fuses the patches with the grid's weights, in global patch order.

So the result depends only on (seed, time, member), the sampling settings and the member
groups (``batch_size`` and ``members``), down to the last bit, not on the chunking, the number
of workers or threads: which members share a network call never depends on the blocks (see
:mod:`corrdiff_xr.inference.block`, which says what a member's bits depend on; changing
``batch_size`` changes members by rounding only). Noise comes from generators on the
workers' device, so CPU and CUDA runs give different (equally valid) members.

Differences from the reference. PhysicsNeMo's patched generation fuses the patches after
*every* sampler step (all patches of the domain advance together). Here each patch runs its
whole trajectory alone and patches are fused once, at the end. That is what lets a block be
computed without the rest of the domain's patches, with memory bounded by one batch of
patches plus one regression call over a tile's window (or only by the patches with
``mean="patches"``); the price is that overlapping patches can disagree more than
with per-step fusion, so the defaults (:class:`~corrdiff_xr.config.PatchConfig`'s) draw
their noise from one shared field and use ramp weights across a generous overlap (a quarter
of the smaller patch side) to hide seams.
``patch=None`` samples the whole domain at once per time step (spatial dims in one chunk).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import xarray as xr

from corrdiff_xr.dims import MEMBER, TIME, X, Y
from corrdiff_xr.inference._arguments import check_arguments, patch_config, sampler_config

if TYPE_CHECKING:  # imported when called, so that importing corrdiff_xr does not load torch
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.config import PatchConfig, SamplerConfig
    from corrdiff_xr.data import DownscalingData
    from corrdiff_xr.inference.packages import DataLike, ModelLike
    from corrdiff_xr.model import CorrDiff
    from corrdiff_xr.patching import PatchGrid

__all__ = ["downscale", "model_header"]

Output = Literal["ensemble", "mean", "residual"]
#: whole-domain sampling warns above this many fine-grid pixels
LARGE_DOMAIN = 1024 * 1024


def model_header(model: CorrDiff | str | os.PathLike[str]) -> dict[str, Any]:
    """Codec, grid shape and configs of a CorrDiff or checkpoint, without loading weights."""
    if isinstance(model, (str, os.PathLike)):
        from corrdiff_xr.model import read_checkpoint_header

        return read_checkpoint_header(model)
    return model.config_dict()


def _check_output_kind(
    header: Mapping[str, Any], output: str, model: CorrDiff | str | os.PathLike[str]
) -> None:
    """Refuse members from a regression-only model: they would all be the mean (no spread)."""
    from corrdiff_xr.config import ConfigError

    if header.get("residual_network") is None and output != "mean":
        what = model if isinstance(model, (str, os.PathLike)) else "the model"
        raise ConfigError(
            f"{what} is regression-only (no residual diffusion network): output={output!r} "
            "would give members equal to the regression mean, with zero spread; ask for "
            "output='mean' (generate --output-kind mean), or train the residual (task=diffusion) "
            "on top of it"
        )


def _check_network_shape(
    header: Mapping[str, Any], domain: tuple[int, int], patch_cfg: PatchConfig | None
) -> None:
    """The image each network call sees (a patch, or the whole grid) must fit the grid and
    the network's levels (checked before the patch grid allocates its weights)."""
    from corrdiff_xr.config import NetworkConfig, SettingError, from_dict
    from corrdiff_xr.nn.backbones import check_shape

    # a resolved PatchConfig always has a shape (patch_config: None without one)
    pshape = None if patch_cfg is None else patch_cfg.shape
    if pshape is not None and any(p > d for p, d in zip(pshape, domain)):
        raise SettingError(
            (("patch", pshape),),
            f"is larger than the fine grid {domain} (y, x); need a patch no larger than the "
            "grid, or none (whole-domain sampling)",
        )
    if pshape is None:
        patch = whole = (domain, "the fine grid (sampled whole, patch=None)")
    else:
        patch = (pshape, "patch")
        whole = (domain, "the fine grid (the regression mean of mean='whole')")
    mean_whole = patch_cfg is None or patch_cfg.mean != "patches"
    seen = {"regression_network": whole if mean_whole else patch, "residual_network": patch}
    for key, (shape, what) in seen.items():
        if header.get(key) is not None:
            check_shape(from_dict(NetworkConfig, header[key], path=key), shape, what, key=key)


def _codec(header: Mapping[str, Any]) -> Codec:
    from corrdiff_xr.codec import Codec

    if header.get("codec") is None:
        raise ValueError(
            "the model has no codec (variable names and statistics), so it cannot read a "
            "Dataset; attach one (Codec.from_pair) and save it again"
        )
    return Codec.from_dict(header["codec"])


def _pair(data: DataLike, codec: Codec) -> DownscalingData:
    from corrdiff_xr.data import DownscalingData, open_pair

    if isinstance(data, DownscalingData):
        return data
    # targets are optional at inference; take the inputs and static fields the model reads
    return open_pair(data, inputs=codec.inputs, static=codec.static, require_targets=False)


def _regular(chunks: tuple[int, ...], size: int | None, length: int) -> tuple[int, ...]:
    """Uniform chunks (last one shorter) of ``size`` or of the first input chunk."""
    size = int(size or (chunks[0] if chunks else length))
    if size < 1:
        raise ValueError(f"chunk sizes must be positive, got {size}")
    n, rest = divmod(length, size)
    return (size,) * n + ((rest,) if rest else ())


def _member_chunks(
    size: int | None, members: int, batch_size: int, samples: bool
) -> tuple[int, ...]:
    """Member chunks: whole member groups by default; a warning when ``size`` splits them."""
    if size is None:
        return _regular((), min(batch_size, members), members)
    if samples and size % batch_size and size < members:
        warnings.warn(
            f"chunks['member']={size} splits the member groups of batch_size={batch_size} "
            f"(one network call per group): every block computes its members' whole groups "
            "and drops the other rows; pass a member chunk that is a multiple of batch_size, "
            f"or batch_size={size}",
            stacklevel=4,  # downscale's caller
        )
    return _regular((), size, members)


def _sources(pair: DownscalingData, codec: Codec) -> xr.Dataset:
    """Regridded inputs (time, y, x) and static fields (y, x) named as the codec expects."""
    fine = pair.inputs_on_fine
    missing = [n for n in codec.inputs if n not in fine]
    static = pair.static_fields
    missing += [n for n in codec.static if n not in static]
    if missing:
        raise KeyError(
            f"the model needs variables {missing} that the dataset lacks; it has inputs "
            f"{list(fine.data_vars)} and static fields {list(static.data_vars)}"
        )
    src = xr.merge(
        [fine[list(codec.inputs)], static[list(codec.static)]], compat="override", join="exact"
    )
    # In-memory fields become one-chunk dask arrays, so every block's halo is a slice task of
    # one shared key rather than a copy of the data embedded in the graph.
    src = src.assign({n: v.chunk() for n, v in src.data_vars.items() if v.chunks is None})
    if codec.features:  # time features: lazy fields, each block computes its own halo's
        from corrdiff_xr.features import lazy_fields

        src = src.assign(lazy_fields(codec.features, src, codec.inputs[0]))
    return src


def _time_member_chunks(
    src: xr.Dataset,
    codec: Codec,
    chunks: Mapping[str, int],
    members: tuple[int, int],
    kinds: tuple[str, ...],
    spatial: tuple[tuple[int, ...], tuple[int, ...]],
    patch_cfg: PatchConfig | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The output's time and member chunks, once the graph and blocks they make are checked
    (from the sizes, before a tuple of chunks or a task is built)."""
    from corrdiff_xr.inference.graph import check_size

    (n, batch_size), samples = members, "sample" in kinds
    first = src[codec.inputs[0]].chunks
    # unchunked (numpy) inputs: one time step per block, so blocks stay small and parallel
    tsize = chunks.get(TIME) or (first[0][0] if first else 1)
    check_size(
        members=(n, chunks.get(MEMBER) or min(batch_size, n)) if samples else None,
        times=(src.sizes[TIME], tsize),
        ych=spatial[0],
        xch=spatial[1],
        channels=len(codec.out_channels),
        whole_mean=patch_cfg is not None and patch_cfg.mean != "patches",
    )
    return _regular((), tsize, src.sizes[TIME]), _member_chunks(
        chunks.get(MEMBER), n, batch_size, samples
    )


def _spatial_plan(
    src: xr.Dataset,
    first_input: str,
    patch_cfg: PatchConfig | None,
    chunks: Mapping[str, int],
    network: Mapping[str, Any] | None,
) -> tuple[PatchGrid, tuple[int, ...], tuple[int, ...], tuple[int, int] | None]:
    """The patch lattice, the output's y, x chunks (the whole domain when not patched) and
    the whole-domain mean's tiles for the regression ``network`` config (None: one call,
    warned about on large domains; :mod:`corrdiff_xr.inference.tiled_mean`)."""
    from corrdiff_xr.inference.tiled_mean import mean_tiles
    from corrdiff_xr.patching import PatchGrid

    H, W = src.sizes[Y], src.sizes[X]
    whole_mean = patch_cfg is not None and patch_cfg.mean != "patches"
    tiled = patch_cfg is not None and patch_cfg.mean == "whole"  # "single": one call, exact
    tiles = mean_tiles(network, (H, W)) if tiled else None
    if patch_cfg is None:
        if H * W > LARGE_DOMAIN:
            warnings.warn(
                f"sampling the whole {H} x {W} domain in one piece per time step needs memory "
                "for the full field in every network call; pass patch=(h, w) to bound it",
                stacklevel=3,
            )
        return PatchGrid.build((H, W)), (H,), (W,), None
    if whole_mean and H * W > LARGE_DOMAIN and tiles is None:
        warnings.warn(
            f"the regression mean runs over the whole {H} x {W} domain once per time step, "
            "which needs memory for the full field in one call (its network has no finite "
            "halo to tile it with); PatchConfig(mean='patches') computes it patch by patch",
            stacklevel=3,
        )
    first = src[first_input].chunks
    ych = _regular(first[1] if first else (), chunks.get(Y), H)
    xch = _regular(first[2] if first else (), chunks.get(X), W)
    return PatchGrid.from_config((H, W), patch_cfg), ych, xch, tiles


def downscale(
    data: DataLike,
    model: ModelLike,
    *,
    members: int = 1,
    seed: int = 0,
    output: Output = "ensemble",
    sampler: SamplerConfig | str | Mapping[str, Any] | None = None,
    steps: int | None = None,
    patch: PatchConfig | int | tuple[int, int] | None = None,
    overlap: int | None = None,
    boundary: int | None = None,
    weights: Literal["uniform", "ramp"] | None = None,
    batch_size: int = 8,
    device: str | None = None,
    chunks: Mapping[str, int] | None = None,
    threads: int | None = None,
) -> xr.Dataset:
    """Lazy CorrDiff ensemble (or mean, or residual) on the fine grid.

    Parameters
    ----------
    data : xr.Dataset or DownscalingData
        Canonical dataset (coarse inputs, fine-grid coordinates, static fields; targets are
        optional) or a :class:`~corrdiff_xr.data.DownscalingData`. Inputs and static fields
        in other units than the model's are converted lazily where that is safe (``degC``
        for ``K``, ``hPa`` for ``Pa`` ...) and refused otherwise (:mod:`corrdiff_xr.units`).
    model : CorrDiff, Package or path
        A loaded model (saved once to a temporary checkpoint that workers load), the path
        of a checkpoint written by :meth:`CorrDiff.save`, or a published CorrDiff package
        (:func:`~corrdiff_xr.model.packages.open_package`, or its directory/zip path):
        then ``data`` is the user's coarse archive, put on the package's grids by
        :meth:`Package.pair <corrdiff_xr.model.packages.package.Package.pair>` (pass a
        pair made by it to choose ``name_map`` or ``regrid``).
    members : int
        Ensemble size N. Member ``m`` is the same whatever ``members`` is: bitwise once its
        group of ``batch_size`` members is complete (``members >= (m // batch_size + 1) *
        batch_size``) or with ``batch_size=1``, else up to rounding (a few float32 ulps).
    seed : int
        Base seed; noise is keyed by (seed, time, member, patch origin).
    output : {"ensemble", "mean", "residual"}
        Members (``mean + residual``), the regression mean (no member dim), or the residual
        of each member (member minus mean).
    sampler : None, str, mapping or SamplerConfig
        Sampler settings (a string picks the solver: ``"heun"``, ``"euler"``, ``"dpmpp_2m"``
        ...); ``steps`` overrides ``num_steps``. None uses the model's calibrated defaults
        (``corrdiff-xr calibrate``) when it has them, else ``SamplerConfig()``; a mapping
        replaces fields of those defaults.
    patch : PatchConfig, int or (int, int), optional
        Patching settings, or the patch shape with
        :class:`~corrdiff_xr.config.PatchConfig`'s defaults (ramp weights across an overlap
        of a quarter of the smaller patch side, no zero-weight halo); None (or a PatchConfig
        without a shape) samples the whole domain per time step.
    overlap, boundary, weights
        Patch overlap, zero-weight halo and fusion weights: when given, they replace those
        of ``patch`` (:class:`~corrdiff_xr.config.PatchConfig`'s fields of the same names).
    batch_size : int
        Member group size B: the sampler runs members ``[g B, (g + 1) B)`` (up to N) of one
        time and patch in one network call, on every device (1: each trajectory alone, the
        cheapest when ``members`` is 1). Also the regression means per call on accelerators
        (the CPU computes them one by one).
    device : str, optional
        Torch device of the workers; None picks CUDA when a worker has it, else the CPU.
    chunks : mapping, optional
        Output chunk sizes for ``member`` (default ``min(batch_size, members)``, whole member
        groups; a chunk that is not a multiple of ``batch_size`` and smaller than ``members``
        splits groups, whose blocks then compute rows they drop, with a warning), ``time``
        (default: the inputs', or 1 for unchunked inputs) and ``y``/``x`` (default: the
        inputs' fine-grid chunks; the whole domain when ``patch`` is None).
    threads : int, optional
        Torch intra-op threads set by each task in its own thread (e.g. 1 when a Dask worker
        runs several task threads); None leaves torch's setting alone.

    Returns
    -------
    xr.Dataset
        One dask-backed variable per target, dims ``(member, time, y, x)`` (``(time, y, x)``
        for ``"mean"``), with the input's time, the fine grid's y, x, lat, lon, CF attributes
        (``units`` the model's), the data's CF grid-mapping coordinate when it has one
        (:func:`corrdiff_xr._cf.with_grid_mapping`) and provenance attributes (seed,
        sampler, model, patching).

    Raises
    ------
    ConfigError
        An argument out of range (``members`` >= 1, ``seed`` >= 0, ``steps``, ``batch_size``,
        ``threads`` and chunk sizes >= 1, a positive ``patch`` that leaves room for
        ``overlap`` and ``boundary`` and no larger than the grid), named with its value and
        the allowed range; more work than the limits of :mod:`corrdiff_xr._constraints` allow
        (``members`` and ``batch_size`` at most ``MAX_MEMBERS``; the block tasks and a
        block's bytes the chunking makes, :func:`~corrdiff_xr.inference.graph.check_size`);
        or members or residuals asked of a regression-only model.
    UnitsError
        A variable in units that do not convert to the model's.
    """
    from corrdiff_xr.inference.block import BlockTask, plan_blocks
    from corrdiff_xr.inference.cache import token_for
    from corrdiff_xr.inference.graph import block_arrays
    from corrdiff_xr.inference.labels import Labels, to_dataset
    from corrdiff_xr.inference.packages import resolve as resolve_package
    from corrdiff_xr.units import to_model_units

    if output not in ("ensemble", "mean", "residual"):
        raise ValueError(f"output must be 'ensemble', 'mean' or 'residual', got {output!r}")
    members, seed, batch_size, threads, chunks = check_arguments(
        members, seed, batch_size, threads, chunks
    )
    patch_cfg = patch_config(patch, overlap, boundary, weights)
    model, data, package = resolve_package(model, data)
    token = token_for(model, device=device)
    if not isinstance(model, (str, os.PathLike)) and "distributed" in sys.modules:
        from corrdiff_xr.inference.plugin import share_with_workers

        share_with_workers(token)  # a no-op without an active distributed Client
    header = model_header(model if not isinstance(model, (str, os.PathLike)) else token.path)
    sampler_cfg = sampler_config(sampler, steps, header.get("sampler"))
    _check_output_kind(header, output, model)
    codec = _codec(header)
    pair = _pair(data, codec)
    src = to_model_units(_sources(pair, codec), codec)  # converted or refused before encoding
    H, W = src.sizes[Y], src.sizes[X]
    grid_shape = tuple(header.get("img_shape") or (H, W))
    if grid_shape != (H, W):
        raise ValueError(
            f"the model was built for a fine grid of {grid_shape} (y, x) but the dataset's "
            f"fine grid is {(H, W)}; select the model's domain"
        )

    _check_network_shape(header, (H, W), patch_cfg)
    network = header.get("regression_network")
    grid, ych, xch, tiles = _spatial_plan(src, codec.inputs[0], patch_cfg, chunks, network)
    kinds = {"mean": ("mean",), "residual": ("sample", "mean")}.get(output, ("sample",))
    tch, mch = _time_member_chunks(
        src, codec, chunks, (members, batch_size), kinds, (ych, xch), patch_cfg
    )

    task = BlockTask(
        token=token,
        grid=grid,
        seed=int(seed),
        sampler=sampler_cfg,
        batch_size=int(batch_size),
        threads=threads,
        kinds=kinds,
        shared_noise=patch_cfg is not None and patch_cfg.noise == "shared",
        whole_mean=patch_cfg is not None and patch_cfg.mean != "patches",
        mean_tiles=tiles,
        ensemble=int(members),
    )
    stacked = block_arrays(
        src, plan_blocks(grid, ych, xch), tch, mch, len(codec.out_channels), task
    )
    labels = Labels(
        output=output,
        task=task,
        members=int(members),
        patched=patch_cfg is not None,
        codec=codec,
        src=src,
        dataset=pair.dataset,
    )
    out = to_dataset(stacked, labels)
    from corrdiff_xr.inference.request import downscale_attrs

    # the package, and what the Dataset does not show (for a store's request identity)
    out.attrs.update(downscale_attrs(token, package, patch_cfg, patch, boundary, weights))
    return out
