"""``corrdiff-xr generate``: a CorrDiff ensemble to Zarr and to the reference's NetCDF layout.

Opens a dataset (a Zarr store/URL, or an entry of an intake catalog), selects times, builds
the lazy ensemble with :func:`corrdiff_xr.inference.downscale` and streams it to Zarr block
by block on the chosen Dask scheduler (a local cluster of ``--n-workers`` processes, an
existing ``--scheduler-address``, or the threaded scheduler). Each block leaves a completion
record, so running the same command again after an interruption computes only the missing
blocks and ends with the same store (``--overwrite`` starts afresh). ``--netcdf`` also writes
the reference's ``generate.py`` layout (groups ``input``, ``truth``, ``prediction``).

Example::

    corrdiff-xr generate --catalog demo --entry demo_tiny --checkpoint model.safetensors \\
        --time-range 2020-01-01T00 2020-01-01T03 --members 4 --seed 1 --steps 18 \\
        --patch 32 --overlap 8 --zarr out.zarr --netcdf out.nc --n-workers 2
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["configure_parser", "run"]


def _key_values(items: list[str], what: str) -> dict[str, Any]:
    from corrdiff_xr.config import parse_overrides

    try:
        return parse_overrides(items)
    except ValueError as err:
        raise SystemExit(f"corrdiff-xr generate: bad {what}: {err}") from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``corrdiff-xr generate``."""
    src = parser.add_argument_group("data")
    where = src.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", help="canonical dataset: Zarr path or URL (file://, s3://, gs://, memory://)")
    where.add_argument("--catalog", help="intake catalog: bundled name (demo, samples, cloud) or YAML path")
    src.add_argument("--entry", help="catalog entry (with --catalog)")
    src.add_argument("--param", nargs="*", default=[], metavar="KEY=VALUE",
                     help="catalog user parameters, e.g. cache_dir=/data")
    when = src.add_mutually_exclusive_group()
    when.add_argument("--times", nargs="+", metavar="TIME", help="valid times (ISO 8601)")
    when.add_argument("--time-range", nargs="+", metavar="T",
                      help="START END [STEP]: inclusive range; STEP like 3h (default: every step)")
    model = parser.add_argument_group("model and sampling")
    model.add_argument("--checkpoint", required=True, help="CorrDiff checkpoint (CorrDiff.save)")
    model.add_argument("--members", type=int, default=1, help="ensemble size (default 1)")
    model.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    model.add_argument("--output-kind", choices=("ensemble", "mean", "residual"), default="ensemble")
    model.add_argument("--steps", type=int, help="sampler steps (default: SamplerConfig's)")
    model.add_argument("--sampler", nargs="*", default=[], metavar="KEY=VALUE",
                       help="SamplerConfig fields, e.g. solver=euler S_churn=10")
    model.add_argument("--patch", type=int, nargs="+", metavar="N", help="patch shape H [W]; omit for whole-domain")
    model.add_argument("--overlap", type=int, help="patch overlap in pixels (default patch/4)")
    model.add_argument("--boundary", type=int, default=0, help="zero-weight halo of each patch")
    model.add_argument("--batch-size", type=int, default=8, help="patches per call on GPUs")
    model.add_argument("--device", help="torch device of the workers (default: cuda if present)")
    out = parser.add_argument_group("output and compute")
    out.add_argument("--zarr", required=True, help="output Zarr store (resumed when it exists)")
    out.add_argument("--netcdf", help="also write the reference NetCDF layout here")
    out.add_argument("--chunks", nargs="*", default=[], metavar="DIM=N",
                     help="output chunks for member, time, y, x (default member=1, time=1)")
    out.add_argument("--overwrite", action="store_true", help="replace a store of another request")
    sched = out.add_mutually_exclusive_group()
    sched.add_argument("--scheduler-address", help="existing dask.distributed scheduler")
    sched.add_argument("--n-workers", type=int, help="start a LocalCluster of this many worker processes")
    out.add_argument("--threads-per-worker", type=int, default=1)
    out.add_argument("--torch-threads", type=int, help="torch threads per task")


def _open(args: argparse.Namespace):
    from corrdiff_xr.data import open_pair

    if args.catalog:
        from corrdiff_xr.data.catalog import open_entry

        if not args.entry:
            raise SystemExit("corrdiff-xr generate: --catalog needs --entry NAME")
        return open_entry(args.catalog, args.entry, **_key_values(args.param, "--param"))
    return open_pair(args.data)


def _select_times(pair, args: argparse.Namespace):
    import numpy as np
    import pandas as pd

    from corrdiff_xr.dims import TIME

    available = pd.DatetimeIndex(pair.dataset[TIME].values)
    if args.times:
        wanted = pd.DatetimeIndex([pd.Timestamp(t) for t in args.times])
    elif args.time_range:
        if len(args.time_range) not in (2, 3):
            raise SystemExit("corrdiff-xr generate: --time-range takes START END [STEP]")
        start, end = (pd.Timestamp(t) for t in args.time_range[:2])
        if len(args.time_range) == 3:
            wanted = pd.date_range(start, end, freq=pd.Timedelta(args.time_range[2]))
        else:
            wanted = available[(available >= start) & (available <= end)]
    else:
        return pair
    missing = wanted.difference(available)
    if len(missing):
        raise SystemExit(
            f"corrdiff-xr generate: time(s) {[str(t) for t in missing[:5]]} not in the dataset "
            f"(it covers {available[0]} .. {available[-1]}, {len(available)} steps)"
        )
    if len(wanted) == 0:
        raise SystemExit("corrdiff-xr generate: the time selection is empty")
    return pair.isel({TIME: np.asarray(available.get_indexer(wanted))})


def _client(args: argparse.Namespace):
    if args.scheduler_address:
        from distributed import Client

        return Client(args.scheduler_address), None
    if args.n_workers:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=args.n_workers, threads_per_worker=args.threads_per_worker,
                               processes=True, host="127.0.0.1", dashboard_address=":0")
        return Client(cluster), cluster
    return None, None


