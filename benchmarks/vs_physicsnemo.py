"""Speed of corrdiff_xr's networks against PhysicsNeMo 2.2.2, side by side in one process.

Both sides get the *same* weights (the reference's, copied across) and the same inputs on the
CorrDiff "mini" configuration (64 x 64, 28 inputs -> 2 outputs, batch 8). Measured, each as
the median of ``--repeats`` runs with ours and the reference interleaved (the machine is
shared and noisy, so only ratios measured together mean much):

* ``forward``: residual denoiser forward (eval, no grad), batch 8;
* ``regression step``: regression loss forward + backward + Adam step, batch 8;
* ``residual step``: residual loss (regression mean under no_grad, then the denoiser) forward
  + backward + Adam step, batch 8; the reference uses its own ``RegressionLoss`` /
  ``ResidualLoss``, ours :mod:`corrdiff_xr.edm`;
* ``sample``: one generated sample, 18-step Heun (35 denoiser calls) plus the regression
  mean, batch 1; the reference uses its ``deterministic_sampler``.

Each measurement starts with one untimed warm-up call per side (allocator, oneDNN primitive
caches). Both sides train with ``torch.optim.Adam`` at its defaults, which is what
:mod:`corrdiff_xr.training` builds (on CPU that is the per-parameter loop: neither ``foreach``
nor ``fused``). ``--compile`` adds our training steps with the networks wrapped in
``torch.compile`` (mode default), reporting the compile (first-call) time apart from the
steady-state time. ``--profile`` prints the top operators (torch.profiler, CPU time) of one
regression step per side.

The compute floor: each training step's FLOPs are counted (``torch.utils.flop_counter``; the
same on both sides, convolutions are > 99 % of them) and divided by the fastest 3x3
convolution rate this machine reaches in the same run (forward, backward-input and
backward-weight, both memory layouts, at the network's shapes). ``*_step_floor_s`` is the time
a step would take if every FLOP ran at that rate and nothing else cost anything;
``max_speedup_*`` = reference time / floor is the largest ratio any implementation of the same
arithmetic could reach against the reference here.

``--normal`` runs only the normal-size row (:mod:`_normal_row`: CorrDiff's ``normal``
networks, ~80 M parameters each, on one 448 x 448 patch, 12 inputs -> 4 outputs, batch 1:
the residual forward and a sample of the two-step Heun schedule: one Heun step, then the
final Euler step to sigma 0, ours vs the reference on the same weights) and merges it into ``--json`` under ``normal_448``, leaving the other rows as they
are. A 448^2 forward takes tens of seconds on two CPU cores, so by default it runs once per
side without a warm-up call (``--repeats`` sets more).

Ratios are reference / ours (> 1 means we are faster). Usage::

    python benchmarks/vs_physicsnemo.py --json benchmarks/results/vs_physicsnemo.json
    python benchmarks/vs_physicsnemo.py --quick   # 1 repeat, 6 sampler steps: a smoke run
    python benchmarks/vs_physicsnemo.py --normal --repeats 1 \
        --json benchmarks/results/vs_physicsnemo.json   # adds the normal-size row
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from physicsnemo_ref import (
    copy_reference_weights,
    physicsnemo,
    randomize_,
    reference_regression,
    reference_residual,
)

from corrdiff_xr import edm as _edm
from corrdiff_xr.config import EDMConfig, NetworkConfig, SamplerConfig
from corrdiff_xr.model import CorrDiff


def _median_time(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _profile(label: str, f_ours: Callable[[], object], f_ref: Callable[[], object]) -> None:
    """Print the top operators by self CPU time of one call of each side."""
    from torch.profiler import ProfilerActivity, profile

    for side, fn in (("ours", f_ours), ("reference", f_ref)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        print(f"--- {label}, {side} ---")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def _train_step(opt: torch.optim.Optimizer, loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One optimiser step on ``loss()``: zero grads, backward, step."""

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    return step


