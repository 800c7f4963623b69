"""PhysicsNeMo DiT ``.mdlus`` fixtures: real PhysicsNeMo 2.2.2 modules with random weights,
written by its own ``Module.save``.

:func:`reference_dit` builds ``DiT``, ``ConcatConditionWrapper(DiT)`` or
``EDMPreconditioner(ConcatConditionWrapper(DiT))`` from PhysicsNeMo ``DiT`` keyword arguments
and gives every parameter random O(1) values (a fresh DiT's modulation and output layers are
zero, which would make any comparison pass); :func:`write_dit_mdlus` saves one
(:data:`CONV_DETOKENIZER` adds the conv-head detokenizer of CorrDiff COSMO-ERA5's mean);
:func:`edit_args` rewrites a written file's ``args.json`` (for refusal tests);
:func:`write_hrrr_package` writes an Earth2Studio ERA5-HRRR package around such a DiT.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import torch
from package_fixtures import STATS
from physicsnemo_ref import physicsnemo, randomize_

__all__ = [
    "CONV_DETOKENIZER",
    "LAYOUTS",
    "edit_args",
    "reference_dit",
    "small_dit_kwargs",
    "write_dit_mdlus",
    "write_hrrr_package",
]

#: layout name -> the class names, outermost first
LAYOUTS = {
    "DiT": ("DiT",),
    "ConcatConditionWrapper": ("ConcatConditionWrapper", "DiT"),
    "EDMPreconditioner": ("EDMPreconditioner", "ConcatConditionWrapper", "DiT"),
}

#: PhysicsNeMo ``DiT`` arguments of the residual conv-head detokenizer, a small head
#: (``conv_layers`` and ``conv_kernel`` left at PhysicsNeMo's defaults, 2 and 3)
CONV_DETOKENIZER = {"detokenizer": "proj_reshape_2d_conv", "detokenizer_kwargs": {"conv_hidden": 8}}


def small_dit_kwargs(
    in_channels: int, out_channels: int, img_shape: tuple[int, int], **extra: Any
) -> dict[str, Any]:
    """PhysicsNeMo ``DiT`` arguments of a tiny global-attention DiT (CPU tests)."""
    return {
        "input_size": list(img_shape),
        "in_channels": in_channels,
        "out_channels": out_channels,
        "patch_size": 4,
        "hidden_size": 32,
        "depth": 2,
        "num_heads": 4,
        "attention_backend": "timm",
        **extra,
    }


def reference_dit(
    dit_kwargs: dict[str, Any], *, layout: str = "DiT", sigma_data: float = 0.5, seed: int = 0
) -> torch.nn.Module:
    """PhysicsNeMo's module in ``layout`` (a :data:`LAYOUTS` key), random weights, ``eval()``."""
    assert physicsnemo() is not None
    from physicsnemo.diffusion.preconditioners import EDMPreconditioner
    from physicsnemo.diffusion.utils.model_wrappers import ConcatConditionWrapper
    from physicsnemo.models.dit import DiT

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = DiT(**dit_kwargs)
    randomize_(net, seed=seed)
    if layout != "DiT":
        net = ConcatConditionWrapper(net)
    if layout == "EDMPreconditioner":
        net = EDMPreconditioner(net, sigma_data=sigma_data)
    return net.eval()


def write_dit_mdlus(
    path: str | os.PathLike,
    dit_kwargs: dict[str, Any],
    *,
    layout: str = "DiT",
    sigma_data: float = 0.5,
    seed: int = 0,
) -> torch.nn.Module:
    """Save :func:`reference_dit`'s module to ``path`` with ``Module.save``; return it."""
    module = reference_dit(dit_kwargs, layout=layout, sigma_data=sigma_data, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.save(os.fspath(path))
    return module


def edit_args(path: str | os.PathLike, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the ``args.json`` of the ``.mdlus`` zip at ``path`` by ``change(args)`` in place."""
    path = os.fspath(path)
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    args = json.loads(members["args.json"])
    change(args)
    members["args.json"] = json.dumps(args).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


#: a small ERA5 -> HRRR package: Earth2Studio's names, a CONUS corner of the grids
HRRR_ERA5 = ("u10m", "v10m", "t2m", "tcwv", "msl")
HRRR_OUTPUTS = ("u10m", "v10m", "t2m", "refc")
HRRR_WINDOW = {"rows": [500, 516], "cols": [900, 924]}  # 16 x 24 HRRR points
HRRR_FLAGS = ("sst",)


def write_hrrr_package(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    n_invariants: int = 2,
    num_steps: int = 8,
    shift: float = 32.0,
    kind: str = "rectified_flow",
    flags: tuple[str, ...] = HRRR_FLAGS,
) -> dict[str, Any]:
    """Write an ERA5-HRRR package in Earth2Studio 0.19's ``x_pred/`` layout with a random
    bare PhysicsNeMo DiT (global attention: NATTEN is absent here) and return its pieces
    (``dit``: PhysicsNeMo's network, ``metadata``, ``stats``, the arrays)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = os.path.join(os.fspath(root), "x_pred")
    os.makedirs(folder, exist_ok=True)
    rows, cols = HRRR_WINDOW["rows"], HRRR_WINDOW["cols"]
    shape = (rows[1] - rows[0], cols[1] - cols[0])
    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    arrays = {
        "era5_lat": np.arange(45.0, 34.75, -0.25),  # descending, as ERA5
        "era5_lon": np.arange(250.0, 265.25, 0.25),  # 0..360
        "hrrr_lat": (38.0 + 0.027 * yy + 0.002 * xx).astype(np.float32),
        "hrrr_lon": (255.0 + 0.034 * xx - 0.003 * yy).astype(np.float32),
        "invariants": rng.standard_normal((n_invariants, *shape)).astype(np.float32),
    }
    for name, value in arrays.items():
        np.save(os.path.join(folder, f"{name}.npy"), value)
    known = {**STATS, "refc": (-10.0, 15.0)}  # realistic (mean, std), jittered
    stats = {
        group: {v: {"mean": known[v][0] * float(rng.uniform(0.9, 1.1)),
                    "std": known[v][1] * float(rng.uniform(0.9, 1.1))} for v in names}
        for group, names in (("era5", HRRR_ERA5), ("hrrr", HRRR_OUTPUTS))
    }  # fmt: skip
    n_vec = 2 + len(flags)
    kwargs = small_dit_kwargs(
        len(HRRR_OUTPUTS) + len(HRRR_ERA5) + 1 + n_invariants,
        len(HRRR_OUTPUTS),
        shape,
        condition_dim=n_vec,
    )
    dit = write_dit_mdlus(os.path.join(folder, "model.mdlus"), kwargs, seed=seed)
    metadata = {
        "era5_variables": list(HRRR_ERA5),
        "output_variables": list(HRRR_OUTPUTS),
        "network": {"kind": kind, "prediction_type": "x0", "time_scale": 999.0, "sigma_data": 0.5},
        "sampler": {"num_steps": num_steps, "solver": "heun", "shift": shift, "t_max": 0.99,
                    "x0v_clip": 0.05, "amp": False},
        "scalar_conditions": {"day_of_year": True, "presence_flags": list(flags)},
        "hrrr_window": HRRR_WINDOW,
        "checkpoint": "model.mdlus",
        "number_of_samples": 2,
    }  # fmt: skip
    for name, value in (("metadata.json", metadata), ("stats.json", stats)):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(value, f)
    return {"dit": dit, "metadata": metadata, "stats": stats, **arrays}
