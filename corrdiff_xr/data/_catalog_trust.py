"""What an untrusted intake catalog may do: a check of its YAML before intake sees any of it.

intake 2.0.9 turns a catalog into code in more places than its ``reader`` key. Reading its
source (``intake/readers/entry.py``, ``utils.py``, ``user_parameters.py``, ``mixins.py``)
finds every one:

* class references, imported by ``intake.import_name``: an entry's ``reader`` (on access), the
  ``cls`` of catalog-, entry- and data-level user parameters and of entries and data
  descriptions themselves (``Tokenizable.from_dict``, at load time), a data description's
  ``datatype`` (on access), and ``output_instance`` (when ``dir()`` lists a reader's
  transforms);
* a user parameter's ``dtype``, looked up in :mod:`builtins` and called to coerce values
  (objects made by ``from_dict`` skip the constructor's check). Today's ``coerce`` calls
  ``isinstance`` first, which stops a function such as ``eval``; only plain types are
  allowed all the same, so that safety does not hang on that order;
* templates, applied to reader arguments and user-parameter defaults: ``{env(NAME)}`` (also
  inside a longer string, and a bare ``env(NAME)`` default) reads the environment,
  ``{func(mod:obj)}`` imports anything (intake's ``allow_import`` defaults to True; 2.0.9's
  ``{import(...)}`` is registered wrongly and fails, but is meant to do the same),
  ``{pickle64(...)}`` unpickles when ``allow_pickle`` is set,
  ``{data(NAME)}`` instantiates another entry, and ordinary ``str.format`` fields can reach
  attributes and items (``{param.__class__}``). Intake 1's Jinja templates (``env``,
  ``client_env``, ``shell``) belong to ``intake.open_catalog``, which corrdiff_xr never calls;
  they are refused all the same.

:func:`find_refusal` walks the parsed YAML and reports the first of these that the caller's
allow-lists do not permit, plus two ways to write or read outside the cache: a ``cache``
argument of the cache reader that the catalog (rather than the user) chooses, and builder
arguments naming a file to read (``path``) or an fsspec ``cache_storage`` directory.

It also refuses what would let a catalog choose where the user's credentials go or which
local files are read: in reader arguments and the defaults they take from user parameters,
a ``url`` that chains filesystems (``::``) or names a protocol outside :data:`SCHEMES`, and
storage options choosing a filesystem (``protocol``, ``target_protocol``, ``fo`` ...), a
server (``endpoint_url``, ``client_kwargs.endpoint_url``, ``host`` ...) or credentials
(``key``, ``secret``, ``token`` but ``token: anon``, ``profile`` ...); ``backend_kwargs`` are
checked as storage options, and a kerchunk reference (``engine: kerchunk``) must be remote, as
a local one's targets could be any local file. The user may still pass
any of them as a user parameter's value, whose catalog default is then unset (``""``).

Whatever the trust, :func:`check_graph` bounds the YAML itself (aliases expand to at most
:data:`MAX_NODES` nodes, none contains itself), which keeps every walk here linear in the
file's size, and :func:`find_cycle` names entries that refer to each other in a cycle.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from corrdiff_xr._redact import is_secret_key, redact_options, redact_url

__all__ = [
    "MAX_NODES",
    "SCHEMES",
    "Refused",
    "check_graph",
    "env_names",
    "find_cycle",
    "find_refusal",
    "listed_in",
]

#: intake 2 template functions (bare or in braces) and intake 1's Jinja ones
_TEMPLATE_FUNCS = {
    "env": "reads an environment variable",
    "client_env": "reads an environment variable",
    "shell": "runs a shell command",
    "data": "reads another catalog entry",
    "func": "imports a Python object",
    "import": "imports a Python object",
    "pickle64": "unpickles (runs) Python code",
}
_TEMPLATE_FUNC = re.compile(r"\b(" + "|".join(_TEMPLATE_FUNCS) + r")\s*\(")
# names stop at the next bracket, quote or space: one scan per match, linear in the text
_ENV_REF = re.compile(r"\b(?:client_)?env\s*\(\s*['\"]?([^()'\"\s]+)")
#: builder arguments that name a file to read (from outside the cache)
_FILE_ARGS = frozenset({"path"})
#: user parameters intake sets itself; templates may use them
_INTERNAL = frozenset({"CATALOG_DIR", "CATALOG_PATH"})
#: URL protocols an untrusted catalog may name (no chaining, reference or archive filesystems)
SCHEMES = frozenset(
    {"file", "memory", "s3", "s3a", "gs", "gcs", "http", "https", "az", "abfs", "abfss"}
)
#: fsspec options that choose another filesystem or layer one filesystem on another
_FS_OPTIONS = frozenset(
    {"protocol", "target_protocol", "target_options", "remote_protocol", "remote_options",
     "fo", "fs", "target", "ref_storage_args", "storage_options"}
)  # fmt: skip
#: fsspec options that choose the server credentials are sent to
_SERVER_OPTION = re.compile(r"endpoint|host|url|prox|connection_string")
#: credential options beyond the secret-looking names (``anon`` is no credential: allowed)
_CREDENTIAL_OPTIONS = frozenset({"profile", "profile_name", "requester_pays", "user_project"})
#: backend kwargs that select messages, whose names only look like credentials (``keys``)
_SELECTORS = frozenset({"filter_by_keys"})
#: a YAML catalog, its aliases expanded, holds at most this many nodes (a bundled one: ~300)
MAX_NODES = 100_000
_FIELD = re.compile(r"\{(\w+)\}")
_DATA_REF = re.compile(r"\bdata\s*\(\s*['\"]?([^()'\"\s]+)")


class Refused(Exception):
    """Something an untrusted catalog may not do: ``where`` in the catalog, and ``problem``."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def env_names(data: object) -> set[str]:
    """Names of the environment variables the templates in ``data`` read."""
    return {name.strip() for text in _strings(data) for name in _ENV_REF.findall(text)}


