"""The backbone table: which network ``network.arch`` names, how to build and check it.

A *backbone* is the raw network inside CorrDiff's two stages: the regression net
(:class:`~corrdiff_xr.nn.RegressionUNet` wraps it) and the EDM denoiser
(:class:`~corrdiff_xr.edm.EDMPrecond` wraps it). :data:`BACKBONES` maps each ``arch`` name to
a :class:`Backbone`, its three functions; training, inference, the checkpoint safety checks
and the ``.mdlus`` import ask this one table, and nothing else dispatches on the name.
One module of :mod:`corrdiff_xr.nn` holds each backbone (``unet.py``: ``"songunet"``,
``dit.py``: ``"dit"``);
:func:`register_backbone` adds one from outside the package (call it in every process that
builds or loads such a model, e.g. on import of the module that defines it).

A backbone's module is called as SongUNet is::

    net(x, noise_labels, *, offsets=None, lead_time=None) -> (N, out_channels, h, w)

with ``x`` (N, in_channels, h, w), ``noise_labels`` (N,) (zeros for the regression net),
``offsets`` (N, 2) the global (row, col) of each patch's top-left pixel (None: the whole
grid) and ``lead_time`` (N,) integer labels or None. It has ``in_channels`` and
``out_channels`` attributes and a ``dtype`` property (inputs are cast to it).

How the config carries each backbone's parameters: :class:`~corrdiff_xr.config.NetworkConfig`
stays SongUNet's parameter list (so every existing config, checkpoint header and training
identity reads and hashes unchanged) plus ``arch`` (default ``"songunet"``) and a free
``options`` mapping for the parameters of other backbones, which that backbone's
``check_config`` checks (SongUNet takes none). Its execution fields (``compile``,
``channels_last``, ``checkpoint_activations``, ``dropout``) mean the same for any backbone
that honours them. :func:`network_dict` leaves ``arch`` and ``options`` out at their defaults,
so a SongUNet's header and run identity are byte for byte what they were before the table.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, cast

from torch import nn

from corrdiff_xr.config import ConfigError, NetworkConfig, to_dict
from corrdiff_xr.nn.dit import DiT, dit_check_config, dit_check_shape
from corrdiff_xr.nn.framed import Framed, framed_check_config, framed_check_shape
from corrdiff_xr.nn.unet import SongUNet

__all__ = [
    "BACKBONES",
    "DEFAULT_ARCH",
    "Backbone",
    "backbone",
    "build_network",
    "check_shape",
    "network_dict",
    "register_backbone",
]

DEFAULT_ARCH = "songunet"
#: fields that a header or run identity leaves out at these values (written before they existed)
_IMPLICIT = {"arch": DEFAULT_ARCH, "options": {}}

#: at most this many input or output channels (also the model's checkpoint limit)
MAX_CHANNELS = 4096
#: (min, max) of every number (or every item of a sequence) of a SongUNet config
NETWORK_LIMITS = {
    "model_channels": (1, 4096),
    "channel_mult": (1, 64),
    "channel_mult_emb": (1, 64),
    "channel_mult_noise": (1, 64),
    "num_blocks": (1, 16),
    "N_grid_channels": (0, 1024),
    "lead_time_channels": (0, 1024),
    "lead_time_steps": (1, 4096),
    "resample_filter": (0, 1 << 16),
}
#: most items of a SongUNet config's sequences (``channel_mult`` is the number of levels)
LENGTH_LIMITS = {
    "channel_mult": 8,
    "attn_resolutions": 64,
    "resample_filter": 16,
    "prob_channels": MAX_CHANNELS,
}


@dataclasses.dataclass(frozen=True)
class Backbone:
    """What the table knows of one backbone.

    Attributes
    ----------
    build : callable
        ``build(cfg, *, in_channels, out_channels, img_shape) -> nn.Module``: the network
        for ``cfg`` (a :class:`NetworkConfig`), ``in_channels`` data channels (latent then
        condition), ``out_channels`` outputs, on the global grid ``img_shape`` (H, W).
    check_shape : callable
        ``check_shape(cfg, shape, what)``: raise :class:`ConfigError` (one line naming
        ``what``) when the network cannot run on images of ``shape`` (y, x).
    check_config : callable
        ``check_config(cfg, what, error)``: raise ``error`` (one line naming ``what``, e.g.
        ``"file: residual_network"``) for a config beyond the backbone's limits or with
        options it does not take. It guards checkpoint headers, so it must bound every size.
    """

    build: Callable[..., nn.Module]
    check_shape: Callable[[NetworkConfig, tuple[int, int], str], None]
    check_config: Callable[[NetworkConfig, str, type[Exception]], None]


def _songunet_config(cfg: NetworkConfig, what: str, error: type[Exception]) -> None:
    """Refuse options, and a config beyond :data:`NETWORK_LIMITS` / :data:`LENGTH_LIMITS`."""
    if cfg.options:
        raise error(
            f"{what}.options {sorted(cfg.options)} are not taken by arch 'songunet', whose "
            "settings are the network's own fields; drop options"
        )
    for field, most in LENGTH_LIMITS.items():
        if len(getattr(cfg, field)) > most:
            raise error(
                f"{what}.{field} has {len(getattr(cfg, field))} items; at most {most} are allowed"
            )
    for field, (low, high) in NETWORK_LIMITS.items():
        value = getattr(cfg, field)
        for v in value if isinstance(value, tuple) else (value,):
            if not low <= v <= high:
                raise error(f"{what}.{field}={value!r} is outside [{low}, {high}]")


def _songunet_shape(cfg: NetworkConfig, shape: tuple[int, int], what: str) -> None:
    cfg.check_shape(shape, what)


#: every backbone by its ``network.arch`` name; :func:`register_backbone` adds more
BACKBONES: dict[str, Backbone] = {
    "songunet": Backbone(
        build=SongUNet, check_shape=_songunet_shape, check_config=_songunet_config
    ),
    "dit": Backbone(build=DiT, check_shape=dit_check_shape, check_config=dit_check_config),
}


def register_backbone(name: str, entry: Backbone, *, replace: bool = False) -> None:
    """Make ``network.arch: name`` select ``entry``; a taken name needs ``replace=True``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a backbone name must be an identifier, got {name!r}")
    if not isinstance(entry, Backbone):
        raise TypeError(f"register_backbone({name!r}, ...) needs a Backbone, got {entry!r:.100}")
    if name in BACKBONES and not replace:
        raise ValueError(f"backbone {name!r} is already registered; pass replace=True to swap it")
    BACKBONES[name] = entry


