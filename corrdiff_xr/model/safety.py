"""Reading untrusted checkpoint files within bounds: describe first, allocate only what fits.

A checkpoint's configuration (our JSON header, PhysicsNeMo's ``args.json``) says how big a
network to build, and nothing stops it from lying. So :func:`build_checked` first builds the
described network on torch's ``meta`` device (shapes and dtypes, no memory), compares its state
dict with the tensors actually present — every key, shape and storage dtype — and refuses a
configuration whose parameters need more bytes than the file holds; only then is the real
network built. Every refusal is a :class:`CheckpointError` (or the caller's subclass) naming
the file, the key and what was expected.

Storage dtypes: floating parameters may be stored as ``F32``, ``F16`` or ``BF16``
(:data:`FLOAT_STORAGE`; the shipped model stores fp16 and loads into fp32); integer and bool
buffers only as their own dtype. Anything else (an ``I16`` label on a float weight) is refused.

Structural limits (:data:`MAX_CHANNELS`, :data:`MAX_IMG_SIDE`, and each backbone's own, which
:func:`check_network` asks the backbone table of :mod:`corrdiff_xr.nn.backbones` for: SongUNet's
:data:`NETWORK_LIMITS`, :data:`LENGTH_LIMITS`) keep even the meta build small and quick: a
reference ``normal`` CorrDiff UNet (~80M parameters: 128 channels, 5 levels, 4 blocks) is far
inside them.

Archives are read by :mod:`corrdiff_xr.model.archives` within limits of their own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.nn.backbones import LENGTH_LIMITS, MAX_CHANNELS, NETWORK_LIMITS, backbone

if TYPE_CHECKING:
    from corrdiff_xr.config import NetworkConfig

#: the network a checked build returns
Net = TypeVar("Net", bound=nn.Module)

__all__ = [
    "FLOAT_STORAGE",
    "LENGTH_LIMITS",
    "MAX_CHANNELS",
    "NETWORK_LIMITS",
    "CheckpointError",
    "build_checked",
    "check_network",
    "check_tensors",
    "parse_json",
    "safetensors_specs",
    "tensor_specs",
]


class CheckpointError(CorrDiffError, ValueError):
    """A checkpoint is unreadable, of the wrong format, or does not fit the model."""


#: storage dtypes a floating parameter may be loaded from (converted to the model's dtype)
FLOAT_STORAGE = frozenset({"F32", "F16", "BF16"})
#: at most this many pixels per side of the grid (and :data:`MAX_CHANNELS` channels)
MAX_IMG_SIDE = 1 << 15
#: our JSON header; real ones hold a few KB
MAX_HEADER_BYTES = 1 << 22

Spec = tuple[tuple[int, ...], str]  # (shape, safetensors dtype name)

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
_NAMES = {v: k for k, v in _DTYPES.items()}
_FLOATS = {"F64", "F32", "F16", "BF16"}


# -- values of a configuration --------------------------------------------------------------
def count(
    value: Any,
    what: str,
    *,
    low: int = 1,
    high: int = MAX_CHANNELS,
    error: type[Exception] = CheckpointError,
) -> int:
    """``value`` as an int in ``[low, high]``, or ``error`` naming ``what``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} must be an integer, got {value!r:.100}")
    if not low <= value <= high:
        raise error(f"{what}={value} is outside [{low}, {high}]")
    return value


def img_shape(
    value: Any, what: str, *, error: type[Exception] = CheckpointError
) -> tuple[int, int]:
    """A grid shape ``[H, W]`` (or one int for a square grid) within :data:`MAX_IMG_SIDE`."""
    sides = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(sides, (list, tuple)) or len(sides) != 2:
        raise error(f"{what} must be [H, W], got {value!r:.100}")
    h, w = (count(v, what, high=MAX_IMG_SIDE, error=error) for v in sides)
    return h, w


def check_network(
    cfg: NetworkConfig, what: str, *, error: type[Exception] = CheckpointError
) -> None:
    """Refuse a NetworkConfig of an unknown ``arch``, or one its backbone's config check
    refuses (SongUNet: beyond :data:`NETWORK_LIMITS` / :data:`LENGTH_LIMITS`, or options)."""
    backbone(cfg, what, error=error).check_config(cfg, what, error)


def parse_json(
    data: bytes | str, what: str, *, limit: int, error: type[Exception] = CheckpointError
) -> Any:
    """Decode UTF-8 JSON of at most ``limit`` bytes, with one clear error for every way it fails."""
    if len(data) > limit:
        raise error(f"{what} is larger than {limit} bytes; real ones hold a few KB")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except UnicodeDecodeError as err:
        raise error(f"{what} is not UTF-8 text: {err}") from err
    # ValueError also covers Python's limit on the digits of an integer literal
    except (ValueError, RecursionError) as err:
        raise error(f"{what} is not valid JSON: {err}") from err


