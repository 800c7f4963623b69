"""``corrdiff-xr generate``: a CorrDiff ensemble to Zarr and to the reference's NetCDF layout.

Opens a dataset (a Zarr store/URL, or an entry of an intake catalog: ``--data catalog:NAME/ENTRY``
or ``--catalog NAME --entry ENTRY``) with :func:`corrdiff_xr.data.open_source`, selects times, builds
the lazy ensemble with :func:`corrdiff_xr.inference.downscale` and streams it to Zarr block
by block on the chosen Dask scheduler (a local cluster of ``--n-workers`` processes, an
existing ``--scheduler-address``, or the threaded scheduler).

The store records the request that made it
(:func:`corrdiff_xr.inference.request.request_identity`, as a library call writing a
``downscale`` result records it): a digest of the checkpoint's bytes, the data source, the
selected times and every sampling setting. Running the same command again after an
interruption (a kill at any write) computes only the missing blocks and ends with the same
store; a run with any difference is
refused with the fields that differ (``--overwrite`` starts again), and so is a resume whose
input data changed since the store was started (:mod:`corrdiff_xr.inference.fingerprint`).
One run at a time writes an output: a second fails at once, naming the first
(:mod:`corrdiff_xr._lock`). ``--netcdf`` also writes the reference's ``generate.py`` layout
(groups ``input``, ``truth``, ``prediction``); it is kept when it already holds this request.
Only our own marked outputs are ever replaced. ``--checkpoint`` may be a published package
(:mod:`corrdiff_xr.cli._packages`): ``--data`` is then the user's coarse archive. Options are
checked as they are parsed; later problems raise :class:`~corrdiff_xr.errors.CorrDiffError`.

Example::

    corrdiff-xr generate --catalog demo --entry demo_tiny --checkpoint model.safetensors \\
        --time-range 2020-01-01T00 2020-01-01T03 --members 4 --seed 1 --steps 18 \\
        --patch 32 --overlap 8 --zarr out.zarr --netcdf out.nc --n-workers 2
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from corrdiff_xr.cli import ItemsAction, KeyValues, bounded
from corrdiff_xr.cli._packages import add_package_options, model_and_pair, package_request
from corrdiff_xr.cli._times import TimeRange, iso_time, select_times
from corrdiff_xr.errors import CorrDiffError

if TYPE_CHECKING:
    import xarray as xr
    from distributed import Client, LocalCluster

    from corrdiff_xr.config import PatchConfig
    from corrdiff_xr.data.pair import DownscalingData
    from corrdiff_xr.inference.packages import ModelLike

__all__ = ["GenerateError", "configure_parser", "run"]

CHUNK_DIMS = ("member", "time", "y", "x")


class GenerateError(CorrDiffError, ValueError):
    """A generate request that cannot run as given (times, options that do not fit the data)."""


# -- option parsing --------------------------------------------------------------------------


def _device(text: str) -> str:
    import torch

    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    return text


class _Patch(ItemsAction):
    """H [W] positive -> (H, W)."""

    def convert(self, given: list[Any]) -> object:
        if len(given) > 2:
            raise argparse.ArgumentTypeError(f"takes H [W], got {len(given)} given: {given}")
        return (given[0], given[-1])


class _Chunks(ItemsAction):
    """DIM=N items, DIM one of the output dims, N >= 1 -> dict."""

    def convert(self, given: list[Any]) -> object:
        chunks = {}
        for item in given:
            dim, sep, size = item.partition("=")
            if not sep or dim not in CHUNK_DIMS:
                raise argparse.ArgumentTypeError(
                    f"{item!r}: expected DIM=N with DIM one of {', '.join(CHUNK_DIMS)}"
                )
            try:
                chunks[dim] = bounded(int, minimum=1)(size)
            except argparse.ArgumentTypeError as err:
                raise argparse.ArgumentTypeError(f"{dim}: {err}") from None
        return chunks


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``corrdiff-xr generate``."""
    _data_options(parser.add_argument_group("data"))
    _model_options(parser.add_argument_group("model and sampling"))
    _output_options(parser.add_argument_group("output and compute"))


def _data_options(src: argparse._ArgumentGroup) -> None:
    where = src.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--data",
        help="canonical dataset: Zarr path or URL (file://, s3://, gs://, memory://), "
        "or catalog:NAME/ENTRY",
    )
    where.add_argument(
        "--catalog", help="intake catalog: bundled name (demo, samples, cloud) or YAML path"
    )
    src.add_argument("--entry", help="catalog entry (with --catalog)")
    src.add_argument(
        "--param",
        nargs="*",
        default={},
        action=KeyValues,
        metavar="KEY=VALUE",
        help="catalog user parameters (with --catalog or --data catalog:...), e.g. cache_dir=/data",
    )
    when = src.add_mutually_exclusive_group()
    when.add_argument(
        "--times",
        nargs="+",
        type=iso_time,
        metavar="TIME",
        help="valid times (ISO 8601, in the data's calendar)",
    )
    when.add_argument(
        "--time-range",
        nargs="+",
        action=TimeRange,
        metavar="T",
        help="START END [STEP]: inclusive range; STEP like 3h (default: every step)",
    )


