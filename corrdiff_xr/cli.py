"""The ``corrdiff-xr`` command: a thin dispatcher to one module per command.

Each command module defines ``configure_parser(parser)`` and ``run(args) -> int``; only the
module of the command given is imported, so ``corrdiff-xr score`` never loads training code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": ("corrdiff_xr.demo", "download-free end-to-end run on the embedded data and model"),
    "train": ("corrdiff_xr.train", "train the regression or residual diffusion model"),
    "generate": ("corrdiff_xr.generate", "generate an ensemble to Zarr and reference NetCDF"),
    "score": ("corrdiff_xr.score_cli", "score an ensemble against truth"),
    "convert": ("corrdiff_xr.data.convert", "convert reference dataset layouts to Zarr"),
}


def _usage() -> str:
    lines = ["usage: corrdiff-xr COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'corrdiff-xr COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
