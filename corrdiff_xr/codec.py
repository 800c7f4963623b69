"""The one boundary between labelled xarray data and normalised channel arrays.

A :class:`Codec` knows the variable names by role and their statistics; it turns Datasets into
float32 arrays ``(time, channel, y, x)`` normalised as ``(value - mean) / std`` and turns
network output back into a Dataset with the template's coordinates and CF attributes. Channel
order is fixed here and nowhere else: input channels are the inputs then the static fields,
output channels are the targets, each in the order given.

:meth:`Codec.encode_arrays` is the same encoding on plain numpy blocks, for the training
loader's hot path: coarse inputs are regridded straight into their channel of one
preallocated float32 array, samples are reordered while filling, and normalisation runs in
place in float32.

Per-variable transforms and bounds (:mod:`corrdiff_xr.transforms`) make the trained space
``(transform(value) - mean) / std``, with the statistics those of the transformed values;
decoding de-normalises, inverts the transform and clips to the variable's bounds, so outputs
are in physical units and within them (precipitation >= 0 whatever the network says).

Time features (:mod:`corrdiff_xr.features`: the cosine of the solar zenith angle, the hour of
day) are the last input channels, after the inputs and static fields: no archive holds them,
so every encode path computes them from the block's time labels and fine ``lat``/``lon``
(:meth:`Codec.feature_fields`); their statistics default to ``(0, 1)``.

The codec is plain data (:meth:`Codec.to_dict` is JSON-able) so it travels inside checkpoints
and a trained model always decodes with the statistics, transforms and bounds it was trained
with. A codec without transforms, bounds or features serialises without those keys, so the
checkpoints and training identities of such models read and hash unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from corrdiff_xr._constraints import SettingError
from corrdiff_xr.data.layout import (
    DimensionError,
    MissingValueError,
    MissingVariableError,
    NameClashError,
    StatsError,
)
from corrdiff_xr.dims import CHANNEL, MEMBER, TIME, X, Y
from corrdiff_xr.features import FEATURES, check_names, fine_lat_lon
from corrdiff_xr.features import compute as compute_features
from corrdiff_xr.transforms import (
    Gate,
    Transform,
    check_declared,
    parse_bounds,
    parse_gates,
    parse_transforms,
)

if TYPE_CHECKING:
    import torch

    from corrdiff_xr.data.pair import DownscalingData
    from corrdiff_xr.data.regrid import BilinearWeights

__all__ = ["Codec"]


@dataclass(frozen=True)
class Codec:
    """Variables <-> normalised channels.

    Parameters
    ----------
    inputs
        Input variable names (regridded to the fine grid before encoding).
    targets
        Target variable names, the output channels.
    static
        Static field names, appended to the input channels.
    stats
        ``{name: (mean, std)}`` for every name above.
    attrs
        ``{name: {"units": ..., "long_name": ...}}`` of the training data. ``units`` are the
        model's (:attr:`units`): data in other units is converted or refused before encoding
        (:mod:`corrdiff_xr.units`) and decoded variables are always labelled with them; the
        other attributes are given to decoded variables when the template lacks them.
    transforms
        ``{name: Transform or {"kind": ..., "eps": ..., "scale": ...}}`` for any variable:
        encoding transforms before normalising (``stats`` are then of transformed values),
        decoding inverts after de-normalising.
    bounds
        ``{target: (lower, upper)}`` (None: no limit) that decoded outputs are clipped to.
    features
        Time features (keys of :data:`corrdiff_xr.features.FEATURES`), the last input
        channels; statistics ``(0, 1)`` and the feature's CF attributes unless given.
    gates
        ``{target: Gate or {"feature", "threshold", "half_width"}}``: decoded outputs scaled
        by a ramp of a time feature after their bounds (:class:`~corrdiff_xr.transforms.Gate`).
    """

    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    static: tuple[str, ...] = ()
    stats: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    attrs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    transforms: Mapping[str, Transform] = field(default_factory=dict)
    bounds: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    features: tuple[str, ...] = ()
    gates: Mapping[str, Gate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("inputs", "targets", "static"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        object.__setattr__(self, "features", check_names(self.features, "codec features"))
        given = dict(self.stats)
        object.__setattr__(self, "stats", {**dict.fromkeys(self.features, (0.0, 1.0)), **given})
        attrs = {n: {"units": FEATURES[n].units, "long_name": FEATURES[n].long_name}
                 for n in self.features}  # fmt: skip
        object.__setattr__(self, "attrs", {**attrs, **dict(self.attrs)})
        names = self.in_channels + self.targets
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise NameClashError(
                f"codec variable name(s) {dup} used more than once; names must be unique"
            )
        stats = {}
        for name in names:
            if name not in self.stats:
                raise StatsError(f"codec has no statistics for variable '{name}'")
            mean, std = (float(v) for v in self.stats[name])
            if not (np.isfinite(mean) and np.isfinite(std)) or std <= 0:
                raise StatsError(
                    f"statistics of '{name}' are unusable (mean {mean}, std {std}); std must be "
                    "finite and > 0"
                )
            stats[name] = (mean, std)
        object.__setattr__(self, "stats", stats)
        object.__setattr__(self, "attrs", {k: dict(v) for k, v in self.attrs.items()})
        transforms, bounds = parse_transforms(self.transforms), parse_bounds(self.bounds)
        check_declared(transforms, bounds, names, self.targets)
        object.__setattr__(self, "transforms", transforms)
        object.__setattr__(self, "bounds", bounds)
        gates = parse_gates(self.gates)
        if stray := sorted(set(gates) - set(self.targets)):
            raise SettingError((("gates", stray),), f"gate outputs: not targets {self.targets}")
        check_names([g.feature for g in gates.values()], "codec gates")
        object.__setattr__(self, "gates", gates)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pair(
        cls,
        pair: DownscalingData,
        *,
        transforms: Mapping[str, Any] | None = None,
        bounds: Mapping[str, Any] | None = None,
        features: Sequence[str] = (),
    ) -> Codec:
        """Codec of a :class:`~corrdiff_xr.data.DownscalingData` (computes its statistics).

        A transformed variable's statistics are computed from its transformed values in one
        lazy pass, never taken from the pair's stored statistics (which are of raw values);
        the other variables' come from :attr:`DownscalingData.stats` as they are.
        """
        from corrdiff_xr.data.stats import compute_stats, stats_to_dict

        names = pair.inputs + pair.targets + pair.static
        transforms, bounds = parse_transforms(transforms), parse_bounds(bounds)
        check_declared(transforms, bounds, names, pair.targets)  # before any data is read
        raw = [n for n in names if n not in transforms]
        parts = [pair.stats[raw]] if raw else []
        if transforms:
            named = {n: functools.partial(t, name=n) for n, t in transforms.items()}
            parts.append(compute_stats(pair.dataset, list(transforms), transforms=named))
        stats = stats_to_dict(xr.merge(parts, combine_attrs="drop"), names)
        attrs = {
            n: {
                k: str(pair.dataset[n].attrs[k])
                for k in ("units", "long_name")
                if k in pair.dataset[n].attrs
            }
            for n in names
        }
        feats = tuple(features)
        return cls(pair.inputs, pair.targets, pair.static, stats, attrs, transforms, bounds, feats)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able plain data; :meth:`from_dict` inverts it. ``transforms``, ``bounds`` and
        ``features`` appear only when set: codecs without them serialise unchanged."""
        out = {
            "inputs": list(self.inputs),
            "targets": list(self.targets),
            "static": list(self.static),
            "stats": {k: [m, s] for k, (m, s) in self.stats.items()},
            "attrs": {k: dict(v) for k, v in self.attrs.items()},
        }
        if self.transforms:
            out["transforms"] = {k: t.to_dict() for k, t in self.transforms.items()}
        if self.bounds:
            out["bounds"] = {k: list(b) for k, b in self.bounds.items()}
        if self.features:
            out["features"] = list(self.features)
        if self.gates:
            out["gates"] = {k: g.to_dict() for k, g in self.gates.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Codec:
        """Rebuild a codec from :meth:`to_dict` output."""
        known = {"inputs", "targets", "static", "stats", "attrs", "transforms", "bounds"}
        known |= {"features", "gates"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown codec key(s) {sorted(unknown)}")
        return cls(
            tuple(data["inputs"]),
            tuple(data["targets"]),
            tuple(data.get("static", ())),
            {k: (float(v[0]), float(v[1])) for k, v in data["stats"].items()},
            data.get("attrs", {}),
            data.get("transforms", {}),
            data.get("bounds", {}),
            tuple(data.get("features", ())),
            data.get("gates", {}),
        )

    @property
    def units(self) -> dict[str, str | None]:
        """CF ``units`` of every variable as trained (None where the codec records none)."""
        return {
            n: (self.attrs.get(n, {}).get("units") or None) for n in self.in_channels + self.targets
        }

    # -- channels ----------------------------------------------------------------------------
    @property
    def in_channels(self) -> tuple[str, ...]:
        """Input channel names: inputs, static fields, then time features."""
        return self.inputs + self.static + self.features

    def feature_fields(
        self, times: np.ndarray, lat: np.ndarray, lon: np.ndarray
    ) -> dict[str, np.ndarray]:
        """``{feature: float32 (T, y, x)}`` of this codec's time features at ``times``
        (datetime64 or cftime labels) on the fine ``lat``/``lon`` (degrees, ``(y, x)``)."""
        return compute_features(self.features, times, lat, lon) if self.features else {}

    @property
    def out_channels(self) -> tuple[str, ...]:
        """Output channel names: the targets."""
        return self.targets

    def _mean_std(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        mean = np.array([self.stats[n][0] for n in names], dtype=np.float64)
        std = np.array([self.stats[n][1] for n in names], dtype=np.float64)
        return mean, std

    def _encode(self, ds: xr.Dataset, names: Sequence[str], what: str) -> np.ndarray:
        # time features not given as variables follow from the dataset's times and lat/lon
        computed = [n for n in self.features if n in names and n not in ds.data_vars]
        if computed and TIME not in ds.dims:
            raise DimensionError(f"cannot encode {what}: the dataset has no '{TIME}' dimension")
        extra = compute_features(computed, ds[TIME].values, *fine_lat_lon(ds)) if computed else {}
        names_read = [n for n in names if n not in extra]
        missing = [n for n in names_read if n not in ds.data_vars]
        if missing:
            raise MissingVariableError(
                f"cannot encode {what}: variable(s) {missing} not in the dataset "
                f"(it has {sorted(map(str, ds.data_vars))})"
            )
        for dim in (TIME, Y, X):
            if dim not in ds.dims:
                raise DimensionError(f"cannot encode {what}: the dataset has no '{dim}' dimension")
        ds = ds[names_read]
        if any(v.chunks is not None for v in ds.data_vars.values()):
            ds = ds.compute()  # one graph: variables cut from one dask block share its read
        for name in names_read:
            var = ds[name]
            expected = (TIME, Y, X) if TIME in var.dims else (Y, X)
            if var.dims != expected:
                raise DimensionError(
                    f"cannot encode '{name}': dims {var.dims}, expected {expected} (inputs must be "
                    "regridded to the fine grid first, see DownscalingData.inputs_on_fine)"
                )
        arrays = {**{n: ds[n].values for n in names_read}, **extra}
        return self._encode_arrays(
            arrays, names, ds.sizes[TIME], times=ds[TIME].values, allow_missing=what == "targets"
        )

    def _encode_arrays(
        self,
        arrays: Mapping[str, np.ndarray],
        names: Sequence[str],
        n_time: int,
        *,
        order: np.ndarray | None = None,
        weights: BilinearWeights | None = None,
        times: np.ndarray | None = None,
        allow_missing: bool = False,
    ) -> np.ndarray:
        """Fill one float32 ``(time, C, y, x)`` array channel by channel, then normalise it
        in place in float32 (no float64 temporaries); see :meth:`encode_arrays`. NaN passes
        through when ``allow_missing`` (targets: masked in the loss), inf never does."""
        fine = tuple(weights.fine_shape) if weights is not None else np.shape(arrays[names[0]])[-2:]
        out = np.empty((n_time, len(names)) + tuple(fine), dtype=np.float32)
        for c, name in enumerate(names):
            a, dst = arrays[name], out[:, c]
            if a.shape[-2:] != tuple(fine):
                if weights is None or a.ndim != 3 or a.shape[-2:] != tuple(weights.coarse_shape):
                    raise DimensionError(
                        f"cannot encode '{name}': shape {a.shape} is neither on the fine grid "
                        f"{tuple(fine)} nor a (time, y_coarse, x_coarse) input to regrid"
                    )
                weights.apply(a if order is None else a[order], out=dst)  # straight into place
            elif a.ndim == 2:
                dst[...] = a  # static: repeated over time
            elif order is None:
                dst[...] = a
            elif a.dtype == np.float32:
                np.take(a, order, axis=0, out=dst, mode="clip")  # order checked by the caller
            else:
                dst[...] = a[order]
            if name in self.transforms:  # NaN (missing) stays NaN
                self.transforms[name].forward(dst, name=name)
            mean, std = self.stats[name]
            dst -= np.float32(mean)
            dst *= np.float32(1.0 / std)
            # one reduction detects NaN/inf; the element-wise search only runs on failure
            if not np.isfinite(dst.sum(dtype=np.float64)):
                bad = np.isinf(dst) if allow_missing else ~np.isfinite(dst)
                if bad.any():
                    where = ""
                    if a.ndim == 3 and times is not None:
                        t_bad = np.flatnonzero(bad.any(axis=(1, 2)))
                        where = f" at time(s) {[str(t) for t in np.asarray(times)[t_bad[:3]]]}"
                    what = "inf" if allow_missing else "NaN/inf"
                    fix = (
                        "mark missing targets with NaN, not inf"
                        if allow_missing
                        else "inputs and static fields must be complete: fill or drop those times"
                    )
                    # counted on the variable's own grid: regridding spreads one NaN widely
                    n_bad = int((np.isinf(a) if allow_missing else ~np.isfinite(a)).sum())
                    raise MissingValueError(
                        f"variable '{name}' holds {n_bad} {what} value(s){where}; {fix}"
                    )
        return out

    def encode_arrays(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        role: str,
        order: np.ndarray | None = None,
        weights: BilinearWeights | None = None,
        times: np.ndarray | None = None,
    ) -> np.ndarray:
        """Normalised float32 ``(time, C, y, x)`` from plain numpy blocks (the loader's path).

        Parameters
        ----------
        arrays
            ``{name: array}`` with ``(time, y, x)`` fields, ``(y, x)`` static fields and, when
            ``weights`` is given, coarse ``(time, y_coarse, x_coarse)`` inputs, which are
            regridded straight into their channel.
        role
            ``"inputs"`` (channels :attr:`in_channels`) or ``"targets"`` (:attr:`out_channels`).
        order
            Time positions to take, in this order (a shuffle applied while filling, no copy).
        weights
            :class:`~corrdiff_xr.data.regrid.BilinearWeights` for coarse inputs.
        times
            The output's time labels (after ``order``), named when a value is refused.
        """
        names = {"inputs": self.in_channels, "targets": self.out_channels}.get(role)
        if names is None:
            raise ValueError(f"role must be 'inputs' or 'targets', got {role!r}")
        missing = [n for n in names if n not in arrays]
        if missing:
            raise MissingVariableError(f"cannot encode {role}: array(s) {missing} not given")
        timed = [np.shape(arrays[n])[0] for n in names if np.ndim(arrays[n]) == 3]
        if not timed:
            raise DimensionError(f"cannot encode {role}: no (time, y, x) array among {list(names)}")
        if order is not None:
            order = np.asarray(order, dtype=np.intp)
            if order.ndim != 1 or (order.size and not 0 <= order.min() <= order.max() < timed[0]):
                raise ValueError(f"order must index the {timed[0]} time steps, got {order!r}")
        n_time = len(order) if order is not None else timed[0]
        return self._encode_arrays(
            {n: np.asarray(arrays[n]) for n in names},
            names,
            n_time,
            order=order,
            weights=weights,
            times=times,
            allow_missing=role == "targets",
        )

    def encode_inputs(self, ds: xr.Dataset) -> np.ndarray:
        """Normalised inputs ``(time, C_in, y, x)`` float32 from regridded inputs + static.

        ``ds`` holds the inputs on ``(time, y, x)`` (see ``DownscalingData.inputs_on_fine``)
        and the static fields on ``(y, x)``, which are repeated over time.
        """
        return self._encode(ds, self.in_channels, "inputs")

    def encode_targets(self, ds: xr.Dataset) -> np.ndarray:
        """Normalised targets ``(time, C_out, y, x)`` float32; NaN (missing) is kept."""
        return self._encode(ds, self.out_channels, "targets")

    def decode_targets(
        self,
        array: np.ndarray | torch.Tensor,
        template: xr.Dataset | xr.DataArray,
        *,
        dims: Sequence[str] | None = None,
    ) -> xr.Dataset:
        """De-normalise ``array[..., C_out, y, x]`` into a Dataset of the targets (then invert
        each target's transform and clip to its bounds: physical units, physical range).

        Parameters
        ----------
        array
            numpy array or torch tensor; the channel axis is third from last.
        template
            Supplies coordinates: its ``y``/``x`` (and ``lat``/``lon``) and, for the leading
            axes, the coordinates of ``dims``.
        dims
            Names of the leading axes. By default: ``(time,)`` for one leading axis,
            ``(member, time)`` for two, ``()`` for none.

        Returns
        -------
        xarray.Dataset
            One variable per target, float32, with CF ``units``/``long_name``.
        """
        if hasattr(array, "detach"):  # torch tensor, without importing torch
            array = array.detach().cpu().numpy()
        array = np.asarray(array)
        if array.ndim < 3 or array.shape[-3] != len(self.targets):
            raise DimensionError(
                f"cannot decode an array of shape {array.shape}: expected (..., {len(self.targets)} "
                f"channels {list(self.targets)}, y, x)"
            )
        lead = array.ndim - 3
        if dims is None:
            dims = {0: (), 1: (TIME,), 2: (MEMBER, TIME)}.get(lead)
            if dims is None:
                raise DimensionError(
                    f"give dims= for the {lead} leading axes of shape {array.shape}"
                )
        dims = tuple(dims)
        if len(dims) != lead:
            raise DimensionError(
                f"dims {dims} do not match the {lead} leading axes of shape {array.shape}"
            )
        full_dims = dims + (Y, X)
        for d, n in zip(full_dims, array.shape[:lead] + array.shape[-2:]):
            if d in template.dims and template.sizes[d] != n:
                raise DimensionError(
                    f"array has {n} points along '{d}' but the template has {template.sizes[d]}"
                )
        coords = {
            k: v for k, v in template.coords.items() if set(v.dims) <= set(full_dims) and v.dims
        }
        mean, std = self._mean_std(self.targets)
        out = {}
        for c, name in enumerate(self.targets):
            values = array[..., c, :, :].astype(np.float32)  # a copy: scaled in place
            values *= np.float32(std[c])
            values += np.float32(mean[c])
            if name in self.transforms:
                self.transforms[name].inverse(values)
            if name in self.bounds:
                np.clip(values, *self.bounds[name], out=values)  # NaN stays NaN
            if name in self.gates:
                self.gates[name].apply(values, _gate_field(self.gates[name], template, full_dims))
            attrs = dict(self.attrs.get(name, {}))
            if isinstance(template, xr.Dataset) and name in template.data_vars:
                attrs.update(template[name].attrs)
            # the values are in the model's units, whatever the template's label says
            if (unit := self.units[name]) is not None:
                attrs["units"] = unit
            out[name] = (full_dims, values, attrs)
        return xr.Dataset(out, coords=coords)

    @property
    def channel_coords(self) -> dict[str, list[str]]:
        """Names of the input and output channels, e.g. for labelling tensors in xarray."""
        return {
            f"in_{CHANNEL}": list(self.in_channels),
            f"out_{CHANNEL}": list(self.out_channels),
        }


def _gate_field(
    gate: Gate, template: xr.Dataset | xr.DataArray, dims: tuple[str, ...]
) -> np.ndarray:
    """The gate's feature at the template's times on its fine lat/lon, shaped to broadcast
    against values on ``dims``."""
    if isinstance(template, xr.Dataset) and gate.feature in template.data_vars:
        f = np.asarray(template[gate.feature].transpose(TIME, Y, X).values)  # as encoded
    elif TIME in dims and TIME in template.coords:
        fields = compute_features((gate.feature,), template[TIME].values, *fine_lat_lon(template))
        f = fields[gate.feature]
    else:
        raise DimensionError(f"decoding an output gated by {gate.feature} needs its '{TIME}' axis")
    return f.reshape([f.shape[0] if d == TIME else 1 for d in dims[:-2]] + list(f.shape[1:]))
