"""The DiT backbone (``network.arch: dit``): a diffusion transformer in plain PyTorch.

Peebles & Xie (2023), *Scalable diffusion models with transformers*, laid out with the
numerics of PhysicsNeMo 2.2.2's ``DiT`` (default ``patch_embed_2d`` tokenizer, ``dit``
conditioning embedder, ``timm`` attention, ``proj_reshape_2d`` detokenizer, or its variants
``natten2d``, ``natten2d_rope`` and ``proj_reshape_2d_conv``), so its weights
map across one to one (:mod:`corrdiff_xr.model.dit_import`):

1. a strided convolution cuts the image into ``patch_size`` patches, one token each, plus a
   learnable positional embedding per token of the global grid (``pos_embed: learnable``), or
   none, or 2-D axial rotary embeddings of queries and keys in every attention
   (``pos_embed: rope``, base ``rope_theta``, as PhysicsNeMo's ``natten2d_rope``);
2. the noise label goes through sinusoidal features (cos then sin) and a two-layer MLP, plus,
   with ``condition_dim``, a bias-free linear map of a vector condition (e.g. day of year);
3. ``depth`` blocks of pre-norm self-attention and a GELU MLP, each modulated by the noise
   embedding (adaLN-Zero's shift, scale and gate). Attention is global
   (:func:`torch.nn.functional.scaled_dot_product_attention`) or, with ``attention:
   neighborhood``, over ``attn_kernel`` x ``attn_kernel`` token windows as PhysicsNeMo's
   ``natten2d`` backend (NATTEN on CUDA when installed, else :func:`neighborhood_attention`);
   QK-norm is optional;
4. a final modulated layer norm and a linear map back to ``patch_size`` pixels per token;
   with ``conv_head_layers`` > 0 the image then gets a residual convolution head
   (``img + head(img)``, PhysicsNeMo's ``proj_reshape_2d_conv``) that lets neighbouring
   patches exchange information across their seams.

Image conditions reach it as they reach SongUNet: concatenated to ``x`` along channels, latent
first (PhysicsNeMo's ``ConcatConditionWrapper`` does the same in front of its ``DiT``). For a
patch of the grid (``offsets``), each token takes the positional embedding of the global token
its top-left pixel falls in (positions mirrored at the edges like the data), which is exact
for offsets that are multiples of ``patch_size``; a convolution head pads a patch's edges with
zeros as it pads the grid's, so near its edges a patch differs from the whole grid. Of :class:`~corrdiff_xr.config.NetworkConfig`'s
fields the DiT honours ``dropout`` (in each MLP, after the activation and the output, as
PhysicsNeMo's ``mlp_drop_rate``), ``checkpoint_activations`` (per block) and ``compile``, and
refuses ``lead_time_channels``; SongUNet's other fields are not used. Its own settings are
``network.options`` (:mod:`corrdiff_xr.nn.dit_options`: :data:`DIT_DEFAULTS`, checked by
:func:`dit_check_config`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from corrdiff_xr.config import ConfigError, NetworkConfig
from corrdiff_xr.nn.dit_options import (
    DIT_DEFAULTS,
    MAX_TOKENS,
    dit_check_config,
    dit_check_shape,
    dit_options,
)
from corrdiff_xr.patching import patch_positions

__all__ = [
    "DIT_DEFAULTS",
    "DiT",
    "DiTBlock",
    "axial_rope",
    "dit_check_config",
    "dit_check_shape",
    "dit_options",
    "neighborhood_attention",
]


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: a per-sample affine map of normalised tokens (N, L, D) by (N, D) vectors."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of the noise label (cos then sin, periods up to 10000) and an MLP."""

    freqs: torch.Tensor  # a buffer

    def __init__(self, hidden_size: int, max_positions: float = 10000.0):
        super().__init__()
        half = hidden_size // 2
        freqs = (1 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, 2 * hidden_size),
            nn.SiLU(),
            nn.Linear(2 * hidden_size, hidden_size),
        )

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, hidden_size) embedding of (N,) labels."""
        angles = torch.outer(labels.to(self.freqs.dtype), self.freqs)
        dtype = cast(nn.Linear, self.mlp[0]).weight.dtype
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1).to(dtype))


def _window_index(n: int, kernel: int, device: torch.device) -> torch.Tensor:
    """(n, k) positions each of ``n`` queries sees on an axis: ``k = min(kernel, n)``
    neighbours centred on it, the window shifted inwards at the edges (NATTEN's rule)."""
    k = min(kernel, n)
    start = (torch.arange(n, device=device) - kernel // 2).clamp(0, n - k)
    return start[:, None] + torch.arange(k, device=device)


def neighborhood_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int], kernel: int
) -> torch.Tensor:
    """2-D neighbourhood attention in plain PyTorch: each token of the ``grid`` (h, w) attends
    to the ``kernel`` x ``kernel`` tokens around it (NATTEN's windows, dilation 1).

    ``q``, ``k``, ``v`` are (N, heads, h * w, head_dim), row-major tokens. Keys and values are
    gathered per window, so memory grows with ``h * w * kernel**2``, not ``(h * w)**2``; a
    window covering the grid gives global attention's numbers.
    """
    h, w = grid
    rows, cols = _window_index(h, kernel, q.device), _window_index(w, kernel, q.device)
    index = (rows[:, None, :, None] * w + cols[None, :, None, :]).reshape(h * w, -1)
    keys, values = k[:, :, index], v[:, :, index]  # (N, heads, L, window, head_dim)
    scores = torch.einsum("nhld,nhlkd->nhlk", q, keys) * q.shape[-1] ** -0.5
    return torch.einsum("nhlk,nhlkd->nhld", scores.softmax(dim=-1), values)


