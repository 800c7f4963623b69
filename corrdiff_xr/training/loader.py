"""Training batches from a lazy downscaling pair: chunk-aligned blocks, shuffled, resumable.

Why not per-sample xbatcher: reading one time step at a time from Zarr decodes the same
compressed chunk again for every sample (measured 43-134 samples/s against ~2,900 for
chunk-aligned reads of the same store). So the unit of reading here is a *block*: one or more
whole time-chunks of the target store, read with a single dask compute, encoded once with the
:class:`~corrdiff_xr.codec.Codec`, then shuffled in memory.

The order of samples is a pure function of ``(seed, epoch)``:

1. the blocks of the (time-selected) pair are permuted with ``default_rng([seed, epoch])``;
2. rank ``r`` of ``world_size`` takes blocks ``r, r + world_size, ...`` of that permutation,
   so each rank reads only its share of the store;
3. samples within a block are permuted with ``default_rng([seed, epoch, block_start])``;
4. a rank's stream is its blocks in that order, cut into consecutive batches (a batch may
   span two blocks), epoch after epoch.

DataLoader workers each read whole blocks (worker ``w`` of ``W`` takes every ``W``-th block of
the rank's stream) and the main process cuts batches; since a DataLoader visits workers in
turn, the stream and therefore every batch is the same for any number of workers. When the
per-rank samples per optimiser step are a multiple of the block length, the set of samples
in each step is also independent of the number of ranks, so DDP reproduces one process.

The position in the stream, ``(epoch, position)``, is all that is needed to resume.

Dask's threaded scheduler deadlocks inside forked DataLoader workers, so workers switch to
the synchronous scheduler in their ``worker_init_fn``; they also rebuild the pair by a pickle
round trip, because remote filesystems (s3fs, gcsfs) hold sessions bound to the parent's
event loop. Without workers, blocks are read ahead in background threads.

Hot path: a block's inputs are read on the *coarse* grid, and a block is read by running its
chunks' tasks cut from the graph materialised once (:mod:`corrdiff_xr.training.chunkread`: no sliced
dask graph to build, optimise and order per block). From there on everything is plain
numpy: :meth:`Codec.encode_arrays <corrdiff_xr.codec.Codec.encode_arrays>` regrids each input
straight into its channel of one preallocated float32 array (two small matrix products on
rectilinear grids), reorders samples while filling and normalises in place in float32.

Cost (``benchmarks/loader.py``, 64 x 64, 32-step chunks, 2 shared and busy CPU cores):
encoding a block of 32 samples takes ~2 ms against ~9-12 ms to read it, so the loader runs
at the raw Zarr read rate (0.93-0.99 of it on local disk, ~1 from S3; was 0.26 and 0.90).
That is thousands of times what a CorrDiff-Mini training step consumes on CPU.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import pickle
from collections.abc import Iterator, Sequence
from typing import Any

import dask
import numpy as np
import torch
import xarray as xr

from corrdiff_xr.dims import TIME, X, Y
from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.features import fine_lat_lon
from corrdiff_xr.noise import TRAIN_PATCH, keyed_generator
from corrdiff_xr.training.chunkread import Pieces, arrays, block_pieces, run_pieces

__all__ = ["Batch", "ChunkShuffleLoader", "block_bounds", "rank_blocks", "xbatcher_batches"]


@dataclasses.dataclass
class Batch:
    """One batch of normalised tensors.

    Attributes
    ----------
    inputs : (N, C_in, h, w) float32, regridded inputs and static fields.
    targets : (N, C_out, h, w) float32.
    offsets : (N, 2) int64 global (row, col) of each sample's top-left pixel.
    time_index : (N,) int64 position of each sample along ``time`` of the loader's pair.
    lead_time : (N,) int64 lead-time labels, or None when the data have none.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    offsets: torch.Tensor
    time_index: torch.Tensor
    lead_time: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """Copy of the batch on ``device``."""
        move = lambda t: None if t is None else t.to(device, non_blocking=True)
        return Batch(*(move(getattr(self, f.name)) for f in dataclasses.fields(self)))


