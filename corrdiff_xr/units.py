"""CF units: compare a dataset's with a model's, convert where that is simple and safe.

A model's codec records the CF ``units`` of every variable it was trained on (taken from the
training data, :meth:`corrdiff_xr.codec.Codec.from_pair`). Data in other units would be
normalised with statistics of the wrong unit and give confident garbage (Celsius through a
model trained in Kelvin sits ~273 standard deviations away, yet yields plausible-looking
fields). So every variable is compared, through pint with cf_xarray's CF unit registry
(:mod:`cf_xarray.units`), before it is encoded:

* the same unit however it is spelt (``m s-1``, ``m/s``, ``m s**-1``): used as it is;
* another unit of the same quantity (``K`` <-> ``degC``, ``Pa`` <-> ``hPa``, ``1`` <-> ``%``,
  ``m`` <-> ``km`` ...), or a water amount as mass per area against a depth of liquid water
  (``kg m-2`` <-> ``mm``, ``kg m-2 s-1`` <-> ``mm h-1``, with the density of water,
  1000 kg m-3): converted lazily, as the affine map ``value * scale + offset`` on the dask
  arrays;
* anything else (``m`` against ``K``, an accumulation against a rate, angles against plain
  numbers, a logarithmic unit, a spelling pint cannot read): :class:`UnitsError` naming the
  variable, the data's units and the model's.

Hostile spellings. pint evaluates numbers in a units string with Python integers, so
``10**10**10`` would run for ever; every string is checked first (:func:`check_spelling`):
at most :data:`MAX_LENGTH` characters, exponents plain numbers of magnitude at most
:data:`MAX_EXPONENT`, and no power of a power (``a**b**c``, ``(a**b)**c``).

Missing units. Data without ``units`` is refused: canonical data carries them (the layout
requires them), and assuming the model's would hide exactly the mistake this module exists
to catch; set ``ds[name].attrs["units"]``. A codec without units for a variable (a model
saved before they were recorded, or a hand-made :class:`~corrdiff_xr.codec.Codec`) cannot
be checked: a :class:`UserWarning` names those variables and the data is used as it is.

:func:`to_model_units` is what inference uses (inputs and static fields, before encoding);
:func:`check_pair` is for training code that must refuse data whose units differ from a
model's codec (e.g. on resume), since the training loader encodes raw blocks unconverted.
pint is imported on first use, and only when two spellings differ.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from corrdiff_xr.data.layout import DataError

if TYPE_CHECKING:
    import pint
    from pint.facets.plain import PlainUnit

    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data.pair import DownscalingData

__all__ = [
    "MAX_EXPONENT",
    "MAX_LENGTH",
    "UnitsError",
    "check_pair",
    "check_spelling",
    "conversion",
    "same_units",
    "to_model_units",
]

#: density of liquid water (kg m-3) relating a mass per area to a depth of water
WATER_DENSITY = 1000.0
#: longest units string read (CF units are a few words: ``kg m-2 s-1``)
MAX_LENGTH = 100
#: largest exponent magnitude in a units string (``m-2``, ``s**-1``; real units stay under 10)
MAX_EXPONENT = 100
_POWER = re.compile(r"\*\*|\^")
# an exponent: after ** or ^ (spaces, a sign, a bracket allowed), or CF's digits right
# after a unit name (m-2, s2); not the exponent of a number's scientific notation (1e20)
_EXPONENT = re.compile(
    r"(?:(?:\*\*|\^)\s*\(?\s*|(?<=[A-Za-z_])(?<![\d.][eE]))([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)"
)


class UnitsError(DataError):
    """A variable's units differ from the model's and cannot be converted safely."""


def _too_complex(text: str) -> str | None:
    """Why pint must not evaluate ``text``, or None when it is small and simple enough."""
    if len(text) > MAX_LENGTH:
        return f"it is {len(text)} characters long, more than the {MAX_LENGTH} read"
    powers = [m.start() for m in _POWER.finditer(text)]
    for a, b in itertools.pairwise(powers):
        if not re.search(r"[A-Za-z_%]", text[a:b]):  # no unit between two powers: a tower
            return "it raises a power to a power (a**b**c), which is not read"
    if re.search(r"\)\s*(?:\*\*|\^)", text):
        return "it raises a bracketed group to a power, which is not read"
    for m in _EXPONENT.finditer(text):
        if not abs(float(m.group(1))) <= MAX_EXPONENT:
            return f"its exponent {m.group(1)} exceeds {MAX_EXPONENT} in magnitude"
    return None


def check_spelling(units: str, *, name: str = "", whose: str = "") -> None:
    """Refuse a units string too long or complex for pint to evaluate safely.

    ``whose`` says whose variable ``name`` is in the message (``"the model's "``).

    Raises
    ------
    UnitsError
        Naming the variable, the string and the limit it breaks.
    """
    why = _too_complex(str(units))
    if why is not None:
        shown = str(units) if len(str(units)) <= MAX_LENGTH else f"{str(units)[:40]}..."
        raise UnitsError(
            f"{whose}variable '{name}' has units '{shown}', and {why} (units strings are limited "
            f"to {MAX_LENGTH} characters and exponents of magnitude {MAX_EXPONENT}); "
            "write plain CF units such as 'K' or 'kg m-2 s-1'"
        )


@functools.cache
def _registry() -> pint.UnitRegistry:
    try:
        from cf_xarray.units import units
    except ImportError as err:  # a declared dependency; say what to install if it is absent
        raise ImportError(
            "comparing CF units needs pint and cf_xarray: pip install pint cf_xarray"
        ) from err
    return units


def _root(quantity: pint.Quantity) -> PlainUnit:
    """The root units of a quantity (``degC`` -> kelvin, ``degree`` -> radian, ``%`` -> 1)."""
    return quantity.to_root_units().units


@functools.cache
def _affine(data_units: str, model_units: str) -> tuple[float, float] | str:
    """``(scale, offset)`` with ``model = data * scale + offset``, or why there is none."""
    ureg = _registry()
    try:
        a, b = ureg.Unit(data_units), ureg.Unit(model_units)
    except Exception:  # noqa: BLE001 - pint's parser raises anything (TokenError, ZeroDivisionError ...)
        return "pint cannot read one of them"
    probe = np.array([0.0, 1.0, 2.0])
    try:
        source = ureg.Quantity(probe, a)
        if _root(ureg.Quantity(1.0, a)) != _root(ureg.Quantity(1.0, b)):
            water = ureg.Quantity(WATER_DENSITY, "kg m-3")
            # a water amount: mass per area <-> depth of liquid water (rates alike)
            source = next(
                q
                for q in (source / water, source * water)
                if _root(q) == _root(ureg.Quantity(1.0, b))
            )
        y0, y1, y2 = (float(v) for v in source.to(b).magnitude)
    except StopIteration:
        return "they measure different quantities"
    except Exception:  # noqa: BLE001 - offset units in a product, log units ...: no safe map
        return "pint has no simple conversion between them"
    scale, offset = y1 - y0, y0
    if not (math.isfinite(scale) and math.isfinite(offset) and scale > 0) or not math.isclose(
        y2, 2 * scale + offset, rel_tol=1e-9, abs_tol=1e-12
    ):
        return "the conversion between them is not a plain rescaling"
    return scale, offset


def conversion(data_units: str, model_units: str, *, name: str = "") -> tuple[float, float]:
    """``(scale, offset)`` turning values in ``data_units`` into ``model_units``.

    ``(1.0, 0.0)`` when they are the same unit, however spelt.

    Raises
    ------
    UnitsError
        When there is no simple and safe conversion; the message names ``name`` and both.
    """
    if str(data_units).strip() == str(model_units).strip():
        return 1.0, 0.0
    check_spelling(data_units, name=name)  # before pint evaluates anything of either
    check_spelling(model_units, name=name, whose="the model's ")
    found = _affine(str(data_units).strip(), str(model_units).strip())
    if isinstance(found, str):
        raise UnitsError(
            f"variable '{name}' is in units '{data_units}' but the model expects "
            f"'{model_units}', and {found}; convert the data to '{model_units}'"
        )
    scale, offset = found
    if math.isclose(scale, 1.0, rel_tol=1e-12) and abs(offset) < 1e-12:
        return 1.0, 0.0
    return scale, offset


def same_units(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name the same unit (``"m s-1"``, ``"m/s"``, ``"m s**-1"``)."""
    try:
        if conversion(a, b) != (1.0, 0.0):
            return False
    except UnitsError:
        return False
    # kg m-2 and mm of water convert one to one but are not the same unit
    ureg = _registry()
    return (
        str(a).strip() == str(b).strip()
        or ureg.Unit(a).dimensionality == ureg.Unit(b).dimensionality
    )


