"""PhysicsNeMo 2.2.2 ``DiT`` weights and arguments, mapped onto :class:`corrdiff_xr.nn.DiT`.

The layout it maps is PhysicsNeMo's default ``DiT``: ``patch_embed_2d`` tokenizer (learnable
or no positional embedding), ``dit`` conditioning embedder with or without a vector condition
(``condition_dim``: ours ``options.condition_dim``), ``timm`` attention (optional ``qk_norm_type`` ``"RMSNorm"`` /
``"LayerNorm"`` with affine weights) or ``natten2d`` / ``natten2d_rope`` attention
(``attn_kernel``; ``qk_norm`` ours ``qk_norm: layernorm_no_affine``; ``rope_theta`` ours
``options.rope_theta``: ours is ``attention: neighborhood``, the latter with ``pos_embed:
rope``), ``proj_reshape_2d`` or ``proj_reshape_2d_conv`` detokenizer (``detokenizer_kwargs``
``conv_layers`` / ``conv_hidden`` / ``conv_kernel``, defaults 2 / 64 / 3: ours
``options.conv_head_*``) and torch or apex layer norms (the same numbers). Arguments that only initialise or place work
(``dit_initialization``, ``force_tokenization_fp32``) are accepted; any other name is refused.
Image conditions are concatenated to ``x`` in front of it (latent first), as
``ConcatConditionWrapper`` does, so its ``in_channels`` is ours. A ``.mdlus`` import reads the
arguments with :func:`dit_config_from_physicsnemo` and the weights with
:func:`map_physicsnemo_dit_state_dict`; :func:`physicsnemo_dit_kwargs` goes the other way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from corrdiff_xr.config import NetworkConfig
from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.nn.dit import DIT_DEFAULTS, dit_options
from corrdiff_xr.nn.dit_options import DiTOptions

__all__ = [
    "dit_config_from_physicsnemo",
    "map_physicsnemo_dit_state_dict",
    "physicsnemo_dit_kwargs",
]

_QK_NORM = {"none": None, "rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}

#: PhysicsNeMo key pattern -> ours (``\1`` the block index); the MLP's second linear is
#: ``layers.2``, or ``layers.3`` when a dropout module sits between
_KEYS = [
    (r"tokenizer\.x_embedder\.proj\.(weight|bias)", r"patch_embed.\1"),
    (r"tokenizer\.pos_embed", "pos_embed"),
    (r"conditioning_embedder\.t_embedder\.mlp\.([02])\.(weight|bias)", r"noise_embed.mlp.\1.\2"),
    (r"conditioning_embedder\.cond_embedder\.weight", "condition_embed.weight"),
    (
        r"blocks\.(\d+)\.attention\.attn_op\.(qkv|proj|q_norm|k_norm)\.(weight|bias)",
        r"blocks.\1.attn.\2.\3",
    ),
    (r"blocks\.(\d+)\.attention\.(qkv|proj)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),  # natten
    (r"blocks\.(\d+)\.linear\.layers\.0\.(weight|bias)", r"blocks.\1.fc1.\2"),
    (r"blocks\.(\d+)\.linear\.layers\.[23]\.(weight|bias)", r"blocks.\1.fc2.\2"),
    (r"blocks\.(\d+)\.adaptive_modulation\.1\.(weight|bias)", r"blocks.\1.modulation.\2"),
    (r"detokenizer\.proj_layer\.adaptive_modulation\.1\.(weight|bias)", r"final.modulation.\1"),
    (r"detokenizer\.proj_layer\.output_projection\.(weight|bias)", r"final.linear.\1"),
    # proj_reshape_2d_conv: the same projection under ``proj.``, then the convolution head
    (
        r"detokenizer\.proj\.proj_layer\.adaptive_modulation\.1\.(weight|bias)",
        r"final.modulation.\1",
    ),
    (r"detokenizer\.proj\.proj_layer\.output_projection\.(weight|bias)", r"final.linear.\1"),
    (r"detokenizer\.conv_head\.(\d+)\.(weight|bias)", r"conv_head.\1.\2"),
]
#: ``proj_reshape_2d_conv``'s ``detokenizer_kwargs`` -> our option, with PhysicsNeMo's default
_CONV_HEAD = {
    "conv_layers": ("conv_head_layers", 2),
    "conv_hidden": ("conv_head_hidden", 64),
    "conv_kernel": ("conv_head_kernel", 3),
}
#: recomputed from the hidden size, so not taken from the file
_DROPPED = ("conditioning_embedder.t_embedder.freqs",)


class DiTImportError(CorrDiffError, ValueError):
    """A PhysicsNeMo DiT state dict or argument set this importer does not map."""


def map_physicsnemo_dit_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, prefix: str = "", target_prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Our keys for the entries of ``state_dict`` under ``prefix`` (e.g. ``"model."``).

    Returns a new dict (tensors shared, not copied) with ``target_prefix`` in front of each
    key; any key under ``prefix`` that is not part of the supported layout raises
    :class:`DiTImportError` naming it.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name in _DROPPED:
            continue
        for pattern, repl in _KEYS:
            if re.fullmatch(pattern, name):
                out[target_prefix + re.sub(pattern, repl, name)] = value
                break
        else:
            raise DiTImportError(
                f"PhysicsNeMo DiT weight {key!r} is not part of the layout corrdiff_xr imports "
                "(patch_embed_2d, dit embedder, timm or natten2d attention, proj_reshape_2d "
                "with or without the conv head)"
            )
    return out


def _attention_kwargs(opts: DiTOptions, block_kwargs: dict[str, Any]) -> dict[str, Any]:
    """PhysicsNeMo's ``attention_backend`` / ``attn_kwargs`` for our attention options (the
    timm QK-norm goes into ``block_kwargs``)."""
    rope, qk = opts["pos_embed"] == "rope", opts["qk_norm"]
    if opts["attention"] == "neighborhood":
        if qk not in ("none", "layernorm_no_affine"):
            raise DiTImportError(
                f"PhysicsNeMo's natten2d attention has no qk_norm {qk!r}; its QK-norm is ours "
                "qk_norm: layernorm_no_affine (or set none)"
            )
        attn: dict[str, Any] = {"attn_kernel": opts["attn_kernel"]}
        if qk != "none":
            attn["qk_norm"] = True
        if rope and opts["rope_theta"] != DIT_DEFAULTS["rope_theta"]:
            attn["rope_theta"] = float(opts["rope_theta"])
        return {"attention_backend": "natten2d_rope" if rope else "natten2d", "attn_kwargs": attn}
    if rope:
        raise DiTImportError("PhysicsNeMo's DiT has rotary embeddings only with natten2d_rope")
    if qk == "layernorm_no_affine":
        raise DiTImportError(
            "qk_norm: layernorm_no_affine is PhysicsNeMo's natten2d QK-norm; its timm attention "
            "has none with eps 1e-6: use attention: neighborhood, or qk_norm: layernorm"
        )
    if qk != "none":
        block_kwargs["qk_norm_type"] = _QK_NORM[qk]
    return {}


def physicsnemo_dit_kwargs(
    cfg: NetworkConfig, *, in_channels: int, out_channels: int, img_shape: tuple[int, int]
) -> dict[str, Any]:
    """PhysicsNeMo ``DiT(**kwargs)`` arguments for the same network as ``cfg``."""
    opts = dit_options(cfg)
    if opts["vector_from_inputs"] or opts["flow_time_scale"]:
        raise DiTImportError(
            "options vector_from_inputs / flow_time_scale adapt a network to corrdiff_xr's "
            "calling convention; PhysicsNeMo's DiT has no such argument"
        )
    block_kwargs: dict[str, Any] = {"mlp_drop_rate": cfg.dropout}
    extra = _attention_kwargs(opts, block_kwargs)
    if opts["condition_dim"]:
        extra["condition_dim"] = opts["condition_dim"]
    if opts["conv_head_layers"]:
        extra["detokenizer"] = "proj_reshape_2d_conv"
        by_name: Mapping[str, object] = opts
        extra["detokenizer_kwargs"] = {
            theirs: by_name[ours] for theirs, (ours, _) in _CONV_HEAD.items()
        }
    rope = opts["pos_embed"] == "rope"
    return {
        **extra,
        "input_size": tuple(img_shape),
        "in_channels": in_channels,
        "out_channels": out_channels,
        "patch_size": opts["patch_size"],
        "hidden_size": opts["hidden_size"],
        "depth": opts["depth"],
        "num_heads": opts["num_heads"],
        "mlp_ratio": opts["mlp_ratio"],
        "tokenizer_kwargs": {"pos_embed": "none" if rope else opts["pos_embed"]},
        "block_kwargs": block_kwargs,
    }


#: constructor arguments with no effect on an fp32 forward of the mapped layout
_NEUTRAL_ARGS = {
    "layernorm_backend": ("torch", "apex"),
    "dit_initialization": (True, False, 1, 0),
    "force_tokenization_fp32": (True, False),
}
_SIZE_ARGS = (
    "input_size", "in_channels", "out_channels", "patch_size", "hidden_size", "depth",
    "num_heads", "mlp_ratio", "tokenizer_kwargs", "block_kwargs",
)  # fmt: skip
_DEFAULT_ARGS: dict[str, object] = {
    "tokenizer": "patch_embed_2d",
    "detokenizer": "proj_reshape_2d",
    "attention_backend": "timm",
    "conditioning_embedder": "dit",
    "condition_dim": None,
    "conditioning_embedder_kwargs": {},
    "detokenizer_kwargs": {},
    "attn_kwargs": {},
    "drop_path_rates": None,
    "use_nan_mask_tokens": False,
}


def _real(value: Any, key: str) -> float:
    """``value`` as a float, or :class:`DiTImportError` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DiTImportError(f"PhysicsNeMo DiT argument {key}={value!r:.80} must be a number")
    return float(value)


