"""Per-variable transforms and physical bounds: the space a network is trained in.

Skewed fields train badly in their own units: precipitation is zero most of the time with a
long tail, so a network trained on ``(tp - mean) / std`` spends its capacity on the dry
majority and its errors can make rain negative. A :class:`Transform` maps a variable into a
better-behaved space before the codec normalises it, and back after decoding; the bounds of a
variable clip decoded outputs to what is physical (``tp >= 0``). Each kind first divides by
its ``scale`` (``u = x / scale``, default 1: the variable's units), then:

``log_eps``
    ``t = log(u + eps)``, inverse ``u = exp(t) - eps``; for amounts >= 0 (precipitation).
    Data must be > ``-eps * scale``.
``asinh``
    ``t = asinh(u)``, inverse ``u = sinh(t)``; linear near 0 and logarithmic in both tails,
    for signed heavy-tailed fields (fluxes, convergence). No ``eps``.
``logit_eps``
    ``t = log((u + eps) / (1 - u + eps))``, inverse ``u = (1 + 2 eps) sigmoid(t) - eps``; for
    fractions in [0, 1] (cloud cover; ``scale: 100`` for percent). Data must lie in
    ``(-eps, 1 + eps) * scale``.

Training happens in the transformed space, and the normalisation statistics are those of the
transformed values (a store's ``"stats"`` group holds raw ones, so a transformed variable's
are computed lazily instead: :meth:`corrdiff_xr.codec.Codec.from_pair`). The regression
network learns the mean of ``t``; decoded, that is not the mean in physical units (for
``log_eps`` it lies nearer the median): a physical ensemble mean averages decoded members.

Transforms act in the model's units (those the codec records; inference converts data to them,
:mod:`corrdiff_xr.units`, before encoding). Declarations are plain data
(``{"kind": "log_eps", "eps": 1e-4}``; bounds ``[lower, upper]`` with ``None`` for no limit)
checked here with one line naming the key, so the config (:class:`~corrdiff_xr.config.DataConfig`)
and the codec (which records them in every checkpoint) share one check. The functions run in
place on float32 arrays, for the training loader's hot path.

A :class:`Gate` scales a decoded output, after its bounds, by a ramp of a time feature
(:mod:`corrdiff_xr.features`): ``clip((f - threshold + half_width) / (2 half_width), 0, 1)``,
then clips it at 0. With the cosine of the solar zenith angle it is the dawn/dusk "solar gate"
of CorrDiff COSMO-ERA5: shortwave radiation is exactly 0 where ``f <= threshold - half_width``
(night) and passes unchanged where ``f >= threshold + half_width``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from corrdiff_xr._constraints import SettingError
from corrdiff_xr.errors import CorrDiffError

__all__ = [
    "KINDS",
    "Gate",
    "Transform",
    "TransformDomainError",
    "check_declared",
    "parse_bounds",
    "parse_gates",
    "parse_transforms",
]

#: each kind and the parameters it takes (``eps`` required where listed, ``scale`` optional)
KINDS = {"log_eps": ("eps", "scale"), "asinh": ("scale",), "logit_eps": ("eps", "scale")}


class TransformDomainError(CorrDiffError, ValueError):
    """Data outside the domain of its variable's transform (``log`` of a negative amount)."""


