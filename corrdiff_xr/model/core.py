"""CorrDiff = a regression U-Net for the conditional mean + an EDM residual denoiser.

Everything here works in *normalised* space on tensors: ``x`` is (N, C_in, h, w) normalised
inputs (regridded coarse fields followed by static fields, the codec's ``in_channels``) and
outputs are (N, C_out, h, w) normalised targets. The codec (:mod:`corrdiff_xr.codec`) is the
one boundary to xarray; it travels with the model so a checkpoint knows its variables and
statistics.

A sample is ``mean + residual`` where the residual is drawn by the sampler of
:mod:`corrdiff_xr.sampling` from latents taken from *that sample's* ``torch.Generator``, so a
member never depends on how members or patches were batched. ``offsets`` give each sample's
top-left pixel on the global grid, so patches see the right positional embedding. A model
with ``edm.objective="direct"`` has no regression network: its "mean" is zero
(:class:`ZeroMean`), so the same pipeline samples the target itself.

A model trained on targets with a fixed mask (NaN over the sea at every training time)
carries ``target_mask``, a boolean ``(C_out, H, W)`` buffer of the pixels it was trained on:
inference writes NaN elsewhere (:mod:`corrdiff_xr.inference.block`).

Checkpoints are one safetensors file: tensors plus a JSON header (codec, grid shape, network
and EDM configs, versions). Loading executes no pickle code. Writes go to a temporary file
that is renamed into place, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from corrdiff_xr._atomic import write_bytes
from corrdiff_xr.config import (
    EDMConfig,
    NetworkConfig,
    SamplerConfig,
    from_dict,
    to_dict,
)
from corrdiff_xr.edm import EDMPrecond, conditions_on_mean, edm_dict, residual_condition
from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.model.safety import (
    MAX_HEADER_BYTES,
    CheckpointError,
    build_checked,
    check_network,
    check_tensors,
    count,
    img_shape,
    parse_json,
    safetensors_specs,
    tensor_specs,
)
from corrdiff_xr.nn import RegressionUNet, build_network, network_dict

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CorrDiff",
    "ZeroMean",
    "load_weights",
    "read_checkpoint_header",
]

CHECKPOINT_FORMAT = "corrdiff_xr.checkpoint"
#: 2 adds the ``target_mask`` tensor, 3 the calibrated ``sampler`` defaults; a model without
#: either is still written as version 1, so that readers of version 1 can load it
CHECKPOINT_VERSION = 3
_HEADER_KEY = "corrdiff_xr"

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
    """

    def __init__(
        self,
        codec: Any = None,
        *,
        img_shape: Sequence[int],
        regression_network: NetworkConfig | None = DEFAULT_REGRESSION,
        residual_network: NetworkConfig | None = DEFAULT_RESIDUAL,
        edm: EDMConfig = DEFAULT_EDM,
        in_channels: int | None = None,
        out_channels: int | None = None,
        target_mask: bool = False,
        sampler: SamplerConfig | None = None,
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
        self.regression = ZeroMean(self.out_channels) if direct else self._regression()
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
        for cfg, module in (
            (regression_network, self.regression),
            (residual_network, self.residual),
        ):
            if cfg is not None and cfg.compile:
                module.compile()
        self.register_buffer("target_mask", None)  # a None buffer stays out of state_dict
        if target_mask:
            self.set_target_mask(torch.ones(self.out_channels, *self.img_shape, dtype=torch.bool))

    def _regression(self) -> RegressionUNet:
        net = build_network(
            self.regression_config,
            in_channels=self.out_channels + self.in_channels,
            out_channels=self.out_channels,
            img_shape=self.img_shape,
            what="regression_network",
        )
        return RegressionUNet(net)

    def set_target_mask(self, valid: Any) -> None:
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
        generators: Sequence[torch.Generator],
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
            One per sample; the latents, then every step's churn noise, come from it.
        sampler : SamplerConfig, optional
            Solver and schedule (None: the model's defaults, else ``SamplerConfig()``).
        mean : Tensor, optional
            Precomputed regression mean (N, C_out, h, w); computed when omitted.
        offsets : Tensor, optional
            (N, 2) global (row, col) of each patch's top-left pixel.
        lead_time : Tensor, optional
            (N,) lead-time labels for lead-time models.
        """
        from corrdiff_xr import sampling

        self._check_input(x, offsets)
        if len(generators) != x.shape[0]:
            raise ValueError(
                f"need one generator per sample: {x.shape[0]} samples, {len(generators)} generators"
            )
        if mean is None:
            mean = self.predict_mean(x, offsets=offsets, lead_time=lead_time)
        if self.residual is None:
            return mean
        edm = self.edm_config
        sampler = sampler or self.sampler_config or DEFAULT_SAMPLER
        sampling.check_solver(sampler.solver, edm.nu)  # before any work
        cond = residual_condition(x, mean, hr_mean_conditioning=conditions_on_mean(edm))
        _n, _, h, w = x.shape
        latents = sampling.draw_latents(
            generators, (self.out_channels, h, w), dtype=x.dtype, device=x.device, nu=edm.nu
        )

        def denoise(xt: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.residual(xt, sigma, condition=cond, offsets=offsets, lead_time=lead_time)

        residual = sampling.sample(
            denoise,
            latents,
            config=sampler,
            generators=generators,
            nu=edm.nu,
            shift=float(edm.flow_shift),
        )
        return mean + residual.to(mean.dtype)

    # -- checkpoints -----------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """JSON-able description from which :meth:`load` rebuilds the model."""
        import safetensors

        from corrdiff_xr._version import __version__

        masked = self.target_mask is not None
        calibrated = self.sampler_config is not None
        header = {
            "format": CHECKPOINT_FORMAT,
            "format_version": 3 if calibrated else 2 if masked else 1,
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
        if calibrated:
            header["sampler"] = to_dict(self.sampler_config)
        return header

    def save(self, path: str | os.PathLike) -> Path:
        """Write weights + JSON config to one safetensors file, atomically (temp + rename)."""
        from safetensors.torch import save

        path = Path(path)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        blob = save(tensors, metadata={_HEADER_KEY: json.dumps(self.config_dict())})
        return write_bytes(path, blob)

    @classmethod
    def from_config_dict(
        cls, header: dict[str, Any], *, source: str = "checkpoint header"
    ) -> CorrDiff:
        """Build an (untrained) model from :meth:`config_dict` output, checked first."""
        kwargs = _header_kwargs(header, source=source)
        return cls(_codec(kwargs.pop("codec"), source=source), **kwargs)

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
        kwargs = _header_kwargs(read_checkpoint_header(path), source=source)
        codec_data = kwargs.pop("codec")
        with safe_open(source, framework="pt", device="cpu") as f:
            model = build_checked(
                lambda: cls(_codec(codec_data, source=source), **kwargs),
                safetensors_specs(f),
                available_bytes=path.stat().st_size,
                source=source,
                describe=lambda: cls(None, **kwargs),  # channel counts suffice
            )
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        model.load_state_dict(tensors, strict=True)
        return model.to(map_location)


def _codec(data: dict[str, Any] | None, *, source: str) -> Any:
    """The codec of a validated header (imported late: it pulls in xarray)."""
    if data is None:
        return None
    from corrdiff_xr.codec import Codec

    try:
        return Codec.from_dict(data)
    except (CorrDiffError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{source}: codec in the header is unusable: {err}") from err


def _check_codec(data: Any, *, source: str) -> tuple[int, int]:
    """Types of a header's codec (names, statistics); returns its (in, out) channel counts."""
    what = f"{source}: codec"
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} must be a JSON object, got {type(data).__name__}")
    names = {}
    for key in ("inputs", "targets", "static", "features"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CheckpointError(
                f"{what}.{key} must be a list of variable names, got {value!r:.200}"
            )
        names[key] = value
    stats = data.get("stats")
    if not isinstance(stats, dict) or not all(
        isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        for v in stats.values()
    ):
        raise CheckpointError(
            f"{what}.stats must map each variable to [mean, std], got {stats!r:.200}"
        )
    c_in = len(names["inputs"]) + len(names["static"]) + len(names["features"])
    c_out = len(names["targets"])
    count(c_in, f"{what}: number of input channels", error=CheckpointError)
    count(c_out, f"{what}: number of output channels", error=CheckpointError)
    return c_in, c_out


def _config(cls: type, data: Any, *, source: str, key: str) -> Any:
    """A config dataclass from header data, with errors naming the file and key."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: {key} must be a JSON object, got {data!r:.200}")
    try:
        cfg = from_dict(cls, data, path=key)
    except CorrDiffError as err:
        raise CheckpointError(f"{source}: {err}") from err
    if cls is NetworkConfig:
        check_network(cfg, f"{source}: {key}")
    elif cls is EDMConfig and not all(
        math.isfinite(v) for v in (cfg.sigma_data, cfg.P_mean, cfg.P_std)
    ):
        raise CheckpointError(
            f"{source}: {key}.sigma_data, P_mean and P_std must be finite, got {data!r:.200}"
        )
    return cfg


def _header_kwargs(header: Any, *, source: str) -> dict[str, Any]:
    """:class:`CorrDiff` keyword arguments from a header, every value's type and size checked.

    ``codec`` stays plain data (see :func:`_codec`); ``in_channels`` / ``out_channels`` are
    always given (from the codec when there is one), which is all a meta build needs.
    """
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{source}: the header must be a JSON object, got {type(header).__name__}"
        )
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{source}: not a corrdiff_xr checkpoint (format={header.get('format')!r:.100})"
        )
    version = count(header.get("format_version", 0), f"{source}: format_version", low=0, high=2**31)
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {version} is newer than this corrdiff_xr "
            f"understands ({CHECKPOINT_VERSION}); upgrade corrdiff_xr"
        )
    missing = sorted({"img_shape", "regression_network", "edm"} - set(header))
    if header.get("codec") is None:
        missing += sorted({"in_channels", "out_channels"} - set(header))
    if missing:
        raise CheckpointError(f"{source}: the header lacks {missing}")
    codec = header.get("codec")
    keys = ("in_channels", "out_channels")
    if codec is not None:
        channels = _check_codec(codec, source=source)
        for key, n in zip(keys, channels):
            if header.get(key, n) != n:
                raise CheckpointError(
                    f"{source}: {key}={header[key]!r:.100} disagrees with the codec's {n}"
                )
    else:
        channels = tuple(count(header[k], f"{source}: {k}") for k in keys)
    res, reg = header.get("residual_network"), header["regression_network"]
    edm = _config(EDMConfig, header["edm"], source=source, key="edm")
    return {
        "codec": codec,
        "img_shape": img_shape(header["img_shape"], f"{source}: img_shape"),
        "regression_network": None  # a direct model has none
        if reg is None and edm.objective == "direct"
        else _config(NetworkConfig, reg, source=source, key="regression_network"),
        "residual_network": None
        if res is None
        else _config(NetworkConfig, res, source=source, key="residual_network"),
        "edm": edm,
        "in_channels": channels[0],
        "out_channels": channels[1],
        "target_mask": _flag(header.get("target_mask", False), f"{source}: target_mask"),
        "sampler": None
        if header.get("sampler") is None
        else _config(SamplerConfig, header["sampler"], source=source, key="sampler"),
    }


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise CheckpointError(f"{what} must be true or false, got {value!r:.100}")
    return value


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    """Codec, grid shape and configs stored in a checkpoint, read and checked without loading
    weights."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a safetensors checkpoint: {err}") from err
    if _HEADER_KEY not in meta:
        raise CheckpointError(f"{path} has no corrdiff_xr header; was it written by CorrDiff.save?")
    header = parse_json(meta[_HEADER_KEY].encode(), f"{path}: header", limit=MAX_HEADER_BYTES)
    _header_kwargs(header, source=str(path))
    return header


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Copy ``tensors`` into ``model``, naming any missing, unexpected, misshapen or
    wrongly typed entry (see :func:`~corrdiff_xr.model.safety.check_tensors`)."""
    check_tensors(tensor_specs(model.state_dict()), tensor_specs(tensors), source=source)
    model.load_state_dict(tensors, strict=True)