def axial_rope(grid: tuple[int, int], head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(2, h * w, head_dim) cos and sin of 2-D axial rotary embeddings for row-major tokens:
    channel pairs (2i, 2i + 1) of the first half turn with the row, of the second half with
    the column, at frequencies ``theta ** (-2i / (head_dim / 2))`` (PhysicsNeMo's tables)."""
    half = head_dim // 2
    freqs = theta ** (-torch.arange(0, half, 2, dtype=torch.float32) / half)
    rows = (torch.arange(grid[0], dtype=torch.float32)[:, None] * freqs).repeat_interleave(2, -1)
    cols = (torch.arange(grid[1], dtype=torch.float32)[:, None] * freqs).repeat_interleave(2, -1)
    angles = torch.cat(
        [rows[:, None].expand(-1, grid[1], -1), cols[None].expand(grid[0], -1, -1)], dim=-1
    )
    return torch.stack([angles.cos(), angles.sin()]).reshape(2, grid[0] * grid[1], head_dim)


def _rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """``x`` (..., L, head_dim) turned by the tables ``rope`` (2, L, head_dim), in fp32."""
    y = x.float()
    turned = torch.stack([-y[..., 1::2], y[..., 0::2]], dim=-1).flatten(-2)
    return (y * rope[0] + turned * rope[1]).to(x.dtype)


@functools.cache
def _natten_na2d() -> Callable[..., torch.Tensor] | None:
    """NATTEN's fused ``na2d`` when the package is installed, else None."""
    try:
        from natten.functional import na2d
    except ImportError:
        return None
    return na2d


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens, global or in ``kernel`` x ``kernel`` token
    neighbourhoods (NATTEN on CUDA when installed, else :func:`neighborhood_attention`),
    with optional per-head QK-norm."""

    def __init__(
        self, hidden_size: int, num_heads: int, qk_norm: str = "none", kernel: int | None = None
    ):
        super().__init__()
        self.num_heads, self.kernel = num_heads, kernel
        head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        norms: dict[str, Callable[[], nn.Module]] = {
            "none": nn.Identity,
            "rmsnorm": lambda: nn.RMSNorm(head_dim, eps=1e-6),
            "layernorm": lambda: nn.LayerNorm(head_dim),  # eps 1e-5, as timm's
            # PhysicsNeMo natten2d's qk_norm=True
            "layernorm_no_affine": lambda: nn.LayerNorm(
                head_dim, elementwise_affine=False, eps=1e-6
            ),
        }
        self.q_norm, self.k_norm = norms[qk_norm](), norms[qk_norm]()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int], rope: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attended tokens (N, L, D) of tokens ``x`` (N, L, D) on a ``grid`` (h, w), queries
        and keys turned by the rotary tables ``rope`` (:func:`axial_rope`) if given."""
        n, length, d = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = _rotate(q, rope), _rotate(k, rope)
        if self.kernel is None:
            out = F.scaled_dot_product_attention(q, k, v)
        elif q.is_cuda and (na2d := _natten_na2d()) is not None and self.kernel <= min(grid):
            h, w = grid
            q, k, v = (t.transpose(1, 2).reshape(n, h, w, self.num_heads, -1) for t in (q, k, v))
            out = na2d(q, k, v, kernel_size=self.kernel)
            out = out.reshape(n, length, self.num_heads, -1).transpose(1, 2)
        else:
            out = neighborhood_attention(q, k, v, grid, self.kernel)
        return self.proj(out.transpose(1, 2).reshape(n, length, d))


class DiTBlock(nn.Module):
    """Attention then MLP, each pre-normed, modulated and gated by the condition (adaLN-Zero)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qk_norm: str = "none",
        kernel: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, qk_norm, kernel)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(hidden_size, int(hidden_size * mlp_ratio))
        self.fc2 = nn.Linear(int(hidden_size * mlp_ratio), hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.modulation = nn.Linear(hidden_size, 6 * hidden_size)

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        grid: tuple[int, int],
        rope: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens (N, L, D) on a ``grid`` (h, w) updated under the condition embedding ``c``
        (N, D), with rotary tables ``rope`` if given."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(c)).chunk(6, dim=1)
        attn = self.attn(_modulate(self.norm1(x), shift1, scale1), grid, rope)
        x = x + gate1.unsqueeze(1) * attn
        h = F.gelu(self.fc1(_modulate(self.norm2(x), shift2, scale2)), approximate="tanh")
        return x + gate2.unsqueeze(1) * self.dropout(self.fc2(self.dropout(h)))

    def zero_init(self) -> None:
        """adaLN-Zero: start with the modulation (hence the gates) at zero, the block the identity."""
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)


class FinalLayer(nn.Module):
    """Modulated layer norm and the linear map from a token to its patch's pixels."""

    def __init__(self, hidden_size: int, out_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(hidden_size, 2 * hidden_size)
        self.linear = nn.Linear(hidden_size, out_features)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(c)).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


def conv_head(channels: int, layers: int, hidden: int, kernel: int) -> nn.Sequential:
    """``layers`` same-padded ``kernel`` convolutions from ``channels`` maps back to
    ``channels`` with ``hidden`` maps and exact GELU between (PhysicsNeMo's ``ConvDetokenizer``
    head; its layout, so the weights' indices match)."""
    modules: list[nn.Module] = []
    for i in range(layers):
        last = i == layers - 1
        modules.append(
            nn.Conv2d(
                channels if i == 0 else hidden,
                channels if last else hidden,
                kernel,
                padding=kernel // 2,
            )
        )
        if not last:
            modules.append(nn.GELU())
    return nn.Sequential(*modules)


class DiT(nn.Module):
    """A diffusion transformer with SongUNet's call signature (see the module docstring).

    Parameters
    ----------
    cfg : NetworkConfig
        ``arch="dit"``; ``options`` as in :data:`DIT_DEFAULTS`, checked by
        :func:`dit_check_config`.
    in_channels, out_channels : int
        Data channels in (latent then condition) and out.
    img_shape : tuple of int
        The global grid (H, W), a multiple of ``patch_size``: the positional embedding has
        one token per patch of it.
    """

    def __init__(
        self,
        cfg: NetworkConfig,
        *,
        in_channels: int,
        out_channels: int,
        img_shape: tuple[int, int],
    ):
        super().__init__()
        dit_check_config(cfg, "network", ConfigError)
        dit_check_shape(cfg, img_shape, "img_shape")
        opts = dit_options(cfg)
        self.config = cfg
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.img_shape = (int(img_shape[0]), int(img_shape[1]))
        self.patch_size = opts["patch_size"]
        hidden = opts["hidden_size"]
        self.tokens = (
            self.img_shape[0] // self.patch_size[0],
            self.img_shape[1] // self.patch_size[1],
        )
        if self.tokens[0] * self.tokens[1] > MAX_TOKENS:
            raise ConfigError(
                f"img_shape {self.img_shape} makes {self.tokens[0] * self.tokens[1]} DiT tokens; "
                f"at most {MAX_TOKENS}: choose a larger patch_size"
            )
        # with vector_from_inputs the last condition_dim channels are the vector, not pixels
        self.vector_inputs = opts["condition_dim"] if opts["vector_from_inputs"] else 0
        self.flow_time_scale = float(opts["flow_time_scale"])
        if self.vector_inputs >= self.in_channels:
            raise ConfigError(
                f"in_channels={in_channels} leaves no image channel besides the "
                f"{self.vector_inputs} vector ones (options.vector_from_inputs)"
            )
        pixels = self.in_channels - self.vector_inputs
        self.patch_embed = nn.Conv2d(pixels, hidden, self.patch_size, stride=self.patch_size)
        self.pos_embed = None
        self.rope_theta = float(opts["rope_theta"]) if opts["pos_embed"] == "rope" else None
        if opts["pos_embed"] == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.tokens[0] * self.tokens[1], hidden))
        self.noise_embed = NoiseEmbedding(hidden)
        # a vector condition (e.g. day of year) adds a bias-free linear map of it to the noise
        # embedding, as PhysicsNeMo's ``dit`` embedder with ``condition_dim``
        dim = opts["condition_dim"]
        self.condition_embed = nn.Linear(dim, hidden, bias=False) if dim else None
        self.blocks = nn.ModuleList(
            DiTBlock(
                hidden,
                opts["num_heads"],
                mlp_ratio=opts["mlp_ratio"],
                qk_norm=opts["qk_norm"],
                kernel=opts["attn_kernel"] if opts["attention"] == "neighborhood" else None,
                dropout=cfg.dropout,
            )
            for _ in range(opts["depth"])
        )
        self.final = FinalLayer(hidden, self.patch_size[0] * self.patch_size[1] * out_channels)
        self.conv_head = None
        if opts["conv_head_layers"]:
            self.conv_head = conv_head(
                self.out_channels,
                opts["conv_head_layers"],
                opts["conv_head_hidden"],
                opts["conv_head_kernel"],
            )
        self.reset_parameters()

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.weight.dtype

    def reset_parameters(self) -> None:
        """DiT's initialisation: Xavier-uniform linear maps and patch embedding, N(0, 0.02)
        positions, and zeros for every modulation and the output map (the net starts at 0);
        a convolution head gets PyTorch's default initialisation, its last layer zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.out_channels, -1))
        if self.patch_embed.bias is not None:  # always: built with a bias
            nn.init.zeros_(self.patch_embed.bias)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed, std=0.02)
        for block in self._blocks():
            block.zero_init()
        if self.condition_embed is not None:
            nn.init.zeros_(self.condition_embed.weight)
        for p in (*self.final.modulation.parameters(), *self.final.linear.parameters()):
            nn.init.zeros_(p)
        if self.conv_head is not None:
            for m in self.conv_head:
                if isinstance(m, nn.Conv2d):
                    m.reset_parameters()
            for p in self.conv_head[-1].parameters():
                nn.init.zeros_(p)

    def _blocks(self) -> list[DiTBlock]:
        return cast("list[DiTBlock]", list(self.blocks))

    def _positions(self, offsets: torch.Tensor | None, n: int, h: int, w: int) -> torch.Tensor:
        """Positional embedding (1 or N, L, D) of the tokens of an (h, w) image at ``offsets``."""
        pos_embed = self.pos_embed
        if pos_embed is None:
            raise ValueError("this DiT has no learnable positional embedding (pos_embed)")
        if offsets is None and (h, w) == self.img_shape:
            return pos_embed
        if offsets is None:
            offsets = torch.zeros(n, 2, dtype=torch.long, device=pos_embed.device)
        (ph, pw), tw = self.patch_size, self.tokens[1]
        rows, cols = patch_positions(offsets, (h, w), self.img_shape)
        rows, cols = rows[:, ::ph] // ph, cols[:, ::pw] // pw  # token of each top-left pixel
        index = (rows[:, :, None] * tw + cols[:, None, :]).reshape(offsets.shape[0], -1)
        return pos_embed[0][index]

    def _unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(N, L, ph * pw * C) tokens back to an (N, C, h, w) image."""
        (ph, pw), n = self.patch_size, x.shape[0]
        x = x.reshape(n, h // ph, w // pw, ph, pw, self.out_channels)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(n, self.out_channels, h, w)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        *,
        offsets: torch.Tensor | None = None,
        lead_time: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Network output (N, out_channels, h, w).

        Parameters
        ----------
        x : Tensor
            (N, in_channels, h, w) data channels, h and w multiples of ``patch_size``.
        noise_labels : Tensor
            (N,) or (1,) noise labels (``c_noise``; zeros for the regression net).
        offsets : Tensor, optional
            (N, 2) global (row, col) of each sample's top-left pixel; None = the full grid.
        lead_time : Tensor, optional
            Must be None: a DiT has no lead-time embedding.
        condition : Tensor, optional
            (N, condition_dim) vector condition (``options.condition_dim``); None leaves the
            embedding that of the noise label alone (as PhysicsNeMo's with no condition).
            With ``options.vector_from_inputs`` it comes from the last input channels.
        """
        if lead_time is not None:
            raise ValueError("arch 'dit' takes no lead time; train without data.lead_time")
        x = x.to(self.dtype)
        if self.vector_inputs:  # fields constant in space: their first pixel is the vector
            if condition is not None:
                raise ValueError("this DiT reads its vector condition from its inputs")
            condition, x = x[:, -self.vector_inputs :, 0, 0], x[:, : -self.vector_inputs]
        if self.flow_time_scale:  # ln(sigma) / 4 -> time_scale * sigma / (1 + sigma)
            noise_labels = self.flow_time_scale * torch.sigmoid(4 * noise_labels.float())
        n, _, h, w = x.shape
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise ValueError(f"DiT input {h}x{w} is not a multiple of patch_size {self.patch_size}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.pos_embed is not None:
            tokens = tokens + self._positions(offsets, n, h, w)
        c = self.noise_embed(noise_labels.reshape(-1))
        if c.shape[0] != n:
            c = c.expand(n, -1)
        if condition is not None:
            if self.condition_embed is None:
                raise ValueError("this DiT takes no vector condition (options.condition_dim is 0)")
            c = c + self.condition_embed(condition.to(c.dtype))
        grid = (h // self.patch_size[0], w // self.patch_size[1])
        rope = None
        if self.rope_theta is not None:  # relative positions: a patch needs no offset
            head_dim = tokens.shape[-1] // self._blocks()[0].attn.num_heads
            rope = axial_rope(grid, head_dim, self.rope_theta).to(tokens.device)
        for block in self.blocks:
            if self.config.checkpoint_activations and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, grid, rope, use_reentrant=False)
            else:
                tokens = block(tokens, c, grid, rope)
        out = self._unpatchify(self.final(tokens, c), h, w)
        return out if self.conv_head is None else out + self.conv_head(out)

    def extra_repr(self) -> str:
        return f"img_shape={self.img_shape}, patch_size={self.patch_size}, tokens={math.prod(self.tokens)}"
