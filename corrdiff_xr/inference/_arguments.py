"""``downscale``'s plain arguments: coerced, checked like config fields, resolved into configs.

A sampler given as a solver name, a mapping or a :class:`~corrdiff_xr.config.SamplerConfig`
(over the model's calibrated defaults), and patching given as a side, ``(h, w)`` or a
:class:`~corrdiff_xr.config.PatchConfig` with loose ``overlap``/``boundary``/``weights``,
each become one config; a value out of range is reported under the argument's name
(``steps``, ``patch``), not the config field's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from corrdiff_xr.dims import MEMBER, TIME, X, Y

if TYPE_CHECKING:
    from corrdiff_xr.config import PatchConfig, SamplerConfig
    from corrdiff_xr.config_sampling import SolverName

__all__ = ["check_arguments", "patch_config", "sampler_config"]


@contextlib.contextmanager
def _as_arguments(names: Mapping[str, str]) -> Iterator[None]:
    """Config checks failing inside are reported under the argument names of
    :func:`~corrdiff_xr.inference.downscale`."""
    from corrdiff_xr.config import SettingError

    try:
        yield
    except SettingError as err:
        raise err.renamed(names) from None


def sampler_config(
    sampler: SamplerConfig | str | Mapping[str, Any] | None,
    steps: int | None,
    defaults: Mapping[str, Any] | None = None,
) -> SamplerConfig:
    """The request's SamplerConfig: ``sampler`` (a solver name or mapping of fields, which
    replace those of the model's calibrated ``defaults`` when it has them), then ``steps``."""
    from corrdiff_xr.config import SamplerConfig, check_argument, from_dict

    base = from_dict(SamplerConfig, dict(defaults), path="sampler") if defaults else None
    if sampler is None:
        cfg = base or SamplerConfig()
    elif isinstance(sampler, SamplerConfig):
        cfg = sampler
    elif isinstance(sampler, str):
        with _as_arguments({"solver": "sampler"}):  # SamplerConfig checks the name
            cfg = SamplerConfig(solver=cast("SolverName", sampler))
    elif isinstance(sampler, Mapping):
        merged = {**(dict(defaults) if defaults else {}), **dict(sampler)}
        cfg = from_dict(SamplerConfig, merged, path="sampler")
    else:
        raise TypeError(
            f"sampler must be None, 'heun'/'euler', a mapping or SamplerConfig, got {sampler!r}"
        )
    if steps is not None:
        with _as_arguments({"num_steps": "steps"}):  # SamplerConfig holds the range
            cfg = dataclasses.replace(cfg, num_steps=check_argument("steps", steps, int))
    # a distilled student maps noise to a sample in a few jumps; a teacher's solver on it (or
    # its sampler on a teacher) runs without error and gives a wrong ensemble
    student = defaults is not None and defaults.get("solver") == "distilled"
    if (cfg.solver == "distilled") != student:
        from corrdiff_xr._constraints import SettingError

        need = (
            "does not sample a distilled student: use solver 'distilled' (its default)"
            if student
            else "samples only a distilled student (corrdiff-xr distil); this model is not one"
        )
        raise SettingError((("sampler.solver", cfg.solver),), need)
    return cfg


def patch_config(
    patch: PatchConfig | int | tuple[int, int] | None,
    overlap: int | None,
    boundary: int | None,
    weights: str | None,
) -> PatchConfig | None:
    """The resolved :class:`~corrdiff_xr.config.PatchConfig` of downscale's patch arguments.

    ``patch`` is a PatchConfig, a side or ``(h, w)``; ``overlap``, ``boundary`` and
    ``weights`` replace its fields unless None. None when no patching is asked.
    """
    from corrdiff_xr.config import PatchConfig, check_argument

    if patch is None or isinstance(patch, PatchConfig) and patch.shape is None:
        return None
    given = {
        "overlap": check_argument("overlap", overlap, int | None),
        "boundary": check_argument("boundary", boundary, int | None),
        "weights": weights,
    }
    given = {k: v for k, v in given.items() if v is not None}
    with _as_arguments({"shape": "patch"}):  # PatchConfig holds the ranges and the defaults
        if isinstance(patch, PatchConfig):
            return dataclasses.replace(patch, **given).resolved()
        shape = check_argument(
            "patch", (patch, patch) if np.isscalar(patch) else patch, tuple[int, int]
        )
        return PatchConfig(shape=shape, **given).resolved()


def check_arguments(
    members: int,
    seed: int,
    batch_size: int,
    threads: int | None,
    chunks: Mapping[str, int] | None,
) -> tuple[int, int, int, int | None, dict[str, int]]:
    """downscale's plain arguments coerced and checked like config fields."""
    from corrdiff_xr._constraints import MAX_MEMBERS
    from corrdiff_xr.config import check_argument

    chunks = dict(chunks or {})
    unknown = set(chunks) - {MEMBER, TIME, Y, X}
    if unknown:
        raise ValueError(f"chunks has unknown dims {sorted(unknown)}; use member, time, y, x")
    return (
        check_argument("members", members, int, ge=1, le=MAX_MEMBERS),
        check_argument("seed", seed, int, ge=0),
        check_argument("batch_size", batch_size, int, ge=1, le=MAX_MEMBERS),
        check_argument("threads", threads, int | None, ge=1),
        {d: check_argument(f"chunks[{d!r}]", v, int, ge=1) for d, v in chunks.items()},
    )
