"""The base of every error caused by input, settings or the environment rather than a bug.

Commands print such errors as one line (what failed, where, what to do) and exit non-zero;
anything else is a bug and keeps its traceback. Each subsystem's errors subclass
:class:`CorrDiffError` *and* the built-in type that fits (``ValueError`` for bad data or
settings, ``FileExistsError`` for a refused output), so callers may catch either.
"""

from __future__ import annotations

__all__ = [
    "CoordinateError",
    "CorrDiffError",
    "CoverageError",
    "DTypeError",
    "DataError",
    "DimensionError",
    "EmptySelectionError",
    "InputNotFoundError",
    "MetadataError",
    "MissingValueError",
    "MissingVariableError",
    "NameClashError",
    "OutputExistsError",
    "StatsError",
    "StoreError",
    "TimeAxisError",
]


class CorrDiffError(Exception):
    """An error the user can fix: bad data, a bad setting, a refused or unreadable file."""


class OutputExistsError(CorrDiffError, FileExistsError):
    """An output path exists and the command may not replace it."""


class InputNotFoundError(CorrDiffError, FileNotFoundError):
    """A file or store named as an input (a command's argument) does not exist."""


# -- data errors (raised by data/ and below; data.layout re-exports them) --------------------------------------------------------------------------------
class DataError(CorrDiffError, ValueError):
    """A dataset does not follow the canonical layout, or cannot be read."""


class MissingVariableError(DataError, KeyError):
    """A requested variable or coordinate is absent."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DimensionError(DataError):
    """A variable has dims that fit no role, or the wrong ones for its role."""


class CoordinateError(DataError):
    """A coordinate is missing, non-monotonic, duplicated, mis-shaped or holds NaNs."""


class TimeAxisError(CoordinateError):
    """Time axes do not match, are not datetimes, or repeat a time."""


class CoverageError(DataError):
    """The coarse grid does not cover the fine domain."""


class DTypeError(DataError):
    """A variable is not numeric."""


class MissingValueError(DataError):
    """NaNs where none are allowed (static fields, coordinates, encoded tensors)."""


class EmptySelectionError(DataError):
    """A selection leaves a dimension, or the list of variables, empty."""


class StoreError(DataError):
    """A store cannot be opened: unknown protocol, missing path, or corrupted content."""


class StatsError(DataError):
    """Statistics are missing for a variable, or unusable (NaN, zero std)."""


class MetadataError(DataError):
    """Required CF attributes are missing."""


class NameClashError(DataError):
    """An input shares its name with a target, or a name is used twice."""