def _count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _conv_peak_gflops(batch: int, repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s of the 3x3 convolutions the mini UNet runs, per pass and layout."""
    shapes = [(64, 64, 64), (128, 128, 32), (256, 128, 32), (128, 64, 64)]
    best: dict[str, float] = {}
    for cin, cout, size in shapes:
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(batch, cin, size, size).contiguous(memory_format=layout)
            w = (0.05 * torch.randn(cout, cin, 3, 3)).contiguous(memory_format=layout)
            g = torch.randn(batch, cout, size, size).contiguous(memory_format=layout)
            flops = 2.0 * batch * size * size * cin * cout * 9
            passes = {
                "forward": lambda x=x, w=w: torch.conv2d(x, w, None, 1, 1),
                "backward_input": lambda g=g, x=x, w=w: torch.ops.aten.convolution_backward(
                    g,
                    x,
                    w,
                    None,
                    [1, 1],
                    [1, 1],
                    [1, 1],
                    False,
                    [0, 0],
                    1,
                    [True, False, False],
                ),
                "backward_weight": lambda g=g, x=x, w=w: torch.ops.aten.convolution_backward(
                    g,
                    x,
                    w,
                    None,
                    [1, 1],
                    [1, 1],
                    [1, 1],
                    False,
                    [0, 0],
                    1,
                    [False, True, False],
                ),
            }
            for name, fn in passes.items():
                fn()
                t = min(_median_time(fn, repeats))
                best[name] = max(best.get(name, 0.0), flops / t / 1e9)
    best["any"] = max(best.values())
    return best


def _compiled_steps(ours, x, y, repeats: int, results: dict) -> dict[str, float]:
    """Our regression and residual steps with ``torch.compile``'d networks (mode default)."""
    out: dict[str, float] = {}
    for name in ("regression", "residual"):
        net = getattr(ours, name)
        ours.train()
        if name == "residual":
            ours.regression.eval()
        compiled = torch.compile(net)
        opt = torch.optim.Adam(net.parameters(), lr=1e-6)

        def loss(name=name, compiled=compiled):
            if name == "regression":
                return _edm.regression_loss(lambda v: compiled(v), x, y, reduction="sum_per_sample")
            return _edm.residual_loss(
                compiled,
                x,
                y,
                edm=ours.edm_config,
                regression=ours.predict_mean,
                reduction="sum_per_sample",
            )

        step = _train_step(opt, loss)

        t0 = time.perf_counter()
        step()
        out[f"compiled_{name}_step_first_call_s"] = time.perf_counter() - t0
        step()  # the backward graph may finish compiling on the second call
        t = statistics.median(_median_time(step, repeats))
        out[f"compiled_{name}_step_ours_s"] = t
        ref_t = results.get(f"{name}_step_reference_s")
        if ref_t:
            out[f"compiled_train_step_speedup_{name}"] = ref_t / t
        print(
            f"compiled {name} step: first call {out[f'compiled_{name}_step_first_call_s']:.1f} s, "
            f"steady {t:.3f} s",
            flush=True,
        )
    return out


@torch.no_grad()
def reference_sample(rr, rd, x: torch.Tensor, sampler: SamplerConfig, cout: int) -> torch.Tensor:
    """PhysicsNeMo's sample of one member (seed 1): its regression mean + deterministic_sampler."""
    from physicsnemo.diffusion.samplers import deterministic_sampler

    shape, device = (1, cout, *x.shape[-2:]), x.device
    mean = rr(torch.zeros(shape, device=device), x)
    lat = torch.randn(shape, generator=torch.Generator(device).manual_seed(1), device=device)
    res = deterministic_sampler(
        rd,
        lat,
        x,
        mean_hr=mean,
        num_steps=sampler.num_steps,
        sigma_min=sampler.sigma_min,
        sigma_max=sampler.sigma_max,
        rho=sampler.rho,
        solver=sampler.solver,
    )
    return mean + res


def network_configs(preset: str, **fields) -> tuple[NetworkConfig, NetworkConfig]:
    """The regression and residual network configurations of a preset (``"tiny"``: the
    tests' :data:`~corrdiff_xr.testing.TINY_NETWORK`, for dry runs)."""
    if preset == "tiny":
        from corrdiff_xr.testing import TINY_NETWORK

        cfg = dataclasses.replace(TINY_NETWORK, **fields)
    else:
        cfg = NetworkConfig.preset(preset, **fields)
    return dataclasses.replace(cfg, embedding_type="zero"), cfg


def build(
    size: int, cin: int, cout: int, *, channels_last: bool, dropout: float, preset: str = "mini"
):
    """Our model and the reference regression / residual with identical weights."""
    reg_cfg, cfg = network_configs(preset, dropout=dropout, channels_last=channels_last)
    ours = CorrDiff(
        img_shape=(size, size),
        in_channels=cin,
        out_channels=cout,
        regression_network=reg_cfg,
        residual_network=cfg,
        edm=EDMConfig(),
    )
    rr = randomize_(
        reference_regression(reg_cfg, in_channels=cin, out_channels=cout, img_shape=(size, size)),
        seed=1,
    )
    rd = randomize_(
        reference_residual(
            cfg,
            EDMConfig(),
            cond_channels=cin + cout,
            out_channels=cout,
            img_shape=(size, size),
        ),
        seed=2,
    )
    copy_reference_weights(rr, ours.regression, target_prefix="net.")
    copy_reference_weights(rd, ours.residual, target_prefix="net.")
    return ours, rr, rd


def _normal(args) -> int:
    """The normal-size row, merged into ``args.json`` (other rows kept as they are)."""
    from _normal_row import normal_rows

    if physicsnemo() is None:
        print("physicsnemo cannot be imported; nothing to compare against", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    row = normal_rows(repeats=1 if args.quick else args.repeats)["fp32"]
    row |= {"load_average_start": load, "load_average_end": os.getloadavg(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "physicsnemo": getattr(physicsnemo(), "__version__", "?")}  # fmt: skip
    print(json.dumps(row, indent=2))
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.exists() else {}
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(old | {"normal_448": row}, indent=2))
        tmp.replace(args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write results here")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 repeat and a 6-step sampler (smoke run)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile'd training steps",
    )
    p.add_argument("--profile", action="store_true", help="print per-operator CPU time of one step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--inputs", type=int, default=28)
    p.add_argument("--outputs", type=int, default=2)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="run OUR training steps under torch.autocast(bfloat16) (train.py's bf16 option) "
        "against the reference in fp32: PhysicsNeMo 2.2.2's regression UNet raises a dtype "
        "error under CPU bf16 autocast, even with amp_mode=True; keys get a _bf16 suffix",
    )
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["forward", "regression", "residual", "sample"],
    )
    p.add_argument("--normal", action="store_true", help="only the normal-size row (see above)")
    args = p.parse_args(argv)
    if args.normal:
        return _normal(args)

    def amp():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    suffix = "_bf16" if args.bf16 else ""
    if args.quick:
        args.repeats = 1
    sample_steps = 6 if args.quick else 18
    if physicsnemo() is None:
        print(
            "physicsnemo cannot be imported; nothing to compare against",
            file=sys.stderr,
        )
        return 1
    from physicsnemo.diffusion.metrics.legacy_losses import RegressionLoss, ResidualLoss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, S, cin, cout = args.batch, args.size, args.inputs, args.outputs
    ours, rr, rd = build(S, cin, cout, channels_last=not args.no_channels_last, dropout=0.13)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, cin, S, S, generator=g)
    y = torch.randn(B, cout, S, S, generator=g)
    results: dict[str, object] = {"load_average_start": os.getloadavg()}
    if args.bf16:
        results["precision"] = (
            "ours: torch.autocast(cpu, bfloat16); reference: fp32 (its regression UNet raises "
            "a dtype error under CPU bf16 autocast in PhysicsNeMo 2.2.2)"
        )
    times: dict[str, dict[str, list[float]]] = {}
    flop_counts: dict[str, tuple[int, int]] = {}

    # parity check of what we time (eval mode, no dropout)
    ours.eval(), rr.eval(), rd.eval()
    with torch.no_grad():
        sigma = torch.full((B,), 1.3)
        cond = torch.cat([y, x], dim=1)
        diff = (ours.residual(y, sigma, condition=cond) - rd(y, cond, sigma)).abs().max().item()
        diff_r = (ours.predict_mean(x) - rr(torch.zeros_like(y), x)).abs().max().item()
    results["max_abs_diff_denoiser"] = diff
    results["max_abs_diff_regression"] = diff_r

    def pair(name: str, f_ours, f_ref, repeats: int):
        f_ours(), f_ref()  # warm-up (allocator, oneDNN primitives)
        t_o, t_r = [], []
        for _ in range(repeats):
            t_o += _median_time(f_ours, 1)
            t_r += _median_time(f_ref, 1)
        times[name] = {"ours_s": t_o, "reference_s": t_r}
        mo, mr = statistics.median(t_o), statistics.median(t_r)
        results[f"{name}_ours_s"] = mo
        results[f"{name}_reference_s"] = mr
        print(
            f"{name:>22}: ours {mo:.3f} s, reference {mr:.3f} s, speedup {mr / mo:.2f}x",
            flush=True,
        )
        return mr / mo

    if "forward" not in args.skip:
        with torch.no_grad():
            sigma = torch.full((B,), 1.3)
            cond = torch.cat([y, x], dim=1)
            results["forward_speedup"] = pair(
                "forward",
                lambda: ours.residual(y, sigma, condition=cond),
                lambda: rd(y, cond, sigma),
                args.repeats,
            )

    ours.train(), rr.train(), rd.train()
    if "regression" not in args.skip:
        opt_o = torch.optim.Adam(ours.regression.parameters(), lr=1e-6)
        opt_r = torch.optim.Adam(rr.parameters(), lr=1e-6)
        ref_loss = RegressionLoss()

        def loss_ours():
            with amp():
                return _edm.regression_loss(ours.predict_mean, x, y, reduction="sum_per_sample")

        step_ours = _train_step(opt_o, loss_ours)
        step_ref = _train_step(opt_r, lambda: ref_loss(net=rr, img_clean=y, img_lr=x).sum() / B)

        results["train_step_speedup_regression" + suffix] = pair(
            "regression_step" + suffix, step_ours, step_ref, args.repeats
        )
        flop_counts["regression"] = (_count_flops(step_ours), _count_flops(step_ref))
        if args.profile:
            _profile("regression step", step_ours, step_ref)

    if "residual" not in args.skip:
        rr.eval()
        ours.regression.eval()
        opt_o = torch.optim.Adam(ours.residual.parameters(), lr=1e-6)
        opt_r = torch.optim.Adam(rd.parameters(), lr=1e-6)
        ref_loss = ResidualLoss(regression_net=rr, hr_mean_conditioning=True)

        def loss_ours():
            with amp():
                return _edm.residual_loss(
                    ours.residual,
                    x,
                    y,
                    edm=ours.edm_config,
                    regression=ours.predict_mean,
                    reduction="sum_per_sample",
                )

        step_ours = _train_step(opt_o, loss_ours)
        step_ref = _train_step(opt_r, lambda: ref_loss(net=rd, img_clean=y, img_lr=x).sum() / B)

        results["train_step_speedup_residual" + suffix] = pair(
            "residual_step" + suffix, step_ours, step_ref, args.repeats
        )
        flop_counts["residual"] = (_count_flops(step_ours), _count_flops(step_ref))
        if args.profile:
            _profile("residual step", step_ours, step_ref)

    if flop_counts and not args.bf16:
        peak = _conv_peak_gflops(B)
        results["conv3x3_best_gflops"] = peak
        for name, (f_ours, f_ref) in flop_counts.items():
            floor = f_ours / (peak["any"] * 1e9)
            results[f"{name}_step_gflop_ours"] = f_ours / 1e9
            results[f"{name}_step_gflop_reference"] = f_ref / 1e9
            results[f"{name}_step_floor_s"] = floor
            results[f"max_speedup_{name}"] = results[f"{name}_step_reference_s"] / floor
            print(
                f"{name} step: {f_ours / 1e9:.0f} GFLOP (reference {f_ref / 1e9:.0f}); "
                f"best conv rate {peak['any']:.0f} GFLOP/s -> floor {floor:.2f} s, "
                f"at most {results[f'max_speedup_{name}']:.2f}x the reference",
                flush=True,
            )

    if args.compile:
        results.update(_compiled_steps(ours, x, y, args.repeats, results))

    if "sample" not in args.skip:
        ours.eval(), rr.eval(), rd.eval()
        x1 = x[:1]
        sampler = SamplerConfig(num_steps=sample_steps)

        def sample_ours():
            return ours.sample(x1, generators=[torch.Generator().manual_seed(1)], sampler=sampler)

        def sample_ref():
            return reference_sample(rr, rd, x1, sampler, cout)

        a, b = sample_ours(), sample_ref()
        results["sample_max_abs_diff"] = (a - b.float()).abs().max().item()
        results["sample_speedup"] = pair(
            "sample", sample_ours, sample_ref, max(1, args.repeats // 2)
        )

    results.update(
        config="mini (64 channels, channel_mult [1,2,2], attention at 16, 4 blocks, dropout 0.13)",
        batch=B,
        size=S,
        inputs=cin,
        outputs=cout,
        threads=args.threads,
        repeats=args.repeats,
        sample_steps=sample_steps,
        optimizer="torch.optim.Adam defaults on both sides (as corrdiff_xr.training builds it)",
        quick=args.quick,
        channels_last=not args.no_channels_last,
        torch=torch.__version__,
        physicsnemo=getattr(physicsnemo(), "__version__", "?"),
        machine=platform.machine(),
        processor=platform.processor(),
        load_average_end=os.getloadavg(),
        cpu_count=os.cpu_count(),
        timings=times,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
