"""A package's files, wherever it lies: a directory, a zip, or an fsspec URL to either.

:func:`open_files` lists a package once (names relative to its root, ``/``-separated) and
reads members in place: nothing is extracted to disk, a zip member stored uncompressed is a
view of the archive and a ``.mdlus`` inside a zip goes straight to the safe importer
(:func:`corrdiff_xr.model.mdlus.read_mdlus`). What is refused, each with one
:class:`PackageError` line naming the package and the file:

- more than :data:`MAX_FILES` files (counted from a zip's end record before it is parsed);
  absolute names and names with ``..``, zip members that are links, devices or encrypted,
  files of a local directory that resolve outside it (links), a name present twice;
- reading more than a per-kind limit: JSON :data:`~corrdiff_xr.model.archives.MAX_JSON_BYTES`,
  netCDF grids and invariants :data:`MAX_GRID_BYTES` each, a Zarr dataset's wanted arrays
  :data:`MAX_GRID_BYTES` in all, ``.mdlus`` files the limits of
  :mod:`corrdiff_xr.model.archives`. Sizes are checked as declared before reading, and a zip
  member never yields more than it declares.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from corrdiff_xr._redact import redact_url
from corrdiff_xr.model import archives
from corrdiff_xr.model.safety import CheckpointError, parse_json

if TYPE_CHECKING:
    import xarray as xr

    from corrdiff_xr.model.mdlus_files import MdlusCheckpoint

__all__ = ["MAX_FILES", "MAX_GRID_BYTES", "PackageError", "PackageFiles", "open_files"]

#: a Zarr store in a package holds one file per chunk
MAX_FILES = 100_000
#: one grid or invariants file (a 4000 x 4000 float64 lat/lon pair is 256 MB)
MAX_GRID_BYTES = 1 << 30


class PackageError(CheckpointError):
    """A CorrDiff package is missing a file or key, or holds one that does not fit."""


class PackageFiles:
    """The files of one package: ``names`` (relative, sorted) and bounded readers.

    Parameters
    ----------
    source
        How to name the package in messages (credentials redacted).
    sizes
        ``{name: size in bytes}`` of every file.
    opener
        Opens a name as a seekable binary file.
    compressed
        Names stored compressed (read into memory before random access).
    """

    def __init__(
        self,
        source: str,
        sizes: Mapping[str, int],
        opener: Callable[[str], IO[bytes]],
        compressed: Iterable[str] = (),
    ):
        self.source = source
        self.sizes = dict(sizes)
        self._opener = opener
        self._compressed = set(compressed)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.sizes))

    def __contains__(self, name: object) -> bool:
        return name in self.sizes

    def where(self, name: str) -> str:
        """``name`` as messages show it."""
        return f"{self.source}: {name}"

    def require(self, name: str, why: str = "") -> None:
        if name not in self.sizes:
            raise PackageError(f"{self.source} has no {name}{why}; it holds {_shorten(self.names)}")

    @contextlib.contextmanager
    def open(self, name: str, *, limit: int | None = None) -> Iterator[IO[bytes]]:
        """``name`` as a seekable binary file, refused when it declares more than ``limit``."""
        self.require(name)
        if limit is not None and self.sizes[name] > limit:
            raise PackageError(
                f"{self.where(name)} holds {self.sizes[name]:,} bytes, more than the "
                f"{limit:,} a package file of its kind may hold"
            )
        if name in self._compressed and self.sizes[name] > archives.MAX_MEMBER_BYTES:
            raise PackageError(
                f"{self.where(name)} is compressed and holds {self.sizes[name]:,} bytes; more "
                f"than {archives.MAX_MEMBER_BYTES:,} are not read into memory"
            )
        f = self._opener(name)
        try:
            if name in self._compressed:  # a deflated member seeks backwards by re-reading
                yield io.BytesIO(f.read(self.sizes[name]))
            else:
                yield f
        finally:
            f.close()

    def read_bytes(self, name: str, *, limit: int) -> bytes:
        with self.open(name, limit=limit) as f:
            return f.read(limit + 1)

    def json(self, name: str) -> Any:
        data = self.read_bytes(name, limit=archives.MAX_JSON_BYTES)
        return parse_json(data, self.where(name), limit=archives.MAX_JSON_BYTES, error=PackageError)

    def netcdf(self, name: str) -> xr.Dataset:
        """A netCDF (HDF5 or classic) file as an in-memory :class:`xarray.Dataset`."""
        import xarray as xr

        data = self.read_bytes(name, limit=MAX_GRID_BYTES)
        engine = {b"\x89HDF": "h5netcdf", b"CDF\x01": "scipy", b"CDF\x02": "scipy"}.get(data[:4])
        if engine is None:
            raise PackageError(f"{self.where(name)} is not a netCDF file")
        try:
            with xr.open_dataset(io.BytesIO(data), engine=engine) as ds:
                return ds.load()
        except Exception as err:  # noqa: BLE001 (the readers raise many types for a bad file)
            raise PackageError(f"{self.where(name)} is not a readable netCDF file: {err}") from err

    def zarr_arrays(self, store: str, arrays: Iterable[str]) -> dict[str, np.ndarray]:
        """``arrays`` of the Zarr group ``store`` (a folder of the package), read in memory."""
        import zarr
        import zarr.storage
        from zarr.core.buffer import default_buffer_prototype

        arrays = tuple(arrays)
        prefix = store.rstrip("/") + "/"
        keys = [
            n[len(prefix) :]
            for n in self.names
            if n.startswith(prefix)
            and (n.count("/") == prefix.count("/") or n[len(prefix) :].split("/")[0] in arrays)
        ]
        total = sum(self.sizes[prefix + k] for k in keys)
        if total > MAX_GRID_BYTES:
            raise PackageError(
                f"{self.where(store)}: the arrays {list(arrays)} hold {total:,} bytes, more "
                f"than {MAX_GRID_BYTES:,}"
            )
        buffer = default_buffer_prototype().buffer
        data = {k: buffer.from_bytes(self.read_bytes(prefix + k, limit=total)) for k in keys}
        try:
            group = zarr.open_group(zarr.storage.MemoryStore(data, read_only=True), mode="r")
        except Exception as err:  # noqa: BLE001
            raise PackageError(f"{self.where(store)} is not a readable Zarr group: {err}") from err
        out = {}
        for name in arrays:
            if name not in group:
                raise PackageError(
                    f"{self.where(store)} has no array {name!r}; it holds {sorted(group.keys())}"
                )
            array = group[name]
            if not isinstance(array, zarr.Array):
                raise PackageError(f"{self.where(store)}: {name!r} is a group, not an array")
            try:
                out[name] = np.asarray(array[...])
            except Exception as err:  # noqa: BLE001
                raise PackageError(f"{self.where(store)}: array {name!r}: {err}") from err
        return out

    def mdlus(self, name: str) -> MdlusCheckpoint:
        """The checkpoint ``name`` read by :func:`~corrdiff_xr.model.mdlus.read_mdlus`."""
        from corrdiff_xr.model.mdlus import read_mdlus

        with self.open(name, limit=archives.MAX_MEMBER_BYTES) as f:
            return read_mdlus(self.where(name), file=f)

    def within(self, folder: str) -> PackageFiles:
        """The files under ``folder``, named relative to it."""
        prefix = folder.rstrip("/") + "/"
        return PackageFiles(
            f"{self.source}/{folder.rstrip('/')}",
            {n[len(prefix) :]: s for n, s in self.sizes.items() if n.startswith(prefix)},
            lambda n: self._opener(prefix + n),
            {n[len(prefix) :] for n in self._compressed if n.startswith(prefix)},
        )

    @contextlib.contextmanager
    def zip(self, name: str) -> Iterator[PackageFiles]:
        """The files of the zip ``name`` inside this package."""
        with self.open(name) as f:
            yield _zip_files(f, self.where(name))


def _shorten(names: tuple[str, ...], n: int = 12) -> str:
    shown = ", ".join(names[:n])
    return f"[{shown}{', ...' if len(names) > n else ''}] ({len(names)} files)"


def _check_name(name: str, source: str) -> None:
    archives._check_name(name, source=source, error=PackageError)


def _zip_files(raw: IO[bytes], source: str) -> PackageFiles:
    size = raw.seek(0, 2)
    entries = archives._zip_entries(raw)
    if entries is None:
        raise PackageError(f"{source} is neither a directory nor a zip file")
    if entries > MAX_FILES:
        raise PackageError(f"{source} has {entries} members, more than {MAX_FILES}; refused")
    try:
        z = zipfile.ZipFile(raw)
    except archives._BROKEN as err:
        raise PackageError(f"{source}: the zip is truncated or corrupt: {err}") from err
    infos, compressed = {}, set()
    for info in z.infolist():
        _check_name(info.filename, source)
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise PackageError(f"{source}: member {info.filename!r} is a link or device; refused")
        if info.flag_bits & 1:
            raise PackageError(f"{source}: member {info.filename!r} is encrypted")
        if info.is_dir():
            continue
        if info.filename in infos:
            raise PackageError(f"{source} holds {info.filename} twice")
        infos[info.filename] = info
        if info.compress_type != zipfile.ZIP_STORED:
            compressed.add(info.filename)

    def opener(name: str) -> IO[bytes]:
        try:
            return archives._zip_member(
                z, raw, infos[name], size, source=source, error=PackageError
            )
        except archives._BROKEN as err:
            raise PackageError(f"{source}: member {name} is unreadable: {err}") from err

    return PackageFiles(source, {n: i.file_size for n, i in infos.items()}, opener, compressed)


def _directory_files(fs, root: str, source: str) -> PackageFiles:
    root = root.rstrip("/")
    found = fs.find(root, detail=True, withdirs=False)
    if len(found) > MAX_FILES:
        raise PackageError(f"{source} holds {len(found)} files, more than {MAX_FILES}; refused")
    local = "file" in getattr(fs, "protocol", ())
    real_root = os.path.realpath(root) if local else None
    sizes = {}
    for path, info in found.items():
        name = posixpath.relpath(path, root) if path.startswith(root + "/") else None
        if name is None:
            raise PackageError(f"{source}: listed {path!r} outside the package; refused")
        _check_name(name, source)
        if (
            real_root is not None  # local
            and os.path.commonpath([real_root, os.path.realpath(path)]) != real_root
        ):
            raise PackageError(f"{source}: {name} links outside the package; refused")
        sizes[name] = int(info.get("size") or 0)
    return PackageFiles(source, sizes, lambda n: fs.open(f"{root}/{n}", "rb"))


@contextlib.contextmanager
def open_files(
    source: str | os.PathLike, storage_options: Mapping[str, Any] | None = None
) -> Iterator[PackageFiles]:
    """The files of the package at ``source`` (a directory or zip: path or fsspec URL)."""
    import fsspec

    text = os.fspath(source)
    shown = redact_url(text)
    try:
        fs, root = fsspec.core.url_to_fs(text, **dict(storage_options or {}))
        is_dir, is_file = fs.isdir(root), (not fs.isdir(root)) and fs.isfile(root)
    except Exception as err:  # noqa: BLE001 (fsspec backends raise their own types)
        raise PackageError(f"cannot open the package {shown}: {err}") from err
    if is_dir:
        yield _directory_files(fs, root, shown)
    elif is_file:
        with fs.open(root, "rb") as raw:
            yield _zip_files(raw, shown)
    else:
        raise PackageError(f"the package {shown} does not exist")
