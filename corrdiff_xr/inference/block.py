"""One output block: the patches that touch it, sampled member group by member group and fused.

A block is a time chunk x a spatial chunk x a chunk of members of the output. Its task gets
the regridded inputs and static fields over the block's *halo* (every pixel any touching
patch reads, reflections at the domain edge included), encodes them with the model's codec,
and walks the touching patches in global patch order: the regression mean of each (time,
patch) - cut from the whole-domain mean of :func:`compute_mean_field`, computed once per time
chunk by a task of its own (in overlapping tiles on large domains, so that its memory is
bounded: :mod:`corrdiff_xr.inference.tiled_mean`), or with ``PatchConfig(mean="patches")``
computed on the patch -
then the sampler trajectories of the block's members, each drawing its noise from
the shared field keyed by (seed, time, member, pixel position)
(:class:`corrdiff_xr.noise.FieldNoise`; patched runs by default) or from a generator keyed by
(seed, time, member, patch origin). Every result is folded straight into a float64 weighted
sum over the block, so memory holds the block plus one network call.

Member groups. With ``B = batch_size`` and ``N`` the ensemble size, the trajectories of one
(time, patch) run in calls of member groups: call ``g`` holds members
``[g B, (g + 1) B) & [0, N)``, one row each, in order (:func:`member_groups`). The last group
is shorter when B does not divide N; nothing is padded. A block whose member chunk splits a
group computes the whole group and keeps its own rows (``downscale``'s default member chunk
holds whole groups, and it warns about one that does not). ``batch_size=1`` runs every
trajectory alone.

Exactness. Each patch sees the same input bytes whichever block computes it; each pixel sums
the same patches in the same (global) order; each call holds the same rows, so its kernels
see the same shape and content, whichever block, worker or scheduler runs it. So a pixel's
value does not depend on how the output is chunked, down to the last bit. That last
ingredient matters because CPU kernels (oneDNN convolutions, MKL GEMMs) pick different code
paths, and round differently, for different batch sizes. Hence what a member's bits depend
on: the model, the device, the sampler, (seed, time, member, patch lattice), and the rows of
its call, i.e. B and, in the last group when B does not divide N, N. Member ``m`` is bitwise
the same for every ``N >= (m // B + 1) B`` (its group complete) and for every N when
``B = 1``; otherwise it changes only by rounding (a few float32 ulps with the demo model
and its sampler; samplers with very few steps amplify it), with the same distribution.
Changing ``batch_size`` changes members likewise, by rounding. The regression means are
computed one row per call on the CPU (:func:`call_size`); on accelerators in calls padded to
exactly ``batch_size`` rows, one shape whatever the chunking, though which patches share such
a call depends on the block (rows of one shape have not been seen to depend on each other).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.dims import MEMBER, TIME, X, Y
from corrdiff_xr.inference.cache import ModelToken, load_model
from corrdiff_xr.inference.tiled_mean import windows
from corrdiff_xr.noise import FieldNoise, patch_generator
from corrdiff_xr.patching import PatchGrid, reflect_index
from corrdiff_xr.protocols import RandomSource

if TYPE_CHECKING:
    import xarray as xr

    from corrdiff_xr.codec import Codec
    from corrdiff_xr.model import CorrDiff

__all__ = [
    "KINDS",
    "BlockPlan",
    "BlockTask",
    "call_size",
    "compute_block",
    "compute_mean_field",
    "member_groups",
    "plan_blocks",
    "touching_patches",
]

#: what a block task can return: the fused regression mean and the fused samples
KINDS = ("mean", "sample")
#: one (time index, patch id) of a block: a row of a network call
Unit = tuple[int, int]
Row = TypeVar("Row")
#: ``(seed, time, member, patch origin) -> noise``: a member's noise on one patch
NoiseFactory = Callable[[int, int, int, tuple[int, int]], RandomSource]


def _support(weights: Sequence[float]) -> tuple[int, int]:
    """First and one-past-last index with non-zero weight."""
    nz = np.flatnonzero(np.asarray(weights) > 0)
    if nz.size == 0:
        raise ValueError("a patch has no pixel with positive fusion weight")
    return int(nz[0]), int(nz[-1]) + 1


def touching_patches(grid: PatchGrid, rows: tuple[int, int], cols: tuple[int, int]) -> list[int]:
    """Ids (global order) of the patches whose weighted pixels fall in ``rows x cols``.

    Patches that reach the block only through zero-weight halo pixels add exactly nothing
    to its pixels, so they are skipped.
    """
    sy, sx = _support(grid.weight_y), _support(grid.weight_x)
    nx = grid.shape[1]
    iy = [i for i, r in enumerate(grid.starts[0]) if r + sy[0] < rows[1] and r + sy[1] > rows[0]]
    ix = [j for j, c in enumerate(grid.starts[1]) if c + sx[0] < cols[1] and c + sx[1] > cols[0]]
    return [i * nx + j for i in iy for j in ix]


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """Where one spatial block lies, which patches it needs and what it must read.

    ``rows``/``cols`` are the block's half-open pixel ranges on the fine grid, ``halo_rows``/
    ``halo_cols`` the input ranges its patches read, ``patches`` the patch ids in global order.
    """

    rows: tuple[int, int]
    cols: tuple[int, int]
    halo_rows: tuple[int, int]
    halo_cols: tuple[int, int]
    patches: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class BlockTask:
    """Everything one block task computes from, besides its input halo.

    A downscaling builds one with the request's settings (no ``plan``, no ``times``, no
    ``members``); :meth:`at` gives each block's task. Plain, frozen data: it pickles small
    (the model travels as a token) and tokenises the same in every process.

    Attributes
    ----------
    token
        The model (loaded once per process, see :mod:`corrdiff_xr.inference.cache`).
    grid
        The global patch grid.
    seed, sampler
        Base seed (noise key, :data:`corrdiff_xr.noise.INFERENCE`) and sampler settings.
    batch_size
        Rows per network call: the member group size B of the sampling calls (see the module
        docstring), and the regression means per call on accelerators.
    threads
        Torch intra-op threads for the task's thread (None leaves torch's setting).
    kinds
        Any of :data:`KINDS` to return: ``"mean"`` ``(C, T, h, w)`` and ``"sample"``
        ``(C, M, T, h, w)``, de-normalised by the model's codec.
    shared_noise
        Draw each patch's noise from the shared field over the global grid
        (:class:`corrdiff_xr.noise.FieldNoise`) instead of one generator per patch.
    whole_mean
        The patches' regression means are cut from a whole-domain mean field
        (:func:`compute_mean_field`, given to :func:`compute_block`) instead of computed on
        each patch.
    mean_tiles
        (core, halo) in pixels of the overlapping tiles the whole-domain mean is computed in
        (:mod:`corrdiff_xr.inference.tiled_mean`), or None for one call over the domain.
    ensemble
        The request's ensemble size N, where the last member group ends; needed when
        ``"sample"`` is asked.
    plan
        The block's plan (None in a request's template).
    times
        int64 nanoseconds of the block's times (noise keys).
    members
        Member indices of the block (noise keys), all below ``ensemble``; ignored when no
        ``"sample"`` is asked.
    """

    token: ModelToken
    grid: PatchGrid
    seed: int
    sampler: SamplerConfig
    batch_size: int
    threads: int | None
    kinds: tuple[str, ...]
    shared_noise: bool = False
    whole_mean: bool = False
    mean_tiles: tuple[int, int] | None = None
    ensemble: int | None = None
    plan: BlockPlan | None = None
    times: tuple[int, ...] = ()
    members: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.kinds or any(k not in KINDS for k in self.kinds):
            raise ValueError(f"kinds must be a non-empty selection of {KINDS}, got {self.kinds!r}")

    def at(self, plan: BlockPlan, times: Iterable[int], members: Iterable[int]) -> BlockTask:
        """The task of one block: this one's settings with the block's plan, times, members."""
        return dataclasses.replace(
            self,
            plan=plan,
            times=tuple(int(t) for t in times),
            members=tuple(int(m) for m in members),
        )

    def __dask_tokenize__(self) -> tuple[str, tuple[object, ...]]:
        # plain nested tuples of str/int/float/None: the same token in every process
        return (f"{type(self).__module__}.{type(self).__qualname__}", dataclasses.astuple(self))


def plan_blocks(
    grid: PatchGrid, y_chunks: Sequence[int], x_chunks: Sequence[int]
) -> list[list[BlockPlan]]:
    """Plans for every spatial block of an output chunked ``y_chunks x x_chunks``.

    The patch lattice is the global ``grid``: it does not depend on the chunking.
    """
    H, W = grid.domain
    if sum(y_chunks) != H or sum(x_chunks) != W:
        raise ValueError(
            f"chunks {tuple(y_chunks)} x {tuple(x_chunks)} do not cover the domain {grid.domain}"
        )
    ybounds = np.cumsum((0, *y_chunks))
    xbounds = np.cumsum((0, *x_chunks))
    plans: list[list[BlockPlan]] = []
    for y0, y1 in itertools.pairwise(ybounds):
        row: list[BlockPlan] = []
        for x0, x1 in itertools.pairwise(xbounds):
            ids = touching_patches(grid, (int(y0), int(y1)), (int(x0), int(x1)))
            rr = np.concatenate([grid.indices(k)[0] for k in ids])
            cc = np.concatenate([grid.indices(k)[1] for k in ids])
            row.append(
                BlockPlan(
                    (int(y0), int(y1)),
                    (int(x0), int(x1)),
                    (int(rr.min()), int(rr.max()) + 1),
                    (int(cc.min()), int(cc.max()) + 1),
                    tuple(ids),
                )
            )
        plans.append(row)
    return plans


def call_size(device: torch.device, batch_size: int) -> int:
    """Rows per regression-mean call: one on the CPU (see the module docstring), else
    ``batch_size``."""
    return 1 if device.type == "cpu" else max(1, int(batch_size))


def member_groups(members: Sequence[int], batch_size: int, ensemble: int) -> list[range]:
    """The member groups holding ``members``, in order: ``[g B, (g + 1) B) & [0, N)``.

    ``B`` is ``batch_size`` and ``N`` the ``ensemble`` size; each group is one sampling call
    per (time, patch), so which members share a call depends on (B, N) alone.
    """
    if any(not 0 <= m < ensemble for m in members):
        raise ValueError(f"members {tuple(members)} do not lie in an ensemble of {ensemble}")
    size = max(1, int(batch_size))
    return [
        range(g * size, min(g * size + size, ensemble))
        for g in sorted({m // size for m in members})
    ]


def _batches(items: list[Row], size: int) -> Iterator[tuple[list[Row], int]]:
    """``items`` in calls of exactly ``size`` rows: yields (rows padded by repetition, n_real)."""
    for i in range(0, len(items), size):
        chunk = items[i : i + size]
        yield chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)


@dataclasses.dataclass(frozen=True)
class _Halo:
    """A block's encoded inputs ``x`` (T, C_in, rows, cols) and its network-input rows."""

    x: np.ndarray
    grid: PatchGrid
    plan: BlockPlan
    device: torch.device

    def inputs(self, units: Sequence[Unit]) -> torch.Tensor:
        """Stacked patch inputs of (time index, patch id) ``units``, on the device."""
        rows = [_patch_input(self.x[t], self.grid, self.plan, k) for (t, k) in units]
        return torch.from_numpy(np.stack(rows)).to(self.device)

    def offsets(self, units: Sequence[Unit]) -> torch.Tensor:
        """Global (row, col) origins of the units' patches, on the device."""
        origins = np.stack([self.grid.origins[k] for (_, k) in units])
        return torch.as_tensor(origins, device=self.device)

    def add(self, acc: np.ndarray, k: int, value: np.ndarray) -> None:
        """Fold patch ``k``'s ``value`` (C, h, w) into the block's weighted sum ``acc``."""
        bs, ps = _overlap(self.grid, self.plan, k)
        acc[(slice(None), *bs)] += self.grid.weight[ps] * value[(slice(None), *ps)]


