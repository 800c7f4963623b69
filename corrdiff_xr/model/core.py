"""CorrDiff = a regression U-Net for the conditional mean + an EDM residual denoiser.

Everything here works in *normalised* space on tensors: ``x`` is (N, C_in, h, w) normalised
inputs (regridded coarse fields followed by static fields, the codec's ``in_channels``) and
outputs are (N, C_out, h, w) normalised targets. The codec (:mod:`corrdiff_xr.codec`) is the
one boundary to xarray; it travels with the model so a checkpoint knows its variables and
statistics.

A sample is ``mean + residual`` where the residual is drawn by the sampler of
:mod:`corrdiff_xr.sampling` from latents taken from *that sample's* ``torch.Generator``, so a
member never depends on how members or patches were batched;
:mod:`~corrdiff_xr.model.sample_domain` does it, on the output grid or, for framed networks
with ``sample_domain="padded"``, on the padded image they run on. ``offsets`` give each sample's
top-left pixel on the global grid, so patches see the right positional embedding. A model
with ``edm.objective="direct"`` has no regression network: its "mean" is zero
(:class:`ZeroMean`), so the same pipeline samples the target itself.

A model trained on targets with a fixed mask (NaN over the sea at every training time)
carries ``target_mask``, a boolean ``(C_out, H, W)`` buffer of the pixels it was trained on:
inference writes NaN elsewhere (:mod:`corrdiff_xr.inference.block`).

Checkpoints are one safetensors file: tensors plus a JSON header (codec, grid shape, network
and EDM configs, versions; checked by :mod:`~corrdiff_xr.model.header`). Loading executes no pickle code. Writes go to a temporary file
that is renamed into place, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from corrdiff_xr._atomic import write_bytes
from corrdiff_xr.config import EDMConfig, NetworkConfig, SamplerConfig
from corrdiff_xr.edm import EDMPrecond, conditions_on_mean, edm_dict
from corrdiff_xr.model.header import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    HEADER_KEY,
    header_codec,
    header_kwargs,
    read_checkpoint_header,
)
from corrdiff_xr.model.safety import (
    CheckpointError,
    build_checked,
    check_tensors,
    safetensors_specs,
    tensor_specs,
)
from corrdiff_xr.model.sample_domain import check_sample_domain, sample_members
from corrdiff_xr.nn import RegressionUNet, build_network, network_dict
from corrdiff_xr.protocols import RandomSource

if TYPE_CHECKING:
    import numpy as np

    from corrdiff_xr.codec import Codec

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "CorrDiff",
    "ZeroMean",
    "load_weights",
    "read_checkpoint_header",
]

_HEADER_KEY = HEADER_KEY  # the name tests and older code import

DEFAULT_REGRESSION = NetworkConfig(embedding_type="zero")
DEFAULT_RESIDUAL = NetworkConfig()
DEFAULT_EDM = EDMConfig()
DEFAULT_SAMPLER = SamplerConfig()


class ZeroMean(nn.Module):
    """The "regression" of a direct model (``edm.objective="direct"``): zeros, no weights."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.out_channels, *x.shape[-2:])


