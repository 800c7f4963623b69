"""``corrdiff-xr train``: read a training config, validate it, train (thin over corrdiff_xr.training).

``corrdiff-xr train --config FILE key=value ...`` (``++key=value`` also accepted) reads a
:class:`~corrdiff_xr.config.TrainRunConfig` (a YAML file or the name of a shipped one, see
:func:`corrdiff_xr.training.load_run_config`), validates it and the data before any work, then
runs :func:`corrdiff_xr.training.train`. Errors end in one line (:mod:`corrdiff_xr.cli`).
"""

from __future__ import annotations

import argparse
import logging

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``corrdiff-xr train``."""
    parser.add_argument(
        "--config",
        help="YAML training config, or the name of a shipped one "
        "(regression_mini, diffusion_mini, patched_diffusion_mini, ...)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. training.lr=1e-4 data.source=catalog:demo/NAME",
    )


def run(args: argparse.Namespace) -> int:
    """Train as configured; 0 when the run reached ``training.duration`` or stopped at
    ``training.max_minutes`` (checkpointed, to be continued by running it again)."""
    from corrdiff_xr.training import load_run_config, train

    cfg = load_run_config(args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result = train(cfg)
    if result.timed_out:
        print(
            f"stopped at training.max_minutes after {result.nimg} samples; checkpoint in "
            f"{result.output_dir / 'checkpoints'}: run the same command again to continue"
        )
    return 0 if result.completed or result.timed_out else 1
