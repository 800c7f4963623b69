"""PhysicsNeMo 2.2.2 ``DiT`` weights and arguments, mapped onto :class:`corrdiff_xr.nn.DiT`.

The layout it maps is PhysicsNeMo's default ``DiT``: ``patch_embed_2d`` tokenizer (learnable
or no positional embedding), ``dit`` conditioning embedder with no vector condition
(``condition_dim=None``), ``timm`` attention (optional ``qk_norm_type`` ``"RMSNorm"`` /
``"LayerNorm"`` with affine weights) or ``natten2d`` / ``natten2d_rope`` attention
(``attn_kernel``, no QK-norm, ``rope_theta`` 10000: ours is ``attention: neighborhood``, the
latter with ``pos_embed: rope``), ``proj_reshape_2d`` detokenizer and torch layer norms.
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
from corrdiff_xr.nn.dit import dit_options

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
]
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
                "(patch_embed_2d, dit embedder, timm or natten2d attention, proj_reshape_2d)"
            )
    return out


def physicsnemo_dit_kwargs(
    cfg: NetworkConfig, *, in_channels: int, out_channels: int, img_shape: tuple[int, int]
) -> dict[str, Any]:
    """PhysicsNeMo ``DiT(**kwargs)`` arguments for the same network as ``cfg``."""
    opts = dit_options(cfg)
    block_kwargs: dict[str, Any] = {"mlp_drop_rate": cfg.dropout}
    extra: dict[str, Any] = {}
    rope = opts["pos_embed"] == "rope"
    if opts["attention"] == "neighborhood":
        if opts["qk_norm"] != "none":
            raise DiTImportError(
                "PhysicsNeMo's natten2d attention has no QK-norm of ours; set qk_norm: none"
            )
        extra = {
            "attention_backend": "natten2d_rope" if rope else "natten2d",
            "attn_kwargs": {"attn_kernel": opts["attn_kernel"]},
        }
    elif rope:
        raise DiTImportError("PhysicsNeMo's DiT has rotary embeddings only with natten2d_rope")
    elif opts["qk_norm"] != "none":
        block_kwargs["qk_norm_type"] = _QK_NORM[opts["qk_norm"]]
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


_DEFAULT_ARGS = {
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


def dit_config_from_physicsnemo(args: Mapping[str, Any]) -> tuple[NetworkConfig, dict[str, Any]]:
    """Our :class:`NetworkConfig` (``arch="dit"``) and ``{in_channels, out_channels,
    img_shape}`` for PhysicsNeMo ``DiT`` constructor ``args``; arguments outside the supported
    layout raise :class:`DiTImportError` naming them."""
    natten = args.get("attention_backend") in ("natten2d", "natten2d_rope")
    rope = args.get("attention_backend") == "natten2d_rope"
    attn = dict(args.get("attn_kwargs") or {}) if natten else {}
    kernel = attn.pop("attn_kernel", 3)
    if rope and attn.get("rope_theta", 10000.0) == 10000.0:
        attn.pop("rope_theta", None)
    if attn:
        raise DiTImportError(f"PhysicsNeMo DiT attn_kwargs {sorted(attn)} are not supported")
    for key, default in _DEFAULT_ARGS.items():
        if natten and key in ("attention_backend", "attn_kwargs"):
            continue
        value = args.get(key, default)
        if value != default and not (key == "condition_dim" and not value):
            raise DiTImportError(
                f"PhysicsNeMo DiT argument {key}={args[key]!r:.80} is not supported"
            )
    block = dict(args.get("block_kwargs") or {})
    qk = block.pop("qk_norm_type", None)
    dropout = float(block.pop("mlp_drop_rate", 0.0))
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
        "mlp_ratio": float(args.get("mlp_ratio", 4.0)),
        "qk_norm": {v: k for k, v in _QK_NORM.items()}[qk],
        "pos_embed": "rope" if rope else "learnable" if pos == "learnable" else "none",
        **({"attention": "neighborhood", "attn_kernel": kernel} if natten else {}),
    }
    cfg = NetworkConfig(arch="dit", options=options, dropout=dropout)
    shape = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    sizes = {
        "in_channels": args["in_channels"],
        "out_channels": args.get("out_channels") or args["in_channels"],
        "img_shape": shape,
    }
    return cfg, sizes