def _positive(key: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise SettingError(((key, value),), "is not a finite number > 0")
    return float(value)


@dataclass(frozen=True)
class Transform:
    """One variable's transform (see the module docstring for the formulas).

    Parameters
    ----------
    kind
        ``"log_eps"``, ``"asinh"`` or ``"logit_eps"``.
    eps
        Offset of ``log_eps``/``logit_eps`` (> 0, in units of ``x / scale``); None for ``asinh``.
    scale
        Divisor applied first (> 0).
    """

    kind: str
    eps: float | None = None
    scale: float = 1.0

    @classmethod
    def from_dict(cls, spec: Any, *, key: str = "transform") -> Transform:
        """A transform from plain data, checked; errors name ``key`` (``transforms.tp.eps``)."""
        if isinstance(spec, Transform):
            return spec
        if not isinstance(spec, Mapping):
            raise SettingError(
                ((key, spec),), "is not a mapping such as {kind: log_eps, eps: 1e-4}"
            )
        kind = spec.get("kind")
        if kind not in KINDS:
            raise SettingError(((f"{key}.kind", kind),), f"is not one of {sorted(KINDS)}")
        unknown = sorted(set(spec) - {"kind", *KINDS[kind]})
        if unknown:
            raise SettingError(
                ((key, dict(spec)),),
                f"has unknown key(s) {unknown}; {kind} takes {list(KINDS[kind])}",
            )
        eps = None
        if "eps" in KINDS[kind]:
            if "eps" not in spec:
                raise SettingError(((key, dict(spec)),), f"needs eps (> 0) for kind {kind}")
            eps = _positive(f"{key}.eps", spec["eps"])
        scale = _positive(f"{key}.scale", spec.get("scale", 1.0))
        return cls(kind, eps, scale)

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain data (every parameter of the kind, ``scale`` included)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.eps is not None:
            out["eps"] = self.eps
        out["scale"] = self.scale
        return out

    def domain(self) -> tuple[float, float]:
        """Open interval of ``x`` the forward transform accepts."""
        eps = self.eps or 0.0
        if self.kind == "log_eps":
            return -eps * self.scale, math.inf
        if self.kind == "logit_eps":
            return -eps * self.scale, (1.0 + eps) * self.scale
        return -math.inf, math.inf

    def forward(self, x: np.ndarray, *, name: str = "variable") -> np.ndarray:
        """``x`` transformed in place (a float array); NaN (missing) stays NaN.

        Raises
        ------
        TransformDomainError
            When a value lies outside :meth:`domain`, naming ``name``.
        """
        lo, hi = self.domain()
        outside = None
        if math.isfinite(lo):  # NaN compares False: missing values pass
            outside = (x <= lo) | (x >= hi) if math.isfinite(hi) else x <= lo
        if outside is not None and outside.any():
            raise TransformDomainError(
                f"variable '{name}' has values outside ({lo:g}, {hi:g}), the domain of its "
                f"{self.kind} transform ({int(outside.sum())} in the block read); clip the data "
                "to its physical range or choose a larger eps"
            )
        eps = self.eps or 0.0  # set for the kinds that use it
        if self.scale != 1.0:
            x *= x.dtype.type(1.0 / self.scale)
        if self.kind == "log_eps":
            x += x.dtype.type(eps)
            np.log(x, out=x)
        elif self.kind == "asinh":
            np.arcsinh(x, out=x)
        else:
            below = x.dtype.type(1.0 + eps) - x  # the one temporary: 1 - u + eps
            x += x.dtype.type(eps)
            np.divide(x, below, out=x)
            np.log(x, out=x)
        return x

    def inverse(self, t: np.ndarray) -> np.ndarray:
        """``t`` mapped back to physical values in place (a float array); total: any finite
        ``t`` gives a value in the closure of :meth:`domain` (or +-inf past float range)."""
        eps = self.eps or 0.0
        with np.errstate(over="ignore"):
            if self.kind == "log_eps":
                np.exp(t, out=t)
                t -= t.dtype.type(eps)
            elif self.kind == "asinh":
                np.sinh(t, out=t)
            else:  # (1 + 2 eps) / (1 + exp(-t)) - eps
                np.negative(t, out=t)
                np.exp(t, out=t)
                t += t.dtype.type(1.0)
                np.divide(t.dtype.type(1.0 + 2.0 * eps), t, out=t)
                t -= t.dtype.type(eps)
        if self.scale != 1.0:
            t *= t.dtype.type(self.scale)
        return t

    def __call__(self, x: np.ndarray, *, name: str = "variable") -> np.ndarray:
        """A transformed float64 copy of ``x`` (for statistics; ``x`` is left as it is)."""
        return self.forward(np.array(x, dtype=np.float64), name=name)


def parse_transforms(
    spec: Mapping[str, Any] | None, *, key: str = "transforms"
) -> dict[str, Transform]:
    """``{name: Transform}`` from ``{name: {kind: ..., eps: ..., scale: ...}}``, checked."""
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise SettingError(((key, spec),), "is not a mapping of variable name to transform")
    return {str(n): Transform.from_dict(s, key=f"{key}.{n}") for n, s in spec.items()}


def parse_bounds(
    spec: Mapping[str, Any] | None, *, key: str = "bounds"
) -> dict[str, tuple[float | None, float | None]]:
    """``{name: (lower, upper)}`` from ``{name: [lower, upper]}`` (None: no limit), checked."""
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise SettingError(((key, spec),), "is not a mapping of variable name to [lower, upper]")
    out = {}
    for name, pair in spec.items():
        where = f"{key}.{name}"
        if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
            raise SettingError(((where, pair),), "is not [lower, upper] (null for no limit)")
        limits = []
        for i, v in enumerate(pair):
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)
            ):
                raise SettingError(((f"{where}[{i}]", v),), "is not a finite number or null")
            limits.append(None if v is None else float(v))
        lo, hi = limits
        if lo is None and hi is None:
            raise SettingError(((where, pair),), "sets no limit; give a lower or upper bound")
        if lo is not None and hi is not None and lo >= hi:
            raise SettingError(((where, pair),), "needs lower < upper")
        out[str(name)] = (lo, hi)
    return out


