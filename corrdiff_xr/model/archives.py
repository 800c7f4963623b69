"""Reading PhysicsNeMo archives (``.mdlus`` zip, legacy tar) and ``model.pt`` within bounds.

Members are never extracted to disk: :func:`open_members` yields seekable views of the wanted
members, which JSON and torch read directly. What is refused:

- members that together hold more than ``min(MAX_MEMBER_BYTES, MEMBER_RATIO * archive size +
  MEMBER_SLACK)`` bytes: 4 GiB (a ~1e9-parameter fp32 network, 12x a reference ``normal``
  CorrDiff UNet of ~80M parameters), or twice the archive plus 1 MiB. PhysicsNeMo stores
  members uncompressed (ratio 1.0) and deflating trained weights gains < 10 %, so only a bomb
  comes near. The declared sizes are checked before anything is decompressed, and reading is
  bounded too: a zip member never yields more than its (checked) declared size, and a
  compressed tar is decompressed through a stream that fails past the limit, so a lying header
  cannot make it decompress further;
- more than :data:`MAX_MEMBERS` entries (counted from the zip's end record before they are
  parsed); symbolic and hard links, devices, FIFOs, sparse files, absolute names and names
  with ``..``, whether or not they are among the wanted members; duplicated wanted names;
- JSON members over :data:`MAX_JSON_BYTES`, or not UTF-8, or not JSON;
- a ``model.pt`` that is not torch's zip format with uncompressed records (what
  ``torch.save`` writes; the legacy format allocates whatever its pickle declares), with more
  than :data:`MAX_RECORDS` records or a pickle over :data:`MAX_PICKLE_BYTES`, or tensors larger
  than their storage (stride tricks). ``torch.load(weights_only=True)`` reads it from the
  archive, so its peak memory is about the size of its tensors.

Every refusal raises the caller's error class (a :class:`CheckpointError`) naming the file.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import pickle
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any, cast

import torch

from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.model.safety import CheckpointError, parse_json

__all__ = [
    "MAX_MEMBER_BYTES",
    "MEMBER_RATIO",
    "MEMBER_SLACK",
    "load_torch_weights",
    "member_limit",
    "open_members",
    "read_json",
]

MAX_MEMBER_BYTES = 4 << 30
MEMBER_RATIO = 2
MEMBER_SLACK = 1 << 20
MAX_MEMBERS = 64
MAX_JSON_BYTES = 1 << 20
MAX_RECORDS = 1 << 16
MAX_PICKLE_BYTES = 1 << 24


def member_limit(archive_bytes: int) -> int:
    """Most bytes the members of an archive of ``archive_bytes`` may hold together."""
    return min(MAX_MEMBER_BYTES, MEMBER_RATIO * archive_bytes + MEMBER_SLACK)


class _Slice(io.RawIOBase):
    """Seekable read-only view of ``length`` bytes of ``raw`` from ``start``.

    With ``overrun`` set, reading past the end raises ``overrun`` (when ``raw`` holds more)
    instead of ending: the guard around a decompressing stream.
    """

    def __init__(self, raw: IO[bytes], start: int, length: int, overrun: Exception | None = None):
        super().__init__()
        self._raw, self._start, self._length = raw, start, length
        self._overrun: Exception | None = overrun
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        # never allocates more than is left: a header may ask for any size
        left = max(0, self._length - self._pos)
        beyond = size is None or size < 0 or size > left
        self._raw.seek(self._start + self._pos)
        data = self._raw.read(left if beyond or size is None else size)
        if beyond and self._overrun is not None and self._raw.read(1):
            raise self._overrun
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _check_name(name: str, *, source: str, error: type[Exception]) -> None:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise error(f"{source}: archive member {name!r} has an absolute name; refused")
    if ".." in name.replace("\\", "/").split("/") or "\0" in name:
        raise error(f"{source}: archive member {name!r} points outside the archive ('..'); refused")


# file-like streams, though typeshed does not declare them IO[bytes]
_DECOMPRESSORS: dict[bytes, Callable[[IO[bytes]], IO[bytes]]] = {
    b"\x1f\x8b": lambda raw: cast(IO[bytes], gzip.GzipFile(fileobj=raw)),
    b"BZh": lambda raw: cast(IO[bytes], bz2.BZ2File(raw)),
    b"\xfd7zXZ": lambda raw: cast(IO[bytes], lzma.LZMAFile(raw)),
}


def _open_tar(
    raw: IO[bytes], limit: int, *, source: str, error: type[Exception]
) -> tarfile.TarFile | None:
    """``raw`` as a tar archive (decompressed if need be, failing past ``limit`` bytes), or
    None if it is not one."""
    magic = raw.read(6)
    raw.seek(0)
    stream = next((f(raw) for m, f in _DECOMPRESSORS.items() if magic.startswith(m)), raw)
    overrun = error(
        f"{source}: the archive decompresses to more than {limit:,} bytes; refused as a bomb"
    )
    bounded = _Slice(stream, 0, limit + MEMBER_SLACK, overrun)
    try:
        return tarfile.open(fileobj=bounded, mode="r:")
    except _BROKEN:
        raw.seek(0)
        return None


_TAR_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


def _tar_members(
    tar: tarfile.TarFile, wanted: set[str], limit: int, *, source: str, error: type[Exception]
) -> dict[str, IO[bytes]]:
    found: dict[str, IO[bytes]] = {}
    total = 0
    # one header at a time, so a bad member stops the reading before the next one
    for n, m in enumerate(tar, 1):
        if n > MAX_MEMBERS:
            raise error(f"{source}: the archive has more than {MAX_MEMBERS} members; refused")
        _check_name(m.name, source=source, error=error)
        if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
            kind = _TAR_KINDS.get(m.type, f"member of tar type {m.type!r}")
            raise error(f"{source}: archive member {m.name!r} is a {kind}; refused")
        total += m.size
        if total > limit:
            raise error(
                f"{source}: archive members hold more than {limit:,} bytes; refused as a bomb"
            )
        name = os.path.basename(m.name)
        if name in wanted and m.isreg():
            if name in found:
                raise error(f"{source}: the archive holds {name} twice")
            member = tar.extractfile(m)
            assert member is not None  # a regular file
            found[name] = member
    return found


def _zip_entries(raw: IO[bytes]) -> int | None:
    """Entry count from a zip's end record (None if absent), read before zipfile parses them."""
    size = raw.seek(0, 2)
    raw.seek(max(0, size - 22 - 65535))
    tail = raw.read()
    i = tail.rfind(b"PK\x05\x06")
    if i < 0 or i + 22 > len(tail):
        return None
    entries = struct.unpack_from("<H", tail, i + 10)[0]
    if entries == 0xFFFF and i >= 20 and tail[i - 20 : i - 16] == b"PK\x06\x07":
        raw.seek(struct.unpack_from("<Q", tail, i - 12)[0])  # the zip64 end record
        record = raw.read(56)
        if record[:4] == b"PK\x06\x06":
            entries = struct.unpack_from("<Q", record, 32)[0]
    return entries


