"""NVIDIA's CorrDiff Taiwan package (NGC ``corrdiff_inference_package``; Earth2Studio's
``CorrDiffTaiwan``).

NGC ships one zip, ``corrdiff_inference_package.zip``, holding
``corrdiff_inference_package/checkpoints/{regression,diffusion}.mdlus`` and a Zarr dataset
``corrdiff_inference_package/dataset/2023-01-24-cwb-4years_5times.zarr`` with ``XLAT``/``XLONG``
and the 20-channel ``era5_center``/``era5_scale`` and ``cwb_center``/``cwb_scale``. It is read
as the zip, the folder holding it (Earth2Studio's package folder), or the unpacked folder.
Everything else is fixed in Earth2Studio's code, and followed here:

* 12 ERA5 inputs (:data:`INPUTS`, statistics at :data:`INPUT_INDICES`) on a 36 x 40 grid,
  lat ``linspace(19.25, 28, 36)``, lon ``linspace(116, 126, 40, endpoint=False)``; 4 outputs
  (:data:`OUTPUTS`, statistics at :data:`OUTPUT_INDICES`); no invariants;
* the output grid is ``XLAT``/``XLONG`` without their outer row and column: Earth2Studio
  interpolates onto the full arrays and crops ``[1:-1, 1:-1]``, and bilinear interpolation is
  pointwise, so interpolating onto the cropped points is the same. The code, not the issue
  text, fixes the sizes: the networks run on ``XLAT.shape - 2``, and Earth2Studio's grid
  channels are hard-coded at 448, so ``XLAT`` is 450 x 450;
* the regression ``UNet`` is a plain ``SongUNet`` to which the caller appends four sin/cos grid
  channels; they are the legacy ``"sinusoidal"`` grid of ``SongUNetPosEmbd`` with 4
  channels (same formula, same channel order after the inputs), so the network is imported
  as one with that grid built in (:func:`regression_with_grid`);
* Earth2Studio sets ``use_fp16=True`` on both networks, which casts their parameters and
  buffers (the residual's sinusoidal grid and noise-embedding frequencies among them) to
  float16; on a GPU it then computes in float16, on the CPU in float32 with the rounded
  values. The networks are imported with the same rounded values (:func:`as_run_in_fp16`),
  so they compute what Earth2Studio computes on the CPU;
* the residual sees the regression mean; the sampler is deterministic Euler with 8 steps
  (sigma 0.002..80 clipped to the residual's own range), and member seeds are drawn from the
  package seed (:func:`member_seeds`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from corrdiff_xr.model.packages._build import (
    coarse_grid,
    codec_for,
    fine_grid,
    sampler_for,
)
from corrdiff_xr.model.packages._files import PackageError, PackageFiles

if TYPE_CHECKING:
    import torch

    from corrdiff_xr.model.packages.package import Package

__all__ = [
    "INPUTS",
    "INPUT_INDICES",
    "OUTPUTS",
    "OUTPUT_INDICES",
    "detect",
    "member_seeds",
    "as_run_in_fp16",
    "read",
    "regression_with_grid",
]

INPUTS = ("tcwv", "z500", "t500", "u500", "v500", "z850", "t850", "u850", "v850", "t2m", "u10m", "v10m")  # fmt: skip
OUTPUTS = ("mrr", "t2m", "u10m", "v10m")
INPUT_INDICES = (0, 1, 2, 3, 4, 9, 10, 11, 12, 17, 18, 19)
OUTPUT_INDICES = (0, 17, 18, 19)
NUMBER_OF_STEPS = 8
ROOT = "corrdiff_inference_package"
ZIP = f"{ROOT}.zip"
DATASET = "dataset/2023-01-24-cwb-4years_5times.zarr"
CHECKPOINTS = ("checkpoints/regression.mdlus", "checkpoints/diffusion.mdlus")
ARRAYS = ("XLAT", "XLONG", "era5_center", "era5_scale", "cwb_center", "cwb_scale")


def input_lat_lon() -> tuple[np.ndarray, np.ndarray]:
    """The fixed ERA5 input grid (float32, as Earth2Studio interpolates from it)."""
    lat = np.linspace(19.25, 28, 36, endpoint=True).astype(np.float32)
    lon = np.linspace(116, 126, 40, endpoint=False).astype(np.float32)
    return lat, lon


def detect(files: PackageFiles) -> bool:
    """The zip, the folder holding it, the unpacked folder, or its inner folder."""
    return (
        ZIP in files
        or f"{ROOT}/{CHECKPOINTS[0]}" in files
        or (CHECKPOINTS[0] in files and any(n.startswith("dataset/") for n in files.names))
    )


def member_seeds(seed: int, members: int) -> list[int]:
    """Earth2Studio's seeds for ``members`` samples: drawn from a generator seeded ``seed``."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2**32, (members,), generator=gen).tolist()


