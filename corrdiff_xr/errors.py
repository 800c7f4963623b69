"""The base of every error caused by input, settings or the environment rather than a bug.

Commands print such errors as one line (what failed, where, what to do) and exit non-zero;
anything else is a bug and keeps its traceback. Each subsystem's errors subclass
:class:`CorrDiffError` *and* the built-in type that fits (``ValueError`` for bad data or
settings, ``FileExistsError`` for a refused output), so callers may catch either.
"""

from __future__ import annotations

__all__ = ["CorrDiffError", "InputNotFoundError", "OutputExistsError"]


class CorrDiffError(Exception):
    """An error the user can fix: bad data, a bad setting, a refused or unreadable file."""


class OutputExistsError(CorrDiffError, FileExistsError):
    """An output path exists and the command may not replace it."""


class InputNotFoundError(CorrDiffError, FileNotFoundError):
    """A file or store named as an input (a command's argument) does not exist."""