def _natten_options(args: Mapping[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    """Our options for ``natten2d`` / ``natten2d_rope`` attention: ``attn_kwargs`` (kernel,
    QK-norm, rotary base) and a ``qk_norm`` flag in ``block`` (removed from it)."""
    rope = args["attention_backend"] == "natten2d_rope"
    attn = dict(args.get("attn_kwargs") or {})
    options: dict[str, Any] = {
        "attention": "neighborhood",
        "attn_kernel": attn.pop("attn_kernel", 3),
    }
    if rope:
        options["pos_embed"] = "rope"
        theta = _real(attn.pop("rope_theta", 10000.0), "attn_kwargs.rope_theta")
        if theta != DIT_DEFAULTS["rope_theta"]:  # left out at the default: configs unchanged
            options["rope_theta"] = theta
    if attn.keys() - {"qk_norm"}:
        raise DiTImportError(
            f"PhysicsNeMo DiT attn_kwargs {sorted(attn.keys() - {'qk_norm'})} are not supported"
        )
    flags = [d.pop("qk_norm") for d in (attn, block) if "qk_norm" in d]
    if any(not isinstance(f, bool) for f in flags):
        raise DiTImportError(f"PhysicsNeMo DiT qk_norm={flags[0]!r:.80} must be true or false")
    if any(flags):
        options["qk_norm"] = "layernorm_no_affine"
    return options


def _conv_head_options(args: Mapping[str, Any]) -> dict[str, Any]:
    """Our options for ``detokenizer="proj_reshape_2d_conv"``'s ``detokenizer_kwargs``."""
    given = dict(args.get("detokenizer_kwargs") or {})
    unknown = sorted(set(given) - set(_CONV_HEAD))
    if unknown:
        raise DiTImportError(f"PhysicsNeMo DiT detokenizer_kwargs {unknown} are not supported")
    options = {ours: given.get(theirs, default) for theirs, (ours, default) in _CONV_HEAD.items()}
    if options["conv_head_layers"] == 0:  # PhysicsNeMo refuses it too
        raise DiTImportError("PhysicsNeMo DiT detokenizer_kwargs.conv_layers=0 must be >= 1")
    return options


def dit_config_from_physicsnemo(args: Mapping[str, Any]) -> tuple[NetworkConfig, dict[str, Any]]:
    """Our :class:`NetworkConfig` (``arch="dit"``) and ``{in_channels, out_channels,
    img_shape}`` for PhysicsNeMo ``DiT`` constructor ``args``; arguments outside the supported
    layout raise :class:`DiTImportError` naming them."""
    unknown = sorted(set(args) - set(_DEFAULT_ARGS) - set(_NEUTRAL_ARGS) - set(_SIZE_ARGS))
    if unknown:
        raise DiTImportError(f"PhysicsNeMo DiT arguments {unknown} are not supported")
    for key, allowed in _NEUTRAL_ARGS.items():
        if key in args and args[key] not in allowed:
            raise DiTImportError(
                f"PhysicsNeMo DiT argument {key}={args[key]!r:.80} is not supported"
            )
    for key in ("input_size", "in_channels"):
        if key not in args:
            raise DiTImportError(f"PhysicsNeMo DiT arguments lack {key!r}")
    natten = args.get("attention_backend") in ("natten2d", "natten2d_rope")
    conv = args.get("detokenizer") == "proj_reshape_2d_conv"
    skipped = {
        *(("attention_backend", "attn_kwargs") if natten else ()),
        *(("detokenizer", "detokenizer_kwargs") if conv else ()),
        "condition_dim",
    }
    for key, default in _DEFAULT_ARGS.items():
        if key not in skipped and args.get(key, default) != default:
            raise DiTImportError(
                f"PhysicsNeMo DiT argument {key}={args[key]!r:.80} is not supported"
            )
    block = dict(args.get("block_kwargs") or {})
    options = _natten_options(args, block) if natten else {}
    qk = block.pop("qk_norm_type", None)
    dropout = _real(block.pop("mlp_drop_rate", 0.0), "block_kwargs.mlp_drop_rate")
    if block or qk not in _QK_NORM.values() or (natten and qk):
        raise DiTImportError(
            f"PhysicsNeMo DiT block_kwargs {args.get('block_kwargs')!r:.80} are not supported"
        )
    token = dict(args.get("tokenizer_kwargs") or {})
    pos = token.pop("pos_embed", "learnable")
    if token:
        raise DiTImportError(f"PhysicsNeMo DiT tokenizer_kwargs {sorted(token)} are not supported")
    size = args["input_size"]
    patch = args.get("patch_size", (8, 8))
    options = {
        "patch_size": list(patch) if isinstance(patch, (list, tuple)) else [patch, patch],
        "hidden_size": args.get("hidden_size", 384),
        "depth": args.get("depth", 12),
        "num_heads": args.get("num_heads", 8),
        "mlp_ratio": _real(args.get("mlp_ratio", 4.0), "mlp_ratio"),
        "qk_norm": {v: k for k, v in _QK_NORM.items()}[qk],
        "pos_embed": "learnable" if pos == "learnable" else "none",
        "condition_dim": args.get("condition_dim") or 0,
        **options,
        **(_conv_head_options(args) if conv else {}),
    }
    cfg = NetworkConfig(arch="dit", options=options, dropout=dropout)
    shape = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    sizes = {
        "in_channels": args["in_channels"],
        "out_channels": args.get("out_channels") or args["in_channels"],
        "img_shape": shape,
    }
    return cfg, sizes