def regression_with_grid(ck):
    """The Taiwan regression checkpoint as a ``SongUNetPosEmbd`` with its 4 sinusoidal grid
    channels built in (they are appended by the caller in the package's code)."""
    from corrdiff_xr.model.mdlus import _SONGUNET_DEFAULTS

    model_type = ck.args.get("model_type", "SongUNetPosEmbd")
    if ck.name not in ("UNet", "CorrDiffRegressionUNet") or model_type != "SongUNet":
        raise PackageError(
            f"{ck.source}: expected the Taiwan regression, a UNet of model_type 'SongUNet' "
            f"(the caller appends its 4 sin/cos grid channels); found {ck.name} of model_type "
            f"{model_type!r}"
        )
    # the SongUNet defaults stay those of the file's class once the type changes
    args = {
        **{k: v for k, v in _SONGUNET_DEFAULTS.items() if k not in ("gridtype", "N_grid_channels")},
        **ck.args,
        "model_type": "SongUNetPosEmbd",
        "gridtype": "sinusoidal",
        "N_grid_channels": 4,
    }
    return dataclasses.replace(ck, args=args)


def as_run_in_fp16(ck):
    """``ck`` with its floating tensors rounded to float16 (and kept as float32), as
    Earth2Studio's ``use_fp16=True`` leaves them; a computed sinusoidal grid becomes a stored
    (learnable-type) one holding its rounded values."""
    import torch

    from corrdiff_xr.nn.embeddings import GridEmbedding

    sd = {k: v.half().float() if v.is_floating_point() else v for k, v in ck.state_dict.items()}
    args = dict(ck.args)
    if args.get("model_type") != "SongUNet" and args.get("gridtype", "sinusoidal") == "sinusoidal":
        res = args.get("img_resolution")
        shape = (res, res) if isinstance(res, int) else tuple(res or ())
        channels = args.get("N_grid_channels", 4)
        if len(shape) != 2 or not all(isinstance(n, int) and n > 1 for n in shape):
            raise PackageError(f"{ck.source}: args.json img_resolution={res!r} is not a grid")
        grid = GridEmbedding(shape, gridtype="sinusoidal", channels=channels)
        with torch.no_grad():
            sd["model.pos_embd"] = grid(None, shape, 1)[0].half().float()
        args["gridtype"] = "learnable"
    return dataclasses.replace(ck, args=args, state_dict=sd)


def _round_noise_frequencies(model) -> None:
    # a persistent buffer there, computed here: rounded like the rest
    net = model.residual.net
    if getattr(net, "map_noise", None) is not None:
        net.map_noise.freqs.copy_(net.map_noise.freqs.half().float())


def _dataset(files: PackageFiles) -> str:
    if any(n.startswith(DATASET + "/") for n in files.names):
        return DATASET
    stores = sorted(
        {n.split("/")[1] for n in files.names if n.startswith("dataset/") and n.count("/") > 1}
    )
    zarrs = [s for s in stores if s.endswith(".zarr")]
    if len(zarrs) != 1:
        raise PackageError(
            f"{files.source}: expected one Zarr dataset under dataset/ ({DATASET}); found {zarrs}"
        )
    return f"dataset/{zarrs[0]}"