def block_bounds(chunks: Sequence[int], *, block_size: int | None = None) -> list[tuple[int, int]]:
    """Chunk-aligned ``(start, stop)`` blocks along time.

    Consecutive chunks are merged until a block holds at least ``block_size`` steps
    (default: one chunk per block), so no chunk is ever split between blocks.
    """
    if block_size is not None and block_size < 1:
        raise ValueError(f"loader block_size must be >= 1, got {block_size}")
    bounds, start, stop = [], 0, 0
    for size in chunks:
        stop += int(size)
        if stop - start >= (block_size or 1):
            bounds.append((start, stop))
            start = stop
    if stop > start:
        bounds.append((start, stop))
    return bounds


def rank_blocks(
    n_blocks: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
) -> np.ndarray:
    """Indices of the blocks rank ``rank`` reads in ``epoch``, in reading order."""
    order = (
        np.random.default_rng([seed, epoch]).permutation(n_blocks)
        if shuffle
        else np.arange(n_blocks)
    )
    return order[rank::world_size]


def _within_block_order(n: int, *, seed: int, epoch: int, start: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, start]).permutation(n)


def _worker_init(_: int) -> None:
    # Dask's threaded scheduler hangs in forked workers; one torch thread per worker.
    dask.config.set(scheduler="synchronous")
    torch.set_num_threads(1)
    # Remote filesystems (s3fs, gcsfs) keep sessions bound to the parent's event loop, which
    # a forked child cannot use; a pickle round trip rebuilds them for this process.
    info = torch.utils.data.get_worker_info()
    info.dataset.loader = pickle.loads(pickle.dumps(info.dataset.loader))


class _BlockReader(torch.utils.data.IterableDataset):
    """Yields whole encoded blocks of a rank's stream, from item ``start`` on (forever or
    for ``n_items``); worker ``w`` of ``W`` yields items ``start + w, start + w + W, ...``."""

    def __init__(self, loader: ChunkShuffleLoader, start: int, n_items: int | None):
        self.loader, self.start, self.n_items = loader, start, n_items

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        stop = None if self.n_items is None else self.start + self.n_items
        for item in itertools.islice(itertools.count(self.start), worker, None, n_workers):
            if stop is not None and item >= stop:
                return
            try:
                yield self.loader._read_item(item)
            except CorrDiffError as err:  # to the main process whole: one line, no worker trace
                yield {"error": err}
                return


