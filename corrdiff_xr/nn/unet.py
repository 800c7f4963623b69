"""SongUNet (DDPM++) with grid positional and lead-time embeddings, as CorrDiff uses it.

One class covers PhysicsNeMo's ``SongUNet``, ``SongUNetPosEmbd`` and ``SongUNetPosLtEmbd``
(standard encoder/decoder): the data channels are concatenated with the positional
channels (and lead-time channels) sliced at each sample's global offset, then pass through an
encoder of ``len(channel_mult)`` levels (each after the first halves the resolution), a
bottleneck, and a mirrored decoder with skip connections. The noise level enters every block
through an embedding MLP (or a zero vector for ``embedding_type="zero"``, the regression net).

Attention levels are chosen from the *global* image height, ``img_shape[0] >> level``, as in
the reference, so a patch uses the same layers as the whole domain; global attention over
more than :data:`~corrdiff_xr.nn.attention.MAX_ATTENTION_TOKENS` pixels of the global grid is
left out, with a warning (:mod:`corrdiff_xr.nn.attention`). Inputs whose sides do not
divide by ``2 ** (levels - 1)`` are padded to that multiple and the output cropped back
(``NetworkConfig.padding``; see :mod:`corrdiff_xr.nn.padding`), or refused with ``"none"``.

Module names: ``enc["L{level}_conv" | "L{level}_down" | "L{level}_block{i}"]``,
``dec["L{level}_in0" | "L{level}_in1" | "L{level}_up" | "L{level}_block{i}" |
"L0_aux_norm" | "L0_aux_conv"]``; the reference spells the level prefix ``{res}x{res}_``.

``NetworkConfig.checkpoint_activations`` trades compute for memory in training: each U-Net
block keeps only its input for the backward pass and runs its forward again there
(``torch.utils.checkpoint``, non-reentrant; the random state is restored, so dropout draws
the same mask). Gradients are those of the plain path; evaluation and ``no_grad`` calls run
plainly, and the weights do not depend on the setting.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from corrdiff_xr.config import NetworkConfig
from corrdiff_xr.nn.attention import attention_fits
from corrdiff_xr.nn.embeddings import GridEmbedding, LeadTimeEmbedding, NoiseEmbedding
from corrdiff_xr.nn.layers import Conv2d, GroupNorm, Linear, UNetBlock
from corrdiff_xr.nn.padding import crop, pad_to_multiple

__all__ = ["RegressionUNet", "SongUNet"]


class SongUNet(nn.Module):
    """U-Net denoiser backbone ``F(x, noise_labels)`` on (N, C, h, w) images.

    Parameters
    ----------
    config : NetworkConfig
        Hyper-parameters (widths, depths, attention, embeddings).
    in_channels : int
        Data channels of ``x`` (without positional / lead-time channels, which are added here).
    out_channels : int
        Output channels.
    img_shape : tuple of int
        The global grid (H, W) that positional embeddings cover.
    """

    map_noise: NoiseEmbedding | None  # None for the regression net (no noise level)

    def __init__(
        self,
        config: NetworkConfig,
        *,
        in_channels: int,
        out_channels: int,
        img_shape: tuple[int, int],
    ):
        super().__init__()
        cfg = config
        self.config = cfg
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.img_shape = (int(img_shape[0]), int(img_shape[1]))
        self.levels = len(cfg.channel_mult)
        self.emb_channels = cfg.model_channels * cfg.channel_mult_emb
        # modules are created in the reference's order: the same seed gives the same
        # initial weights, and state-dict keys keep their order
        self._add_input_embeddings()
        self._add_noise_embedding()
        block = {
            "emb_channels": self.emb_channels,
            "dropout": cfg.dropout,
            "resample_filter": cfg.resample_filter,
            "eval_unbiased": cfg.eval_groupnorm_unbiased,
        }
        self.enc, skips = self._encoder(block)
        self.dec = self._decoder(block, skips)
        if cfg.channels_last:  # else every convolution converts its weight on every call
            # torch's stub of Module.to lacks its memory_format keyword
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def _add_input_embeddings(self) -> None:
        """Positional grid and lead-time embeddings, and the probability-channel scale."""
        cfg = self.config
        self.grid = GridEmbedding(
            self.img_shape, gridtype=cfg.gridtype, channels=cfg.N_grid_channels
        )
        self.lead_time = (
            LeadTimeEmbedding(
                self.img_shape,
                steps=cfg.lead_time_steps,
                channels=cfg.lead_time_channels,
            )
            if cfg.lead_time_channels
            else None
        )
        self.prob_channels = tuple(cfg.prob_channels)
        if self.prob_channels and self.lead_time is None:
            raise ValueError("prob_channels needs a lead-time model (lead_time_channels > 0)")
        self.scalar = (
            nn.Parameter(torch.ones(1, len(self.prob_channels), 1, 1))
            if self.prob_channels
            else None
        )
        self.total_in_channels = (
            self.in_channels
            + self.grid.channels
            + (cfg.lead_time_channels if self.lead_time else 0)
        )

    def _add_noise_embedding(self) -> None:
        """The noise-level MLP; none for ``embedding_type="zero"`` (the regression net)."""
        cfg = self.config
        if cfg.embedding_type == "positional":
            noise_ch = cfg.model_channels * cfg.channel_mult_noise
            self.map_noise = NoiseEmbedding(noise_ch)
            self.map_layer0 = Linear(noise_ch, self.emb_channels)
            self.map_layer1 = Linear(self.emb_channels, self.emb_channels)
        else:
            self.map_noise = None

    def _attends(self, level: int) -> bool:
        # chosen from the global height, so a patch uses the same layers as the whole domain
        if (self.img_shape[0] >> level) not in self.config.attn_resolutions:
            return False
        return attention_fits(self.img_shape, level, what=f"attention at level {level}")

    def _encoder(self, block: dict) -> tuple[nn.ModuleDict, list[int]]:
        """The encoder and the channel count of each output the decoder takes as a skip."""
        cfg = self.config
        mc = cfg.model_channels
        enc = nn.ModuleDict()
        cout = self.total_in_channels
        skips = []
        for level, mult in enumerate(cfg.channel_mult):
            if level == 0:
                enc[f"L{level}_conv"] = Conv2d(cout, mc, 3)
                cout = mc
            else:
                enc[f"L{level}_down"] = UNetBlock(cout, cout, down=True, **block)
            skips.append(cout)
            for i in range(cfg.num_blocks):
                cin, cout = cout, mc * mult
                enc[f"L{level}_block{i}"] = UNetBlock(
                    cin, cout, attention=self._attends(level), **block
                )
                skips.append(cout)
        return enc, skips

    def _decoder(self, block: dict, skips: list[int]) -> nn.ModuleDict:
        """Bottleneck, decoder levels (consuming ``skips`` from the end) and output head."""
        cfg = self.config
        mc = cfg.model_channels
        dec = nn.ModuleDict()
        skips = list(skips)
        cout = skips[-1]  # the encoder's last output
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            if level == self.levels - 1:
                attn = cfg.bottleneck_attention and attention_fits(
                    self.img_shape, level, what="bottleneck attention"
                )
                dec[f"L{level}_in0"] = UNetBlock(cout, cout, attention=attn, **block)
                dec[f"L{level}_in1"] = UNetBlock(cout, cout, **block)
            else:
                dec[f"L{level}_up"] = UNetBlock(cout, cout, up=True, **block)
            for i in range(cfg.num_blocks + 1):
                cin, cout = cout + skips.pop(), mc * mult
                attn = i == cfg.num_blocks and self._attends(level)
                dec[f"L{level}_block{i}"] = UNetBlock(cin, cout, attention=attn, **block)
        dec["L0_aux_norm"] = GroupNorm(
            cout, eps=1e-6, silu=True, eval_unbiased=cfg.eval_groupnorm_unbiased
        )
        dec["L0_aux_conv"] = Conv2d(cout, self.out_channels, 3, init_weight=1e-5)
        return dec

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the weights (inputs are cast to it)."""
        weight = cast(Conv2d, self.enc["L0_conv"]).weight
        assert weight is not None  # a 3x3 convolution
        return weight.dtype

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SongUNet expects x of shape (N, {self.in_channels}, h, w), got {tuple(x.shape)}"
            )
        m = 2 ** (self.levels - 1)
        if self.config.padding == "none" and (x.shape[2] % m or x.shape[3] % m):
            raise ValueError(
                f"SongUNet with {self.levels} levels needs h and w divisible by {m}, got {tuple(x.shape[2:])}"
            )

    def _block(self, block: nn.Module, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """One U-Net block; with ``checkpoint_activations``, recomputed in the backward pass
        (only when training with gradients: elsewhere nothing is saved to spare)."""
        if self.config.checkpoint_activations and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, emb, use_reentrant=False)
        return block(x, emb)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        *,
        offsets: torch.Tensor | None = None,
        lead_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Network output (N, out_channels, h, w).

        Parameters
        ----------
        x : Tensor
            (N, in_channels, h, w) data channels.
        noise_labels : Tensor
            (N,) or (1,) noise labels (``c_noise``); ignored when ``embedding_type="zero"``.
        offsets : Tensor, optional
            (N, 2) global (row, col) of each sample's top-left pixel; None = the full grid.
        lead_time : Tensor, optional
            (N,) integer lead-time labels, required by lead-time models.
        """
        self._check(x)
        x = x.to(self.dtype)
        n, _, h, w = x.shape
        extra = []
        pos = self.grid(offsets, (h, w), n, dtype=x.dtype, device=x.device)
        if pos is not None:
            extra.append(pos)
        if self.lead_time is not None:
            if lead_time is None:
                raise ValueError("this network has a lead-time embedding: pass lead_time labels")
            extra.append(self.lead_time(lead_time, offsets, (h, w), dtype=x.dtype))
        if extra:
            x = torch.cat([x, *extra], dim=1)
        # after the embeddings, so they describe the real pixels; cropped back below
        x = pad_to_multiple(x, 2 ** (self.levels - 1), self.config.padding)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        if self.map_noise is not None:
            emb = self.map_noise(noise_labels.reshape(-1)).to(x.dtype)
            if emb.shape[0] != n:
                emb = emb.expand(n, -1)
            emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        else:
            emb = x.new_zeros(n, self.emb_channels)

        skips = []
        for name, module in self.enc.items():
            x = module(x) if name.endswith("_conv") else self._block(module, x, emb)
            skips.append(x)
        for name, module in self.dec.items():
            if name in ("L0_aux_norm", "L0_aux_conv"):  # output head: GN-SiLU, conv
                x = module(x)
            else:
                if x.shape[1] != module.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = self._block(module, x, emb)
        x = crop(x, (h, w)).contiguous()
        if self.scalar is not None:
            p = list(self.prob_channels)
            x = x.clone()
            scaled = x[:, p] * self.scalar.to(x.dtype)
            x[:, p] = scaled if self.training else scaled.softmax(dim=1)
        return x


class RegressionUNet(nn.Module):
    """The regression network: predicts the conditional mean from the condition alone.

    As in the reference, the wrapped backbone (a :class:`SongUNet` or any network of
    :data:`~corrdiff_xr.nn.backbones.BACKBONES`) sees ``out_channels`` zero channels (the
    place of a latent) followed by the condition, with noise label 0.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(
        self,
        condition: torch.Tensor,
        *,
        offsets: torch.Tensor | None = None,
        lead_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean estimate (N, out_channels, h, w) from the condition (N, C, h, w)."""
        n, _, h, w = condition.shape
        # every backbone has these (nn/backbones.py); nn.Module does not declare them
        dtype, out_channels = cast(torch.dtype, self.net.dtype), cast(int, self.net.out_channels)
        condition = condition.to(dtype)
        x = torch.cat([condition.new_zeros(n, out_channels, h, w), condition], dim=1)
        return self.net(x, x.new_zeros(n), offsets=offsets, lead_time=lead_time)