class CorrDiff(nn.Module):
    """Regression mean + EDM residual diffusion (Mardani et al. 2023), in normalised space.

    Parameters
    ----------
    codec : Codec, optional
        Variables and statistics; gives ``in_channels`` / ``out_channels``. A model without a
        codec (e.g. an imported reference checkpoint) needs both channel counts.
    img_shape : tuple of int
        The global fine grid (H, W) that positional embeddings cover.
    regression_network, residual_network : NetworkConfig
        Network hyper-parameters; ``residual_network=None`` builds a regression-only model,
        ``regression_network=None`` (with ``edm.objective="direct"`` only) a direct one.
        Each is built by the backbone its ``arch`` names (:mod:`corrdiff_xr.nn.backbones`).
    edm : EDMConfig
        Preconditioning (``sigma_data``) and whether the residual sees the regression mean.
    in_channels, out_channels : int, optional
        Channel counts when no codec is given (they must agree with it otherwise).
    target_mask : bool
        Register the ``target_mask`` buffer (all valid until :meth:`set_target_mask`); the
        loader of a checkpoint that holds one passes True.
    sampler : SamplerConfig, optional
        The model's own sampler defaults (``corrdiff-xr calibrate`` sets them), used when a
        caller gives none; None means ``SamplerConfig()``, the reference's.
    sample_domain : {"grid", "padded"}
        Where members are sampled: on the output grid, or (framed networks only) on the
        padded image the networks run on, cropped at the end
        (:mod:`~corrdiff_xr.model.sample_domain`).
    """

    def __init__(
        self,
        codec: Codec | None = None,
        *,
        img_shape: Sequence[int],
        regression_network: NetworkConfig | None = DEFAULT_REGRESSION,
        residual_network: NetworkConfig | None = DEFAULT_RESIDUAL,
        edm: EDMConfig = DEFAULT_EDM,
        in_channels: int | None = None,
        out_channels: int | None = None,
        target_mask: bool = False,
        sampler: SamplerConfig | None = None,
        sample_domain: str = "grid",
    ):
        super().__init__()
        if codec is not None:
            c_in, c_out = len(codec.in_channels), len(codec.out_channels)
            if (in_channels, out_channels) != (None, None) and (
                in_channels,
                out_channels,
            ) != (c_in, c_out):
                raise ValueError(
                    f"in_channels/out_channels {(in_channels, out_channels)} disagree with the codec's {(c_in, c_out)}"
                )
            in_channels, out_channels = c_in, c_out
        if in_channels is None or out_channels is None:
            raise ValueError("CorrDiff needs a codec or both in_channels and out_channels")
        if len(img_shape) != 2:
            raise ValueError(f"img_shape must be (H, W), got {tuple(img_shape)}")
        self.codec = codec
        self.img_shape = (int(img_shape[0]), int(img_shape[1]))
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.regression_config = regression_network
        self.residual_config = residual_network
        self.edm_config = edm
        self.sampler_config = sampler

        direct = edm.objective == "direct"
        if direct != (regression_network is None) or (direct and residual_network is None):
            raise ValueError(
                "edm.objective='direct' needs regression_network=None and a residual_network; "
                f"'residual' needs a regression_network (objective={edm.objective!r})"
            )
        check_sample_domain(sample_domain, regression_network, residual_network)
        self.sample_domain = sample_domain
        self.regression: nn.Module = (
            ZeroMean(self.out_channels)
            if regression_network is None  # direct: checked above
            else self._regression(regression_network)
        )
        self.residual: EDMPrecond | None = None
        if residual_network is not None:
            cond = in_channels + (out_channels if conditions_on_mean(edm) else 0)
            net = build_network(
                residual_network,
                in_channels=out_channels + cond,
                out_channels=out_channels,
                img_shape=self.img_shape,
                what="residual_network",
            )
            self.residual = EDMPrecond(net, edm=edm)
        if regression_network is not None and regression_network.compile:
            self.regression.compile()
        if residual_network is not None and residual_network.compile and self.residual:
            self.residual.compile()
        self.register_buffer("target_mask", None)  # a None buffer stays out of state_dict
        if target_mask:
            self.set_target_mask(torch.ones(self.out_channels, *self.img_shape, dtype=torch.bool))

    def _regression(self, cfg: NetworkConfig) -> RegressionUNet:
        net = build_network(
            cfg,
            in_channels=self.out_channels + self.in_channels,
            out_channels=self.out_channels,
            img_shape=self.img_shape,
            what="regression_network",
        )
        return RegressionUNet(net)

    def set_target_mask(self, valid: torch.Tensor | np.ndarray | None) -> None:
        """Record the pixels each target was trained on (``(C_out, H, W)`` booleans, True =
        valid), or None for none masked; inference writes NaN at the others."""
        if valid is not None:
            valid = torch.as_tensor(valid).to(torch.bool)
            want = (self.out_channels, *self.img_shape)
            if tuple(valid.shape) != want:
                raise ValueError(f"target_mask must have shape {want}, got {tuple(valid.shape)}")
            valid = valid.to(next(self.parameters()).device)
        self.target_mask = valid

    # -- inference -------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, offsets: torch.Tensor | None) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (N, {self.in_channels}, h, w), got {tuple(x.shape)}"
            )
        if offsets is not None and tuple(offsets.shape) != (x.shape[0], 2):
            raise ValueError(
                f"offsets must have shape ({x.shape[0]}, 2), got {tuple(offsets.shape)}"
            )

    def predict_mean(
        self,
        x: torch.Tensor,
        *,
        offsets: torch.Tensor | None = None,
        lead_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Regression mean (N, C_out, h, w) from normalised inputs ``x`` (N, C_in, h, w)."""
        self._check_input(x, offsets)
        return self.regression(x, offsets=offsets, lead_time=lead_time)

    @torch.no_grad()
    def sample(
        self,
        x: torch.Tensor,
        *,
        generators: Sequence[RandomSource],
        sampler: SamplerConfig | None = None,
        mean: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
        lead_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One ensemble member per generator: ``mean + residual`` (N, C_out, h, w).

        Parameters
        ----------
        x : Tensor
            (N, C_in, h, w) normalised inputs.
        generators : sequence of torch.Generator
            One per sample; the latents, then every step's churn noise, come from it (a
            :class:`~corrdiff_xr.protocols.NoiseSource` may stand for a generator).
        sampler : SamplerConfig, optional
            Solver and schedule (None: the model's defaults, else ``SamplerConfig()``).
        mean : Tensor, optional
            Precomputed regression mean (N, C_out, h, w); computed when omitted.
        offsets : Tensor, optional
            (N, 2) global (row, col) of each patch's top-left pixel.
        lead_time : Tensor, optional
            (N,) lead-time labels for lead-time models.
        """
        self._check_input(x, offsets)
        if len(generators) != x.shape[0]:
            raise ValueError(
                f"need one generator per sample: {x.shape[0]} samples, {len(generators)} generators"
            )
        if mean is None:
            mean = self.predict_mean(x, offsets=offsets, lead_time=lead_time)
        if self.residual is None:
            return mean
        return sample_members(
            self,
            x,
            generators=generators,
            sampler=sampler or self.sampler_config or DEFAULT_SAMPLER,
            mean=mean,
            offsets=offsets,
            lead_time=lead_time,
        )

    # -- checkpoints -----------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """JSON-able description from which :meth:`load` rebuilds the model."""
        import safetensors

        from corrdiff_xr._version import __version__

        masked = self.target_mask is not None
        calibrated = self.sampler_config is not None
        padded = self.sample_domain != "grid"
        header: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "format_version": 4 if padded else 3 if calibrated else 2 if masked else 1,
            "target_mask": masked,
            "codec": self.codec.to_dict() if self.codec is not None else None,
            "img_shape": list(self.img_shape),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            # arch and options left out at their defaults: a SongUNet header stays version-1 readable
            "regression_network": None
            if self.regression_config is None
            else network_dict(self.regression_config),
            "residual_network": network_dict(self.residual_config)
            if self.residual_config is not None
            else None,
            "edm": edm_dict(self.edm_config),  # objective, nu, flow: left out at defaults
            "versions": {
                "corrdiff_xr": __version__,
                "torch": torch.__version__,
                "safetensors": safetensors.__version__,
            },
        }
        if self.sampler_config is not None:  # calibrated
            header["sampler"] = self.sampler_config.record()
        if padded:
            header["sample_domain"] = self.sample_domain
        return header

    def save(self, path: str | os.PathLike) -> Path:
        """Write weights + JSON config to one safetensors file, atomically (temp + rename)."""
        from safetensors.torch import save

        path = Path(path)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        blob = save(tensors, metadata={HEADER_KEY: json.dumps(self.config_dict())})
        return write_bytes(path, blob)

    @classmethod
    def from_config_dict(
        cls, header: dict[str, Any], *, source: str = "checkpoint header"
    ) -> CorrDiff:
        """Build an (untrained) model from :meth:`config_dict` output, checked first."""
        kwargs = header_kwargs(header, source=source)
        return cls(header_codec(kwargs.pop("codec"), source=source), **kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> CorrDiff:
        """Read a checkpoint written by :meth:`save` (no pickle involved).

        The header is validated and the network it describes is first built on the meta
        device and compared with the stored tensors (keys, shapes, storage dtypes, total
        bytes; see :mod:`corrdiff_xr.model.safety`); only a checkpoint that fits is
        built for real, so a lying header costs no memory.
        """
        from safetensors import safe_open

        path = Path(path)
        source = str(path)
        kwargs = header_kwargs(read_checkpoint_header(path), source=source)
        codec_data = kwargs.pop("codec")
        with safe_open(source, framework="pt", device="cpu") as f:
            model = build_checked(
                lambda: cls(header_codec(codec_data, source=source), **kwargs),
                safetensors_specs(f),
                available_bytes=path.stat().st_size,
                source=source,
                describe=lambda: cls(None, **kwargs),  # channel counts suffice
            )
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        model.load_state_dict(tensors, strict=True)
        return model.to(map_location)


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Copy ``tensors`` into ``model``, naming any missing, unexpected, misshapen or
    wrongly typed entry (see :func:`~corrdiff_xr.model.safety.check_tensors`)."""
    check_tensors(tensor_specs(model.state_dict()), tensor_specs(tensors), source=source)
    model.load_state_dict(tensors, strict=True)