def _statistics(arrays: dict[str, np.ndarray], where: str) -> dict:
    stats = {}
    for section, prefix, names, indices in (
        ("input", "era5", INPUTS, INPUT_INDICES),
        ("output", "cwb", OUTPUTS, OUTPUT_INDICES),
    ):
        centre, scale = arrays[f"{prefix}_center"], arrays[f"{prefix}_scale"]
        for key, values in ((f"{prefix}_center", centre), (f"{prefix}_scale", scale)):
            if values.ndim != 1 or values.size <= max(indices):
                raise PackageError(
                    f"{where}: {key} must be 1-D with at least {max(indices) + 1} channels, "
                    f"is {values.shape}"
                )
        # float32, as Earth2Studio normalises with them
        for name, i in zip(names, indices, strict=True):
            stats[section, name] = (float(np.float32(centre[i])), float(np.float32(scale[i])))
    return stats


def _output_lat_lon(arrays: dict[str, np.ndarray], where: str) -> tuple[np.ndarray, np.ndarray]:
    lat, lon = arrays["XLAT"], arrays["XLONG"]
    if lat.ndim != 2 or lat.shape != lon.shape or min(lat.shape) < 3:
        raise PackageError(
            f"{where}: XLAT {lat.shape} and XLONG {lon.shape} must be 2-D, equal and at least 3 x 3"
        )
    return lat[1:-1, 1:-1].astype(np.float32), lon[1:-1, 1:-1].astype(np.float32)


def read(files: PackageFiles, *, map_location: str | torch.device = "cpu") -> Package:
    """The :class:`~corrdiff_xr.model.packages.Package` in ``files`` (Taiwan layout)."""
    if ZIP in files and f"{ROOT}/{CHECKPOINTS[0]}" not in files:
        with files.zip(ZIP) as inner:
            return read(inner, map_location=map_location)
    if f"{ROOT}/{CHECKPOINTS[0]}" in files:
        files = files.within(ROOT)
    from corrdiff_xr.model.mdlus import MdlusError, import_mdlus
    from corrdiff_xr.model.packages.package import Package

    for name in CHECKPOINTS:
        files.require(name)
    store = _dataset(files)
    where = files.where(store)
    arrays = files.zarr_arrays(store, ARRAYS)
    lat, lon = _output_lat_lon(arrays, where)
    codec, input_names = codec_for(INPUTS, OUTPUTS, (), _statistics(arrays, where))
    regression = regression_with_grid(as_run_in_fp16(files.mdlus(CHECKPOINTS[0])))
    residual = as_run_in_fp16(files.mdlus(CHECKPOINTS[1]))
    try:
        model = import_mdlus(
            regression, residual, codec=codec, hr_mean_conditioning=True, map_location=map_location
        )
    except MdlusError as err:
        raise PackageError(
            f"{err} (the Taiwan package has {len(INPUTS)} inputs and {len(OUTPUTS)} outputs, "
            "and its residual sees the regression mean)"
        ) from err
    _round_noise_frequencies(model)
    if lat.shape != model.img_shape:
        raise PackageError(
            f"{where}: XLAT/XLONG crop to {lat.shape[0]} x {lat.shape[1]} but the networks run on "
            f"{model.img_shape[0]} x {model.img_shape[1]} (XLAT must have one more row and "
            "column on each side)"
        )
    model.sampler_config = sampler_for(
        "deterministic", "euler", NUMBER_OF_STEPS, (None, None), residual.args
    )
    fine = fine_grid(lat, lon)
    import xarray as xr

    return Package(
        model=model,
        layout="taiwan",
        source=files.source,
        input_grid=coarse_grid(*input_lat_lon()),
        output_grid=fine,
        invariants=xr.Dataset(coords=fine.coords),
        members=1,
        seed=None,
        inference_mode="both",
        input_names=input_names,
        metadata={
            "dataset": store,
            "input_indices": INPUT_INDICES,
            "output_indices": OUTPUT_INDICES,
        },
    )
