"""Identity records: the one digest, plain JSON values, and what differs between two records.

A training run (:mod:`corrdiff_xr.training.identity`) and a written store
(:mod:`corrdiff_xr.inference.store`, :mod:`corrdiff_xr.inference.request`) each record, as
plain JSON, what made them; a resume compares the recorded identity with the one asked for
and names the dotted fields that differ. Both go through this module:

* :func:`digest` and :func:`file_digest`: 128-bit BLAKE2b (:data:`DIGEST`) of bytes, a file or
  every file of a directory. BLAKE2b, because every store written so far records it (its
  checkpoint, times and coordinates): keeping it leaves those records unchanged; it is in
  :mod:`hashlib`, faster than SHA-256 on CPUs without SHA instructions, and
  ``b2sum -l 128 FILE`` prints the same hex. Training runs recorded their regression checkpoint's SHA-256
  before; :func:`matches_file` still checks a record written so (:data:`LEGACY_DIGESTS`).
* :func:`plain`: a value as it reads back from JSON (tuples as lists, numpy scalars as
  numbers, non-finite floats as strings so that a record with a NaN equals itself).
* :func:`differences`: the ``(field, old, new)`` of each dotted field that differs; each
  caller words them for its reader (a store's "stored X, requested Y", a run's "X -> Y").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ABSENT",
    "DIGEST",
    "LEGACY_DIGESTS",
    "differences",
    "digest",
    "file_digest",
    "flatten",
    "matches_file",
    "plain",
]

#: the key a record gives a digest under, and the hash it names (128-bit BLAKE2b)
DIGEST = "blake2b"
#: digests that records of earlier versions hold (training: the regression checkpoint's)
LEGACY_DIGESTS = {"sha256": hashlib.sha256}
_CHUNK = 1 << 20


class _Absent:
    """A field one of two records lacks."""

    def __repr__(self) -> str:
        return "absent"


#: the value :func:`differences` reports for a field one record lacks
ABSENT = _Absent()


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def _hasher(name: str = DIGEST) -> _Hasher:
    return hashlib.blake2b(digest_size=16) if name == DIGEST else LEGACY_DIGESTS[name]()


def digest(data: bytes) -> str:
    """Hex :data:`DIGEST` of ``data``."""
    h = _hasher()
    h.update(data)
    return h.hexdigest()


def _files(path: Path) -> Iterator[tuple[bytes, Path]]:
    """(prefix, file) to hash: a directory's files by relative name (names count too)."""
    if not path.is_dir():
        yield b"", path
        return
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        yield str(file.relative_to(path)).encode() + b"\0", file


def file_digest(path: str | os.PathLike, *, algorithm: str = DIGEST) -> tuple[str, int]:
    """Hex digest and byte count of a file, or of every file of a directory (and their names).

    ``algorithm`` is :data:`DIGEST`, or one of :data:`LEGACY_DIGESTS` to check an old record.

    Raises
    ------
    FileNotFoundError
        Nothing is at ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    h, size = _hasher(algorithm), 0
    for prefix, file in _files(path):
        h.update(prefix)
        with open(file, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    return h.hexdigest(), size


def matches_file(entry: object, path: str | os.PathLike) -> bool:
    """Whether a recorded digest ``entry`` (``{algorithm: hex, ...}``) is that of ``path``,
    in whichever digest it was recorded (:data:`DIGEST` or a legacy one)."""
    if not isinstance(entry, Mapping):
        return False
    for name in (DIGEST, *LEGACY_DIGESTS):
        if name in entry:
            return entry[name] == file_digest(path, algorithm=name)[0]
    return False


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays, without importing numpy
        return value.tolist()
    return str(value)


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # strict JSON, and a record with a NaN still equals itself
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    return [_strict(v) for v in value] if isinstance(value, list) else value


def plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (what a recorded identity is compared in)."""
    return _strict(json.loads(json.dumps(value, default=_default)))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaves; an empty mapping inside is a leaf of its own."""
    if not isinstance(tree, Mapping) or (not tree and prefix):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differences(old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """``(field, old value, new value)`` for every dotted field whose values differ.

    In ``new``'s order, then the fields only ``old`` has; a field a record lacks has the value
    :data:`ABSENT`.
    """
    a, b = flatten(old or {}), flatten(new or {})
    keys = list(b) + [k for k in a if k not in b]
    return [
        (k, a.get(k, ABSENT), b.get(k, ABSENT))
        for k in keys
        if a.get(k, ABSENT) != b.get(k, ABSENT)
    ]
