"""Intake 2 catalogs of downscaling datasets: one road from a catalog entry to DownscalingData.

Catalogs live in the repository's ``catalogs/`` directory (found next to the package, which
suits the editable install used for development):

* ``demo.yaml``: the synthetic dataset, built and written to a local Zarr cache on first use;
* ``samples.yaml``: the UK 1.5 km sample built from iris-sample-data, cached the same way;
* ``cloud.yaml``: templates for Zarr stores behind any fsspec URL (``file://``,
  ``memory://``), S3 (s3fs; ``anon`` and ``endpoint_url`` parameters) and GCS (gcsfs,
  anonymous).

Each entry names one of two readers defined here. :class:`ZarrPairReader` opens a canonical
Zarr store with :func:`corrdiff_xr.data.open_pair`; :class:`CachedBuildReader` first builds a
dataset with a registered builder and writes it (with its statistics) atomically to
``<cache_dir>/<name>-<hash of the builder arguments>.zarr``, then opens that store the same way.
The cache directory is the ``cache_dir`` user parameter, else ``$CORRDIFF_XR_CACHE``, else
``~/.cache/corrdiff_xr``. Native archives and pairs of them (a coarse ERA5-like archive, a
km-scale archive on its own grid, static fields) have two more readers, ``ArchiveReader``
and ``ArchivePairReader`` (:mod:`corrdiff_xr.data.catalog_archives`).

Intake 2.0.9 quirks this module works with: a version-2 catalog must contain every section
(``version, metadata, user_parameters, data, aliases, entries``), even when empty; only
user parameters declared at catalog level can be overridden by ``open_entry(..., name=value)``
(other keyword arguments would silently become reader arguments, so they are refused here),
and a reader argument must not share its name with a user parameter (intake drops such an
argument when the parameter is overridden), hence ``cache: "{cache_dir}"`` and
``url: "{zarr_url}"`` in the YAML files.

Trust: catalogs are shared through URLs and repositories, so a catalog is data, not code.
intake 2 imports the classes a catalog names and its templates read the environment, import
and unpickle (:mod:`corrdiff_xr.data._catalog_trust` lists every place). Unless a catalog is
*trusted*, :func:`open_catalog` checks the YAML before intake sees it and refuses, with a
:class:`CatalogError` naming the file, the entry and the class or template:

* a class reference not in :data:`ALLOWED_IMPORTS` (this module's two readers producing
  ``corrdiff_xr.data:DownscalingData``, intake's user-parameter classes, no datatypes), and a
  user-parameter ``dtype`` outside :data:`ALLOWED_DTYPES`;
* any template function (``env``, ``func``, ``import``, ``data``, ``pickle64``, ``shell`` ...)
  and any ``{field}`` but a declared user parameter, ``CATALOG_DIR`` or ``CATALOG_PATH``;
* choosing the cache directory: the cache reader's ``cache`` must be ``""`` or
  ``"{PARAM}"`` for a catalog user parameter whose default is ``""``, so the directory is
  the user's (``open_entry(..., cache_dir=...)``, else ``$CORRDIFF_XR_CACHE``, else
  ``~/.cache/corrdiff_xr``); builder arguments naming a file to read (``path``) and fsspec
  ``cache_storage`` options are refused too;
* choosing where credentials go or which local files are read: a ``url`` chaining filesystems
  or naming another protocol, storage options choosing a filesystem, a server or credentials
  (the user passes those as parameter values; ``_catalog_trust`` lists them).

Only the user trusts a catalog, never the catalog itself: ``open_catalog(path, trust=True)``
or ``open_entry(path, entry, trust=True)`` in Python; for commands, the environment variable
``CORRDIFF_XR_TRUSTED_CATALOGS``, catalog files separated by :data:`os.pathsep` (compared
resolved). Whatever the trust, catalog names, entry names and the cache reader's ``name`` and
``builder`` must be plain (letters, digits, ``_ - .``, not starting with ``.``), the cache
store must resolve inside the cache directory, YAML aliases expand to at most
``_catalog_trust.MAX_NODES`` values, entries may not refer to each other in a cycle, the
synthetic builder's sizes are bounded, and error messages are redacted
(:mod:`corrdiff_xr._redact`: URL credentials, secret-looking options, and the values of the
environment variables a trusted catalog's templates read).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import xarray as xr
import yaml
from intake.readers.entry import Catalog
from intake.readers.readers import BaseReader

from corrdiff_xr._redact import redact_options, redact_text, redact_url, redacted_error
from corrdiff_xr.data import _catalog_trust as _trust
from corrdiff_xr.data.catalog_archives import (
    ArchivePairReader,
    ArchiveReader,
    resolve_archive_entries,
)
from corrdiff_xr.errors import CorrDiffError

if TYPE_CHECKING:
    from corrdiff_xr.data.pair import DownscalingData

__all__ = [
    "ALLOWED_DTYPES",
    "ALLOWED_IMPORTS",
    "BUILDERS",
    "ArchivePairReader",
    "ArchiveReader",
    "TRUST_ENV",
    "CachedBuildReader",
    "CatalogError",
    "ZarrPairReader",
    "cache_root",
    "catalog_dir",
    "list_catalogs",
    "materialise",
    "open_catalog",
    "open_entry",
]

CACHE_ENV = "CORRDIFF_XR_CACHE"
TRUST_ENV = "CORRDIFF_XR_TRUSTED_CATALOGS"
_SECTIONS = ("version", "metadata", "user_parameters", "data", "aliases", "entries")
_ENTRY_KEYS = ("reader", "kwargs", "user_parameters", "metadata", "output_instance")
#: user parameters intake adds itself; not overridable through open_entry
_INTERNAL_PARAMS = {"CATALOG_DIR", "CATALOG_PATH", "STORAGE_OPTIONS"}

_USER_PARAMETERS = (
    "Base",
    "Simple",
    "Options",
    "NamedOptions",
    "MultiOption",
    "BoundedNumber",
)
#: What an untrusted catalog may name by import path, per place intake 2.0.9 imports one; the
#: check runs before intake imports anything. A new project reader is added to "reader" only.
ALLOWED_IMPORTS: dict[str, frozenset[str]] = {
    "reader": frozenset(
        {
            "corrdiff_xr.data.catalog:ZarrPairReader",
            "corrdiff_xr.data.catalog:CachedBuildReader",
            "corrdiff_xr.data.catalog:ArchiveReader",
            "corrdiff_xr.data.catalog:ArchivePairReader",
        }
    ),
    "output_instance": frozenset({"corrdiff_xr.data:DownscalingData", "xarray:Dataset"}),
    "user parameter cls": frozenset(
        f"intake.readers.user_parameters:{kind}UserParameter" for kind in _USER_PARAMETERS
    ),
    "entry cls": frozenset({"intake.readers.entry:ReaderDescription"}),
    "data cls": frozenset({"intake.readers.entry:DataDescription"}),
    "datatype": frozenset(),  # no project reader reads an intake datatype
}
#: builtins a user parameter's ``dtype`` may name (intake calls ``getattr(builtins, dtype)``)
ALLOWED_DTYPES = frozenset({"str", "int", "float", "bool", "list", "dict", "tuple", "object"})
_CACHE_READER = "corrdiff_xr.data.catalog:CachedBuildReader"
#: letters, digits, ``_ - .``, not starting with ``.``: never a path, never hidden
_PLAIN = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")


class CatalogError(CorrDiffError, ValueError):
    """A catalog file is missing, malformed, untrusted, or asked for something it lacks."""


def _check_plain(what: str, value: Any) -> str:
    if not isinstance(value, str) or not _PLAIN.fullmatch(value):
        raise CatalogError(
            f"{what} {value!r} is not a plain name: use letters, digits, '_', '-' and '.', "
            "not starting with '.' (no '/', '..' or absolute paths)"
        )
    return value


def _synthetic(**kw: Any) -> xr.Dataset:
    from corrdiff_xr.data.sources.synthetic import synthetic_builder

    return synthetic_builder(**kw)


def _uk_hires(**kw: Any) -> xr.Dataset:
    from corrdiff_xr.data.sources.ukhires import uk_hires_dataset

    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    return uk_hires_dataset(**kw)


#: datasets a catalog may build into the cache (a fixed list: a catalog cannot run arbitrary code)
BUILDERS: dict[str, Callable[..., xr.Dataset]] = {
    "synthetic": _synthetic,
    "uk_hires": _uk_hires,
}


def cache_root(value: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``value`` if given, else ``$CORRDIFF_XR_CACHE``, else ~/.cache."""
    chosen = os.fspath(value) if value else os.environ.get(CACHE_ENV) or "~/.cache/corrdiff_xr"
    return Path(chosen).expanduser()