class ChunkShuffleLoader:
    """Iterable of :class:`Batch` over a lazy pair, reading chunk-aligned blocks.

    Parameters
    ----------
    pair : DownscalingData
        Lazy pair (already restricted to the training period).
    codec : Codec
        Normalises inputs (regridded inputs + static, in ``codec.in_channels`` order) and
        targets.
    batch_size : int
        Samples per batch on this rank.
    block_size : int, optional
        Minimum time steps per block (whole chunks are merged); default one time-chunk of
        the first target variable.
    seed : int
        Seed of the sample order and patch origins.
    rank, world_size : int
        This process's share of the blocks.
    shuffle : bool
        Random block and within-block order; False reads in time order.
    epochs : int, optional
        Stop after this many epochs; None (default) streams forever.
    patch_shape : (int, int), optional
        Crop one random patch of this (rows, cols) shape per sample, with its origin in
        ``Batch.offsets``; None yields full images.
    num_workers, prefetch_factor : int
        DataLoader workers (0 reads in this process) and blocks prefetched per worker.
    lead_time : str, optional
        Name of an integer variable along ``time`` holding lead-time labels.
    """

    def __init__(
        self,
        pair: Any,
        codec: Any,
        *,
        batch_size: int,
        block_size: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        epochs: int | None = None,
        patch_shape: tuple[int, int] | None = None,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        lead_time: str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.codec = codec
        self.batch_size, self.seed, self.shuffle, self.epochs = batch_size, seed, shuffle, epochs
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        # The arrays behind the pair, so a block is one dask.compute without xarray overhead.
        # Inputs are read on the coarse grid and regridded in numpy by the codec, straight
        # into the batch (16x less to read than the lazily regridded inputs, no dask graph).
        self._coarse = arrays(pair.coarse)
        self._weights = pair.regrid_weights
        self._static_lazy = arrays(pair.static_fields)
        self._static: dict[str, Any] | None = None  # read on first use, then kept
        self._targets = arrays(pair.fine)
        self._times = pair.fine[TIME].values  # named by a refused value
        # time features (codec.features) are computed per block from its times on this grid
        self._lat_lon = fine_lat_lon(pair.fine) if codec.features else None
        self._lead_time = lead_time
        if lead_time is not None and lead_time not in pair.dataset.variables:
            raise KeyError(f"lead-time variable {lead_time!r} is not in the dataset")
        self._lead_values = None if lead_time is None else pair.dataset[lead_time].data
        self._epoch_cache: tuple[int, list[tuple[int, int]]] | None = None
        n_time = pair.fine.sizes[TIME]
        self.image_shape = (int(pair.fine.sizes[Y]), int(pair.fine.sizes[X]))
        if patch_shape is not None:
            patch_shape = (int(patch_shape[0]), int(patch_shape[1]))
            if patch_shape[0] > self.image_shape[0] or patch_shape[1] > self.image_shape[1]:
                raise ValueError(
                    f"patch shape {patch_shape} is larger than the domain {self.image_shape} (y, x)"
                )
        self.patch_shape = patch_shape
        self.blocks = block_bounds(_time_chunks(pair.fine, n_time), block_size=block_size)
        if len(self.blocks) < world_size:
            raise ValueError(
                f"the data hold {len(self.blocks)} time block(s), fewer than the {world_size} "
                "ranks; use a smaller loader block_size or time chunks"
            )
        self.blocks_per_epoch = len(
            rank_blocks(len(self.blocks), seed=seed, epoch=0, rank=rank, world_size=world_size)
        )
        self.epoch, self.position = 0, 0

    # -- the stream ------------------------------------------------------------------------
    def epoch_blocks(self, epoch: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of this rank's blocks in ``epoch``, in reading order."""
        cached = self._epoch_cache  # one read: prefetch threads may replace it meanwhile
        if cached is None or cached[0] != epoch:
            idx = rank_blocks(
                len(self.blocks),
                seed=self.seed,
                epoch=epoch,
                rank=self.rank,
                world_size=self.world_size,
                shuffle=self.shuffle,
            )
            cached = self._epoch_cache = (epoch, [self.blocks[i] for i in idx])
        return list(cached[1])

    def epoch_length(self, epoch: int) -> int:
        """Samples in this rank's stream during ``epoch``."""
        return sum(stop - start for start, stop in self.epoch_blocks(epoch))

    def sample_order(self, epoch: int) -> np.ndarray:
        """Time indices of this rank's stream in ``epoch``, in order."""
        parts = [
            start
            + _within_block_order(
                stop - start, seed=self.seed, epoch=epoch, start=start, shuffle=self.shuffle
            )
            for start, stop in self.epoch_blocks(epoch)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: samples consumed in ``epoch``."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict`."""
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position <= self.epoch_length(epoch):
            raise ValueError(f"loader position {position} is outside epoch {epoch}")
        self.epoch, self.position = epoch, position

    # -- reading ---------------------------------------------------------------------------
    def _read_block(self, item: int, scheduler: str | None = None) -> tuple:
        """``(coarse, targets, order, lead)`` numpy blocks of stream item ``item``."""
        epoch, k = divmod(item, self.blocks_per_epoch)
        start, stop = self.epoch_blocks(epoch)[k]
        order = _within_block_order(
            stop - start, seed=self.seed, epoch=epoch, start=start, shuffle=self.shuffle
        )
        lead = None if self._lead_values is None else self._lead_values[start:stop]
        parts = {
            (role, name): block_pieces(a, start, stop)
            for role, arrays in (("coarse", self._coarse), ("targets", self._targets))
            for name, a in arrays.items()
        }
        pieces = {k: v for k, v in parts.items() if isinstance(v, Pieces)}
        lazy = {k: v for k, v in parts.items() if not isinstance(v, Pieces)}
        values = run_pieces(list(pieces.values()), scheduler)
        if lazy or self._static is None or lead is not None:
            lazy, self._static, lead = dask.compute(
                lazy, self._static or self._static_lazy, lead, scheduler=scheduler
            )
        out = {"coarse": {}, "targets": {}}
        for (role, name), piece in pieces.items():
            out[role][name] = piece.assemble(values)
        for (role, name), value in lazy.items():
            out[role][name] = np.asarray(value)
        coarse, targets = out["coarse"], out["targets"]
        return coarse, targets, order, lead

    def _read_item(self, item: int, scheduler: str | None = None) -> dict[str, np.ndarray]:
        epoch = item // self.blocks_per_epoch
        coarse, targets, order, lead = self._read_block(item, scheduler)
        start, stop = self.epoch_blocks(epoch)[item % self.blocks_per_epoch]
        # from here on plain numpy: regrid, shuffle and normalise straight into the batch arrays
        times = (start + order).astype(np.int64)
        labels = self._times[times]
        features = {}
        if self._lat_lon is not None:  # in block time order, like the other fields
            features = self.codec.feature_fields(self._times[start:stop], *self._lat_lon)
        x = self.codec.encode_arrays(
            {**coarse, **self._static, **features}, role="inputs", order=order,
            weights=self._weights, times=labels,
        )  # fmt: skip
        y = self.codec.encode_arrays(targets, role="targets", order=order, times=labels)
        offsets = np.zeros((len(order), 2), dtype=np.int64)
        if self.patch_shape is not None:
            x, y, offsets = self._crop(x, y, times, epoch)
        out = {
            "inputs": x,
            "targets": y,
            "offsets": offsets,
            "time_index": times,
            "epoch": np.int64(epoch),
        }
        if lead is not None:
            out["lead_time"] = np.asarray(lead, dtype=np.int64)[order]
        return out

    def _crop(self, x: np.ndarray, y: np.ndarray, times: np.ndarray, epoch: int):
        from corrdiff_xr.patching import random_origins

        ph, pw = self.patch_shape
        offsets = np.stack(
            [
                np.asarray(
                    random_origins(
                        self.image_shape,
                        self.patch_shape,
                        1,
                        generator=_patch_generator(self.seed, epoch, int(t)),
                    )
                )[0]
                for t in times
            ]
        ).astype(np.int64)
        xs = np.stack([x[i, :, r : r + ph, c : c + pw] for i, (r, c) in enumerate(offsets)])
        ys = np.stack([y[i, :, r : r + ph, c : c + pw] for i, (r, c) in enumerate(offsets)])
        return xs, ys, offsets

    def _blocks(self, first_item: int) -> Iterator[dict[str, Any]]:
        n_items = None if self.epochs is None else self.epochs * self.blocks_per_epoch - first_item
        if self.num_workers == 0:
            yield from self._threaded_blocks(first_item, n_items)
            return
        reader = _BlockReader(self, first_item, n_items)
        for block in torch.utils.data.DataLoader(
            reader,
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor,
            worker_init_fn=_worker_init,
            persistent_workers=False,
            multiprocessing_context="fork",
        ):
            if "error" in block:
                raise block["error"]
            yield block

    def _threaded_blocks(self, first_item: int, n_items: int | None) -> Iterator[dict[str, Any]]:
        # Without worker processes, read ``prefetch_factor`` blocks ahead in background
        # threads, so reading overlaps the training step that consumes the previous block.
        items = (
            itertools.count(first_item)
            if n_items is None
            else iter(range(first_item, first_item + n_items))
        )
        read = self._read_item
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, self.prefetch_factor)
        ) as pool:
            pending = collections.deque(
                pool.submit(read, i) for i in itertools.islice(items, self.prefetch_factor)
            )
            try:
                while pending:
                    block = pending.popleft().result()
                    nxt = next(items, None)
                    if nxt is not None:
                        pending.append(pool.submit(read, nxt))
                    yield block
            finally:
                for future in pending:
                    future.cancel()

    def __iter__(self) -> Iterator[Batch]:
        # Find the block holding the current position; re-read it and skip what was consumed.
        item, skip = self.epoch * self.blocks_per_epoch, self.position
        for start, stop in self.epoch_blocks(self.epoch):
            if skip < stop - start:
                break
            skip -= stop - start
            item += 1
        pending: list[dict[str, Any]] = []
        n_pending = 0
        for block in self._blocks(item):
            block = {k: np.asarray(v)[skip:] if np.ndim(v) else v for k, v in block.items()}
            skip = 0
            pending.append(block)
            n_pending += len(block["time_index"])
            while n_pending >= self.batch_size:
                batch, pending, n_pending = self._cut(pending, n_pending)
                yield batch
        if n_pending:  # the last, short batch of a finite stream
            yield self._cut(pending, n_pending, size=n_pending)[0]

    def _cut(self, pending: list[dict[str, Any]], n_pending: int, size: int | None = None):
        size = size or self.batch_size
        taken: list[dict[str, Any]] = []
        need = size
        while need:
            head = pending[0]
            n = len(head["time_index"])
            if n <= need:
                taken.append(pending.pop(0))
                need -= n
            else:
                taken.append({k: v[:need] if np.ndim(v) else v for k, v in head.items()})
                pending[0] = {k: v[need:] if np.ndim(v) else v for k, v in head.items()}
                need = 0
        # Advance the resumable position by the samples handed out, epoch by epoch.
        for part in taken:
            epoch = int(part["epoch"])
            if epoch != self.epoch:
                self.epoch, self.position = epoch, 0
            self.position += len(part["time_index"])
            if self.position == self.epoch_length(self.epoch):
                self.epoch, self.position = self.epoch + 1, 0

        def cat(key: str) -> torch.Tensor:
            parts = [np.asarray(p[key]) for p in taken]
            # a batch inside one block is a view of it (a leading-axis slice is contiguous)
            return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))

        lead = cat("lead_time") if "lead_time" in taken[0] else None
        batch = Batch(cat("inputs"), cat("targets"), cat("offsets"), cat("time_index"), lead)
        return batch, pending, n_pending - size


