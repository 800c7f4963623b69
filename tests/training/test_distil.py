"""Distillation into a few-call student, against known answers and as a normal checkpoint.

The known answer: per pixel, residuals ``r | c ~ N(m(c), S^2)`` with ``m(c) = A + B c`` for a
condition ``c``. The exact denoiser is ``m + S^2 / (S^2 + sigma^2) (x - m)`` and the exact
consistency function (the end of the probability-flow ODE through ``x`` at ``sigma``) is
``m + (x - m) S / sqrt(S^2 + sigma^2)``, so a student's samples have a mean and variance to
compare with ``m(c)`` and ``S^2``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from corrdiff_xr import sampling
from corrdiff_xr.codec import Codec
from corrdiff_xr.config import EDMConfig, SamplerConfig
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.edm import EDMPrecond
from corrdiff_xr.inference import downscale
from corrdiff_xr.inference.calibrate import calibrate, default_candidates
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.testing import tiny_corrdiff
from corrdiff_xr.training.distil import (
    DistilConfig,
    draw_batch,
    record_trajectories,
    student_sampler,
    train_student,
)
from corrdiff_xr.training.distil_run import DistilError, distil

A, B, S = 0.3, 0.8, 0.4
SIGMA_MAX = 80.0


def _mean(c: torch.Tensor) -> torch.Tensor:
    return A + B * c


def gaussian_teacher(x, sigma, *, condition, offsets=None):
    m, s2 = _mean(condition), sigma.reshape(-1, 1, 1, 1) ** 2
    return m + S**2 / (S**2 + s2) * (x - m)


def exact_student(x, sigma, *, condition, offsets=None):
    m, s2 = _mean(condition), sigma.reshape(-1, 1, 1, 1) ** 2
    return m + (x - m) * S / torch.sqrt(S**2 + s2)


class PixelNet(nn.Module):
    """A per-pixel MLP (1x1 convolutions) with the residual networks' call signature."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 1), nn.SiLU(), nn.Conv2d(32, 1, 1))

    def forward(self, inputs, noise, *, offsets=None, lead_time=None):
        level = noise.reshape(-1, 1, 1, 1).expand(-1, 1, *inputs.shape[-2:])
        return self.body(torch.cat([inputs, level], dim=1))


def _conditions(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g, dtype=torch.float64) * 2 - 1


def test_recorded_trajectories_are_the_teachers_ode_solve_cut_at_every_level():
    cfg = DistilConfig(calls=2, sigma_max=SIGMA_MAX, teacher_steps=40, floor=0.1)
    cond = _conditions(4, 0)
    latents = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=cond.dtype)
    traj = record_trajectories(gaussian_teacher, cond, torch.zeros(4, 2), latents,
                               teacher=cfg.teacher(), floor=cfg.floor, calls=2)  # fmt: skip
    sigmas = sampling.karras_sigmas(cfg.teacher())
    assert traj.sigmas[0] == SIGMA_MAX and traj.sigmas.min() >= 0.1
    assert len(traj.sigmas) == int((sigmas[:-1] >= 0.1).sum())

    def denoise(x, s):
        return gaussian_teacher(x, s, condition=cond)

    m, x_max = _mean(cond), latents * SIGMA_MAX
    for k, sigma in enumerate(traj.sigmas.tolist()):
        solved = sampling.heun(denoise, x_max, sigmas[: k + 1]) if k else x_max
        torch.testing.assert_close(traj.states[:, k], solved, atol=1e-9, rtol=0)
        exact = m + (x_max - m) * math.sqrt((S**2 + sigma**2) / (S**2 + SIGMA_MAX**2))
        torch.testing.assert_close(traj.states[:, k], exact, atol=0.02, rtol=0)
    torch.testing.assert_close(traj.endpoints, sampling.heun(denoise, x_max, sigmas), atol=1e-9,
                               rtol=0)  # fmt: skip
    exact_end = exact_student(x_max, torch.tensor([SIGMA_MAX]), condition=cond)
    torch.testing.assert_close(traj.endpoints, exact_end, atol=0.02, rtol=0)


