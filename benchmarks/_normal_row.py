"""The normal-size row: CorrDiff's ``normal`` networks (~80 M parameters each) on one patch,
ours against PhysicsNeMo 2.2.2's on the same weights, side by side.

Two calls are timed, each with ours and the reference interleaved, batch ``batch``:

* ``forward``: the residual denoiser (EDM-preconditioned SongUNet) at sigma 1.3, no grad;
* ``heun_step``: a sample with a two-step Heun schedule ``[sigma_max, sigma_min, 0]``: the
  regression mean, then one Heun step (2 denoiser calls) and the final Euler step to
  sigma = 0 (1 call): 3 denoiser calls + 1 regression call. The reference runs its
  ``deterministic_sampler``.

FLOPs are counted with ``torch.utils.flop_counter`` on the meta device (shapes only), once
per network; ``*_tflops`` is FLOPs / time and ``*_mfu`` that over the device's dense peak:
the spec sheet's for known GPUs (bf16, or TF32 for fp32: cuDNN convolutions use TF32 by
default) and otherwise the best ``torch.mm`` rate measured here (``peak_source`` says
which). Used by ``vs_physicsnemo.py --normal`` (CPU) and ``gpu_check.py`` (GPU, fp32 and
bf16).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch

#: dense tensor-core peaks in TFLOP/s (NVIDIA data sheets, SXM unless named): bf16, TF32
PEAK_TFLOPS = {
    "H100 PCIe": {"bf16": 756.0, "fp32": 378.0},
    "H100": {"bf16": 989.0, "fp32": 494.7},
    "H200": {"bf16": 989.0, "fp32": 494.7},
    "A100": {"bf16": 312.0, "fp32": 156.0},
}
#: denoiser calls of the Heun sampler with ``num_steps`` steps (the last step is Euler)
HEUN_STEPS = 2
HEUN_CALLS = 2 * HEUN_STEPS - 1


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_peak(device: str, precision: str) -> tuple[float, str]:
    """Dense peak FLOP/s of ``device`` at ``precision`` and where the figure comes from."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
        for key, peaks in PEAK_TFLOPS.items():  # "H100 PCIe" is tried before "H100"
            if key in name:
                return peaks[precision] * 1e12, f"data sheet ({key}, dense {precision})"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
    best = 0.0
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, a)
        _sync(device)
        best = max(best, 2 * 1024**3 / (time.perf_counter() - t0))
    return best, f"measured: best 1024^2 torch.mm rate ({precision})"


def forward_flops(preset: str, cin: int, cout: int, size: int, batch: int) -> dict[str, int]:
    """FLOPs of one residual-denoiser and one regression forward at ``batch`` x size^2."""
    from torch.utils.flop_counter import FlopCounterMode
    from vs_physicsnemo import network_configs

    from corrdiff_xr.config import EDMConfig
    from corrdiff_xr.model import CorrDiff

    reg_cfg, cfg = network_configs(preset, dropout=0.0, channels_last=False)
    out = {}
    with torch.device("meta"), torch.no_grad():
        model = CorrDiff(img_shape=(size, size), in_channels=cin, out_channels=cout,
                         regression_network=reg_cfg, residual_network=cfg, edm=EDMConfig())  # fmt: skip
        x, y = torch.randn(batch, cin, size, size), torch.randn(batch, cout, size, size)
        with FlopCounterMode(display=False) as count:
            model.residual(y, torch.full((batch,), 1.3), condition=torch.cat([y, x], 1))
        out["residual"] = count.get_total_flops()
        with FlopCounterMode(display=False) as count:
            model.predict_mean(x)
        out["regression"] = count.get_total_flops()
    return out