def _encoded(inputs: xr.Dataset, task: BlockTask) -> tuple[CorrDiff, np.ndarray]:
    """The task's model (threads set) and ``inputs`` encoded by its codec (T, C_in, h, w)."""
    if task.threads is not None:
        torch.set_num_threads(int(task.threads))
    model = load_model(task.token)
    x = np.asarray(_codec(model).encode_inputs(inputs), dtype=np.float32)
    if x.shape[0] != len(task.times):
        raise ValueError(f"block inputs have {x.shape[0]} times, expected {len(task.times)}")
    return model, x


def _codec(model: CorrDiff) -> Codec:
    if model.codec is None:  # downscale refuses such a model before building tasks
        raise ValueError("the model has no codec (variable names and statistics)")
    return model.codec


def compute_mean_field(inputs: xr.Dataset, task: BlockTask) -> np.ndarray:
    """Normalised regression mean over the whole domain, ``(T, C_out, H, W)`` float32.

    ``inputs`` holds the regridded inputs and static fields of the whole fine grid for
    ``task.times`` (a request's task with its times set: :meth:`BlockTask.at`). Each time is
    one row of a call on the CPU, as the regression sees it in training: the whole grid at
    offset (0, 0), or with ``task.mean_tiles`` each tile's window at its global origin, of
    which the tile's core is kept (:mod:`corrdiff_xr.inference.tiled_mean`: memory bounded by
    a window, not the domain). Blocks then cut their patches' means from it
    (:func:`compute_block`).
    """
    model, x = _encoded(inputs, task)
    device = next(model.parameters()).device
    T, _, H, W = x.shape
    out = np.empty((T, model.out_channels, H, W), dtype=np.float32)
    for (r0, r1), (c0, c1), (wr0, wr1), (wc0, wc1) in windows((H, W), task.mean_tiles):
        for batch, n in _batches(list(range(T)), call_size(device, task.batch_size)):
            rows = torch.from_numpy(np.ascontiguousarray(x[batch, :, wr0:wr1, wc0:wc1]))
            offsets = torch.tensor([[wr0, wc0]] * len(batch), dtype=torch.int64, device=device)
            with torch.no_grad():
                res = model.predict_mean(rows.to(device), offsets=offsets)[:n]
            core = res[:, :, r0 - wr0 : r1 - wr0, c0 - wc0 : c1 - wc0]
            out[batch[:n], :, r0:r1, c0:c1] = core.float().cpu().numpy()
    return out