def _zip_members(
    raw: IO[bytes], wanted: set[str], limit: int, *, source: str, error: type[Exception]
) -> dict[str, IO[bytes]]:
    entries = _zip_entries(raw)
    if entries is not None and entries > MAX_MEMBERS:
        raise error(
            f"{source}: the archive has {entries} members, more than {MAX_MEMBERS}; refused"
        )
    z = zipfile.ZipFile(raw)
    found: dict[str, IO[bytes]] = {}
    total, size = 0, raw.seek(0, 2)
    for info in z.infolist():
        _check_name(info.filename, source=source, error=error)
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_IFMT(mode) not in (
            0,
            stat.S_IFREG,
            stat.S_IFDIR,
        ):
            kind = "symbolic link" if stat.S_ISLNK(mode) else "device or FIFO"
            raise error(f"{source}: archive member {info.filename!r} is a {kind}; refused")
        if info.flag_bits & 1:
            raise error(f"{source}: archive member {info.filename!r} is encrypted")
        total += info.file_size
        if total > limit:
            raise error(
                f"{source}: archive members declare more than {limit:,} bytes; refused as a bomb"
            )
        if info.filename in wanted:
            if info.filename in found:
                raise error(f"{source}: the archive holds {info.filename} twice")
            found[info.filename] = _zip_member(z, raw, info, size, source=source, error=error)
    return found


