"""A backbone inside a fixed frame: channel order, flipped rows and domain padding.

Some published networks were trained on images prepared in ways the rest of this package does
not model: channels in another order than the codec's, rows upside down (north first) and the
domain padded beyond its edges (reflected in latitude, wrapped around in longitude, as the
CorrDiff CMIP6 -> ERA5 model runs on a 768 x 1536 image of its 721 x 1440 grid). A *framed*
backbone does that preparation around an inner backbone, so codecs, data and samplers see the
grid as it is:

1. the last ``len(order)`` input channels (the condition: the codec's input channels) are put
   in ``order`` (``out[i] = in[order[i]]``); the leading ones (latent, regression mean) stay;
2. with ``flip_y`` the rows are reversed;
3. rows are padded by ``pad[0]``/``pad[1]`` and columns by ``pad[2]``/``pad[3]``, each axis
   with its mode (``"reflect"``: mirrored without repeating the edge, as
   :func:`torch.nn.functional.pad`; ``"circular"``: wrapped around; ``"replicate"``; ``"zero"``);
4. the inner network runs on the padded image (its positional grid is the padded image's);
5. its output is cropped back and, with ``flip_y``, flipped back.

The frame is plain data in ``NetworkConfig(arch="framed", options={...})`` (keys
:data:`KEYS`), so a checkpoint rebuilds it; :mod:`corrdiff_xr.nn.backbones` lists it, handing
it the table's own functions for the inner backbone. A framed network runs on the whole grid only:
patches (``offsets``) are refused. Steps 1-3 are :meth:`Framed.enter` and step 5
:meth:`Framed.leave`, so a model can also sample inside the frame (``sample_domain="padded"``,
:mod:`corrdiff_xr.model.sample_domain`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from corrdiff_xr.config import ConfigError, NetworkConfig, from_dict

__all__ = ["KEYS", "MODES", "Framed", "framed_check_config", "framed_check_shape", "inner_config"]

#: the keys of ``options`` and what each holds
KEYS = {
    "inner": "the inner backbone's network config (a mapping)",
    "order": "a permutation of 0..n-1 (the condition channels' order)",
    "flip_y": "true or false",
    "pad": "[top, bottom, left, right] non-negative integers",
    "modes": "[row mode, column mode], each 'reflect', 'circular', 'replicate' or 'zero'",
}
MODES = ("reflect", "circular", "replicate", "zero")
#: the most padding any side may have (a header is data: bound every size)
MAX_PAD = 4096


def inner_config(cfg: NetworkConfig) -> NetworkConfig:
    """The inner backbone's :class:`NetworkConfig`."""
    return from_dict(NetworkConfig, dict(cfg.options["inner"]), path="network.options.inner")


def _padded(cfg: NetworkConfig, shape: tuple[int, int]) -> tuple[int, int]:
    top, bottom, left, right = cfg.options["pad"]
    return shape[0] + top + bottom, shape[1] + left + right


def framed_check_config(
    cfg: NetworkConfig, what: str, error: type[Exception], *, lookup: Callable
) -> None:
    """Refuse options that are not :data:`KEYS` of the right kinds and sizes; the inner config
    is checked by its own backbone (``lookup(cfg, what, error=...)``: the table's entry)."""
    opts = cfg.options
    if set(opts) != set(KEYS):
        raise error(f"{what}.options of arch 'framed' must have exactly the keys {sorted(KEYS)}")
    order, pad, modes = opts["order"], opts["pad"], opts["modes"]
    if not isinstance(order, list | tuple) or sorted(order) != list(range(len(order))):
        raise error(f"{what}.options.order must be {KEYS['order']}, got {order!r:.200}")
    if not (
        isinstance(pad, list | tuple)
        and len(pad) == 4
        and all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= MAX_PAD for p in pad)
    ):
        raise error(f"{what}.options.pad must be {KEYS['pad']} (at most {MAX_PAD}), got {pad!r}")
    if not (isinstance(modes, list | tuple) and len(modes) == 2 and all(m in MODES for m in modes)):
        raise error(f"{what}.options.modes must be two of {list(MODES)}, got {modes!r:.100}")
    if not isinstance(opts["flip_y"], bool):
        raise error(f"{what}.options.flip_y must be true or false, got {opts['flip_y']!r:.50}")
    if not isinstance(opts["inner"], Mapping) or opts["inner"].get("arch") == "framed":
        raise error(f"{what}.options.inner must be a network config of another arch")
    try:
        inner = inner_config(cfg)
    except ConfigError as err:
        raise error(f"{what}.options.inner: {err}") from None
    lookup(inner, f"{what}.options.inner", error=error).check_config(
        inner, f"{what}.options.inner", error
    )


