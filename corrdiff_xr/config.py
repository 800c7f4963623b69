"""Configuration: frozen dataclasses filled from YAML files and ``key=value`` overrides.

One mechanism serves every config (model, EDM, sampler, patching, training): :func:`from_dict`
builds a dataclass from plain data, checking every key and type and naming the offending key
path in the error, so a typo fails before any work starts. Overrides use dotted keys
(``training.lr=2e-4``); the reference's Hydra habit ``++key=value`` is accepted too. Values
are parsed as YAML scalars (``1e-4`` -> float, ``[1,2]`` -> list, ``null`` -> None).

Defaults live on the dataclass fields and nowhere else.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from corrdiff_xr.errors import CorrDiffError

T = TypeVar("T")


class ConfigError(CorrDiffError, ValueError):
    """A configuration value is missing, unknown, or of the wrong type."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Coerce plain data ``value`` to the annotated type ``tp`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path=path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} items, got {list(value)!r}")
        return tuple(
            _coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args or [Any] * len(value)))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(k, kt, path): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, *, path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, validating keys and types.

    Unknown keys raise :class:`ConfigError` naming the key path and the accepted keys.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in '{path}'" if path else ""
        raise ConfigError(
            f"unknown config key(s) {unknown}{where}; expected some of {sorted(fields)}"
        )
    kwargs = {}
    for name, field in fields.items():
        key = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{key}'")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path or cls.__name__}: {err}") from err


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-ready) form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _parse_scalar(raw: str) -> Any:
    """YAML-parse an override value; PyYAML (YAML 1.1) reads ``1e-4`` as a string, we don't."""
    if raw == "":
        return ""
    value = yaml.safe_load(raw)
    if isinstance(value, str) and _FLOAT.match(value):
        return float(value)
    return value


