"""The DiT's settings (``network.options`` of ``arch: dit``): defaults, bounds and checks.

:data:`DIT_DEFAULTS` lists every option; :func:`dit_check_config` guards configs and
checkpoint headers (every size bounded, one line naming the option); :func:`dit_check_shape`
refuses grids the patches do not tile. Besides the architecture (PhysicsNeMo's ``DiT``
arguments) two options adapt an imported network to this package's calling convention:

``vector_from_inputs``
    with ``condition_dim`` k > 0, the last k input channels are fields constant in space
    (e.g. the day-of-year features of :mod:`corrdiff_xr.features`) whose values form the
    vector condition, instead of an explicit ``condition``; they are not image channels.
``flow_time_scale``
    when > 0, the noise label our preconditioner passes (``ln(sigma) / 4``) becomes
    ``flow_time_scale * t`` with ``t = sigma / (1 + sigma)``, the rectified-flow time, as
    networks trained on ``t * time_scale`` expect (Earth2Studio's CorrDiff ERA5-HRRR: 999).

Three options follow PhysicsNeMo's variants: ``rope_theta`` (the rotary frequencies' base,
``natten2d_rope``'s ``attn_kwargs.rope_theta``), ``qk_norm: layernorm_no_affine`` (a layer
norm with no learned scale or shift and eps 1e-6, ``natten2d``'s ``qk_norm=True``) and
``conv_head_layers`` > 0 (``proj_reshape_2d_conv``: the output image plus a residual
convolution head of ``conv_head_layers`` same-padded ``conv_head_kernel`` convolutions with
``conv_head_hidden`` maps and GELU between). Left at their defaults they change nothing.
"""

from __future__ import annotations

from typing import TypedDict, TypeGuard, cast

from corrdiff_xr.config import ConfigError, NetworkConfig

__all__ = [
    "DIT_CHOICES",
    "DIT_DEFAULTS",
    "DIT_LIMITS",
    "MAX_TOKENS",
    "DiTOptions",
    "dit_check_config",
    "dit_check_shape",
    "dit_options",
]


class DiTOptions(TypedDict):
    """A DiT's checked options (:func:`dit_options`), ``patch_size`` as ``(rows, cols)``."""

    patch_size: tuple[int, int]
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qk_norm: str
    pos_embed: str
    attention: str
    attn_kernel: int
    condition_dim: int
    vector_from_inputs: bool
    flow_time_scale: float
    rope_theta: float
    conv_head_layers: int
    conv_head_hidden: int
    conv_head_kernel: int


#: ``network.options`` of a DiT and their values when left out (PhysicsNeMo's defaults)
DIT_DEFAULTS: dict[str, int | float | str | bool] = {
    "patch_size": 8,
    "hidden_size": 384,
    "depth": 12,
    "num_heads": 8,
    "mlp_ratio": 4.0,
    "qk_norm": "none",
    "pos_embed": "learnable",
    "attention": "global",
    "attn_kernel": 3,
    "condition_dim": 0,
    "vector_from_inputs": False,
    "flow_time_scale": 0.0,
    "rope_theta": 10000.0,
    "conv_head_layers": 0,
    "conv_head_hidden": 64,
    "conv_head_kernel": 3,
}
#: (min, max) of each numeric option; ``patch_size`` bounds each side
DIT_LIMITS = {
    "patch_size": (1, 64),
    "hidden_size": (2, 8192),
    "depth": (1, 128),
    "num_heads": (1, 256),
    "mlp_ratio": (0.0625, 16.0),
    "attn_kernel": (1, 255),
    "condition_dim": (0, 4096),
    "flow_time_scale": (0.0, 1e6),
    "rope_theta": (1.0, 1e9),
    "conv_head_layers": (0, 8),
    "conv_head_hidden": (1, 1024),
    "conv_head_kernel": (1, 15),
}
#: options that take a real number; the others in :data:`DIT_LIMITS` are integers
_REAL = ("mlp_ratio", "flow_time_scale", "rope_theta")
DIT_CHOICES = {
    "qk_norm": ("none", "rmsnorm", "layernorm", "layernorm_no_affine"),
    "pos_embed": ("learnable", "none", "rope"),
    "attention": ("global", "neighborhood"),
}
#: most positional-embedding tokens (a 4096 x 4096 grid in 8 x 8 patches), to bound a header
MAX_TOKENS = 1 << 18