def _check_values(where: str, value: object, names: set[str]) -> None:
    """Templates only fill in declared parameters, and no value chooses a write location."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "cache_storage":
                raise Refused(where, f"fsspec option cache_storage={redact_options(item)!r} "
                              "writes outside the cache directory")  # fmt: skip
            if key != "description":  # descriptions are never templated
                _check_values(where, item, names)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_values(where, item, names)
    elif isinstance(value, str):
        _check_text(where, value, names)


def _check_text(where: str, text: str, names: set[str]) -> None:
    found = _TEMPLATE_FUNC.search(text)
    if found:
        raise Refused(where, f"template {found[1]}(...) in {redact_url(text)!r} "
                      f"{_TEMPLATE_FUNCS[found[1]]}")  # fmt: skip
    try:
        fields = [(f, c, s) for _, f, s, c in string.Formatter().parse(text) if f is not None]
    except ValueError as err:
        raise Refused(where, f"unbalanced braces in {text!r} ({err})") from None
    for field, conversion, spec in fields:
        if field not in names or conversion or spec:
            raise Refused(
                where,
                f"template field {{{field}}} in {text!r} is not a declared user parameter "
                f"(declared: {sorted(names)}); attribute, index and format fields are refused",
            )


def _check_import(where: str, kind: str, value: Any, allowed: Mapping[str, frozenset]) -> None:
    if not isinstance(value, str) or value not in allowed[kind]:
        names = sorted(allowed[kind]) or "none"
        raise Refused(where, f"{kind} {value!r} is not an allowed class (allowed: {names})")


def _check_parameters(
    where: str, params: Any, names: set[str], allowed: Mapping, dtypes: frozenset
) -> None:
    if not isinstance(params, Mapping):
        raise Refused(where or "catalog", f"user_parameters must be a mapping, got {params!r}")
    for name, spec in params.items():
        at = f"{where}user parameter {name!r}"
        if not isinstance(spec, Mapping):
            _check_values(at, spec, names)
            continue
        if "cls" in spec:
            _check_import(at, "user parameter cls", spec["cls"], allowed)
        if "dtype" in spec and spec["dtype"] not in dtypes:
            raise Refused(
                at,
                f"dtype {spec['dtype']!r} is not allowed (allowed: {sorted(dtypes)})",
            )
        _check_values(at, {k: v for k, v in spec.items() if k not in ("cls", "dtype")}, names)


def _default(spec: Any) -> Any:
    return spec.get("default") if isinstance(spec, Mapping) else spec


def _check_cache_args(where: str, kwargs: Mapping, params: Mapping) -> None:
    """The cache reader may not choose the cache directory, nor read files into the cache."""
    cache = kwargs.get("cache", "")
    named = re.fullmatch(r"\{(\w+)\}", cache) if isinstance(cache, str) else None
    user_chosen = (
        named is not None and named[1] in params and _default(params[named[1]]) in ("", None)
    )
    if cache not in ("", None) and not user_chosen:
        raise Refused(
            where,
            f"cache={cache!r}: the cache directory is the user's choice; write cache: '' or "
            "cache: '{PARAM}' with a catalog user parameter PARAM whose default is ''",
        )
    builder_kwargs = kwargs.get("builder_kwargs") or {}
    if not isinstance(builder_kwargs, Mapping):
        raise Refused(where, f"builder_kwargs must be a mapping, got {builder_kwargs!r}")
    reads = sorted(_FILE_ARGS & set(builder_kwargs))
    if reads:
        raise Refused(where, f"builder argument(s) {reads} read files from outside the cache")


def _unset(value: object) -> bool:
    return value is None or (isinstance(value, (str, Mapping, list, tuple)) and not value)


def _filled(value: Any, defaults: Mapping[str, Any]) -> Any:
    """``value`` as intake fills it in when the user passes no parameter: with the defaults."""
    if not isinstance(value, str):
        return value
    whole = _FIELD.fullmatch(value)
    if whole:  # intake substitutes a lone field by the value itself, not its text
        return defaults.get(whole[1], value)
    return _FIELD.sub(lambda m: str(defaults.get(m[1], m[0]) or ""), value)


def _option_problem(key: object, value: object) -> str | None:
    name = str(key).lower()
    if name in _FS_OPTIONS:
        return "chooses another filesystem or layers one on another (it can read local files)"
    if _SERVER_OPTION.search(name):
        return "chooses the server your credentials are sent to"
    if name in _CREDENTIAL_OPTIONS or (is_secret_key(name) and (name, value) != ("token", "anon")):
        return "chooses credentials"
    return None


def _check_options(where: str, path: str, options: Any, defaults: Mapping[str, Any]) -> None:
    if not isinstance(options, Mapping):
        return
    for key, raw in options.items():
        value = _filled(raw, defaults)
        if _unset(value):
            continue  # unset by the catalog: the user's choice (a parameter they pass)
        problem = None if key in _SELECTORS else _option_problem(key, value)
        if problem:
            shown = redact_options({key: value})[key]
            raise Refused(
                where,
                f"storage option {path}{key}={shown!r} {problem}; a catalog may not set it: "
                "give it a user parameter whose default is unset and pass the value yourself "
                "(open_entry(..., NAME=value) / --param NAME=value)",
            )
        _check_options(where, f"{path}{key}.", value, defaults)


def _check_url(where: str, url: object, defaults: Mapping[str, Any]) -> None:
    text = _filled(url, defaults)
    if not isinstance(text, str):
        return
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*):(?://|:)", text)
    if "::" in text or (scheme and scheme[1].lower() not in SCHEMES):
        raise Refused(
            where,
            f"url {redact_url(text)!r} chains filesystems or names a protocol a catalog may "
            f"not choose (allowed: {sorted(SCHEMES)}, no '::'); pass such a URL yourself as a "
            "user parameter's value",
        )


def _check_reference(where: str, spec: Mapping, defaults: Mapping[str, Any]) -> None:
    """A catalog may not choose a local kerchunk reference: its targets may be any local
    file (a remote reference may point at remote data only, checked when it is opened)."""
    engine = spec.get("engine")
    if _filled(engine, defaults) != "kerchunk" and not (
        isinstance(engine, str) and _FIELD.search(engine)
    ):
        return  # a templated engine may become kerchunk at the user's word
    url = _filled(spec.get("url"), defaults)
    if _unset(url) or not isinstance(url, str):
        return
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*)://", url)
    if scheme is None or scheme[1].lower() in ("file", "local", "memory"):
        raise Refused(
            where,
            f"url {redact_url(url)!r} is a local kerchunk reference, whose targets may read any "
            "local file; a catalog may name remote references only: pass a local one yourself "
            "as a user parameter's value",
        )


def _check_locations(where: str, value: object, defaults: Mapping[str, Any]) -> None:
    """Every ``url``, ``storage_options`` and ``backend_kwargs`` in reader arguments, and
    kerchunk references, parameter defaults filled."""
    value = _filled(value, defaults)
    if isinstance(value, Mapping):
        if "engine" in value:
            _check_reference(where, value, defaults)
        for key, item in value.items():
            if key == "url":
                _check_url(where, item, defaults)
            elif key in ("storage_options", "backend_kwargs"):
                path = "" if key == "storage_options" else f"{key}."
                _check_options(where, path, _filled(item, defaults), defaults)
            else:
                _check_locations(where, item, defaults)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_locations(where, item, defaults)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def check_graph(root: yaml.Node) -> None:
    """Refuse a composed YAML graph that aliases expand past :data:`MAX_NODES`, or that holds
    an alias to a node containing it; linear in the number of nodes in the file."""
    sizes: dict[int, int] = {}  # expanded size per distinct node
    ancestors: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key, line = id(node), f"line {node.start_mark.line + 1}"
        if closing:
            ancestors.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_NODES:
                raise Refused(line, f"YAML aliases expand to more than {MAX_NODES} values "
                              "(an alias bomb?); write the catalog with fewer aliases")  # fmt: skip
        elif key in ancestors:
            raise Refused(line, "a YAML alias refers to a node that contains it (a cycle)")
        elif key not in sizes:
            ancestors.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def find_cycle(data: Mapping) -> list[str] | None:
    """Names of data/entries that refer to each other in a cycle (``{data(NAME)}`` templates,
    ``entry: NAME`` archive references), first name repeated at the end; None if none."""
    refs: dict[str, set[str]] = {}
    for section in ("data", "entries"):
        for name, spec in (data.get(section) or {}).items():
            kwargs = spec.get("kwargs") if isinstance(spec, Mapping) else None
            found = {m for text in _strings(kwargs) for m in _DATA_REF.findall(text)}
            refs.setdefault(str(name), set()).update(found | set(_entry_refs(kwargs)))
    done: set[str] = set()
    for start in sorted(refs):
        path, todo = [start], [iter(sorted(refs[start]))]  # iterative: no recursion limit
        while todo:
            ref = next(todo[-1], None)
            if ref is None:
                done.add(path.pop())
                todo.pop()
            elif ref in path:
                return [*path[path.index(ref) :], ref]
            elif ref in refs and ref not in done:
                path.append(ref)
                todo.append(iter(sorted(refs[ref])))
    return None


def _entry_refs(value: object) -> Iterator[str]:
    return (item["entry"] for item in _entry_items(value))


def _entry_items(value: object) -> Iterator[Mapping]:
    if isinstance(value, Mapping):
        if isinstance(value.get("entry"), str):
            yield value
        for item in value.values():
            yield from _entry_items(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _entry_items(item)


def find_refusal(
    data: Mapping,
    *,
    allowed: Mapping[str, frozenset],
    dtypes: frozenset,
    cache_reader: str,
) -> None:
    """Raise :class:`Refused` for the first thing in a parsed catalog that it may not do.

    Parameters
    ----------
    data
        The catalog YAML, parsed, with every intake 2 section present.
    allowed
        Allowed import paths per kind of reference: ``reader``, ``output_instance``,
        ``user parameter cls``, ``entry cls``, ``data cls``, ``datatype``.
    dtypes
        Builtin names a user parameter's ``dtype`` may be.
    cache_reader
        Import path of the reader that builds into the cache (its arguments are checked).
    """
    params = data["user_parameters"]
    names = set(params) | _INTERNAL
    _check_parameters("", params, names, allowed, dtypes)
    for name, spec in data["data"].items():
        at = f"data {name!r}"
        if not isinstance(spec, Mapping):
            raise Refused(at, f"expected a mapping, got {spec!r}")
        if "cls" in spec:
            _check_import(at, "data cls", spec["cls"], allowed)
        _check_import(at, "datatype", spec.get("datatype"), allowed)
    for name, spec in data["entries"].items():
        at = f"entry {name!r}"
        if "cls" in spec:
            _check_import(at, "entry cls", spec["cls"], allowed)
        _check_import(at, "reader", spec["reader"], allowed)
        if spec["output_instance"] is not None:
            _check_import(at, "output_instance", spec["output_instance"], allowed)
        own = spec["user_parameters"]
        scope = names | set(own if isinstance(own, Mapping) else ())
        _check_parameters(f"{at}, ", own, scope, allowed, dtypes)
        if not isinstance(spec["kwargs"], Mapping):
            raise Refused(at, f"kwargs must be a mapping, got {spec['kwargs']!r}")
        _check_values(at, spec["kwargs"], scope)
        defaults = {k: _default(v) for k, v in params.items()}
        defaults.update(
            {k: _default(v) for k, v in own.items()} if isinstance(own, Mapping) else {}
        )
        _check_locations(at, spec["kwargs"], defaults)
        for item in _entry_items(spec["kwargs"]):  # a pair's {entry: NAME, ...} overrides
            ref = data["entries"].get(item["entry"])
            base = ref.get("kwargs") if isinstance(ref, Mapping) else None
            if isinstance(base, Mapping):
                _check_reference(at, {**base, **item}, defaults)
        if spec["reader"] == cache_reader:
            _check_cache_args(at, spec["kwargs"], params)


def listed_in(path: Path, variable: str) -> bool:
    """Whether the environment ``variable`` lists ``path`` (os.pathsep-separated, resolved)."""
    listed = os.environ.get(variable, "")
    return path.resolve() in {
        Path(p).expanduser().resolve() for p in listed.split(os.pathsep) if p.strip()
    }