def parse_overrides(items: typing.Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "++c=x"]`` into the nested mapping ``{"a": {"b": 1}, "c": "x"}``."""
    out: dict[str, Any] = {}
    for item in items:
        text = item.lstrip("+")
        if "=" not in text:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = text.split("=", 1)
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        value = _parse_scalar(raw)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with an error naming the file when it is not one."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()
) -> T:
    """Load ``cls`` from an optional YAML file plus ``key=value`` overrides."""
    data = load_yaml(path) if path is not None else {}
    return from_dict(cls, merge(data, parse_overrides(overrides)))


# -- sampling and patching (core B) ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """EDM sampler settings (Karras et al. 2022, Algorithm 2); defaults are the reference's.

    ``S_churn = 0`` gives the deterministic sampler; ``S_churn > 0`` adds noise at every step
    whose sigma lies in ``[S_min, S_max]`` (the per-step increase is capped at
    ``sqrt(2) - 1`` as in EDM).
    """

    solver: Literal["heun", "euler"] = "heun"
    num_steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 800.0
    rho: float = 7.0
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = float("inf")
    S_noise: float = 1.0

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}"
            )
        if self.rho <= 0:
            raise ValueError(f"rho must be positive, got {self.rho}")
        if self.S_churn < 0:
            raise ValueError(f"S_churn must be >= 0, got {self.S_churn}")


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """How a domain is tiled into patches (see :mod:`corrdiff_xr.patching`).

    ``shape`` None means no patching (the whole domain is one patch). ``overlap`` is the
    number of pixels shared by the *kept* parts of neighbouring patches; ``boundary`` is a
    halo on every side of each patch that the model sees as context but that gets zero weight
    when patches are fused. ``weights`` is ``"uniform"`` (plain average over overlaps) or
    ``"ramp"`` (linear ramps across overlaps, so seams blend smoothly). ``layout`` picks the
    patch grid: ``"compact"`` (fewest patches covering the domain) or ``"physicsnemo"`` (the
    reference's ``GridPatching2D`` grid, where the halo is averaged in like the rest, for
    exact parity with its outputs).
    """

    shape: tuple[int, int] | None = None
    overlap: int = 0
    boundary: int = 0
    weights: Literal["uniform", "ramp"] = "uniform"
    layout: Literal["compact", "physicsnemo"] = "compact"

    def __post_init__(self) -> None:
        if self.overlap < 0 or self.boundary < 0:
            raise ValueError(
                f"overlap and boundary must be >= 0, got overlap={self.overlap}, "
                f"boundary={self.boundary}"
            )
        if self.shape is not None:
            if len(self.shape) != 2 or min(self.shape) < 1:
                raise ValueError(f"shape must be two positive integers, got {self.shape}")
            if min(self.shape) - 2 * self.boundary - self.overlap < 1:
                raise ValueError(
                    f"patch shape {tuple(self.shape)} leaves no room for overlap="
                    f"{self.overlap} plus a halo of boundary={self.boundary} on each side"
                )


# -- networks and EDM preconditioning (core A) ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """SongUNet hyper-parameters (see :class:`corrdiff_xr.nn.SongUNet`).

    Defaults are the reference CorrDiff ``normal`` network (128 channels, five levels,
    attention at resolution 28); :meth:`preset` gives ``"mini"`` (64, three levels, attention
    at 16) and ``"normal"``. ``embedding_type="zero"`` is the regression net (no noise
    embedding). ``gridtype`` ``"sinusoidal"`` is the reference's legacy band formula (used by
    its checkpoints); ``"none"`` or ``N_grid_channels=0`` turns the grid embedding off.
    ``lead_time_channels > 0`` adds the lead-time embedding of ``SongUNetPosLtEmbd``.
    ``eval_groupnorm_unbiased`` reproduces the reference's evaluation-mode GroupNorm, which
    divides by the unbiased group variance. ``channels_last`` stores activations NHWC, which
    is faster for convolutions on CPU and GPU; ``compile`` wraps the networks in
    ``torch.compile``.
    """

    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2, 2)
    channel_mult_emb: int = 4
    channel_mult_noise: int = 1
    num_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (28,)
    dropout: float = 0.13
    resample_filter: tuple[int, ...] = (1, 1)
    embedding_type: Literal["positional", "zero"] = "positional"
    gridtype: Literal["sinusoidal", "sinusoidal_octave", "learnable", "linear", "none"] = "sinusoidal"
    N_grid_channels: int = 4
    lead_time_channels: int = 0
    lead_time_steps: int = 9
    prob_channels: tuple[int, ...] = ()
    bottleneck_attention: bool = True
    eval_groupnorm_unbiased: bool = True
    channels_last: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        if self.model_channels < 1 or not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(
                f"model_channels and channel_mult must be positive, got {self.model_channels}, "
                f"{self.channel_mult}"
            )
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.N_grid_channels < 0 or self.lead_time_channels < 0:
            raise ValueError("N_grid_channels and lead_time_channels must be >= 0")
        if self.gridtype in ("sinusoidal", "sinusoidal_octave") and self.N_grid_channels % 4:
            raise ValueError(f"gridtype {self.gridtype!r} needs N_grid_channels divisible by 4")
        if self.gridtype == "linear" and self.N_grid_channels not in (0, 2):
            raise ValueError("gridtype 'linear' needs N_grid_channels = 2")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NetworkConfig:
        """The reference CorrDiff networks: ``"mini"`` or ``"normal"``, with field overrides."""
        presets = {
            "mini": dict(model_channels=64, channel_mult=(1, 2, 2), attn_resolutions=(16,)),
            "normal": dict(model_channels=128, channel_mult=(1, 2, 2, 2, 2), attn_resolutions=(28,)),
        }
        if name not in presets:
            raise ConfigError(f"unknown network preset {name!r}; expected one of {sorted(presets)}")
        return from_dict(cls, {**presets[name], **overrides})


@dataclasses.dataclass(frozen=True)
class EDMConfig:
    """EDM preconditioning and noise-level distribution (Karras et al. 2022, Table 1).

    Training draws ``ln(sigma) ~ N(P_mean, P_std^2)``; the preconditioner uses
    ``sigma_data``. ``hr_mean_conditioning`` feeds the regression mean to the residual
    denoiser as extra condition channels (CorrDiff's default). ``scale_condition`` scales
    the condition channels by ``c_in`` as well as the noisy latent, as the reference's
    deprecated ``EDMPrecondSR`` (``scale_cond_input=True``) does; keep it False otherwise.
    """

    sigma_data: float = 0.5
    P_mean: float = 0.0
    P_std: float = 1.2
    hr_mean_conditioning: bool = True
    scale_condition: bool = False

    def __post_init__(self) -> None:
        if self.sigma_data <= 0 or self.P_std <= 0:
            raise ValueError(
                f"sigma_data and P_std must be positive, got {self.sigma_data}, {self.P_std}"
            )


# -- training (training engineer) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data a run trains on.

    ``source`` is a catalog entry (``catalog:demo/NAME`` or ``catalog:PATH.yaml/NAME``), a
    Zarr path or an fsspec URL (``file://``, ``memory://``, ``s3://``, ``gs://``). Names left
    None take every variable of that role. Periods are ``[start, stop]`` time labels
    (inclusive, as in ``ds.sel(time=slice(start, stop))``); no ``valid_period`` means no
    validation. ``catalog_params`` are the catalog's user parameters (e.g. ``s3_url``,
    ``endpoint_url``) for a ``catalog:`` source; ``storage_options`` go to fsspec otherwise.
    ``lead_time`` names an integer variable (or coordinate) along ``time`` holding lead-time
    labels, for lead-time-aware networks (``network.lead_time_channels > 0``).
    """

    source: str
    inputs: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    static: tuple[str, ...] | None = None
    train_period: tuple[str, str] | None = None
    valid_period: tuple[str, str] | None = None
    lead_time: str | None = None
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    catalog_params: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """The chunk-shuffle loader (:mod:`corrdiff_xr.loader`): ``block_size`` is the minimum
    time steps read at once (whole chunks; default one chunk), ``num_workers`` the
    DataLoader worker processes per rank."""

    block_size: int | None = None
    num_workers: int = 0
    prefetch_factor: int = 2

    def __post_init__(self) -> None:
        if self.num_workers < 0 or self.prefetch_factor < 1:
            raise ValueError("loader num_workers must be >= 0 and prefetch_factor >= 1")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, schedule, precision, checkpoints and logging of a training run.

    Durations and intervals count training *samples* (images or patches' source images), as
    in the reference. ``total_batch_size`` = ``batch_size_per_device`` x accumulation rounds
    x world size; ``batch_size_per_device`` None means ``total_batch_size / world_size``.
    The learning rate ramps up linearly over ``lr_rampup`` samples, then is multiplied by
    ``lr_decay`` every ``lr_decay_every`` samples. Steps whose loss or gradients are not
    finite are skipped; the run stops after ``max_nonfinite_steps`` of them.
    ``patch_num`` random patches per image are drawn for patched diffusion.
    ``resume``: ``"auto"`` continues the run in ``output_dir`` only when its recorded identity
    (data, codec, network ...; see :mod:`corrdiff_xr.training.identity`) matches; ``"force"``
    continues its checkpoint whatever changed (e.g. fine-tuning on new data).
    """

    duration: int = 2_000_000
    total_batch_size: int = 256
    batch_size_per_device: int | None = None
    lr: float = 2e-4
    lr_rampup: int = 0
    lr_decay: float = 1.0
    lr_decay_every: int = 500_000
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = None
    max_nonfinite_steps: int = 10
    precision: Literal["fp32", "bf16"] = "fp32"
    deterministic: bool = False
    seed: int = 0
    patch_num: int = 1
    output_dir: str = "outputs"
    resume: Literal["auto", "force"] = "auto"
    regression_checkpoint: str | None = None
    checkpoint_every: int = 100_000
    keep_checkpoints: int = 3
    log_every: int = 10_000
    validate_every: int = 100_000
    validation_batches: int = 4
    validation_members: int = 4
    progress: bool = True
    device: str = "auto"
    loader: LoaderConfig = dataclasses.field(default_factory=LoaderConfig)

    def __post_init__(self) -> None:
        positive = ("duration", "total_batch_size", "lr_decay_every", "checkpoint_every",
                    "keep_checkpoints", "log_every", "validate_every", "patch_num")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size_per_device is not None and self.batch_size_per_device < 1:
            raise ValueError(f"batch_size_per_device must be >= 1, got {self.batch_size_per_device}")
        if self.lr <= 0 or self.lr_rampup < 0 or not 0 < self.lr_decay <= 1:
            raise ValueError(
                f"need lr > 0, lr_rampup >= 0 and 0 < lr_decay <= 1, got {self.lr}, "
                f"{self.lr_rampup}, {self.lr_decay}"
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or null, got {self.grad_clip}")


@dataclasses.dataclass(frozen=True)
class TrainRunConfig:
    """Everything the ``train`` command needs (one YAML file plus ``key=value`` overrides).

    ``task``: ``regression`` trains the mean UNet; ``diffusion`` trains the residual EDM
    model on whole images and needs ``training.regression_checkpoint``; ``patched_diffusion``
    does the same on random ``patch.shape`` patches. A lead-time-aware run of any task sets
    ``data.lead_time`` and ``network.lead_time_channels``.
    """

    task: Literal["regression", "diffusion", "patched_diffusion"]
    data: DataConfig
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    edm: EDMConfig = dataclasses.field(default_factory=EDMConfig)
    patch: PatchConfig = dataclasses.field(default_factory=PatchConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        diffusion = self.task != "regression"
        if diffusion and self.training.regression_checkpoint is None:
            raise ValueError(f"task '{self.task}' needs training.regression_checkpoint")
        if self.task == "patched_diffusion" and self.patch.shape is None:
            raise ValueError("task 'patched_diffusion' needs patch.shape")
        if self.task != "patched_diffusion" and self.patch.shape is not None:
            raise ValueError(f"patch.shape is only used by task 'patched_diffusion', not '{self.task}'")
        if (self.data.lead_time is None) != (self.network.lead_time_channels == 0):
            raise ValueError(
                "lead-time-aware training needs both data.lead_time and "
                "network.lead_time_channels > 0 (or neither)"
            )
