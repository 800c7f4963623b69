"""Encoding on the training device: coarse blocks in, normalised batches out, as torch ops.

At real sizes the CPU encoding of the training loader (regridding every coarse input onto the
fine grid, then normalising it) costs more than reading the block (``benchmarks/loader.py
--size 448``: 91 ms against 57 ms per 8-sample block on one core). With a
:class:`DeviceEncoder` the loader's workers only read: they ship the coarse inputs (16 to 100x
smaller than on the fine grid) and the raw fine targets (whole images as read, whose rows the
main process takes when it cuts a batch, or each sample's patch), and each batch is encoded
here, on the device that trains on it:

* inputs: an untransformed input is normalised on the *coarse* grid, then interpolated with the
  four-corner tables of :class:`~corrdiff_xr.data.regrid.BilinearWeights` (any scheme: bilinear,
  nearest, conservative; only the pixels of each sample's patch); a transformed one is
  interpolated, transformed and normalised, in that order, as the CPU codec does;
* static fields: encoded once on the device and cropped per sample;
* time features (:mod:`corrdiff_xr.features`): the cosine of the solar zenith angle is linear in
  four fixed fields, ``sin(lat)``, ``cos(lat) cos(lon)``, ``cos(lat) sin(lon)`` and ``1``, with
  per-time coefficients from the sun's position (``cos z = sin(lat) sin(dec) +
  cos(lat) cos(dec) cos(lon + GMST - RA)``); spatially constant features use the last one alone
  (:func:`feature_coefficients` covers every feature of :data:`~corrdiff_xr.features.FEATURES`);
* targets: transformed and normalised in place; NaN (missing) stays NaN.

Every step is an elementwise float32 op or a gather, so the result does not depend on the
device (no BLAS reduction order, no TF32). It equals :meth:`Codec.encode_arrays
<corrdiff_xr.codec.Codec.encode_arrays>` bit for bit on untransformed targets and static fields,
and elsewhere to float32 rounding: normalising before interpolating skips the rounding of the
large raw values (``msl`` near 1e5 Pa has a float32 spacing of 0.008 Pa), so this path is the
closer of the two to a float64 encoding (within 1e-6 in the tests) and the two differ by the CPU
path's own rounding (``tests/training/test_device_encode.py``).

Bad values are found with one flag per batch (non-finite inputs, infinite targets, values
outside a transform's domain); when it is raised the batch is encoded again by the CPU codec,
whose error names the variable and the times in one line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.features import FEATURES, _julian_centuries, _sun, valid_times
from corrdiff_xr.training.batch import Batch

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data.regrid import BilinearWeights
    from corrdiff_xr.transforms import Transform

__all__ = ["DeviceEncoder", "feature_coefficients"]

COARSE = "coarse/"  # key prefix of a shipped coarse input

# features constant in space: the value at any one point, times the field of ones
_CONSTANT = ("hour_of_day", "hour_of_day_in_coslat", "day_of_year_sin", "day_of_year_cos")
# features that are the largest cos z over these offsets from the valid time
_ZENITH = {"cos_zenith": (0,), "cos_zenith_max_1h": (-1, 0)}


def feature_coefficients(name: str, times: np.ndarray) -> np.ndarray | None:
    """``(T, G, 4)`` float64 coefficients of feature ``name`` over the fields ``sin(lat)``,
    ``cos(lat) cos(lon)``, ``cos(lat) sin(lon)``, ``1``: the feature is the largest of its
    ``G`` combinations. None for a feature without this form."""
    t = valid_times(times)
    if name in _CONSTANT:
        value = FEATURES[name].compute(t, np.zeros((1, 1)), np.zeros((1, 1)))[:, 0, 0]
        out = np.zeros((len(t), 1, 4))
        out[:, 0, 3] = np.asarray(value, np.float64)
        return out
    if name not in _ZENITH:
        return None
    hours = _ZENITH[name]
    out = np.zeros((len(t), len(hours), 4))
    for g, h in enumerate(hours):
        for i, c in enumerate(_julian_centuries(t + np.timedelta64(h, "h"))):
            gmst, ra, dec = _sun(float(c))
            # cos(lon + h0) = cos(lon) cos(h0) - sin(lon) sin(h0), with h0 = GMST - RA
            h0 = gmst - ra
            out[i, g, :3] = (
                math.sin(dec),
                math.cos(dec) * math.cos(h0),
                -math.cos(dec) * math.sin(h0),
            )
    return out


@dataclasses.dataclass(frozen=True)
class _Channel:
    """How one channel is normalised: float32 mean and 1/std as the CPU codec rounds them."""

    name: str
    mean: float
    inv_std: float
    transform: Transform | None


def _channels(codec: Codec, names: tuple[str, ...]) -> list[_Channel]:
    return [
        _Channel(
            n,
            float(np.float32(codec.stats[n][0])),
            float(np.float32(1.0 / codec.stats[n][1])),
            codec.transforms.get(n),
        )
        for n in names
    ]


def _forward(transform: Transform, x: torch.Tensor) -> torch.Tensor:
    """``Transform.forward`` in place on a float32 tensor; returns the out-of-domain flag."""
    lo, hi = transform.domain()
    bad = torch.zeros((), dtype=torch.bool, device=x.device)
    if math.isfinite(lo):  # NaN compares False: missing values pass
        outside = (x <= lo) | (x >= hi) if math.isfinite(hi) else x <= lo
        bad = outside.any()
    if transform.scale != 1.0:
        x.mul_(float(np.float32(1.0 / transform.scale)))
    if transform.kind == "asinh":
        x.asinh_()
        return bad
    assert transform.eps is not None  # log_eps and logit_eps carry one (Transform checks)
    eps = float(np.float32(transform.eps))
    if transform.kind == "log_eps":
        x.add_(eps).log_()
    else:
        below = torch.sub(float(np.float32(1.0 + transform.eps)), x)
        x.add_(eps).div_(below).log_()
    return bad


def _normalise(x: torch.Tensor, channels: list[_Channel]) -> torch.Tensor:
    """Transform and normalise ``x (N, C, h, w)`` in place, channel by channel; returns the
    out-of-domain flag."""
    bad = torch.zeros((), dtype=torch.bool, device=x.device)
    for c, ch in enumerate(channels):
        dst = x[:, c]
        if ch.transform is not None:
            bad = bad | _forward(ch.transform, dst)
        dst.sub_(ch.mean).mul_(ch.inv_std)
    return bad


class DeviceEncoder:
    """Turns a shipped raw batch into a normalised :class:`Batch` on ``device``.

    Parameters
    ----------
    codec : Codec
        Channels, statistics and transforms (as the CPU path uses them).
    weights : BilinearWeights
        Coarse -> fine interpolation tables of the pair.
    static : dict
        ``{name: (y, x) array}`` of the static fields, on the fine grid.
    lat_lon : (lat, lon) or None
        Fine ``(y, x)`` latitude/longitude in degrees, needed when ``codec.features``.
    times : array
        Time labels of the loader's pair (a batch carries positions along them).
    device : torch.device or str
        Where to encode (and where the batch lives afterwards).
    """

    def __init__(
        self,
        codec: Codec,
        weights: BilinearWeights,
        static: Mapping[str, np.ndarray],
        lat_lon: tuple[np.ndarray, np.ndarray] | None,
        times: np.ndarray,
        device: torch.device | str,
    ):
        self.codec, self.weights, self.device = codec, weights, torch.device(device)
        self._static_np, self._lat_lon, self._times = dict(static), lat_lon, times
        self.fine_shape = tuple(int(n) for n in weights.fine_shape)
        # four-corner tables (4, y, x): flat coarse index and weight, as the CPU gather uses
        index = np.asarray(weights.index).reshape(-1, 4).T.reshape((4,) + self.fine_shape)
        weight = np.asarray(weights.weight, np.float64).reshape(-1, 4).T
        self._index = torch.as_tensor(index.astype(np.int64), device=self.device)
        self._weight = {
            torch.float64: torch.as_tensor(weight.reshape(self._index.shape), device=self.device)
        }
        self._weight[torch.float32] = self._weight[torch.float64].float()
        self._inputs = _channels(codec, codec.inputs)
        self._targets = _channels(codec, codec.targets)
        self._features = _channels(codec, codec.features)
        s = _channels(codec, codec.static)
        self._static = torch.empty((1, len(s)) + self.fine_shape, device=self.device)
        for c, ch in enumerate(s):
            self._static[0, c] = torch.as_tensor(np.asarray(static[ch.name]), device=self.device)
        self._static_bad = _normalise(self._static, s)
        self._basis: torch.Tensor | None = None
        if codec.features:
            if lat_lon is None:
                raise ValueError("time features need the fine grid's lat_lon")
            times = self._times[:1]
            if stray := [n for n in codec.features if feature_coefficients(n, times) is None]:
                raise CorrDiffError(
                    f"time feature(s) {stray} have no device form (feature_coefficients); "
                    "train with the loader's encode_device=None"
                )
            lat, lon = (np.deg2rad(np.asarray(a, np.float64)) for a in lat_lon)
            basis = np.stack(
                [
                    np.sin(lat),
                    np.cos(lat) * np.cos(lon),
                    np.cos(lat) * np.sin(lon),
                    np.ones_like(lat),
                ]
            )
            self._basis = torch.as_tensor(basis, device=self.device)

    def __call__(self, raw: Mapping[str, np.ndarray]) -> Batch:
        """Encode one shipped batch: ``coarse/<input>`` ``(N, y_c, x_c)``, ``targets``
        ``(N, C_out, h, w)`` float32 raw, ``offsets``, ``time_index`` and ``lead_time``."""
        dev = self.device
        move = lambda a: torch.as_tensor(np.asarray(a)).to(dev, non_blocking=True)
        y = torch.tensor(np.asarray(raw["targets"]), device=dev)  # a copy: encoded in place
        offsets = move(raw["offsets"])
        n, ph, pw = y.shape[0], y.shape[-2], y.shape[-1]
        rows = offsets[:, :1] + torch.arange(ph, device=dev)  # (N, h) global rows of the patch
        cols = offsets[:, 1:] + torch.arange(pw, device=dev)
        codec = self.codec
        x = torch.empty((n, len(codec.in_channels), ph, pw), device=dev)
        bad = self._static_bad | self._encode_inputs(raw, x, rows, cols)
        k = len(codec.inputs)
        x[:, k : k + len(codec.static)] = _crop(self._static[0], rows, cols)
        if codec.features:
            k += len(codec.static)
            x[:, k:] = self._feature_fields(raw["time_index"], rows, cols)
            bad = bad | _normalise(x[:, k:], self._features)
        bad = bad | _normalise(y, self._targets) | ~torch.isfinite(x).all() | torch.isinf(y).any()
        if bool(bad):
            self._raise(raw)
        lead = raw.get("lead_time")
        return Batch(x, y, offsets, move(raw["time_index"]), None if lead is None else move(lead))

    def _encode_inputs(
        self,
        raw: Mapping[str, np.ndarray],
        x: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
    ) -> torch.Tensor:
        """Interpolate (and normalise) every coarse input into its channel of ``x``; returns the
        out-of-domain flag of the transformed ones."""
        n = len(rows)
        if x.shape[-2:] == self.fine_shape:  # whole images: the tables as they are
            take = lambda t: t.flatten(1)[:, None, :].expand(-1, n, -1)
        else:  # (4, N, P): the corners of each patch pixel
            flat = (rows[:, :, None] * self.fine_shape[1] + cols[:, None, :]).reshape(n, -1)
            take = lambda t: t.flatten(1)[:, flat]
        index, weight = take(self._index), {}

        def weights(dt):  # gathered once per dtype used
            if dt not in weight:
                weight[dt] = take(self._weight[dt])
            return weight[dt]

        coarse = {
            ch.name: torch.as_tensor(np.asarray(raw[COARSE + ch.name])).to(self.device).flatten(1)
            for ch in self._inputs
        }
        plain = [c for c, ch in enumerate(self._inputs) if ch.transform is None]
        if plain:  # normalised on the coarse grid (few values), then interpolated together
            chs = [self._inputs[c] for c in plain]
            field = torch.stack([coarse[ch.name].float() for ch in chs], dim=1)  # (N, C, y_c x_c)
            field.sub_(self._stat(chs, "mean")).mul_(self._stat(chs, "inv_std"))
            out = _interpolate(field, index, weights(torch.float32))
            x[:, plain] = out.reshape((n, len(plain)) + x.shape[-2:])
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        for c, ch in enumerate(self._inputs):
            if ch.transform is None:
                continue
            field = coarse[ch.name]  # as the CPU path: float32 in float32, else in float64
            dt = torch.float32 if field.dtype == torch.float32 else torch.float64
            out = _interpolate(field.to(dt)[:, None], index, weights(dt)).float()
            out = out.reshape((n, 1) + x.shape[-2:])
            bad = bad | _normalise(out, [ch])
            x[:, c] = out[:, 0]
        return bad

    def _stat(self, channels: list[_Channel], what: str) -> torch.Tensor:
        values = [getattr(ch, what) for ch in channels]
        return torch.tensor(values, dtype=torch.float32, device=self.device)[:, None]

    def _feature_fields(
        self, time_index: np.ndarray, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """``(N, F, h, w)`` float32 time features of each sample on its patch."""
        labels = self._times[np.asarray(time_index)]
        assert self._basis is not None  # built with the encoder when the codec has features
        basis = _crop(self._basis, rows, cols)  # (N, 4, h, w) float64
        out = []
        for name in self.codec.features:
            # (N, G, 4); every feature has a form, checked when the encoder was built
            coef = torch.as_tensor(feature_coefficients(name, labels), device=self.device)
            field = (coef[:, :, :, None, None] * basis[:, None]).sum(2).amax(1)
            out.append(field.float())
        return torch.stack(out, dim=1)

    def _raise(self, raw: Mapping[str, np.ndarray]) -> None:
        """Encode the batch again with the CPU codec, whose error names the bad value."""
        codec = self.codec
        labels = self._times[np.asarray(raw["time_index"])]
        coarse = {n: np.asarray(raw[COARSE + n]) for n in codec.inputs}
        features = {}
        if self._lat_lon is not None and codec.features:
            features = codec.feature_fields(labels, *self._lat_lon)
        arrays = {**coarse, **self._static_np, **features}
        codec.encode_arrays(arrays, role="inputs", weights=self.weights, times=labels)
        targets = np.asarray(raw["targets"])
        codec.encode_arrays(
            {n: targets[:, c] for c, n in enumerate(codec.targets)}, role="targets", times=labels
        )
        raise CorrDiffError(
            f"device encoding found a non-finite value at times {[str(t) for t in labels[:3]]} "
            "that the CPU codec accepts; train with the loader's encode_device=None"
        )


def _interpolate(field: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_k field[..., index_k] * weight_k``: ``field (N, C, y_c * x_c)``, corner tables
    ``(4, N, P)`` -> ``(N, C, P)``."""
    n, c = field.shape[:2]
    take = lambda k: torch.gather(field, 2, index[k][:, None, :].expand(n, c, -1))
    acc = take(0) * weight[0][:, None]
    for k in range(1, 4):  # multiply, then add: no fused rounding on any device
        acc += take(k) * weight[k][:, None]
    return acc


def _crop(field: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``field (C, y, x)`` -> ``(N, C, h, w)``: each sample's window ``rows`` x ``cols``."""
    return field[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)
