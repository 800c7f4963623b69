"""The roads ``benchmarks/loader.py`` compares the training loader against (not in the package).

* :func:`xbatcher_batches`: the naive xbatcher road, one time step per read through
  ``xbatcher.BatchGenerator`` and the xarray codec (the baseline the chunk-aligned design
  replaces);
* :class:`FrozenLoader`: the loader as it was before its blocks came from xbatcher
  (:mod:`corrdiff_xr.training.xbatcher_blocks`): a frozen copy of its block geometry
  (whole chunks merged up to ``block_size``) and read loop, over today's order, encoding and
  batching, so the two differ only in how blocks are defined and read;
* :func:`compare_frozen`: the two streamed side by side (``loader.py --vs-frozen``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import torch
import xarray as xr

from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.dims import TIME, X, Y
from corrdiff_xr.features import fine_lat_lon
from corrdiff_xr.training.batch import Batch
from corrdiff_xr.training.chunkread import Pieces, arrays, block_pieces, run_pieces
from corrdiff_xr.training.loader import ChunkShuffleLoader
from corrdiff_xr.training.xbatcher_blocks import RawBlock, time_chunks


def xbatcher_batches(pair: Any, codec: Any, *, batch_size: int) -> Iterator[Batch]:
    """Sequential full-image batches through ``xbatcher.BatchGenerator``, one time step per
    read (the slow, simple path)."""
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


def frozen_block_bounds(chunks: Sequence[int], block_size: int | None) -> list[tuple[int, int]]:
    """The old geometry: consecutive chunks merged until a block holds ``block_size`` steps."""
    bounds, start, stop = [], 0, 0
    for size in chunks:
        stop += int(size)
        if stop - start >= (block_size or 1):
            bounds.append((start, stop))
            start = stop
    if stop > start:
        bounds.append((start, stop))
    return bounds


class _FrozenStatic:
    """The static fields where today's loader asks its dataset for them: read once, with the
    first block (as the old loader did) or on first use."""

    def __init__(self, loader: FrozenLoader):
        self.loader = loader

    def static(self, scheduler: str | None = None) -> dict:
        if self.loader._static is None:
            self.loader._static = dask.compute(self.loader._static_lazy, scheduler=scheduler)[0]
        return self.loader._static


class FrozenLoader(ChunkShuffleLoader):
    """Today's loader with the old constructor, block geometry and read loop (one
    ``dask.compute`` with the first block's static fields, no xbatcher dataset)."""

    def __init__(  # the old constructor, frozen
        self,
        pair: Any,
        codec: Any,
        *,
        batch_size: int,
        block_size: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = None,
        num_workers: int = 0,
        prefetch_factor: int = 2,
    ):
        self.codec = codec
        self.batch_size, self.seed, self.shuffle, self.epochs = batch_size, seed, shuffle, epochs
        self.rank, self.world_size = 0, 1
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self._coarse = arrays(pair.coarse)
        self._weights = pair.regrid_weights
        self._static_lazy = arrays(pair.static_fields)
        self._static: dict | None = None
        self._targets = arrays(pair.fine)
        self._times = pair.fine[TIME].values
        self._lat_lon = fine_lat_lon(pair.fine) if codec.features else None
        self._lead_values = None
        self._epoch_cache = None
        self.encode_device, self._encoder = None, None
        self.image_shape = (int(pair.fine.sizes[Y]), int(pair.fine.sizes[X]))
        self.patch_shape = None
        n_time = pair.fine.sizes[TIME]
        self.blocks = frozen_block_bounds(time_chunks(pair.fine, n_time), block_size)
        self.blocks_per_epoch = len(self.blocks)
        self.epoch, self.position = 0, 0
        self.dataset = _FrozenStatic(self)  # the old loader had no dataset

    def _read_block(self, item: int, scheduler: str | None = None) -> tuple[RawBlock, np.ndarray]:
        epoch, k = divmod(item, self.blocks_per_epoch)
        start, stop = self.epoch_blocks(epoch)[k]
        order = self._order(start, stop, epoch)
        lead = None if self._lead_values is None else self._lead_values[start:stop]
        parts = {
            (role, name): block_pieces(a, start, stop)
            for role, group in (("coarse", self._coarse), ("targets", self._targets))
            for name, a in group.items()
        }
        pieces = {k: v for k, v in parts.items() if isinstance(v, Pieces)}
        lazy = {k: v for k, v in parts.items() if not isinstance(v, Pieces)}
        values = run_pieces(list(pieces.values()), scheduler)
        if lazy or self._static is None or lead is not None:
            lazy, self._static, lead = dask.compute(
                lazy, self._static or self._static_lazy, lead, scheduler=scheduler
            )
        out: dict[str, dict] = {"coarse": {}, "targets": {}}
        for (role, name), piece in pieces.items():
            out[role][name] = piece.assemble(values)
        for (role, name), value in lazy.items():
            out[role][name] = np.asarray(value)
        lead = None if lead is None else np.asarray(lead)
        return RawBlock(start, stop, out["coarse"], out["targets"], lead), order

    def _order(self, start: int, stop: int, epoch: int) -> np.ndarray:
        from corrdiff_xr.training.loader_order import within_block_order

        return within_block_order(
            stop - start, seed=self.seed, epoch=epoch, start=start, shuffle=self.shuffle
        )


