"""Declarative checks of config fields: one generic function instead of ifs in every class.

A numeric field declares what it allows where its default lives::

    rho: float = setting(7.0, gt=0)          # a finite number > 0
    S_max: float = setting(inf, ge=0, finite=False)
    betas: tuple[float, float] = setting((0.9, 0.999), ge=0, lt=1)   # each item

Every config dataclass inherits :class:`Checked`, whose ``__post_init__`` runs
:func:`check_fields`: each field is checked against its annotation (integers, numbers, tuples
of them, ``Literal`` choices, booleans, ``None`` where the annotation allows it) and its
declared :class:`Bound`; then the class's few cross-field :class:`Rule` s (``RULES``) run.
Numbers must be finite unless a bound says ``finite=False``, and NaN never passes, so a
setting that would silently produce garbage (``rho=nan``, ``sigma_max=inf``) fails when the
config is built.

A failure is a :class:`SettingError` naming the key, the value and what is allowed
(``rho: nan is not a finite number > 0``); :func:`corrdiff_xr.config.from_dict` prefixes the
key path (``sampler.rho: ...``) and callers with their own argument names rename the keys
(:meth:`SettingError.renamed`).

The work limits (``MAX_STEPS``, ``MAX_MEMBERS``, ``MAX_BLOCKS``, ``MAX_BLOCK_BYTES``,
``MAX_TOTAL_BATCH``) live here too, where fields and commands declare them: a small number
(``members=10**7``) must be refused with its limit before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from corrdiff_xr.errors import CorrDiffError

__all__ = [
    "CHECK",
    "MAX_BLOCKS",
    "MAX_BLOCK_BYTES",
    "MAX_MEMBERS",
    "MAX_STEPS",
    "MAX_TOTAL_BATCH",
    "Bound",
    "Checked",
    "ConfigError",
    "Rule",
    "SettingError",
    "check_fields",
    "check_value",
    "setting",
]

#: ``dataclasses.field`` metadata key holding a field's :class:`Bound`
CHECK = "corrdiff_xr.check"

# -- work limits: a small number must not ask for unbounded work ---------------------------------
# Each is checked before anything is allocated, and named in the error that refuses it.

#: most sampler steps (the reference takes 18): a checkpoint's defaults cannot ask 10**9
MAX_STEPS = 1000
#: most ensemble members (and members per network call) of one downscaling
MAX_MEMBERS = 100_000
#: most block tasks in one downscaling's graph, which the client builds up front (~5 kB
#: each: 250,000 blocks take ~1.3 GB); larger time or member chunks make fewer
MAX_BLOCKS = 250_000
#: most bytes of one task's float32 output block (members x times x targets x y x x), or of
#: one time chunk's whole-domain regression mean: what one worker must hold at once
MAX_BLOCK_BYTES = 2 * 2**30
#: most training samples per optimiser step (the reference takes 256 to 1024); the loader
#: holds a device's share of a step's samples at once
MAX_TOTAL_BATCH = 65_536


class ConfigError(CorrDiffError, ValueError):
    """A configuration value is missing, unknown, or of the wrong type."""


def _show(value: Any) -> str:
    """A value as the user wrote it (``nan``, ``0.5``, ``(8, 8)``), numpy scalars included."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return repr(float(value))
    return repr(value)


class SettingError(ConfigError):
    """A setting (or a combination of settings) outside what is allowed.

    ``items`` are the ``(key, value)`` pairs at fault, ``need`` says what is allowed; the
    message is ``key: value need`` for one item, ``k1=v1, k2=v2: need`` for several.
    """

    def __init__(self, items: tuple[tuple[str, Any], ...], need: str):
        super().__init__(tuple(items), need)  # args rebuild the error when it is pickled
        self.items, self.need = tuple(items), need

    def __str__(self) -> str:
        if len(self.items) == 1:
            key, value = self.items[0]
            return f"{key}: {_show(value)} {self.need}"
        return ", ".join(f"{k}={_show(v)}" for k, v in self.items) + f": {self.need}"

    def renamed(self, names: Mapping[str, str] | Callable[[str], str]) -> SettingError:
        """The same error with each key's first part renamed (``shape[0]`` -> ``patch[0]``)."""
        rename = names if callable(names) else (lambda head: names.get(head, head))

        def key(k: str) -> str:
            head = re.split(r"[.\[]", k, maxsplit=1)[0]
            return rename(head) + k[len(head) :]

        return SettingError(tuple((key(k), v) for k, v in self.items), self.need)

    def under(self, path: str) -> SettingError:
        """The same error with every key below ``path`` (``rho`` -> ``sampler.rho``)."""
        return self.renamed(lambda head: f"{path}.{head}") if path else self


def _num(v: float) -> str:
    return f"{v:g}"