def compute_block(
    inputs: xr.Dataset, task: BlockTask, mean_field: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Fused fields of one block, in physical units: ``{kind: array}`` for ``task.kinds``.

    Parameters
    ----------
    inputs : xr.Dataset
        Regridded inputs and static fields over ``task.plan``'s halo rows x columns for the
        block's times (numpy-backed: the task's dependency was computed by dask).
    task
        The block's :class:`BlockTask` (from :meth:`BlockTask.at`).
    mean_field : np.ndarray, optional
        With ``task.whole_mean``: the normalised whole-domain regression mean
        (:func:`compute_mean_field`) over the same halo, ``(T, C_out, halo rows, halo
        cols)``.
    """
    plan, grid, kinds = task.plan, task.grid, task.kinds
    if plan is None:
        raise ValueError(
            "compute_block needs the task of one block (BlockTask.at(plan, times, members))"
        )
    if "sample" in kinds and task.ensemble is None:
        raise ValueError("a block task that samples needs the request's ensemble size")
    if task.whole_mean and mean_field is None:
        raise ValueError("a block task with whole_mean needs the whole-domain mean_field")
    model, x = _encoded(inputs, task)
    halo = _Halo(x, grid, plan, next(model.parameters()).device)
    T = len(task.times)
    if task.whole_mean and mean_field is not None:  # never None then (checked above)
        (hr0, hr1), (hc0, hc1) = plan.halo_rows, plan.halo_cols
        expected = (T, model.out_channels, hr1 - hr0, hc1 - hc0)
        if tuple(np.shape(mean_field)) != expected:
            raise ValueError(
                f"mean_field has shape {tuple(np.shape(mean_field))}, expected {expected} "
                "(times, channels, the block's halo rows and columns)"
            )
    (y0, y1), (x0, x1) = plan.rows, plan.cols
    norm = np.zeros((y1 - y0, x1 - x0))
    for k in plan.patches:
        bs, ps = _overlap(grid, plan, k)
        norm[bs] += grid.weight[ps]
    shape = (T, model.out_channels, y1 - y0, x1 - x0)
    units = [(t, k) for t in range(T) for k in plan.patches]
    if task.whole_mean and mean_field is not None:  # never None then (checked above)
        means = {(t, k): _patch_input(mean_field[t], grid, plan, k) for (t, k) in units}
    else:
        means = _means(model, halo, units, task)
    fused: dict[str, np.ndarray] = {}
    if "mean" in kinds:
        fused["mean"] = np.zeros(shape)
        for (t, k), mu in means.items():
            halo.add(fused["mean"][t], k, mu)
    if "sample" in kinds:
        fused["sample"] = np.zeros((len(task.members), *shape))
        _sample_into(fused["sample"], model, halo, task, means)
    # Back to physical units through the codec, with the block's own coordinates.
    (hr, _), (hc, _) = plan.halo_rows, plan.halo_cols
    template = inputs.isel({Y: slice(y0 - hr, y1 - hr), X: slice(x0 - hc, x1 - hc)})
    dims = {"mean": (TIME,), "sample": (MEMBER, TIME)}
    out = {
        kind: _decode(_codec(model), acc / norm, template, dims[kind])
        for kind, acc in fused.items()
    }
    if model.target_mask is not None:  # NaN where the model never saw a target (the sea)
        valid = model.target_mask[:, y0:y1, x0:x1].cpu().numpy()
        for values in out.values():
            shape = valid.shape[:1] + (1,) * (values.ndim - 3) + valid.shape[1:]
            values[~np.broadcast_to(valid.reshape(shape), values.shape)] = np.nan
    return out


def _means(
    model: CorrDiff, halo: _Halo, units: list[Unit], task: BlockTask
) -> dict[Unit, np.ndarray]:
    """Regression mean (C, h, w) of every (time index, patch id) unit, in calls of
    :func:`call_size` rows padded by repetition."""
    out: list[np.ndarray] = []
    for batch, n in _batches(units, call_size(halo.device, task.batch_size)):
        with torch.no_grad():
            res = model.predict_mean(halo.inputs(batch), offsets=halo.offsets(batch))
        out.extend(res[:n].float().cpu().numpy())
    return dict(zip(units, out))


def _sample_into(
    acc: np.ndarray, model: CorrDiff, halo: _Halo, task: BlockTask, means: dict[Unit, np.ndarray]
) -> None:
    """Sample the block's members into ``acc`` (M, T, C, h, w), one call per member group.

    For each time and patch (global order), every group of :func:`member_groups` is one
    call of one row per group member, each with its own noise; rows of members outside the
    block (a member chunk that splits a group) are computed and dropped.
    """
    grid, seed, ensemble = task.grid, task.seed, task.ensemble
    assert ensemble is not None  # compute_block refuses a sampling task without it
    where = {m: i for i, m in enumerate(task.members)}
    groups = member_groups(task.members, task.batch_size, ensemble)
    # generators live on the model's device (torch draws CUDA noise from CUDA generators),
    # so members are reproducible per device type, not across them
    noise: NoiseFactory = FieldNoise if task.shared_noise else _generator_on(halo.device)
    for (t, k), mu in means.items():  # times, then patches in global order
        origin = (int(grid.origins[k][0]), int(grid.origins[k][1]))
        x, off = halo.inputs([(t, k)]), halo.offsets([(t, k)])
        mean = torch.from_numpy(mu[None]).to(halo.device)
        for group in groups:
            n = len(group)  # one row per member: contiguous copies of the patch's input
            gens: list[RandomSource] = [noise(seed, task.times[t], m, origin) for m in group]
            with torch.no_grad():
                res = model.sample(
                    x.repeat(n, 1, 1, 1),
                    generators=gens,
                    sampler=task.sampler,
                    mean=mean.repeat(n, 1, 1, 1),
                    offsets=off.repeat(n, 1),
                )
            for m, value in zip(group, res.float().cpu().numpy()):
                if m in where:
                    halo.add(acc[where[m], t], k, value)


def _generator_on(device: torch.device) -> NoiseFactory:
    """:func:`patch_generator` on the model's device: torch draws CUDA noise from CUDA
    generators, so independent-noise members are reproducible per device type, not across."""
    return functools.partial(patch_generator, device=device)


def _patch_input(x: np.ndarray, grid: PatchGrid, plan: BlockPlan, k: int) -> np.ndarray:
    """Patch ``k`` of a halo field ``x`` (C, rows, cols), reflected at the domain edge."""
    (r0, c0), (H, W), (ph, pw) = grid.origins[k], grid.domain, grid.patch
    rows = reflect_index(int(r0), ph, H) - plan.halo_rows[0]
    cols = reflect_index(int(c0), pw, W) - plan.halo_cols[0]
    return np.ascontiguousarray(x[:, rows][:, :, cols])


def _overlap(
    grid: PatchGrid, plan: BlockPlan, k: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Pixels of patch ``k`` inside the block: (block slices, patch slices)."""
    (y0, y1), (x0, x1), (ph, pw) = plan.rows, plan.cols, grid.patch
    r0, c0 = (int(v) for v in grid.origins[k])
    ra, rb = max(r0, y0), min(r0 + ph, y1)
    ca, cb = max(c0, x0), min(c0 + pw, x1)
    return (slice(ra - y0, rb - y0), slice(ca - x0, cb - x0)), (
        slice(ra - r0, rb - r0),
        slice(ca - c0, cb - c0),
    )


def _decode(
    codec: Codec, fused: np.ndarray, template: xr.Dataset, dims: tuple[str, ...]
) -> np.ndarray:
    """Normalised fused fields to physical units, channel first."""
    ds = codec.decode_targets(fused.astype(np.float32), template, dims=dims)
    return np.stack([ds[n].values for n in codec.out_channels])