def _model_options(model: argparse._ArgumentGroup) -> None:
    from corrdiff_xr._constraints import MAX_MEMBERS

    positive, non_negative = bounded(int, minimum=1), bounded(int, minimum=0)
    members = bounded(int, minimum=1, maximum=MAX_MEMBERS)  # refused before any work
    model.add_argument(
        "--checkpoint",
        required=True,
        help="CorrDiff checkpoint (CorrDiff.save) or a published package (directory or zip)",
    )
    add_package_options(model)
    model.add_argument(
        "--members",
        type=members,
        default=1,
        help=f"ensemble size (default 1, at most {MAX_MEMBERS})",
    )
    model.add_argument("--seed", type=non_negative, default=0, help="base seed (default 0)")
    model.add_argument(
        "--output-kind", choices=("ensemble", "mean", "residual"), default="ensemble"
    )
    model.add_argument(
        "--steps",
        type=positive,
        help="sampler steps (default: the checkpoint's sampler, set by its training config or calibrate)",
    )
    model.add_argument(
        "--sampler",
        nargs="*",
        default={},
        action=KeyValues,
        metavar="KEY=VALUE",
        help="SamplerConfig fields, e.g. solver=euler S_churn=10, or precision=bf16 (the "
        "residual network in bfloat16)",
    )
    model.add_argument(
        "--patch",
        type=positive,
        nargs="+",
        action=_Patch,
        metavar="N",
        help="patch shape H [W]; omit for whole-domain",
    )
    model.add_argument(
        "--overlap",
        type=non_negative,
        help="patch overlap in pixels (default: a quarter of the smaller patch side)",
    )
    model.add_argument(
        "--boundary", type=non_negative, help="zero-weight halo of each patch (default 0)"
    )
    model.add_argument(
        "--patch-noise",
        choices=("shared", "independent"),
        help="patches' noise: one field keyed by pixel position (shared, default: no seams) "
        "or one generator per patch (independent, the reference's)",
    )
    model.add_argument(
        "--patch-mean",
        choices=("whole", "single", "patches"),
        help="regression mean over the whole domain once per time (whole, default: what it "
        "was trained on; in overlapping tiles above 256 x 256), in one call whatever the "
        "domain (single: exact, memory grows with it) or patch by patch (patches)",
    )
    model.add_argument(
        "--batch-size",
        type=members,
        default=8,
        help="members sampled per network call (one call per patch and group of members)",
    )
    model.add_argument(
        "--device", type=_device, help="torch device of the workers (default: cuda if present)"
    )


def _output_options(out: argparse._ArgumentGroup) -> None:
    positive = bounded(int, minimum=1)
    out.add_argument(
        "--zarr", required=True, help="output Zarr store (resumed when it holds this request)"
    )
    out.add_argument("--netcdf", help="also write the reference NetCDF layout here")
    out.add_argument(
        "--chunks",
        nargs="*",
        default={},
        action=_Chunks,
        metavar="DIM=N",
        help="output chunks for member, time, y, x (default member=batch size, time=1)",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace our own output of another request (never anything else)",
    )
    sched = out.add_mutually_exclusive_group()
    sched.add_argument("--scheduler-address", help="existing dask.distributed scheduler")
    sched.add_argument(
        "--n-workers", type=positive, help="start a LocalCluster of this many worker processes"
    )
    out.add_argument("--threads-per-worker", type=positive, default=1)
    out.add_argument("--torch-threads", type=positive, help="torch threads per task")


# -- data and request --------------------------------------------------------------------------


def _source(args: argparse.Namespace) -> str:
    """The one source string of ``--data`` or ``--catalog``/``--entry``."""
    if args.catalog:
        if not args.entry:
            raise GenerateError("--catalog needs --entry NAME")
        if "/" in args.entry:
            raise GenerateError(f"--entry {args.entry!r} is an entry name, not a path")
        return f"catalog:{args.catalog}/{args.entry}"
    if args.entry:
        raise GenerateError(
            f"--entry goes with --catalog, not --data (or write --data catalog:NAME/{args.entry})"
        )
    return args.data


def _open(args: argparse.Namespace) -> DownscalingData:
    from corrdiff_xr.data import open_source

    what = "--catalog/--entry" if args.catalog else "--data"
    return open_source(_source(args), params=args.param, what=what, params_what="--param")


def _select_times(pair: DownscalingData, args: argparse.Namespace) -> DownscalingData:
    from corrdiff_xr.dims import TIME

    where = select_times(pair.dataset[TIME].values, args.times, args.time_range, GenerateError)
    return pair if where is None else pair.isel({TIME: where})


def _patching(args: argparse.Namespace) -> PatchConfig:
    """``--patch``, ``--overlap``, ``--boundary``, ``--patch-noise``, ``--patch-mean`` as a
    PatchConfig, resolved.

    Without ``--patch`` (whole-domain sampling) the overlap and boundary play no part.
    """
    from corrdiff_xr.config import PatchConfig, SettingError

    options = (
        ("overlap", args.overlap),
        ("boundary", args.boundary),
        ("noise", args.patch_noise),
        ("mean", args.patch_mean),
    )
    given = {k: v for k, v in options if v is not None}
    try:
        patching = PatchConfig(shape=args.patch, **given)
    except SettingError as err:
        names = {"shape": "--patch", "noise": "--patch-noise", "mean": "--patch-mean"}
        raise err.renamed(lambda key: names.get(key, f"--{key}")) from None
    return patching if patching.shape is None else patching.resolved()