def _zip_member(
    z: zipfile.ZipFile,
    raw: IO[bytes],
    info: zipfile.ZipInfo,
    size: int,
    *,
    source: str,
    error: type[Exception],
) -> IO[bytes]:
    if info.compress_type != zipfile.ZIP_STORED:
        # yields at most info.file_size bytes, checked against the limit
        return z.open(info)
    raw.seek(info.header_offset)
    header = raw.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise error(f"{source}: archive member {info.filename!r} has no local header (truncated?)")
    start = info.header_offset + 30 + sum(struct.unpack_from("<HH", header, 26))
    if info.compress_size != info.file_size or start + info.file_size > size:
        raise error(
            f"{source}: archive member {info.filename!r} runs past the end of the file (truncated?)"
        )
    # uncompressed: a direct view of the file, so torch.load's random access is cheap
    return cast(IO[bytes], _Slice(raw, start, info.file_size))  # a file-like view


_BROKEN = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    NotImplementedError,
)


def _members(
    raw: IO[bytes], wanted: set[str], *, source: str, error: type[Exception]
) -> dict[str, IO[bytes]]:
    limit = member_limit(os.fstat(raw.fileno()).st_size)
    tar = _open_tar(raw, limit, source=source, error=error)
    if tar is not None:
        return _tar_members(tar, wanted, limit, source=source, error=error)
    if zipfile.is_zipfile(raw):
        return _zip_members(raw, wanted, limit, source=source, error=error)
    raise error(
        f"{source} is neither a zip nor a tar archive (or is truncated); is it a .mdlus file?"
    )


@contextlib.contextmanager
def open_members(
    path: str, wanted: set[str], *, error: type[Exception] = CheckpointError
) -> Iterator[dict[str, IO[bytes]]]:
    """The ``wanted`` members of a tar (tried first, as the reference does) or zip archive.

    Yields {name: seekable file}, valid inside the ``with`` block; see the module notes for
    what is refused.
    """
    with open(path, "rb") as raw:
        try:
            members = _members(raw, wanted, source=path, error=error)
        except _BROKEN as err:
            raise error(f"{path}: the archive is truncated or corrupt: {err}") from err
        yield members


def read_json(f: IO[bytes], what: str, *, error: type[Exception] = CheckpointError) -> Any:
    """A JSON member of at most :data:`MAX_JSON_BYTES`, read without reading further."""
    try:
        data = f.read(MAX_JSON_BYTES + 1)
    except _BROKEN as err:
        raise error(f"cannot read {what} (truncated or corrupt archive?): {err}") from err
    return parse_json(data, what, limit=MAX_JSON_BYTES, error=error)


def _check_torch_zip(f: IO[bytes], length: int, *, source: str, error: type[Exception]) -> None:
    if f.read(4) != b"PK\x03\x04":
        raise error(
            f"{source}: model.pt is not in torch's zip format (written by torch.save since "
            "torch 1.6); the legacy format is refused because it allocates what it declares"
        )
    entries = _zip_entries(f)
    if entries is not None and entries > MAX_RECORDS:
        raise error(f"{source}: model.pt has {entries} records, more than {MAX_RECORDS}")
    f.seek(0)
    total = 0
    for info in zipfile.ZipFile(f).infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise error(
                f"{source}: model.pt record {info.filename!r} is compressed; torch.save never does that"
            )
        if info.filename.endswith("data.pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise error(f"{source}: model.pt's pickle is larger than {MAX_PICKLE_BYTES} bytes")
        total += info.file_size
    if total > length:
        raise error(f"{source}: model.pt records declare {total:,} bytes in a {length:,}-byte file")


def load_torch_weights(
    f: IO[bytes], *, source: str, error: type[Exception] = CheckpointError
) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict read with ``weights_only=True`` after the checks above."""
    length = f.seek(0, 2)
    f.seek(0)
    try:
        _check_torch_zip(f, length, source=source, error=error)
        f.seek(0)
        sd = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise error(
            f"{source}: model.pt holds objects other than tensors, refused without running them ({err})"
        ) from err
    except CorrDiffError:
        raise
    except Exception as err:  # torch raises several types for a corrupt file
        raise error(f"{source}: model.pt is not a readable torch state dict: {err}") from err
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise error(f"{source}: model.pt is not a state dict of tensors")
    for key, t in sd.items():
        if (
            t.numel()
            and (t.storage_offset() + t.numel()) * t.element_size() > t.untyped_storage().nbytes()
        ):
            raise error(
                f"{source}: tensor {key!r} is larger than its storage (a stride trick); refused"
            )
    return sd