@dataclass(frozen=True)
class Gate:
    """A ramp of the time feature ``feature`` that a decoded output is multiplied by (see the
    module docstring); ``half_width > 0``."""

    feature: str
    threshold: float
    half_width: float

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "threshold": self.threshold, "half_width": self.half_width}

    def apply(self, values: np.ndarray, field: np.ndarray) -> np.ndarray:
        """``values`` gated in place by ``field`` (the feature, broadcast against them)."""
        hw = values.dtype.type(self.half_width)
        factor = (field - values.dtype.type(self.threshold) + hw) / (values.dtype.type(2) * hw)
        values *= np.clip(factor, 0, 1).astype(values.dtype, copy=False)
        return np.maximum(values, values.dtype.type(0), out=values)  # NaN stays NaN


def parse_gates(spec: Mapping[str, Any] | None, *, key: str = "gates") -> dict[str, Gate]:
    """``{name: Gate}`` from ``{name: {feature, threshold, half_width}}``, checked (the
    feature names are checked by the codec, which knows the features)."""
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise SettingError(((key, spec),), "is not a mapping of variable name to a gate")
    out = {}
    for name, g in spec.items():
        where = f"{key}.{name}"
        if isinstance(g, Gate):
            out[str(name)] = g
            continue
        if not isinstance(g, Mapping) or set(g) != {"feature", "threshold", "half_width"}:
            raise SettingError(((where, g),), "is not {feature, threshold, half_width}")
        threshold = g["threshold"]
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, numbers.Real)
            or not math.isfinite(threshold)
        ):
            raise SettingError(((f"{where}.threshold", threshold),), "is not a finite number")
        width = _positive(f"{where}.half_width", g["half_width"])
        out[str(name)] = Gate(str(g["feature"]), float(threshold), width)
    return out


def check_declared(
    transforms: Mapping[str, Transform],
    bounds: Mapping[str, tuple[float | None, float | None]],
    names: Sequence[str],
    targets: Sequence[str],
) -> None:
    """Refuse (one line each) a transform naming none of a codec's variables ``names`` or
    bounds naming none of its ``targets``."""
    for name, t in transforms.items():
        if name not in names:
            raise SettingError(
                ((f"transforms.{name}", t.to_dict()),),
                f"names no variable of the codec (its variables: {list(names)})",
            )
    for name, b in bounds.items():
        if name not in targets:
            raise SettingError(
                ((f"bounds.{name}", list(b)),),
                f"bounds clip outputs, and '{name}' is not a target (targets: {list(targets)})",
            )