@pytest.mark.parametrize("calls", [1, 2, 4])
def test_the_distilled_sampler_with_the_exact_student_draws_the_data_distribution(calls):
    cond = _conditions(1, 2).expand(4000, -1, -1, -1)
    gens = sampling.make_generators(range(4000))
    latents = sampling.draw_latents(gens, (1, 6, 6), dtype=torch.float64)
    for noise in (1.0, 1.3):  # the noise scale scales the spread (nearly exactly, for 1 call)
        cfg = SamplerConfig(solver="distilled", num_steps=calls, sigma_max=SIGMA_MAX,
                            sigma_min=0.5, S_noise=noise)  # fmt: skip
        out = sampling.sample(lambda x, s: exact_student(x, s, condition=cond), latents,
                              config=cfg, generators=gens)  # fmt: skip
        assert sampling.SOLVERS["distilled"].calls(calls) == calls
        np.testing.assert_allclose(out.mean(0), _mean(cond[0]), atol=0.05)
        std = out.std(0).mean()
        if calls == 1:
            assert abs(std / (noise * S) - 1) < 0.03
        elif noise == 1.0:  # re-noised to sigma: exactly the marginal there, whatever sigma
            assert abs(std / S - 1) < 0.03
        else:
            assert std > 1.05 * S


def test_a_distilled_one_call_student_draws_the_known_conditional_distribution():
    # tolerances: mean within 0.05 of m(c) (c in [-1, 1], m in [-0.5, 1.1]); std within 10 %
    torch.manual_seed(0)
    cfg = DistilConfig(calls=1, sigma_max=SIGMA_MAX, trajectories=96, steps=600,
                       batch_size=16, lr=3e-3)  # fmt: skip
    cond = _conditions(cfg.trajectories, 3).float()
    latents = torch.randn(cfg.trajectories, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    traj = record_trajectories(gaussian_teacher, cond, torch.zeros(len(cond), 2), latents,
                               teacher=cfg.teacher(), floor=cfg.floor, calls=1)  # fmt: skip
    student = EDMPrecond(PixelNet(), edm=EDMConfig())
    updates, loss, cpu = train_student(student, traj, cfg, sigma_data=0.5)
    assert updates == cfg.steps and loss < 0.02 and cpu > 0
    test = torch.linspace(-1, 1, 6).reshape(1, 1, 1, 6).expand(2000, 1, 6, 6)
    gens = sampling.make_generators(range(2000))
    with torch.no_grad():
        out = sampling.sample(lambda x, s: student(x, s, condition=test),
                              sampling.draw_latents(gens, (1, 6, 6)),
                              config=student_sampler(cfg), generators=gens)  # fmt: skip
    np.testing.assert_allclose(out.mean(0), _mean(test[0]), atol=0.05)
    ratio = out.std(0) / S
    assert float((ratio - 1).abs().max()) < 0.1, ratio
    # the regression onto the posterior mean, which this is not, would have no spread at all
    assert float(out.std(0).min()) > 0.3


def test_checkpointing_a_student_without_saving_and_loading_its_weights_is_refused(tmp_path):
    cfg = DistilConfig(calls=1, sigma_max=SIGMA_MAX, trajectories=4, steps=1, batch_size=2)
    cond = _conditions(cfg.trajectories, 3).float()
    traj = record_trajectories(gaussian_teacher, cond, torch.zeros(len(cond), 2),
                               torch.randn(len(cond), 1, 6, 6), teacher=cfg.teacher(),
                               floor=cfg.floor, calls=1)  # fmt: skip
    student = EDMPrecond(PixelNet(), edm=EDMConfig())
    with pytest.raises(ValueError, match="root= needs save_model and load_model"):
        train_student(student, traj, cfg, sigma_data=0.5, root=tmp_path, save_model=print)
    assert not any(tmp_path.iterdir())  # refused before any update or checkpoint


def test_update_batches_are_a_pure_function_of_seed_and_update():
    a = draw_batch(50, 6, 8, calls=2, seed=3, step=7)
    b = draw_batch(50, 6, 8, calls=2, seed=3, step=7)
    c = draw_batch(50, 6, 8, calls=2, seed=3, step=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    rows, levels = draw_batch(50, 6, 400, calls=2, seed=0, step=0)
    assert 0.4 < float((levels == 0).float().mean()) < 0.6 and int(levels.max()) == 5
    assert int(draw_batch(50, 6, 64, calls=1, seed=0, step=0)[1].abs().sum()) == 0


# -- a distilled checkpoint ------------------------------------------------------------------
FAST = DistilConfig(calls=2, teacher_steps=4, trajectories=4, steps=6, batch_size=2,
                    checkpoint_every=2)  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ds = synthetic_dataset(ny=16, nx=16, nt=3, factor=4, seed=1, chunks={"time": 1})
    pair = open_pair(ds)
    teacher = tiny_corrdiff(Codec.from_pair(pair), (16, 16))
    out = tmp_path_factory.mktemp("distil") / "student.safetensors"
    result = distil(teacher, pair, out, config=FAST)
    return pair, teacher, result


def _weights(path) -> dict[str, torch.Tensor]:
    return CorrDiff.load(path).state_dict()


def test_the_student_is_a_checkpoint_with_the_teachers_codec_regression_and_own_sampler(setup):
    pair, teacher, result = setup
    assert result.completed and result.updates == 6 and result.samples_seen == 12
    assert result.teacher_calls == 4 * 7 and result.cpu_seconds > 0
    student = CorrDiff.load(result.path)
    assert student.codec.to_dict() == teacher.codec.to_dict()
    assert student.sampler_config == student_sampler(FAST)
    assert student.sampler_config.solver == "distilled" and student.sampler_config.num_steps == 2
    for name, value in teacher.regression.state_dict().items():
        torch.testing.assert_close(student.regression.state_dict()[name], value, rtol=0, atol=0)
    moved = [n for n, v in teacher.residual.state_dict().items()
             if not torch.equal(student.residual.state_dict()[n], v)]  # fmt: skip
    assert moved  # the residual network was trained


def test_distilled_members_depend_only_on_seed_time_member_and_settings_not_chunking(setup):
    pair, _, result = setup
    path = str(result.path)
    ref = downscale(pair, path, members=3, seed=5).compute(scheduler="sync")
    # (batch_size sets the member groups, so it may change members by rounding)
    layouts = [{"chunks": {"time": 1, "y": 9, "x": 11}}, {"chunks": {"time": 2, "x": 3}}]
    for kwargs in layouts:
        out = downscale(pair, path, members=3, seed=5, **kwargs).compute(scheduler="threads")
        for name in ref.data_vars:
            np.testing.assert_array_equal(out[name].values, ref[name].values, err_msg=name)
    one = downscale(pair.isel(time=[2]), path, members=1, seed=5).compute(scheduler="sync")
    np.testing.assert_array_equal(one["t2m"].values[0, 0], ref["t2m"].values[0, 2])
    noisier = downscale(pair, path, members=3, seed=5, sampler={"S_noise": 1.3}).compute()
    assert not np.array_equal(noisier["t2m"].values, ref["t2m"].values)
    patched = downscale(pair, path, members=2, seed=5, patch=8, overlap=2).compute()
    assert all(np.isfinite(patched[n].values).all() for n in patched.data_vars)


def test_a_resumed_distillation_ends_with_the_weights_of_an_uninterrupted_one(setup, tmp_path):
    pair, teacher, result = setup
    out = tmp_path / "student.safetensors"
    first = distil(teacher, pair, out, config=FAST, stop_at=3)
    assert not first.completed and first.path is None and not out.exists()
    assert first.updates == 3
    done = distil(teacher, pair, out, config=FAST)
    assert done.completed and done.updates == 6
    resumed = _weights(out)
    for name, value in _weights(result.path).items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
    longer = distil(teacher, pair, tmp_path / "longer.safetensors", config=FAST,
                    run_dir=done.run_dir)  # fmt: skip
    assert longer.updates == 6  # a finished run continues only with more steps


def test_a_run_directory_of_another_run_is_refused_naming_what_differs(setup, tmp_path):
    pair, teacher, _ = setup
    out = tmp_path / "student.safetensors"
    distil(teacher, pair, out, config=FAST, stop_at=1)
    other = DistilConfig(**{**FAST.__dict__, "lr": 1e-3})
    with pytest.raises(DistilError, match="lr"):
        distil(teacher, pair, out, config=other)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DistilError, match="not empty"):
        distil(teacher, pair, out, config=FAST, run_dir=tmp_path / "busy")


def test_calibrate_tunes_the_students_noise_scale_and_level_and_keeps_its_calls(setup):
    pair, _, result = setup
    own = CorrDiff.load(result.path).sampler_config
    cands = default_candidates(dict(own.__dict__))
    assert {c["num_steps"] for c in cands} == {2} and {c["solver"] for c in cands} == {"distilled"}
    assert len({(c["S_noise"], c["sigma_min"]) for c in cands}) == len(cands) > 10
    picked = calibrate(pair, str(result.path), members=2, candidates=[own, *cands[:3]])
    assert {r["sampler"]["solver"] for r in picked.table} == {"distilled"}
    assert picked.chosen.num_steps == 2


def test_a_regression_only_teacher_is_refused(setup, tmp_path):
    pair, teacher, _ = setup
    regression = tiny_corrdiff(teacher.codec, (16, 16), residual=False)
    with pytest.raises(DistilError, match="regression-only"):
        distil(regression, pair, tmp_path / "s.safetensors", config=FAST)


def test_patched_distillation_trains_on_crops_of_the_inference_condition(setup, tmp_path):
    from safetensors.torch import load_file

    pair, teacher, _ = setup
    cfg = DistilConfig(**{**FAST.__dict__, "patch": (8, 8), "steps": 1})
    result = distil(teacher, pair, tmp_path / "s.safetensors", config=cfg)
    traj = load_file(result.run_dir / "trajectories.safetensors")
    assert traj["condition"].shape == (4, 4 + teacher.in_channels, 8, 8)
    assert traj["states"].shape[-2:] == (8, 8)
    origins = traj["offsets"]
    assert int(origins.min()) >= 0 and int(origins.max()) <= 16 - 8
    assert len({tuple(o) for o in origins.tolist()}) > 1  # random crops
    whole = load_file(setup[2].run_dir / "trajectories.safetensors")["condition"]
    # the same times (same seed), cropped at the offsets
    for i, (r, c) in enumerate(origins.tolist()):
        torch.testing.assert_close(traj["condition"][i], whole[i, :, r : r + 8, c : c + 8])


def test_a_student_and_a_teacher_refuse_each_others_solver():
    """A teacher solver on a student (or the student's on a teacher) gives a wrong ensemble
    silently; downscale refuses both, naming the solver."""
    from corrdiff_xr._constraints import SettingError
    from corrdiff_xr.inference._arguments import sampler_config

    student = {"solver": "distilled", "num_steps": 1, "sigma_max": 80.0}
    assert sampler_config(None, None, student).solver == "distilled"
    with pytest.raises(SettingError, match="sampler.solver: 'heun' does not sample a distilled"):
        sampler_config("heun", None, student)
    with pytest.raises(SettingError, match="samples only a distilled student"):
        sampler_config({"solver": "distilled"}, None, {"solver": "heun", "num_steps": 18})
    with pytest.raises(SettingError, match="samples only a distilled student"):
        sampler_config("distilled", None, None)
    assert sampler_config("dpmpp_2m", 7, None).num_steps == 7


@pytest.mark.parametrize(
    "edm",
    [
        {"nu": 5.0},  # t-EDM: Student-t latents
        {"objective": "direct"},  # no regression stage
        {"flow": "x", "flow_shift": 2.0, "objective": "direct"},  # rectified flow with a shift
    ],
    ids=["t_edm", "direct", "flow_x_shift"],
)
def test_teachers_of_every_objective_distil_to_students_that_sample(setup, tmp_path, edm):
    """The objectives of the backbone issue distil too: the student of each is a checkpoint
    whose members are finite, differ between members and take exactly its calls."""
    import dataclasses

    pair = setup[0]
    base = tiny_corrdiff(Codec.from_pair(pair), (16, 16))
    direct = edm.get("objective") == "direct"
    teacher = CorrDiff(
        base.codec,
        img_shape=(16, 16),
        regression_network=None if direct else base.regression_config,
        residual_network=base.residual_config,
        edm=dataclasses.replace(EDMConfig(), **edm),
    )
    result = distil(teacher, pair, tmp_path / "student.safetensors", config=FAST)
    student = CorrDiff.load(result.path)
    assert student.edm_config == teacher.edm_config
    ens = downscale(pair, result.path, members=3, seed=0).compute(scheduler="sync")
    values = ens["t2m"].values
    assert np.isfinite(values).all() and values.std(axis=0).mean() > 0