def _data_units(var: xr.DataArray, name: str, model: str | None) -> str:
    units = str(var.attrs.get("units", "")).strip()
    if not units:
        hint = f"'{model}' (the model's)" if model else "e.g. 'K'"
        raise UnitsError(
            f"variable '{name}' has no 'units' attribute, so it cannot be checked against "
            f"the model's; set ds['{name}'].attrs['units'] = {hint}"
        )
    return units


def _unknown_to_codec(names: list[str]) -> None:
    if names:
        warnings.warn(
            f"the model records no units for {names}, so the data's units are not checked; "
            "make sure they are the units the model was trained with",
            UserWarning,
            stacklevel=3,
        )


def to_model_units(ds: xr.Dataset, codec: Codec, names: Iterable[str] | None = None) -> xr.Dataset:
    """``ds`` with variables ``names`` (default: the codec's inputs and static fields, not its
    time features) in the model's units.

    Conversions are lazy (``value * scale + offset`` on the same dask chunks); converted and
    merely re-spelt variables are labelled with the model's ``units``. Variables whose units
    match are returned untouched.

    Raises
    ------
    UnitsError
        A variable without units, or in units with no simple and safe conversion.
    """
    names = list(codec.inputs + codec.static if names is None else names)  # features: no units
    out, unknown = {}, []
    for name in names:
        model = codec.units.get(name)
        if model is None:
            unknown.append(name)
            continue
        var = ds[name]
        data = _data_units(var, name, model)
        scale, offset = conversion(data, model, name=name)
        if (scale, offset) != (1.0, 0.0):
            out[name] = (var * scale + offset).assign_attrs({**var.attrs, "units": model})
        elif data != model:  # the same unit spelt differently: relabel only
            out[name] = var.assign_attrs(units=model)
    _unknown_to_codec(unknown)
    return ds.assign(out) if out else ds


def check_pair(pair: DownscalingData, codec: Codec) -> None:
    """Refuse a pair whose variables are not in the units of ``codec`` (spelling aside).

    Every variable the codec knows (inputs, static fields, targets) is compared; for
    training code (e.g. resuming from a checkpoint), which encodes raw blocks and so cannot
    convert on the fly.

    Raises
    ------
    UnitsError
        Naming the variable, the data's units and the model's, and whether they convert.
    """
    unknown = []
    for name in codec.in_channels + codec.out_channels:
        model = codec.units.get(name)
        if name not in pair.dataset:
            continue  # absent variables are the codec's and the loader's to report
        if model is None:
            unknown.append(name)
            continue
        data = _data_units(pair.dataset[name], name, model)
        if conversion(data, model, name=name) != (1.0, 0.0):
            raise UnitsError(
                f"variable '{name}' is in units '{data}' but the model was trained in "
                f"'{model}'; training data must be in the model's units (convert it, e.g. "
                "with corrdiff_xr.units.to_model_units, or train a new model)"
            )
    _unknown_to_codec(unknown)