def _patch_generator(seed: int, epoch: int, time_index: int) -> torch.Generator:
    # Patch origins keyed by (seed, epoch, sample), so they never depend on batching/workers.
    return keyed_generator(TRAIN_PATCH, seed, epoch, time_index)


def _time_chunks(ds: xr.Dataset, n_time: int) -> tuple[int, ...]:
    for var in ds.data_vars.values():
        if var.chunks is not None and TIME in var.dims:
            return tuple(var.chunks[var.dims.index(TIME)])
    return (n_time,)


def xbatcher_batches(pair: Any, codec: Any, *, batch_size: int) -> Iterator[Batch]:
    """Sequential full-image batches through ``xbatcher.BatchGenerator``, one time step per
    read (the slow, simple path; kept as the baseline of ``benchmarks/loader.py``)."""
    import xbatcher

    inputs = xr.merge([pair.inputs_on_fine, pair.static_fields], compat="override")
    sizes = {TIME: 1, Y: pair.fine.sizes[Y], X: pair.fine.sizes[X]}
    gen_in = xbatcher.BatchGenerator(inputs, input_dims=sizes, preload_batch=False)
    gen_out = xbatcher.BatchGenerator(pair.fine, input_dims=sizes, preload_batch=False)
    buf_x, buf_y, times = [], [], []
    for t, (bx, by) in enumerate(zip(gen_in, gen_out)):
        buf_x.append(codec.encode_inputs(bx.load()))
        buf_y.append(codec.encode_targets(by.load()))
        times.append(t)
        if len(times) == batch_size:
            yield _stack(buf_x, buf_y, times)
            buf_x, buf_y, times = [], [], []
    if times:
        yield _stack(buf_x, buf_y, times)


def _stack(xs: list, ys: list, times: list) -> Batch:
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32))
    y = torch.from_numpy(np.concatenate(ys).astype(np.float32))
    return Batch(x, y, torch.zeros((len(x), 2), dtype=torch.int64), torch.tensor(times))
