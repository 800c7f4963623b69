"""The ``corrdiff-xr`` command: a thin dispatcher to one module per command.

Each command module defines ``configure_parser(parser)`` and ``run(args) -> int``; only the
module of the command given is imported, so ``corrdiff-xr score`` never loads training code.

Errors the user can fix (:class:`~corrdiff_xr.errors.CorrDiffError`: bad data, settings,
checkpoints, refused outputs, missing inputs) and operating-system errors (read-only or full
disk, a parent that is a file) end the command with one line on stderr and exit status 2 (1
for OS errors, whose line says that ``--debug`` shows the traceback); the traceback is shown
only with ``--debug`` (before or after the command name) or ``CORRDIFF_XR_DEBUG=1``. Bad
options are argparse's: usage and one error line, exit 2; :func:`bounded` and
:func:`json_object` are the option types that check numbers and JSON there. An interrupt
(Ctrl-C) ends with one line and exit 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from corrdiff_xr.errors import CorrDiffError

__all__ = [
    "COMMANDS",
    "ItemsAction",
    "KeyValues",
    "action_values",
    "bounded",
    "json_object",
    "main",
]

COMMANDS = {
    "demo": ("corrdiff_xr.cli.demo", "download-free end-to-end run on the embedded data and model"),
    "train": ("corrdiff_xr.cli.train", "train the regression or residual diffusion model"),
    "generate": ("corrdiff_xr.cli.generate", "generate an ensemble to Zarr and reference NetCDF"),
    "score": ("corrdiff_xr.cli.score", "score an ensemble against truth"),
    "convert": ("corrdiff_xr.cli.convert", "convert reference layouts or any source to Zarr"),
    "inspect": ("corrdiff_xr.cli.inspect", "report what a source holds and what would be done"),
    "calibrate": ("corrdiff_xr.cli.calibrate", "choose sampler defaults matching spread to error"),
    "export": ("corrdiff_xr.cli.export", "write a checkpoint as a generic CorrDiff package"),
    "distil": ("corrdiff_xr.cli.distil", "distil a diffusion checkpoint into a 1-4 call student"),
}


# -- option types (argparse reports their errors naming the option) ----------------------------
def action_values(values: str | Sequence[Any] | None) -> list[Any]:
    """An :class:`argparse.Action`'s ``values`` as a list (an ``nargs`` option's already is)."""
    if values is None:
        return []
    return [values] if isinstance(values, str) else list(values)


def bounded(
    kind: type = int,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
) -> Callable[[str], int | float]:
    """An argparse ``type=`` that parses ``kind`` and checks ``minimum <= value <= maximum``
    (``above``: strictly greater); argparse prints ``argument --x: must be ..., got 'v'``."""
    noun = "an integer" if kind is int else "a number"
    limits = [f">= {minimum:g}"] if minimum is not None else []
    limits += [f"> {above:g}"] if above is not None else []
    limits += [f"<= {maximum:g}"] if maximum is not None else []
    expected = f"{noun} {' and '.join(limits)}".strip()

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if (
            math.isnan(value)
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)
            or (above is not None and value <= above)
        ):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


class ItemsAction(argparse.Action):
    """An option whose value is :meth:`convert` of its items (a list, one item or none).

    ``convert`` raises :class:`argparse.ArgumentTypeError`; argparse then names the option."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        try:
            value = self.convert(action_values(values))
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentError(self, str(err)) from None
        setattr(namespace, self.dest, value)

    def convert(self, given: list[Any]) -> object:
        """The option's value from its items."""
        raise NotImplementedError


class KeyValues(ItemsAction):
    """KEY=VALUE items -> a (nested) dict, by :func:`corrdiff_xr.config.parse_overrides`."""

    def convert(self, given: list[Any]) -> object:
        from corrdiff_xr.config import ConfigError, parse_overrides

        try:
            return parse_overrides(given)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None


def json_object(text: str) -> dict:
    """An argparse ``type=`` for a JSON object such as ``'{"anon": true}'``."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"anon\": true}}', got {text!r}"
        )
    return value


# -- dispatch ----------------------------------------------------------------------------------
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


def _parse(name: str, module: ModuleType, rest: list[str]) -> tuple[argparse.Namespace | int, bool]:
    """The command's options (or argparse's exit status) and whether --debug came after it."""
    parser = argparse.ArgumentParser(prog=f"corrdiff-xr {name}", description=COMMANDS[name][1])
    module.configure_parser(parser)
    end = rest.index("--") if "--" in rest else len(rest)
    debug = "--debug" in rest[:end]  # no command has a --debug of its own
    if debug:
        rest = [a for a in rest[:end] if a != "--debug"] + rest[end:]
    try:
        return parser.parse_args(rest), debug
    except SystemExit as stop:  # bad options or --help: argparse has printed its message
        return (stop.code if isinstance(stop.code, int) else 2), debug


def main(argv: list[str] | None = None) -> int:
    """Run ``corrdiff-xr`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("CORRDIFF_XR_DEBUG", "") not in ("", "0")
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"corrdiff-xr: error: unknown command {name!r}; choose from "
            f"{', '.join(COMMANDS)} (corrdiff-xr --help lists them)",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    args, late_debug = _parse(name, module, rest)
    if isinstance(args, int):
        return args
    debug = debug or late_debug
    try:
        return int(module.run(args) or 0)
    except (CorrDiffError, OSError) as err:
        if debug:
            raise
        user = isinstance(err, CorrDiffError)
        hint = "" if user else " (--debug shows the traceback)"
        print(_one_line(name, err) + hint, file=sys.stderr)
        return 2 if user else 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"corrdiff-xr {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