@dataclasses.dataclass(frozen=True)
class Bound:
    """What a numeric field (or each item of a tuple field) allows.

    ``gt``/``ge``/``lt``/``le`` are strict or inclusive limits; ``finite`` False lets
    ``inf`` through (NaN never passes); ``min_items`` is the fewest items of a tuple field.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    finite: bool = True
    min_items: int = 0

    def admits(self, value: float) -> bool:
        """Whether the number ``value`` lies in the bound."""
        v = float(value)
        if math.isnan(v) or (self.finite and math.isinf(v)):
            return False
        return (
            (self.gt is None or v > self.gt)
            and (self.ge is None or v >= self.ge)
            and (self.lt is None or v < self.lt)
            and (self.le is None or v <= self.le)
        )

    def describe(self, integer: bool) -> str:
        """``an integer >= 1``, ``a finite number > 0``, ``a number in [0, 1)`` ..."""
        lo = ("(", self.gt) if self.gt is not None else None if self.ge is None else ("[", self.ge)
        hi = (")", self.lt) if self.lt is not None else None if self.le is None else ("]", self.le)
        noun = (
            "an integer"
            if integer
            else "a number"
            if lo and hi
            else ("a finite number" if self.finite else "a number")
        )
        if lo and hi:
            text = f"{noun} in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
        elif lo or hi:
            side, edge = lo or hi or ("", 0.0)
            op = {"(": ">", "[": ">=", ")": "<", "]": "<="}[side]
            text = f"{noun} {op} {_num(edge)}"
        else:
            text = noun
        return text if integer or self.finite else f"{text} (inf allowed)"


def setting(default: Any = dataclasses.MISSING, **bound: Any) -> Any:
    """A dataclass field with a default and a declared :class:`Bound` (keyword arguments)."""
    return dataclasses.field(default=default, metadata={CHECK: Bound(**bound)})


@dataclasses.dataclass(frozen=True)
class Rule:
    """A cross-field rule: ``ok(*values of keys)`` must hold; ``need`` says what must.

    ``keys`` are field names or dotted paths into nested configs (``training.lr``); the error
    names each with its value.
    """

    keys: tuple[str, ...]
    ok: Callable[..., bool]
    need: str

    def check(self, obj: object) -> None:
        values = [functools.reduce(getattr, k.split("."), obj) for k in self.keys]
        if not self.ok(*values):
            raise SettingError(tuple(zip(self.keys, values)), self.need)


def _strip_none(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; other types unchanged."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), len(args) < len(typing.get_args(tp))
    return tp, False


def _numeric(tp: Any) -> bool:
    return tp in (int, float)


def check_value(key: str, value: Any, tp: Any, bound: Bound | None = None) -> None:
    """Check ``value`` against the annotation ``tp`` and ``bound``; raise SettingError.

    Only what annotations can say is checked here: numbers (and tuples of them) against
    the bound, ``Literal`` choices, booleans; strings, mappings and nested configs pass.
    """
    tp, optional = _strip_none(tp)
    if value is None and optional:
        return
    bound = bound or Bound()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise SettingError(((key, value),), f"is not one of {list(args)}")
    elif origin is tuple and args and all(_numeric(a) for a in args if a is not Ellipsis):
        item = args[0]
        n = None if len(args) == 2 and args[1] is Ellipsis else len(args)
        each = bound.describe(item is int)
        if (
            not isinstance(value, (tuple, list))
            or (n is not None and len(value) != n)
            or (len(value) < bound.min_items)
        ):
            count = (
                f"a tuple of {n} items"
                if n is not None
                else "a non-empty tuple"
                if bound.min_items == 1
                else f"a tuple of at least {bound.min_items} items"
                if bound.min_items
                else "a tuple"
            )
            raise SettingError(((key, value),), f"is not {count}, each {each}")
        for i, v in enumerate(value):
            check_value(f"{key}[{i}]", v, item, bound)
    elif _numeric(tp):
        integral = isinstance(value, numbers.Integral)
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or (tp is int and not integral)
            or not bound.admits(float(value))
        ):
            raise SettingError(((key, value),), f"is not {bound.describe(tp is int)}")
    elif tp is bool and not isinstance(value, bool):
        raise SettingError(((key, value),), "is not true or false")


#: each config class's (field, resolved annotation) pairs, resolved once
_FIELDS: dict[type, tuple[tuple[dataclasses.Field, Any], ...]] = {}


def _annotated_fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = tuple((f, hints[f.name]) for f in dataclasses.fields(cls))
    return _FIELDS[cls]


def check_fields(obj: object) -> None:
    """Check every field of the dataclass ``obj``, then its class's cross-field ``RULES``."""
    cls = type(obj)
    for field, tp in _annotated_fields(cls):
        check_value(field.name, getattr(obj, field.name), tp, field.metadata.get(CHECK))
    for rule in getattr(cls, "RULES", ()):
        rule.check(obj)


class Checked:
    """Base of the config dataclasses: their fields are checked when they are built.

    Subclasses list cross-field rules in ``RULES`` (a tuple of :class:`Rule`).
    """

    RULES: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        check_fields(self)