def dit_options(cfg: NetworkConfig) -> DiTOptions:
    """``cfg.options`` over :data:`DIT_DEFAULTS`, ``patch_size`` as a ``(ph, pw)`` tuple
    (after :func:`dit_check_config`, which checks each option's type)."""
    opts = {**DIT_DEFAULTS, **cfg.options}
    p = opts["patch_size"]
    opts["patch_size"] = (p, p) if isinstance(p, int) else tuple(p)
    return cast(DiTOptions, opts)


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def dit_check_config(cfg: NetworkConfig, what: str, error: type[Exception]) -> None:
    """Refuse unknown options, options of the wrong type or beyond :data:`DIT_LIMITS`, and
    SongUNet settings a DiT cannot honour, in one line naming ``{what}.options.<key>``."""
    unknown = sorted(set(cfg.options) - set(DIT_DEFAULTS))
    if unknown:
        raise error(
            f"{what}.options {unknown} are not taken by arch 'dit'; known: {sorted(DIT_DEFAULTS)}"
        )
    opts = {**DIT_DEFAULTS, **cfg.options}
    p = opts["patch_size"]
    sides = [p, p] if _is_int(p) else list(p) if isinstance(p, (list, tuple)) else [None]
    low, high = DIT_LIMITS["patch_size"]
    if len(sides) != 2 or not all(_is_int(s) and low <= s <= high for s in sides):
        raise error(
            f"{what}.options.patch_size={p!r:.60} must be an integer or [rows, cols] in "
            f"[{low}, {high}]"
        )
    for key, (low, high) in DIT_LIMITS.items():
        if key == "patch_size":
            continue
        v, real = opts[key], key in _REAL
        ok = _is_int(v) or (real and isinstance(v, float))
        if not ok or not low <= v <= high:
            kind = "a number" if real else "an integer"
            raise error(f"{what}.options.{key}={v!r:.60} must be {kind} in [{low}, {high}]")
    hidden, heads = opts["hidden_size"], opts["num_heads"]
    if hidden % 2 or hidden % heads:
        raise error(
            f"{what}.options.hidden_size={hidden} must be even and divisible by "
            f"options.num_heads={heads}"
        )
    if int(hidden * opts["mlp_ratio"]) < 1:
        raise error(f"{what}.options.mlp_ratio={opts['mlp_ratio']} leaves the MLP no hidden unit")
    if opts["pos_embed"] == "rope" and hidden % (4 * heads):
        raise error(
            f"{what}.options.pos_embed='rope' needs a head size (hidden_size / num_heads = "
            f"{hidden // heads}) divisible by 4"
        )
    for key, choices in DIT_CHOICES.items():
        if opts[key] not in choices:
            raise error(f"{what}.options.{key}={opts[key]!r:.60} must be one of {list(choices)}")
    for key in ("attn_kernel", "conv_head_kernel"):
        if opts[key] % 2 == 0:
            raise error(f"{what}.options.{key}={opts[key]} must be odd (centred windows)")
    if opts["rope_theta"] != DIT_DEFAULTS["rope_theta"] and opts["pos_embed"] != "rope":
        raise error(f"{what}.options.rope_theta={opts['rope_theta']} needs options.pos_embed: rope")
    if not isinstance(opts["vector_from_inputs"], bool):
        raise error(f"{what}.options.vector_from_inputs must be true or false")
    if opts["vector_from_inputs"] and not opts["condition_dim"]:
        raise error(f"{what}.options.vector_from_inputs needs options.condition_dim > 0")
    if cfg.lead_time_channels:
        raise error(
            f"{what}.lead_time_channels={cfg.lead_time_channels}: arch 'dit' takes no lead time; set 0"
        )


def dit_check_shape(cfg: NetworkConfig, shape: tuple[int, int], what: str) -> None:
    """Refuse a ``shape`` (y, x) the patches do not tile, naming the nearest smaller one."""
    ph, pw = dit_options(cfg)["patch_size"]
    if shape[0] % ph or shape[1] % pw:
        fit = (shape[0] // ph * ph, shape[1] // pw * pw)
        raise ConfigError(
            f"{what} {shape[0]}x{shape[1]} (y, x) is not a multiple of the DiT patch_size "
            f"{ph}x{pw}: crop it to {fit[0]}x{fit[1]} or choose a patch_size that divides it"
        )