def framed_check_shape(
    cfg: NetworkConfig, shape: tuple[int, int], what: str, *, check: Callable
) -> None:
    """The inner backbone must run on the padded ``shape`` (``check``: the table's
    ``check_shape``); reflection needs rows/columns beyond the pad."""
    top, bottom, left, right = cfg.options["pad"]
    for axis, (a, b), mode, n in (
        ("rows", (top, bottom), cfg.options["modes"][0], shape[0]),
        ("columns", (left, right), cfg.options["modes"][1], shape[1]),
    ):
        if mode == "reflect" and max(a, b) >= n:
            raise ConfigError(f"{what} has {n} {axis}, too few to reflect a pad of {max(a, b)}")
    check(inner_config(cfg), _padded(cfg, shape), f"{what} (padded)")


def _pad(x: torch.Tensor, before: int, after: int, mode: str, dim: int) -> torch.Tensor:
    if before == after == 0:
        return x
    spec = (before, after, 0, 0) if dim == -1 else (0, 0, before, after)
    if mode == "zero":
        return F.pad(x, spec)
    return F.pad(x, spec, mode=mode)


class Framed(nn.Module):
    """An inner backbone run inside the frame ``cfg.options`` describes (module docstring)."""

    order: torch.Tensor  # a buffer: the channel order the inner network sees

    def __init__(
        self,
        cfg: NetworkConfig,
        *,
        in_channels: int,
        out_channels: int,
        img_shape: tuple[int, int],
        build: Callable[..., nn.Module],
    ):
        super().__init__()
        opts = cfg.options
        order = [int(i) for i in opts["order"]]
        if len(order) > in_channels:
            raise ConfigError(
                f"network.options.order orders {len(order)} channels, more than the "
                f"{in_channels} the network takes"
            )
        lead = in_channels - len(order)
        self.register_buffer(
            "order", torch.tensor(list(range(lead)) + [lead + i for i in order]), persistent=False
        )
        self.n_ordered = len(order)
        self.flip_y = bool(opts["flip_y"])
        self.pad = tuple(int(p) for p in opts["pad"])
        self.modes = tuple(opts["modes"])
        self.img_shape = (int(img_shape[0]), int(img_shape[1]))
        self.inner = build(
            inner_config(cfg),
            in_channels=in_channels,
            out_channels=out_channels,
            img_shape=_padded(cfg, self.img_shape),
            what="network.options.inner",
        )
        self.in_channels, self.out_channels = in_channels, out_channels

    @property
    def dtype(self) -> torch.dtype:
        # every backbone has a dtype property (nn/backbones.py); nn.Module does not declare it
        return cast(torch.dtype, self.inner.dtype)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        *,
        offsets: torch.Tensor | None = None,
        lead_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) != self.img_shape or (offsets is not None and bool(offsets.any())):
            raise ValueError(
                f"a framed network runs on its whole {self.img_shape} grid, not on patches "
                f"({h}x{w} at offsets {None if offsets is None else offsets.tolist()[:2]})"
            )
        out = self.inner(self.enter(x), noise_labels, offsets=None, lead_time=lead_time)
        return self.leave(out)

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, H, W) as the inner network sees it: the last ``len(order)`` channels
        in ``order``, rows flipped with ``flip_y``, padded (steps 1-3 of the module
        docstring). ``x`` is the network's input or its trailing part (the condition alone:
        leading channels may be left out)."""
        skip = self.in_channels - x.shape[1]  # leading channels left out
        if not 0 <= skip <= self.in_channels - self.n_ordered:
            raise ValueError(
                f"a framed network's input has {self.n_ordered} to {self.in_channels} "
                f"channels, got {x.shape[1]}"
            )
        x = x.index_select(1, self.order[skip:] - skip)
        if self.flip_y:
            x = x.flip(-2)
        top, bottom, left, right = self.pad
        return _pad(_pad(x, top, bottom, self.modes[0], -2), left, right, self.modes[1], -1)

    def leave(self, out: torch.Tensor) -> torch.Tensor:
        """An image on the padded grid cropped back to the grid (and flipped back)."""
        top, _, left, _ = self.pad
        h, w = self.img_shape
        out = out[..., top : top + h, left : left + w]
        return out.flip(-2) if self.flip_y else out
