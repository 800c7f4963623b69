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
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from corrdiff_xr._redact import redact_options, redact_url

__all__ = ["Refused", "env_names", "find_refusal", "listed_in"]

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
_ENV_REF = re.compile(r"\b(?:client_)?env\s*\(\s*['\"]?([^)'\"]+?)['\"]?\s*\)")
#: builder arguments that name a file to read (from outside the cache)
_FILE_ARGS = frozenset({"path"})
#: user parameters intake sets itself; templates may use them
_INTERNAL = frozenset({"CATALOG_DIR", "CATALOG_PATH"})


class Refused(Exception):
    """Something an untrusted catalog may not do: ``where`` in the catalog, and ``problem``."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def env_names(data: Any) -> set[str]:
    """Names of the environment variables the templates in ``data`` read."""
    return {name.strip() for text in _strings(data) for name in _ENV_REF.findall(text)}


def _check_values(where: str, value: Any, names: set[str]) -> None:
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
    user_chosen = bool(named) and named[1] in params and _default(params[named[1]]) in ("", None)
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
        if spec["reader"] == cache_reader:
            _check_cache_args(at, spec["kwargs"], params)


def listed_in(path: Path, variable: str) -> bool:
    """Whether the environment ``variable`` lists ``path`` (os.pathsep-separated, resolved)."""
    listed = os.environ.get(variable, "")
    return path.resolve() in {
        Path(p).expanduser().resolve() for p in listed.split(os.pathsep) if p.strip()
    }
