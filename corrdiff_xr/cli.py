"""The ``corrdiff-xr`` command: a thin dispatcher to one module per command.

Each command module defines ``configure_parser(parser)`` and ``run(args) -> int``; only the
module of the command given is imported, so ``corrdiff-xr score`` never loads training code.

Errors the user can fix (:class:`~corrdiff_xr.errors.CorrDiffError`: bad data, settings,
checkpoints, refused outputs) and operating-system errors (read-only or full disk, missing
file) end the command with one line on stderr and exit status 2 (1 for OS errors); the
traceback is shown only with ``--debug`` (before the command name) or ``CORRDIFF_XR_DEBUG=1``.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from corrdiff_xr.errors import CorrDiffError

COMMANDS = {
    "demo": ("corrdiff_xr.demo", "download-free end-to-end run on the embedded data and model"),
    "train": ("corrdiff_xr.train", "train the regression or residual diffusion model"),
    "generate": ("corrdiff_xr.generate", "generate an ensemble to Zarr and reference NetCDF"),
    "score": ("corrdiff_xr.score_cli", "score an ensemble against truth"),
    "convert": ("corrdiff_xr.data.convert", "convert reference dataset layouts to Zarr"),
}


def _usage() -> str:
    lines = ["usage: corrdiff-xr [--debug] COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'corrdiff-xr COMMAND --help' for a command's options."]
    return "\n".join(lines)


def _one_line(name: str, err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return f"corrdiff-xr {name}: error: {text}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("CORRDIFF_XR_DEBUG", "") not in ("", "0")
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"corrdiff-xr: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"corrdiff-xr {name}", description=COMMANDS[name][1])
    module.configure_parser(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (CorrDiffError, OSError) as err:
        if debug:
            raise
        print(_one_line(name, err), file=sys.stderr)
        if not isinstance(err, CorrDiffError):
            print("(run with --debug for the traceback)", file=sys.stderr)
        return 2 if isinstance(err, CorrDiffError) else 1


if __name__ == "__main__":
    sys.exit(main())
