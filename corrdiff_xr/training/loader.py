"""Training batches from a lazy downscaling pair: chunk-aligned blocks, shuffled, resumable.

The blocks are xbatcher's: an :class:`xbatcher.BatchGenerator` with chunk-aligned windows
along time defines them, and a subclass of its torch ``MapDataset``
(:class:`~corrdiff_xr.training.xbatcher_blocks.BlockDataset`) reads them; the module
docstring there says what upstream xbatcher lacks and the adapter adds. The unit of reading
is a *block*, one or more whole time-chunks of the target store, never a single time step:
reading one step at a time from Zarr decodes the same compressed chunk again for every
sample (measured 43-134 samples/s against ~2,900 for chunk-aligned reads of the same store).
A block is read with its chunks' tasks, encoded once with the
:class:`~corrdiff_xr.codec.Codec`, then shuffled in memory.

The order of samples is a pure function of ``(seed, epoch)``
(:mod:`corrdiff_xr.training.loader_order`): blocks are permuted, ranks take every
``world_size``-th of them, samples are permuted within a block, and a rank's stream is its
blocks in that order, cut into consecutive batches (a batch may span two blocks), epoch after
epoch.

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
chunks' tasks cut from the graph materialised once (:mod:`corrdiff_xr.training.chunkread`: no
sliced dask graph to build, optimise and order per block). From there on everything is plain
numpy: :meth:`Codec.encode_arrays <corrdiff_xr.codec.Codec.encode_arrays>` regrids each input
straight into its channel of one preallocated float32 array (two small matrix products on
rectilinear grids), reorders samples while filling and normalises in place in float32.

Cost (``benchmarks/loader.py``, 64 x 64, 32-step chunks, 2 shared and busy CPU cores):
encoding a block of 32 samples takes ~2 ms against ~9-12 ms to read it, so the loader runs
near the raw Zarr read rate (0.80 of it on local disk on a quiet box, where the raw read
itself is fastest; 0.93-0.99 on busy cores; 1.4 from S3, where reading ahead hides latency).
That is thousands of times what a CorrDiff-Mini training step consumes on CPU.

At real sizes numpy encoding costs more than reading (448 x 448, 12 inputs: ~90 ms against
~57 ms per 8-sample block, far more on busy cores). With ``encode_device`` the workers only
read: they ship coarse inputs and raw targets (whole images as read, or each sample's patch),
and each batch is encoded on the training device (:mod:`corrdiff_xr.training.device_encode`); training does so on CUDA
(``benchmarks/loader.py --preset taiwan|conus``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import pickle
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import torch

from corrdiff_xr.dims import TIME, X, Y
from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.features import fine_lat_lon
from corrdiff_xr.training.batch import Batch
from corrdiff_xr.training.device_encode import COARSE, DeviceEncoder
from corrdiff_xr.training.loader_order import (
    _patch_generator,  # noqa: F401  (keyed patch origins; tests import it from here)
    patch_origins,
    rank_blocks,
    within_block_order,
)
from corrdiff_xr.training.xbatcher_blocks import BlockDataset, RawBlock, block_bounds

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import DownscalingData

BLOCK, ROW = "block/", "row"  # shipped whole-image targets as read, and each sample's row

#: one shipped block or batch part: per-sample arrays (numpy, or tensors once a DataLoader
#: worker sent them), whole-image ``BLOCK`` arrays, its ``epoch``; or an ``error``
Part = dict[str, Any]

__all__ = ["Batch", "ChunkShuffleLoader", "block_bounds", "rank_blocks"]


def _worker_init(_: int) -> None:
    # Dask's threaded scheduler hangs in forked workers; one torch thread per worker.
    dask.config.set(scheduler="synchronous")
    torch.set_num_threads(1)
    # Remote filesystems (s3fs, gcsfs) keep sessions bound to the parent's event loop, which
    # a forked child cannot use; a pickle round trip rebuilds them for this process.
    info = torch.utils.data.get_worker_info()
    assert info is not None and isinstance(info.dataset, _BlockReader)  # called in a worker
    info.dataset.loader = pickle.loads(pickle.dumps(info.dataset.loader))


class _BlockReader(torch.utils.data.IterableDataset):
    """Yields whole encoded blocks of a rank's stream, from item ``start`` on (forever or
    for ``n_items``); worker ``w`` of ``W`` yields items ``start + w, start + w + W, ...``."""

    def __init__(self, loader: ChunkShuffleLoader, start: int, n_items: int | None):
        self.loader, self.start, self.n_items = loader, start, n_items

    def __iter__(self) -> Iterator[Part]:
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

    The blocks are items of an xbatcher torch dataset
    (:class:`~corrdiff_xr.training.xbatcher_blocks.BlockDataset`, in ``dataset``); this
    class adds their ``(seed, epoch)`` order, the rank's share, the resume position,
    encoding and patches.

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
        Minimum time steps per block (whole chunks are merged; a partial first chunk and the
        last window may be shorter); default one time-chunk of the first target variable.
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
    encode_device : torch.device or str, optional
        None (default): blocks are encoded with numpy where they are read (workers or reading
        threads). A device: workers ship coarse inputs and raw targets, and each batch is
        encoded there (:class:`~corrdiff_xr.training.device_encode.DeviceEncoder`), its
        tensors left on that device; the samples, their order and patches are the same.
    """

    def __init__(
        self,
        pair: DownscalingData,
        codec: Codec,
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
        encode_device: torch.device | str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.codec = codec
        self.batch_size, self.seed, self.shuffle, self.epochs = batch_size, seed, shuffle, epochs
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        # Inputs are read on the coarse grid and regridded in numpy by the codec, straight
        # into the batch (16x less to read than the lazily regridded inputs, no dask graph).
        self.dataset = BlockDataset(pair, block_size=block_size, lead_time=lead_time)
        self._weights = pair.regrid_weights
        self._times = pair.fine[TIME].values  # named by a refused value
        # time features (codec.features) are computed per block from its times on this grid
        self._lat_lon = fine_lat_lon(pair.fine) if codec.features else None
        self._epoch_cache: tuple[int, list[int]] | None = None
        self.encode_device = None if encode_device is None else torch.device(encode_device)
        self._encoder: DeviceEncoder | None = None  # built on first use: it reads the static
        self.image_shape = (int(pair.fine.sizes[Y]), int(pair.fine.sizes[X]))
        if patch_shape is not None:
            patch_shape = (int(patch_shape[0]), int(patch_shape[1]))
            if patch_shape[0] > self.image_shape[0] or patch_shape[1] > self.image_shape[1]:
                raise ValueError(
                    f"patch shape {patch_shape} is larger than the domain {self.image_shape} (y, x)"
                )
        self.patch_shape = patch_shape
        self.blocks = self.dataset.blocks
        if len(self.blocks) < world_size:
            raise ValueError(
                f"the data hold {len(self.blocks)} time block(s), fewer than the {world_size} "
                "ranks; use a smaller loader block_size or time chunks"
            )
        self.blocks_per_epoch = len(
            rank_blocks(len(self.blocks), seed=seed, epoch=0, rank=rank, world_size=world_size)
        )
        self.epoch, self.position = 0, 0

    def __getstate__(self) -> dict[str, Any]:
        # workers rebuild the loader by pickling; the encoder's tensors stay on the device
        return {**self.__dict__, "_encoder": None}

    # -- the stream ------------------------------------------------------------------------
    def _epoch_indices(self, epoch: int) -> list[int]:
        """Indices into ``dataset`` of this rank's blocks in ``epoch``, in reading order."""
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
            cached = self._epoch_cache = (epoch, [int(i) for i in idx])
        return cached[1]

    def epoch_blocks(self, epoch: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of this rank's blocks in ``epoch``, in reading order."""
        return [self.blocks[i] for i in self._epoch_indices(epoch)]

    def epoch_length(self, epoch: int) -> int:
        """Samples in this rank's stream during ``epoch``."""
        return sum(stop - start for start, stop in self.epoch_blocks(epoch))

    def sample_order(self, epoch: int) -> np.ndarray:
        """Time indices of this rank's stream in ``epoch``, in order."""
        parts = [
            start
            + within_block_order(
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
    def _read_block(self, item: int, scheduler: str | None = None) -> tuple[RawBlock, np.ndarray]:
        """Stream item ``item`` as read from the dataset, and its samples' reading order."""
        epoch, k = divmod(item, self.blocks_per_epoch)
        block = self.dataset.read(self._epoch_indices(epoch)[k], scheduler)
        order = within_block_order(
            block.stop - block.start,
            seed=self.seed,
            epoch=epoch,
            start=block.start,
            shuffle=self.shuffle,
        )
        return block, order

    def _read_item(self, item: int, scheduler: str | None = None) -> Part:
        epoch = item // self.blocks_per_epoch
        block, order = self._read_block(item, scheduler)
        if self.encode_device is not None:
            return self._raw_item(block, order, epoch)
        # from here on plain numpy: regrid, shuffle and normalise straight into the batch arrays
        times = (block.start + order).astype(np.int64)
        labels = self._times[times]
        features = {}
        if self._lat_lon is not None:  # in block time order, like the other fields
            features = self.codec.feature_fields(
                self._times[block.start : block.stop], *self._lat_lon
            )
        x = self.codec.encode_arrays(
            {**block.coarse, **self.dataset.static(scheduler), **features}, role="inputs",
            order=order, weights=self._weights, times=labels,
        )  # fmt: skip
        y = self.codec.encode_arrays(block.targets, role="targets", order=order, times=labels)
        offsets = np.zeros((len(order), 2), dtype=np.int64)
        if self.patch_shape is not None:
            x, y, offsets = self._crop(x, y, times, epoch, self.patch_shape)
        out: Part = {
            "inputs": x,
            "targets": y,
            "offsets": offsets,
            "time_index": times,
            "epoch": np.int64(epoch),
        }
        if block.lead is not None:
            out["lead_time"] = block.lead.astype(np.int64)[order]
        return out

    def _crop(
        self, x: np.ndarray, y: np.ndarray, times: np.ndarray, epoch: int, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ph, pw = shape
        offsets = patch_origins(self.image_shape, shape, times, seed=self.seed, epoch=epoch)
        xs = np.stack([x[i, :, r : r + ph, c : c + pw] for i, (r, c) in enumerate(offsets)])
        ys = np.stack([y[i, :, r : r + ph, c : c + pw] for i, (r, c) in enumerate(offsets)])
        return xs, ys, offsets

    def _raw_item(self, block: RawBlock, order: np.ndarray, epoch: int) -> Part:
        """What a worker ships for device encoding: coarse inputs in sample order; targets as
        read (whole images: the batch's rows are taken when it is cut) or cropped to each
        sample's patch, float32 ``(N, C_out, h, w)``."""
        times = (block.start + order).astype(np.int64)
        n, (ph, pw) = len(order), self.patch_shape or self.image_shape
        offsets = np.zeros((n, 2), dtype=np.int64)
        if self.patch_shape is not None:
            offsets = patch_origins(
                self.image_shape, self.patch_shape, times, seed=self.seed, epoch=epoch
            )
        out: Part = {
            COARSE + v: np.ascontiguousarray(block.coarse[v][order]) for v in self.codec.inputs
        }
        out.update(offsets=offsets, time_index=times, epoch=np.int64(epoch))
        if self.patch_shape is None:  # whole images as read: the main process takes the rows
            out[ROW] = order
            out.update({BLOCK + name: block.targets[name] for name in self.codec.targets})
        else:  # reorder, crop and cast in one copy: only the patches travel
            out["targets"] = y = np.empty((n, len(self.codec.targets), ph, pw), np.float32)
            for c, name in enumerate(self.codec.targets):
                a = block.targets[name]
                for i, (j, (r, col)) in enumerate(zip(order, offsets)):
                    y[i, c] = a[j, r : r + ph, col : col + pw]
        if block.lead is not None:
            out["lead_time"] = block.lead.astype(np.int64)[order]
        return out

    def _blocks(self, first_item: int) -> Iterator[Part]:
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

    def _threaded_blocks(self, first_item: int, n_items: int | None) -> Iterator[Part]:
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
        pending: list[Part] = []
        n_pending = 0
        for block in self._blocks(item):
            block = _sliced(block, slice(skip, None))
            skip = 0
            pending.append(block)
            n_pending += len(block["time_index"])
            while n_pending >= self.batch_size:
                parts, pending, n_pending = self._cut(pending, n_pending)
                yield self._batch(parts)
        if n_pending:  # the last, short batch of a finite stream
            yield self._batch(self._cut(pending, n_pending, size=n_pending)[0])

    def _batch(self, parts: dict[str, np.ndarray]) -> Batch:
        if self.encode_device is not None:
            return self._device_encoder()(parts)
        t = {k: torch.from_numpy(np.asarray(v)) for k, v in parts.items() if k != "epoch"}
        return Batch(t["inputs"], t["targets"], t["offsets"], t["time_index"], t.get("lead_time"))

    def _device_encoder(self) -> DeviceEncoder:
        if self._encoder is None:
            assert self.encode_device is not None  # only device encoding asks for it
            self._encoder = DeviceEncoder(
                self.codec, self._weights, self.dataset.static(), self._lat_lon, self._times,
                self.encode_device,
            )  # fmt: skip
        return self._encoder

    def _cut(
        self, pending: list[Part], n_pending: int, size: int | None = None
    ) -> tuple[dict[str, np.ndarray], list[Part], int]:
        size = size or self.batch_size
        taken: list[Part] = []
        need = size
        while need:
            head = pending[0]
            n = len(head["time_index"])
            if n <= need:
                taken.append(pending.pop(0))
                need -= n
            else:
                taken.append(_sliced(head, slice(None, need)))
                pending[0] = _sliced(head, slice(need, None))
                need = 0
        # Advance the resumable position by the samples handed out, epoch by epoch.
        for part in taken:
            epoch = int(part["epoch"])
            if epoch != self.epoch:
                self.epoch, self.position = epoch, 0
            self.position += len(part["time_index"])
            if self.position == self.epoch_length(self.epoch):
                self.epoch, self.position = self.epoch + 1, 0

        def cat(key: str) -> np.ndarray:
            parts = [np.asarray(p[key]) for p in taken]
            # a batch inside one block is a view of it (a leading-axis slice is contiguous)
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        parts = {k: cat(k) for k in taken[0] if k not in ("epoch", ROW) and not k.startswith(BLOCK)}
        if ROW in taken[0]:  # whole images shipped as read: this batch's rows, in order
            parts["targets"] = self._take_rows(taken)
        return parts, pending, n_pending - size

    def _take_rows(self, taken: list[Part]) -> np.ndarray:
        names = self.codec.targets
        n = sum(len(p[ROW]) for p in taken)
        y = np.empty((n, len(names)) + self.image_shape, dtype=np.float32)
        i = 0
        for part in taken:
            for c, name in enumerate(names):
                block = np.asarray(part[BLOCK + name])
                for k, row in enumerate(np.asarray(part[ROW])):
                    y[i + k, c] = block[row]
            i += len(part[ROW])
        return y


def _sliced(part: Part, rows: slice) -> Part:
    """``part`` with its per-sample arrays sliced; block arrays (indexed by ``ROW``) stay whole."""
    return {
        k: np.asarray(v)[rows] if np.ndim(v) and not k.startswith(BLOCK) else v
        for k, v in part.items()
    }