def _stream_rate(
    cls: type[ChunkShuffleLoader], pair: Any, codec: Any, args: Any, workers: int
) -> tuple[float, float, np.ndarray]:
    """Samples per wall second and per CPU second of this process (its reading threads
    included, forked workers not) of one loader streaming ``args.epochs`` epochs, and its
    time indices."""
    t0, c0 = time.perf_counter(), time.process_time()
    loader = cls(
        pair, codec, batch_size=args.batch, epochs=args.epochs, seed=1, num_workers=workers
    )
    times = np.concatenate([b.time_index.numpy() for b in loader])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(times) / wall, len(times) / cpu, times


def _read_ms(loader: ChunkShuffleLoader) -> float:
    """Milliseconds to read every block of epoch 0, one after another (sync scheduler)."""
    t0 = time.perf_counter()
    for i in range(loader.blocks_per_epoch):
        loader._read_block(i, scheduler="sync")
    return 1e3 * (time.perf_counter() - t0) / loader.blocks_per_epoch


def compare_frozen(args: Any, *, warm: Callable[..., None]) -> dict[str, Any]:
    """The xbatcher road (today's loader) against :class:`FrozenLoader` (the read road before
    it), on the same 64 x 64 disk store, in ``args.repeats`` alternating repetitions.

    Also, as yardsticks of the noise of busy shared cores: an A/A control (today's loader
    against itself, ``xbatcher_vs_itself_0w_median``) and the best of 9 alternating
    block-read passes of each (``read_ms_per_block_best``: the least disturbed)."""
    load_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    ds = synthetic_dataset(
        ny=args.size, nx=args.size, nt=args.nt, factor=4, chunks={"time": args.chunk}
    )
    reps: dict[str, list[float]] = {}
    roads = [("xbatcher", ChunkShuffleLoader), ("frozen", FrozenLoader)]
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads"):
        path = str(Path(tmp) / "bench.zarr")
        ds.to_zarr(path, mode="w")
        pair = open_pair(path)
        codec = Codec.from_pair(pair)
        warm(path, list(pair.names), args.nt, args.chunk)  # caches warmed equally for both
        for workers in (0, args.workers):
            for _, cls in roads:  # untimed: first-use costs
                _stream_rate(cls, pair, codec, args, workers)
            for rep in range(args.repeats):
                streams = {}
                for name, cls in roads if rep % 2 else roads[::-1]:
                    rate, cpu, streams[name] = _stream_rate(cls, pair, codec, args, workers)
                    reps.setdefault(f"{name}_{workers}w_samples_per_s", []).append(rate)
                    reps.setdefault(f"{name}_{workers}w_samples_per_cpu_s", []).append(cpu)
                if not np.array_equal(streams["xbatcher"], streams["frozen"]):
                    raise AssertionError("the two roads streamed different samples")
        for _ in range(args.repeats):  # A/A: what the same road scatters by on these cores
            for name in ("control_a", "control_b"):
                rate = _stream_rate(ChunkShuffleLoader, pair, codec, args, 0)[0]
                reps.setdefault(name, []).append(rate)
        loaders = {name: cls(pair, codec, batch_size=1, seed=1) for name, cls in roads}
        for _ in range(9):
            for name, loader in loaders.items():
                reps.setdefault(f"{name}_read", []).append(_read_ms(loader))
    out: dict = {"size": args.size, "nt": args.nt, "chunk": args.chunk, "batch": args.batch,
                 "epochs": args.epochs, "repeats": args.repeats, "same_stream": True,
                 "cpus": os.cpu_count()}  # fmt: skip
    for workers in (0, args.workers):
        new = np.array(reps[f"xbatcher_{workers}w_samples_per_s"])
        old = np.array(reps[f"frozen_{workers}w_samples_per_s"])
        out[f"xbatcher_{workers}w_samples_per_s"] = new.tolist()
        out[f"frozen_{workers}w_samples_per_s"] = old.tolist()
        out[f"xbatcher_vs_frozen_{workers}w_median"] = float(np.median(new / old))
    # busy shared cores make wall rates noisy; CPU seconds of the in-process road are steadier
    new, old = (np.array(reps[f"{n}_0w_samples_per_cpu_s"]) for n in ("xbatcher", "frozen"))
    out["xbatcher_0w_samples_per_cpu_s"] = new.tolist()
    out["frozen_0w_samples_per_cpu_s"] = old.tolist()
    out["xbatcher_vs_frozen_0w_cpu_median"] = float(np.median(new / old))
    a, b = np.array(reps["control_a"]), np.array(reps["control_b"])
    out["xbatcher_vs_itself_0w_median"] = float(np.median(b / a))
    for name, _ in roads:
        out[f"{name}_read_ms_per_block_best"] = min(reps[f"{name}_read"])
    # a rate ratio: the frozen road's read time over today's
    out["xbatcher_vs_frozen_read_best"] = (
        out["frozen_read_ms_per_block_best"] / out["xbatcher_read_ms_per_block_best"]
    )
    out["target"] = 0.9
    out["load_average_start"] = load_start
    out["load_average_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return out
