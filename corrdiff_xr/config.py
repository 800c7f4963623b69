"""Configuration: frozen dataclasses filled from YAML files and ``key=value`` overrides.

One mechanism serves every config (model, EDM, sampler, patching, training): :func:`from_dict`
builds a dataclass from plain data, checking every key and type and naming the offending key
path in the error, so a typo fails before any work starts. Overrides use dotted keys
(``training.lr=2e-4``); the reference's Hydra habit ``++key=value`` is accepted too. Values
are parsed as YAML scalars (``1e-4`` -> float, ``[1,2]`` -> list, ``null`` -> None).

Defaults live on the dataclass fields and nowhere else, next to what each numeric field
allows (``setting(7.0, gt=0)``): every config is checked when it is built, by the one generic
check of :mod:`corrdiff_xr._constraints`, so ``sampler.rho=nan`` or ``training.lr=0`` fails
with the key path, the value and the allowed range before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

from corrdiff_xr._constraints import (
    MAX_TOTAL_BATCH,
    Checked,
    ConfigError,
    Rule,
    SettingError,
    check_value,
    setting,
)
from corrdiff_xr._constraints import Bound as _Bound
from corrdiff_xr._yaml_overrides import load_yaml, merge, parse_overrides
from corrdiff_xr.config_sampling import GAUSSIAN_ONLY, PatchConfig, SamplerConfig, SolverName
from corrdiff_xr.features import check_names
from corrdiff_xr.transforms import parse_bounds, parse_transforms

__all__ = [
    "ConfigError",
    "DataConfig",
    "EDMConfig",
    "LoaderConfig",
    "NetworkConfig",
    "PatchConfig",
    "SamplerConfig",
    "SettingError",
    "SolverName",
    "TrainRunConfig",
    "TrainingConfig",
    "check_argument",
    "from_dict",
    "load_config",
    "load_yaml",
    "merge",
    "parse_overrides",
    "to_dict",
]

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
# split off by concern, at home here (repr, pickles, every config class listed in one module);
# their string annotations resolve in this module's names (Literal, SolverName)
for _cls in (SamplerConfig, PatchConfig):
    _cls.__module__ = __name__


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
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
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
            _coerce(v, a, f"{path}[{i}]")
            for i, (v, a) in enumerate(zip(value, args or [Any] * len(value)))
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
    except SettingError as err:
        raise err.under(path) from None
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path or cls.__name__}: {err}") from err


def check_argument(name: str, value: Any, tp: Any, **bound: Any) -> Any:
    """``value`` coerced to ``tp`` and checked like a config field; for function arguments.

    ``bound`` takes the keywords of :class:`~corrdiff_xr._constraints.Bound` (``ge=1`` ...).
    Raises :class:`ConfigError` naming ``name``, the value and what is allowed.
    """
    value = _coerce(value, tp, name)
    check_value(name, value, tp, _Bound(**bound))
    return value


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-ready) form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()
) -> T:
    """Load ``cls`` from an optional YAML file plus ``key=value`` overrides."""
    data = load_yaml(path) if path is not None else {}
    return from_dict(cls, merge(data, parse_overrides(overrides)))


# -- networks and EDM preconditioning -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NetworkConfig(Checked):
    """A backbone network: ``arch`` names it in :mod:`corrdiff_xr.nn.backbones`' table; the
    fields are SongUNet's hyper-parameters (see :class:`corrdiff_xr.nn.SongUNet`), ``options``
    those of another backbone (checked by it).

    Defaults are the reference CorrDiff ``normal`` network (128 channels, five levels,
    attention at resolution 28); :meth:`preset` gives ``"mini"`` (64, three levels, attention
    at 16) and ``"normal"``. ``embedding_type="zero"`` is the regression net (no noise
    embedding). ``gridtype`` ``"sinusoidal"`` is the reference's legacy band formula (used by
    its checkpoints); ``"none"`` or ``N_grid_channels=0`` turns the grid embedding off.
    ``lead_time_channels > 0`` adds the lead-time embedding of ``SongUNetPosLtEmbd``;
    ``prob_channels`` (output channel indices given a softmax) need it.
    ``eval_groupnorm_unbiased`` reproduces the reference's evaluation-mode GroupNorm, which
    divides by the unbiased group variance. ``channels_last`` stores activations NHWC, which
    is faster for convolutions on CPU and GPU; ``compile`` wraps the networks in
    ``torch.compile``. ``checkpoint_activations`` recomputes each U-Net block in the backward
    pass instead of keeping its activations: less training memory (large grids on the CPU,
    e.g. NDFD's 688 x 1072) for about a third more compute, same gradients.
    ``padding`` pads odd grids for the levels and crops ("none": refuse).
    """

    model_channels: int = setting(128, ge=1)
    channel_mult: tuple[int, ...] = setting((1, 2, 2, 2, 2), ge=1, min_items=1)
    channel_mult_emb: int = setting(4, ge=1)
    channel_mult_noise: int = setting(1, ge=1)
    num_blocks: int = setting(4, ge=1)
    attn_resolutions: tuple[int, ...] = setting((28,), ge=1)
    dropout: float = setting(0.13, ge=0, lt=1)
    resample_filter: tuple[int, ...] = setting((1, 1), ge=1, min_items=1)
    embedding_type: Literal["positional", "zero"] = "positional"
    gridtype: Literal["sinusoidal", "sinusoidal_octave", "learnable", "linear", "none"] = (
        "sinusoidal"
    )
    N_grid_channels: int = setting(4, ge=0)
    lead_time_channels: int = setting(0, ge=0)
    lead_time_steps: int = setting(9, ge=1)
    prob_channels: tuple[int, ...] = setting((), ge=0)
    bottleneck_attention: bool = True
    eval_groupnorm_unbiased: bool = True
    channels_last: bool = True
    compile: bool = False
    checkpoint_activations: bool = False
    padding: Literal["reflect", "zero", "none"] = "reflect"
    arch: str = "songunet"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    RULES = (
        Rule(
            ("gridtype", "N_grid_channels"),
            lambda g, n: g not in ("sinusoidal", "sinusoidal_octave") or n % 4 == 0,
            "need N_grid_channels divisible by 4 for a sinusoidal gridtype",
        ),
        Rule(
            ("gridtype", "N_grid_channels"),
            lambda g, n: g != "linear" or n in (0, 2),
            "need N_grid_channels = 2 (or 0) for gridtype 'linear'",
        ),
        Rule(
            ("prob_channels", "lead_time_channels"),
            lambda p, lt: not p or lt > 0,
            "need lead_time_channels > 0 for prob_channels (a lead-time model)",
        ),
    )

    def check_shape(self, shape: tuple[int, int], what: str) -> None:
        """SongUNet's shape check (callers ask :func:`corrdiff_xr.nn.backbones.check_shape`):
        with ``padding="none"``, refuse a ``shape`` (y, x) the encoder cannot halve
        ``levels - 1`` times, naming the nearest smaller shape that works and the settings."""
        m = 2 ** (len(self.channel_mult) - 1)
        if self.padding != "none" or (shape[0] % m == 0 and shape[1] % m == 0):
            return
        fit = (shape[0] // m * m, shape[1] // m * m)
        raise ConfigError(
            f"{what} {shape[0]}x{shape[1]} (y, x) does not divide by {m}, which a network of "
            f"{len(self.channel_mult)} levels (channel_mult {list(self.channel_mult)}) needs "
            f"with padding 'none': crop it to {fit[0]}x{fit[1]}, set padding to 'reflect', or "
            "use fewer levels (channel_mult of length L needs multiples of 2**(L-1))"
        )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NetworkConfig:
        """The reference CorrDiff networks: ``"mini"`` or ``"normal"``, with field overrides."""
        presets = {
            "mini": dict(model_channels=64, channel_mult=(1, 2, 2), attn_resolutions=(16,)),
            "normal": dict(
                model_channels=128, channel_mult=(1, 2, 2, 2, 2), attn_resolutions=(28,)
            ),
        }
        if name not in presets:
            raise ConfigError(f"unknown network preset {name!r}; expected one of {sorted(presets)}")
        return from_dict(cls, {**presets[name], **overrides})


@dataclasses.dataclass(frozen=True)
class EDMConfig(Checked):
    """EDM preconditioning and noise-level distribution (Karras et al. 2022, Table 1).

    Training draws ``ln(sigma) ~ N(P_mean, P_std^2)``; the preconditioner uses
    ``sigma_data``. ``hr_mean_conditioning`` feeds the regression mean to the residual
    denoiser as extra condition channels (CorrDiff's default). ``scale_condition`` scales
    the condition channels by ``c_in`` as well as the noisy latent, as the reference's
    deprecated ``EDMPrecondSR`` (``scale_cond_input=True``) does; keep it False otherwise.
    ``objective``: ``residual`` diffuses the target minus the regression mean (CorrDiff);
    ``direct`` diffuses the target itself, conditioned on the inputs alone (no regression
    stage). ``nu`` (> 2) makes the noise Student-t with ``nu`` degrees of freedom (t-EDM,
    Pandey et al. 2024); None keeps it Gaussian. ``flow`` (``x`` or ``v``) trains rectified flow
    with that prediction and ``flow_shift`` its resolution time-shift (:mod:`corrdiff_xr.edm`).
    All four are left out of headers at defaults.
    """

    sigma_data: float = setting(0.5, gt=0)
    P_mean: float = setting(0.0)
    P_std: float = setting(1.2, gt=0)
    hr_mean_conditioning: bool = True
    scale_condition: bool = False
    objective: Literal["residual", "direct"] = "residual"
    nu: float | None = setting(None, gt=2)
    flow: Literal["x", "v"] | None = None
    flow_shift: float = setting(1.0, gt=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.flow is not None and self.nu is not None:
            raise ValueError("flow needs Gaussian noise: set nu to null (Student-t is EDM only)")
        if self.flow is None and self.flow_shift != 1.0:
            raise ValueError("flow_shift applies to rectified flow only: set flow to x or v")


# -- training ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig(Checked):
    """Which data a run trains on.

    ``source`` is a catalog entry (``catalog:demo/NAME`` or ``catalog:PATH.yaml/NAME``), a
    Zarr path or an fsspec URL (``file://``, ``memory://``, ``s3://``, ``gs://``). Names left
    None take every variable of that role. Periods are ``[start, stop]`` time labels
    (inclusive, as in ``ds.sel(time=slice(start, stop))``); no ``valid_period`` means no
    validation. ``catalog_params`` are the catalog's user parameters (e.g. ``s3_url``,
    ``endpoint_url``) for a ``catalog:`` source; ``storage_options`` go to fsspec otherwise.
    ``lead_time`` names an integer variable (or coordinate) along ``time`` holding lead-time
    labels, for lead-time-aware networks (``network.lead_time_channels > 0``).
    ``transforms`` (``{tp: {kind: log_eps, eps: 1e-4}}``; kinds ``log_eps``, ``asinh``,
    ``logit_eps``, see :mod:`corrdiff_xr.transforms`) set the space a variable is trained in,
    ``bounds`` (``{tp: [0, null]}``) the range decoded outputs are clipped to; both are recorded
    in the codec, so a diffusion run takes its regression checkpoint's. ``features``
    (``[cos_zenith, hour_of_day]``, see :mod:`corrdiff_xr.features`) are time features
    computed from each sample's time and fine lat/lon, given to the network after the static
    fields.
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
    transforms: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    bounds: dict[str, tuple[float | None, float | None]] = dataclasses.field(default_factory=dict)
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_transforms(self.transforms)  # one line naming the variable and key
        parse_bounds(self.bounds)
        check_names(self.features, "data.features")


@dataclasses.dataclass(frozen=True)
class LoaderConfig(Checked):
    """The chunk-shuffle loader (:mod:`corrdiff_xr.training.loader`): ``block_size`` is the minimum
    time steps read at once (whole chunks; default one chunk), ``num_workers`` the
    DataLoader worker processes per rank."""

    block_size: int | None = setting(None, ge=1)
    num_workers: int = setting(0, ge=0)
    prefetch_factor: int = setting(2, ge=1)


@dataclasses.dataclass(frozen=True)
class TrainingConfig(Checked):
    """Optimisation, schedule, precision, checkpoints and logging of a training run.

    Durations and intervals count training *samples* (images or patches' source images), as
    in the reference. ``total_batch_size`` = ``batch_size_per_device`` x accumulation rounds
    x world size (at most ``MAX_TOTAL_BATCH``, 65,536); ``batch_size_per_device`` None means
    ``total_batch_size / world_size``. Training memory grows with it and with the grid: on
    large grids lower it (down to 1, accumulating), then set ``network.checkpoint_activations``.
    The learning rate ramps up linearly over ``lr_rampup`` samples, then is multiplied by
    ``lr_decay`` every ``lr_decay_every`` samples. Steps whose loss or gradients are not
    finite are skipped; the run stops after ``max_nonfinite_steps`` of them.
    ``max_minutes`` bounds this invocation's wall-clock time besides ``duration``: at the
    first step past it the run saves a checkpoint and stops, and running it again continues
    (a job queue's time limit).
    ``patch_num`` random patches per image are drawn for patched diffusion.
    ``resume``: ``"auto"`` continues the run in ``output_dir`` only when its recorded identity
    (data, codec, network ...; see :mod:`corrdiff_xr.training.identity`) matches; ``"force"``
    continues its checkpoint whatever changed (e.g. fine-tuning on new data).
    ``ema``: half-life in samples of an average of the weights (None: none), which the run
    validates and saves (EDM's, with its ``ema_rampup_ratio``; :mod:`corrdiff_xr.training.ema`).
    """

    duration: int = setting(2_000_000, ge=1)
    total_batch_size: int = setting(256, ge=1, le=MAX_TOTAL_BATCH)
    batch_size_per_device: int | None = setting(None, ge=1, le=MAX_TOTAL_BATCH)
    lr: float = setting(2e-4, gt=0)
    lr_rampup: int = setting(0, ge=0)
    lr_decay: float = setting(1.0, gt=0, le=1)
    lr_decay_every: int = setting(500_000, ge=1)
    betas: tuple[float, float] = setting((0.9, 0.999), ge=0, lt=1)
    eps: float = setting(1e-8, gt=0)
    grad_clip: float | None = setting(None, gt=0)
    max_nonfinite_steps: int = setting(10, ge=0)
    max_minutes: float | None = setting(None, gt=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    deterministic: bool = False
    seed: int = setting(0, ge=0)
    patch_num: int = setting(1, ge=1)
    output_dir: str = "outputs"
    resume: Literal["auto", "force"] = "auto"
    regression_checkpoint: str | None = None
    checkpoint_every: int = setting(100_000, ge=1)
    keep_checkpoints: int = setting(3, ge=1)
    log_every: int = setting(10_000, ge=1)
    validate_every: int = setting(100_000, ge=1)
    validation_batches: int = setting(4, ge=1)
    validation_members: int = setting(4, ge=1)
    progress: bool = True
    device: str = "auto"
    loader: LoaderConfig = dataclasses.field(default_factory=LoaderConfig)
    ema: float | None = setting(None, gt=0)
    ema_rampup_ratio: float | None = setting(None, gt=0)

    RULES = (
        Rule(
            ("total_batch_size", "batch_size_per_device"),
            lambda total, per: per is None or total % per == 0,
            "need total_batch_size to be a multiple of batch_size_per_device",
        ),
        Rule(
            ("ema", "ema_rampup_ratio"),
            lambda ema, ratio: ratio is None or ema is not None,
            "ema_rampup_ratio shapes the weight average: set training.ema (a half-life in "
            "samples) too, or drop it",
        ),
    )


@dataclasses.dataclass(frozen=True)
class TrainRunConfig(Checked):
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

    RULES = (
        Rule(
            ("task", "edm.objective", "training.regression_checkpoint"),
            lambda task, obj, ckpt: task == "regression" or (ckpt is None) == (obj == "direct"),
            "a diffusion task needs training.regression_checkpoint (the trained regression model)"
            ", unless edm.objective is 'direct' (no regression stage: then drop it)",
        ),
        Rule(
            ("task", "edm.objective"),
            lambda task, obj: task != "regression" or obj == "residual",
            "edm.objective='direct' has no regression stage: train it as task diffusion",
        ),
        Rule(
            ("edm.nu", "sampler.solver"),
            lambda nu, solver: nu is None or solver not in GAUSSIAN_ONLY,
            "Student-t noise has no SDE form: use sampler.solver heun, euler or dpmpp_2m",
        ),
        Rule(
            ("task", "patch.shape"),
            lambda task, shape: (task == "patched_diffusion") == (shape is not None),
            "task 'patched_diffusion' needs patch.shape, and only that task uses one",
        ),
        Rule(
            ("data.lead_time", "network.lead_time_channels"),
            lambda lt, ch: (lt is None) == (ch == 0),
            "lead-time-aware training needs both data.lead_time and "
            "network.lead_time_channels > 0 (or neither)",
        ),
    )