def _timed(fn: Callable[[], torch.Tensor], device: str) -> tuple[float, torch.Tensor]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def normal_rows(
    *,
    size: int = 448,
    cin: int = 12,
    cout: int = 4,
    batch: int = 1,
    repeats: int = 1,
    warmup: bool = False,
    device: str = "cpu",
    precisions: tuple[str, ...] = ("fp32",),
    preset: str = "normal",
) -> dict[str, dict]:
    """Time ours and the reference (same weights) on ``device`` at each precision (``fp32``,
    ``bf16``): one row per precision; see the module docstring.

    ``bf16`` runs both sides under ``torch.autocast(bfloat16)`` (the reference with its
    ``amp_mode`` on); a side that raises is recorded with its error (PhysicsNeMo 2.2.2's UNet
    raises under CPU bf16) and the other side goes on.
    """
    from vs_physicsnemo import build, reference_sample

    from corrdiff_xr.config import SamplerConfig

    ours, rr, rd = build(size, cin, cout, channels_last=True, dropout=0.0, preset=preset)
    for net in (ours, rr, rd):
        net.to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, size, size, generator=g).to(device)
    y = torch.randn(batch, cout, size, size, generator=g).to(device)
    sigma, cond = torch.full((batch,), 1.3, device=device), torch.cat([y, x], 1)
    sampler = SamplerConfig(num_steps=HEUN_STEPS)
    x1 = x[:1]
    calls = {
        "forward": (lambda: ours.residual(y, sigma, condition=cond), lambda: rd(y, cond, sigma)),
        "heun_step": (  # a fresh generator per call: the same noise as the reference's
            lambda: ours.sample(
                x1, generators=[torch.Generator(device).manual_seed(1)], sampler=sampler
            ),
            lambda: reference_sample(rr, rd, x1, sampler, cout),
        ),
    }
    flops = forward_flops(preset, cin, cout, size, batch)
    work = {"forward": flops["residual"],
            "heun_step": (flops["regression"] + HEUN_CALLS * flops["residual"]) // batch}  # fmt: skip
    rows = {}
    for precision in precisions:
        for m in (*rr.modules(), *rd.modules()):  # PhysicsNeMo refuses autocast otherwise
            if hasattr(m, "amp_mode"):
                m.amp_mode = precision == "bf16"
        peak, source = device_peak(device, precision)
        row: dict = {"peak_tflops": peak / 1e12, "peak_source": source,
                     "forward_gflop": work["forward"] / 1e9,
                     "heun_step_gflop": work["heun_step"] / 1e9,
                     "parameters_millions": sum(p.numel() for p in ours.parameters()) / 1e6}  # fmt: skip
        for name, pair in calls.items():
            row |= _time_pair(name, pair, (work[name], peak), device, precision, repeats, warmup)
            if f"{name}_ours_s" in row and f"{name}_reference_s" in row:
                row[f"{name}_speedup"] = row[f"{name}_reference_s"] / row[f"{name}_ours_s"]
        row["settings"] = (
            f"{preset} networks, {size}x{size} patch, {cin} inputs -> {cout} outputs, batch "
            f"{batch} (heun_step: 1 member), {device}, {precision}, {repeats} repetition(s), "
            f"{'one warm-up call per side' if warmup else 'no warm-up call'}, "
            f"{torch.get_num_threads()} torch threads"
        )
        rows[precision] = row
    return rows


def _time_pair(name, pair, work_peak, device, precision, repeats, warmup) -> dict:
    """Ours and the reference interleaved ``repeats`` (+ warm-up) times: median seconds, TFLOP/s
    and MFU (``work_peak``: FLOPs, peak FLOP/s) per side, and their largest difference."""
    amp = (lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)) if (
        precision == "bf16") else contextlib.nullcontext  # fmt: skip
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    outs: dict[str, torch.Tensor] = {}
    row: dict = {}
    with torch.no_grad():
        for _ in range(repeats + int(warmup)):
            for side, fn in zip(times, pair, strict=True):
                if f"{name}_{side}_error" in row:
                    continue
                try:
                    with amp():
                        t, outs[side] = _timed(fn, device)
                except Exception as err:  # noqa: BLE001 - recorded: the other side goes on
                    row[f"{name}_{side}_error"] = f"{type(err).__name__}: {err}"[:300]
                    continue
                times[side].append(t)
    for side, ts in times.items():
        if ts := ts[int(warmup) :]:
            t = statistics.median(ts)
            row[f"{name}_{side}_s"] = t
            row[f"{name}_{side}_tflops"] = work_peak[0] / t / 1e12
            row[f"{name}_{side}_mfu"] = work_peak[0] / t / work_peak[1]
    if len(outs) == 2:
        row[f"{name}_max_abs_diff"] = (
            (outs["ours"].float() - outs["reference"].float()).abs().max().item()
        )
    return row