# -- tensors --------------------------------------------------------------------------------
def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``torch.float16`` -> ``"F16"``)."""
    return _NAMES.get(dtype, str(dtype).removeprefix("torch."))


def tensor_specs(tensors: Mapping[str, torch.Tensor]) -> dict[str, Spec]:
    """(shape, dtype name) of every tensor."""
    return {k: (tuple(v.shape), dtype_name(v.dtype)) for k, v in tensors.items()}


class _TensorSlice(Protocol):
    def get_shape(self) -> list[int]: ...

    def get_dtype(self) -> str: ...


class SafeOpenHandle(Protocol):
    """What is read of an open :func:`safetensors.safe_open` handle (its stub is untyped)."""

    def keys(self) -> list[str]: ...

    def get_slice(self, name: str) -> _TensorSlice: ...


class _SafetensorsSpecs(Mapping[str, Spec]):
    """The specs of an open safetensors file, read from its header only when asked for."""

    def __init__(self, handle: SafeOpenHandle):
        self._f = handle
        self._keys = list(handle.keys())
        self._keyset = set(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keyset

    def __getitem__(self, key: str) -> Spec:
        s = self._f.get_slice(key)
        return tuple(s.get_shape()), s.get_dtype()

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def safetensors_specs(handle: SafeOpenHandle) -> Mapping[str, Spec]:
    """Specs of the tensors in an open ``safe_open`` handle (reads no tensor data)."""
    return _SafetensorsSpecs(handle)


def _allowed(expected: str) -> frozenset[str]:
    return FLOAT_STORAGE if expected in _FLOATS else frozenset({expected})


def min_bytes(expected: Mapping[str, Spec]) -> int:
    """Fewest bytes a file needs to hold tensors of these specs (floats as fp16)."""
    return sum(
        math.prod(shape) * min(_DTYPES[d].itemsize if d in _DTYPES else 1 for d in _allowed(dtype))
        for shape, dtype in expected.values()
    )


def _listing(keys: list[str]) -> str:
    return f"{keys[:8]}{' ...' if len(keys) > 8 else ''}"


def check_tensors(
    expected: Mapping[str, Spec],
    found: Mapping[str, Spec],
    *,
    source: str,
    optional_prefix: str | None = None,
    error: type[Exception] = CheckpointError,
) -> None:
    """Refuse ``found`` unless it has every key of ``expected`` with its shape and a storage
    dtype the parameter may be loaded from; keys under ``optional_prefix`` may be missing."""
    keys = set(found)
    missing = sorted(
        k for k in set(expected) - keys if not (optional_prefix and k.startswith(optional_prefix))
    )
    unexpected = sorted(keys - set(expected))
    if missing or unexpected:
        raise error(
            f"{source}: weights do not fit the model; missing {_listing(missing)}, "
            f"unexpected {_listing(unexpected)}"
        )
    for key in sorted(keys):
        (shape, dtype), (want, want_dtype) = found[key], expected[key]
        if tuple(shape) != tuple(want):
            raise error(
                f"{source}: parameter {key!r} has shape {tuple(shape)}, the model expects {tuple(want)}"
            )
        if dtype not in _allowed(want_dtype):
            raise error(
                f"{source}: parameter {key!r} is stored as {dtype}; the model's {want_dtype} "
                f"parameter may only be stored as {' / '.join(sorted(_allowed(want_dtype)))}"
            )


class _MetaFactories(TorchFunctionMode):
    """Tensors made by the factory functions that create parameters land on the meta device.

    Only these few: other factories (``arange``, ``as_tensor``) make small derived constants,
    which stay real, and would pull in torch's Python meta kernels (first use imports sympy:
    ~75 MB and a second). ``randn`` / ``rand`` become ``empty`` for the same reason; a meta
    tensor has no values anyway.
    """

    _FACTORIES = frozenset(
        {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn}
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self._FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
            if func in (torch.rand, torch.randn):
                func = torch.empty
                kwargs.pop("generator", None)
        return func(*args, **kwargs)


def build_checked(
    make: Callable[[], Net],
    found: Mapping[str, Spec],
    *,
    available_bytes: int,
    source: str,
    describe: Callable[[], nn.Module] | None = None,
    optional_prefix: str | None = None,
    error: type[Exception] = CheckpointError,
) -> Net:
    """``make()`` once its network, built on the meta device, fits the tensors ``found``.

    ``available_bytes`` is what the file can hold (its size, or its tensors' storage): a
    configuration needing more is refused before its keys are compared. ``describe`` builds
    the same network more cheaply than ``make`` for the meta build (default: ``make``).
    """
    try:
        with _MetaFactories():
            ghost = (describe or make)()
    except CheckpointError:
        raise
    except (
        CorrDiffError,
        ValueError,
        TypeError,
        RuntimeError,
        OverflowError,
        ZeroDivisionError,
    ) as err:
        raise error(
            f"{source}: the configuration describes a network that cannot be built: {err}"
        ) from err
    expected = tensor_specs(ghost.state_dict())
    needed = {
        k: v
        for k, v in expected.items()
        if k in found or not (optional_prefix and k.startswith(optional_prefix))
    }
    need = min_bytes(needed)
    if need > available_bytes:
        params = sum(math.prod(s) for s, _ in needed.values())
        raise error(
            f"{source}: the configuration describes {params:,} parameters, at least "
            f"{need:,} bytes even as fp16, but the file holds only {available_bytes:,} bytes; "
            "the configuration does not match the weights"
        )
    check_tensors(expected, found, source=source, optional_prefix=optional_prefix, error=error)
    return make()


def stored_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    seen: dict[int, int] = {}
    for t in tensors.values():
        s = t.untyped_storage()
        seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
    return sum(seen.values())