def backbone(
    cfg: NetworkConfig, what: str = "network", *, error: type[Exception] = ConfigError
) -> Backbone:
    """The table's entry for ``cfg.arch``, or ``error`` naming ``{what}.arch`` and the known."""
    try:
        return BACKBONES[cfg.arch]
    except (KeyError, TypeError):
        raise error(
            f"{what}.arch {cfg.arch!r:.100} is not a known backbone; known: {sorted(BACKBONES)} "
            "(corrdiff_xr.nn.register_backbone adds one)"
        ) from None


def build_network(
    cfg: NetworkConfig,
    *,
    in_channels: int,
    out_channels: int,
    img_shape: tuple[int, int],
    what: str = "network",
) -> nn.Module:
    """The network ``cfg`` describes, built by its backbone (after its config check)."""
    entry = backbone(cfg, what)
    entry.check_config(cfg, what, ConfigError)
    return entry.build(
        cfg, in_channels=in_channels, out_channels=out_channels, img_shape=tuple(img_shape)
    )


def check_shape(
    cfg: NetworkConfig, shape: tuple[int, int], what: str, *, key: str = "network"
) -> None:
    """Refuse an image ``shape`` (y, x), named ``what``, that the backbone of ``cfg`` (the
    config at ``key``) cannot run on; an unknown ``arch`` or a bad config is refused first."""
    entry = backbone(cfg, key)
    entry.check_config(cfg, key, ConfigError)
    entry.check_shape(cfg, cast("tuple[int, int]", tuple(shape)), what)


def network_dict(cfg: NetworkConfig) -> dict[str, Any]:
    """``cfg`` as plain data for a checkpoint header or run identity; ``arch`` and ``options``
    are left out at their defaults, so a SongUNet's reads as it did before they existed."""
    return {k: v for k, v in to_dict(cfg).items() if not (k in _IMPLICIT and v == _IMPLICIT[k])}


# a frame around another backbone: given this table's functions for its inner network
BACKBONES["framed"] = Backbone(
    build=functools.partial(Framed, build=build_network),
    check_shape=functools.partial(framed_check_shape, check=check_shape),
    check_config=functools.partial(framed_check_config, lookup=backbone),
)