def _request(args: argparse.Namespace, ds: xr.Dataset) -> dict[str, Any]:
    """The request's identity: what else would change the store's bytes."""
    from corrdiff_xr.inference.request import request_identity

    return request_identity(
        ds,
        data=_source(args),
        params=args.param,
        **package_request(args),
        checkpoint=args.checkpoint,
        remote_workers=bool(args.scheduler_address),
    )


#: downscale's argument names -> this command's options, for the errors it raises
_OPTION_NAMES = {"members": "--members", "batch_size": "--batch-size", "patch": "--patch",
                 "chunks": "--chunks", "steps": "--steps"}  # fmt: skip


def _downscale(
    pair: DownscalingData, args: argparse.Namespace, model: ModelLike
) -> tuple[xr.Dataset, dict[str, Any]]:
    from corrdiff_xr._constraints import SettingError
    from corrdiff_xr.inference import downscale

    patching = _patching(args)  # resolved here, so that the request records the values used
    try:
        ds = downscale(
            pair,
            model,
            members=args.members,
            seed=args.seed,
            output=args.output_kind,
            sampler=args.sampler or None,
            steps=args.steps,
            patch=patching,
            batch_size=args.batch_size,
            device=args.device,
            chunks={"time": 1, **args.chunks},  # members: whole groups of batch_size
            threads=args.torch_threads,
        )
    except (ValueError, KeyError) as err:
        if isinstance(err, SettingError):  # name the command's options, not downscale's
            raise err.renamed(_OPTION_NAMES) from None
        if isinstance(err, CorrDiffError):
            raise
        # settings that do not fit the data or the model (patch larger than the domain ...)
        raise GenerateError(str(err.args[0]) if err.args else str(err)) from err
    return ds, _request(args, ds)


# -- running -----------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> tuple[Client | None, LocalCluster | None]:
    if args.scheduler_address:
        from distributed import Client

        return Client(args.scheduler_address), None
    if args.n_workers:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=args.n_workers,
            threads_per_worker=args.threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        )
        return Client(cluster), cluster
    return None, None


def _write_netcdf(args: argparse.Namespace, pair: DownscalingData) -> None:
    import xarray as xr

    from corrdiff_xr.dims import TIME
    from corrdiff_xr.inference.netcdf import write_reference_netcdf

    written = xr.open_zarr(args.zarr, consolidated=True)
    times = {TIME: written[TIME].values}
    truth = None
    if pair.targets:  # the prediction's variable order first, as in the reference's files
        order = [v for v in written.data_vars if v in pair.fine] + [
            v for v in pair.fine.data_vars if v not in written.data_vars
        ]
        truth = pair.fine[order].sel(times)
    write_reference_netcdf(
        args.netcdf,
        written,
        inputs=pair.inputs_on_fine.sel(times),
        truth=truth,
        overwrite=args.overwrite,
    )
    print(f"{args.netcdf}: reference NetCDF layout written", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Generate; returns 0 on success.

    Each output is locked while this run lives (:func:`corrdiff_xr._lock.output_lock`): a
    second run writing either fails at once, naming this one (with ``--overwrite`` too).
    """
    import contextlib

    from corrdiff_xr._lock import output_lock
    from corrdiff_xr._outputs import writing

    with contextlib.ExitStack() as locks:
        for path, what in ((args.zarr, "--zarr store"), (args.netcdf, "--netcdf file")):
            if path:
                with writing(path, what=what):  # a lock file that cannot be made: say why
                    locks.enter_context(output_lock(path, what=f"{what} {path}"))
        return _run_locked(args)


def _run_locked(args: argparse.Namespace) -> int:
    from corrdiff_xr.inference.store import holds_request, store_identity, write_zarr

    model, pair = model_and_pair(args, lambda: _open(args), GenerateError)
    pair = _select_times(pair, args)
    ds, request = _downscale(pair, args, model)
    netcdf_done = False
    if args.netcdf:
        # checked before hours of computing, not after
        netcdf_done = holds_request(
            args.netcdf, store_identity(ds, request), overwrite=args.overwrite, what="--netcdf file"
        )
    client, cluster = _client(args)
    try:
        stats = write_zarr(
            ds,
            args.zarr,
            request=request,
            overwrite=args.overwrite,
            client=client,
            what="--zarr store",
            inputs=pair.dataset[list(pair.inputs + pair.static)],  # what the blocks read
        )
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    print(
        f"{args.zarr}: {stats['written']} block(s) written, {stats['skipped']} already complete "
        f"of {stats['blocks']}",
        file=sys.stderr,
    )
    if netcdf_done:
        print(f"{args.netcdf}: already holds this request, kept", file=sys.stderr)
    elif args.netcdf:
        _write_netcdf(args, pair)
    return 0