def run(args: argparse.Namespace) -> int:
    """Generate; returns 0 on success."""
    from corrdiff_xr._inference.store import write_reference_netcdf, write_zarr
    from corrdiff_xr.inference import downscale

    pair = _select_times(_open(args), args)
    chunks = {"member": 1, "time": 1, **_key_values(args.chunks, "--chunks")}
    sampler = _key_values(args.sampler, "--sampler") or None
    if args.patch and len(args.patch) > 2:
        raise SystemExit(f"corrdiff-xr generate: --patch takes H [W], got {args.patch}")
    patch = None if not args.patch else (args.patch[0], args.patch[-1])
    ds = downscale(
        pair, args.checkpoint, members=args.members, seed=args.seed, output=args.output_kind,
        sampler=sampler, steps=args.steps, patch=patch, overlap=args.overlap,
        boundary=args.boundary, batch_size=args.batch_size, device=args.device, chunks=chunks,
        threads=args.torch_threads,
    )
    client, cluster = _client(args)
    try:
        stats = write_zarr(ds, args.zarr, overwrite=args.overwrite, client=client)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    print(f"{args.zarr}: {stats['written']} block(s) written, {stats['skipped']} already complete "
          f"of {stats['blocks']}", file=sys.stderr)
    if args.netcdf:
        import xarray as xr

        from corrdiff_xr.dims import TIME

        written = xr.open_zarr(args.zarr, consolidated=True)
        times = {TIME: written[TIME].values}
        truth = None
        if pair.targets:  # the prediction's variable order first, as in the reference's files
            order = [v for v in written.data_vars if v in pair.fine] + [
                v for v in pair.fine.data_vars if v not in written.data_vars]
            truth = pair.fine[order].sel(times)
        write_reference_netcdf(args.netcdf, written, inputs=pair.inputs_on_fine.sel(times), truth=truth)
        print(f"{args.netcdf}: reference NetCDF layout written", file=sys.stderr)
    return 0