#: the directory holding the ``corrdiff_xr`` package (a source checkout's root)
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def catalog_dir() -> Path:
    """The bundled ``catalogs/`` directory.

    In a source checkout (``pip install -e .``) it sits next to the ``corrdiff_xr`` package;
    an installed wheel carries it as data files (``<prefix>/share/corrdiff_xr/catalogs``),
    found through the distribution's file list wherever the prefix is (venv, ``--user``).
    """
    import importlib.metadata

    path = _SOURCE_ROOT / "catalogs"
    if path.is_dir():
        return path
    try:
        files = importlib.metadata.files("corrdiff_xr") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.suffix == ".yaml" and file.parts[-3:-1] == ("corrdiff_xr", "catalogs"):
            return Path(file.locate()).resolve().parent
    raise CatalogError(
        f"no bundled catalogs: neither {path} nor installed share/corrdiff_xr/catalogs exist; "
        "reinstall corrdiff_xr or pass the path of a catalog YAML file"
    )


def list_catalogs() -> list[str]:
    """Names of the bundled catalogs (``demo``, ``samples``, ``cloud`` ...)."""
    return sorted(p.stem for p in catalog_dir().glob("*.yaml"))


class ZarrPairReader(BaseReader):
    """Open a canonical Zarr store (any fsspec URL) as a validated DownscalingData."""

    output_instance = "corrdiff_xr.data:DownscalingData"
    imports: ClassVar[set[str]] = {"xarray", "zarr", "fsspec"}

    def _read(
        self,
        url: str,
        storage_options: dict | None = None,
        inputs: list[str] | None = None,
        targets: list[str] | None = None,
        static: list[str] | None = None,
        **kwargs: Any,
    ) -> DownscalingData:
        from corrdiff_xr.data.archive_spec import given_options
        from corrdiff_xr.data.pair import open_pair

        if kwargs:
            raise CatalogError(
                f"unexpected reader arguments for {redact_url(url)}: {sorted(kwargs)}"
            )
        return open_pair(
            url, storage_options=given_options(storage_options),
            inputs=inputs, targets=targets, static=static,
        )  # fmt: skip


class CachedBuildReader(BaseReader):
    """Build a dataset with a registered builder, cache it as Zarr once, open it from there."""

    output_instance = "corrdiff_xr.data:DownscalingData"
    imports: ClassVar[set[str]] = {"xarray", "zarr"}

    def _read(
        self,
        builder: str,
        name: str,
        cache: str = "",
        builder_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> DownscalingData:
        path = materialise(builder, name, cache_dir=cache, builder_kwargs=builder_kwargs)
        return ZarrPairReader()._read(os.fspath(path), **kwargs)


def materialise(
    builder: str,
    name: str,
    *,
    cache_dir: str | os.PathLike | None = "",
    builder_kwargs: dict | None = None,
) -> Path:
    """Path of the cached Zarr store of ``BUILDERS[builder](**builder_kwargs)``, built if absent.

    The store name carries a hash of the builder and its arguments, so different parameters
    never share a cache entry; it is written with its statistics atomically, so concurrent
    or interrupted builds never leave a half-written store behind. ``builder`` and ``name``
    must be plain names and the store must resolve inside :func:`cache_root` ``(cache_dir)``.
    """
    _check_plain("builder", builder)
    _check_plain("cache store name", name)
    if builder not in BUILDERS:
        raise CatalogError(f"unknown builder {builder!r}; known builders: {sorted(BUILDERS)}")
    kwargs = dict(builder_kwargs or {})
    key = json.dumps({"builder": builder, **kwargs}, sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    root = cache_root(cache_dir).resolve()
    path = root / f"{name}-{digest}.zarr"
    if not path.resolve().is_relative_to(root):  # a symlink planted in the cache
        raise CatalogError(
            f"cache store {path} resolves to {path.resolve()}, outside the cache directory "
            f"{root}; remove the link"
        )
    if path.exists():
        return path
    from corrdiff_xr.data.stats import compute_stats
    from corrdiff_xr.data.write import write_dataset

    try:
        ds = BUILDERS[builder](**kwargs)
    except (TypeError, ValueError) as err:  # the catalog's arguments: one line naming them
        raise CatalogError(
            f"builder {builder!r}, arguments {redact_options(kwargs)}: {err}"
        ) from None
    for var in ds.variables.values():
        var.encoding.clear()
    try:
        write_dataset(ds, path, stats=compute_stats(ds), kind="cache")
    except OSError:
        if not path.exists():  # not a lost race with another builder: a real failure
            raise
    return path


# -- opening ------------------------------------------------------------------------------------
def _resolve(name_or_path: str | os.PathLike) -> Path:
    text = os.fspath(name_or_path)
    if os.sep in text or "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise CatalogError(f"catalog file not found: {path}")
        return path
    _check_plain("catalog name", text)
    path = catalog_dir() / f"{text}.yaml"
    if not path.is_file():
        raise CatalogError(f"no bundled catalog {text!r}; available: {list_catalogs()}")
    return path


def _line_of(node: yaml.Node | None, key: str) -> int | None:
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if getattr(k, "value", None) == key:
                return k.start_mark.line + 1
    return None


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if getattr(k, "value", None) == key:
                return v
    return None


def _load_yaml(path: Path) -> dict:
    text = path.read_text()
    try:
        root = yaml.compose(text)
        _trust.check_graph(root)  # before anything expands the aliases
        data = yaml.safe_load(text)
    except _trust.Refused as err:
        raise CatalogError(f"catalog {path}, {err}") from None
    except RecursionError:
        raise CatalogError(f"malformed catalog YAML {path}: nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise CatalogError(f"malformed catalog YAML {path}{where}: {problem}") from err
    if not isinstance(data, dict):
        raise CatalogError(f"catalog {path}, line 1: expected a mapping of sections")
    missing = [s for s in _SECTIONS if s not in data]
    if missing:
        raise CatalogError(
            f"catalog {path}: missing section(s) {missing}; an intake 2 catalog needs all of "
            f"{list(_SECTIONS)} (use {{}} when empty)"
        )
    if data["version"] != 2:
        raise CatalogError(
            f"catalog {path}, line {_line_of(root, 'version')}: version must be 2 (intake 2)"
        )
    entries_node = _child(root, "entries")
    for section in _SECTIONS[2:]:
        if not isinstance(data[section], dict):
            raise CatalogError(
                f"catalog {path}, line {_line_of(root, section)}: section {section!r} "
                f"must be a mapping, got {type(data[section]).__name__}"
            )
    for entry, spec in data["entries"].items():
        line = _line_of(entries_node, entry)
        if not isinstance(entry, str) or not _PLAIN.fullmatch(entry):
            raise CatalogError(
                f"catalog {path}, line {line}: entry name {entry!r} is not a plain name "
                "(letters, digits, '_', '-', '.', not starting with '.')"
            )
        if not isinstance(spec, dict):
            raise CatalogError(f"catalog {path}, line {line}: entry {entry!r} is not a mapping")
        gaps = [k for k in _ENTRY_KEYS if k not in spec]
        if gaps:
            raise CatalogError(f"catalog {path}, line {line}: entry {entry!r} lacks {gaps}")
    cycle = _trust.find_cycle(data)
    if cycle:
        raise CatalogError(f"catalog {path}: entries refer to each other in a cycle: "
                           f"{' -> '.join(cycle)}; break the cycle")  # fmt: skip
    return data


def open_catalog(name_or_path: str | os.PathLike, *, trust: bool = False) -> Catalog:
    """Open a bundled catalog by name (``"demo"``) or any catalog YAML file by path.

    Parameters
    ----------
    name_or_path
        A bundled catalog name or the path of a catalog YAML file.
    trust
        Let this catalog import any class and use every intake template (see the module
        docstring). Also granted by listing the file in ``$CORRDIFF_XR_TRUSTED_CATALOGS``.

    Raises
    ------
    CatalogError
        Unknown name (listing the bundled ones), missing file, malformed YAML (naming the
        file and line), or, for an untrusted catalog, anything it may not do.
    """
    if not isinstance(trust, bool):  # "false" from a command line would be truthy
        raise CatalogError(f"trust must be True or False, got {trust!r}")
    path = _resolve(name_or_path)
    data = _load_yaml(path)
    trusted = trust or _trust.listed_in(path, TRUST_ENV)
    if not trusted:
        try:
            _trust.find_refusal(data, allowed=ALLOWED_IMPORTS, dtypes=ALLOWED_DTYPES,
                                cache_reader=_CACHE_READER)  # fmt: skip
        except _trust.Refused as err:
            raise CatalogError(
                f"catalog {path}, {err.where}: {err.problem}. Trust a catalog only if you "
                "trust its author: open_catalog(path, trust=True) / open_entry(..., "
                f"trust=True), or for commands {TRUST_ENV}={path}"
            ) from None
    try:
        cat = Catalog.from_dict(data)
    except CorrDiffError:
        raise
    except Exception as err:  # intake raises bare KeyError/TypeError on odd content
        raise CatalogError(redact_text(f"catalog {path}: {type(err).__name__}: {err}")) from err
    cat.user_parameters["CATALOG_PATH"] = str(path)
    cat.user_parameters["CATALOG_DIR"] = str(path.parent)
    # an attribute, not metadata, so nothing in the YAML can set it: marks the catalog as
    # checked here, and names the variables its templates read (their values are redacted)
    cat._corrdiff_env_names = tuple(sorted(_trust.env_names(data)))
    return cat


def open_entry(
    catalog: Catalog | str | os.PathLike,
    entry: str,
    *,
    trust: bool = False,
    **params: Any,
) -> Any:  # what the entry's reader returns: a DownscalingData from this package's readers
    """Open one entry of a catalog as a validated, lazy DownscalingData.

    Parameters
    ----------
    catalog
        A catalog opened with :func:`open_catalog`, a bundled catalog name, or a path to a
        catalog YAML file.
    entry
        Entry name.
    trust
        Passed to :func:`open_catalog` when ``catalog`` is a name or path; required for a
        Catalog object made elsewhere (it was never checked).
    **params
        Values for the catalog's user parameters (e.g. ``cache_dir=...``, ``seed=1``).

    Returns
    -------
    DownscalingData
        Opening reads coordinates and metadata only, never array data.
    """
    cat = catalog if isinstance(catalog, Catalog) else open_catalog(catalog, trust=trust)
    where = cat.user_parameters.get("CATALOG_PATH", "<catalog>")
    env_refs = cat.__dict__.get("_corrdiff_env_names")
    if env_refs is None and trust is not True:
        raise CatalogError(
            f"catalog {where} was not opened with open_catalog, so nothing it names has "
            "been checked; open it with open_catalog(path), or pass trust=True"
        )
    _check_plain("entry name", entry)
    if entry not in cat.entries:
        raise CatalogError(f"no entry {entry!r} in {where}; entries: {sorted(cat.entries)}")
    declared = sorted(set(cat.user_parameters) - _INTERNAL_PARAMS)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise CatalogError(
            f"unknown parameter(s) {unknown} for {where}; its user parameters are {declared}"
        )
    return _read(cat, entry, params, [os.environ.get(n) for n in env_refs or ()])


def _read(cat: Catalog, entry: str, params: dict, secrets: list[str | None]) -> Any:
    """``cat[entry].read()``; errors name the catalog and entry, without ``secrets``."""
    try:
        reader = cat(**params)[entry]
        resolve_archive_entries(cat, params, reader, f"entry {entry!r}", error=CatalogError)
    except Exception as err:
        # intake raises bare TypeError/ValueError on bad values: name the catalog and entry
        where = cat.user_parameters.get("CATALOG_PATH", "<catalog>")
        wrapped = err if isinstance(err, CorrDiffError) else CatalogError(
            f"catalog {where}, entry {entry!r}: {type(err).__name__}: {err}")  # fmt: skip
        clean = redacted_error(wrapped, secrets, fallback=CatalogError)
        if clean is not None:
            raise clean from None
        if wrapped is err:
            raise
        raise wrapped from err
    try:
        return reader.read()
    except Exception as err:
        clean = redacted_error(err, secrets, fallback=CatalogError)
        if clean is None:
            raise
        # from None: the original, printed with --debug, would show the secret again
        raise clean from None
