"""Sampler and patching settings: how a model is sampled and how a domain is tiled.

Split off :mod:`corrdiff_xr.config` by concern; import them from there
(``from corrdiff_xr.config import SamplerConfig, PatchConfig``), which re-exports both.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from corrdiff_xr._constraints import MAX_STEPS, Checked, Rule, setting

__all__ = ["GAUSSIAN_ONLY", "PatchConfig", "SamplerConfig", "SolverName"]

INF = float("inf")

#: The solvers' names: the keys of the solver table :data:`corrdiff_xr.sampling.SOLVERS`
#: (kept here, below the samplers, so that a config is checked when it is built; a test keeps
#: the two equal)
SolverName = Literal["heun", "euler", "dpmpp_2m", "dpmpp_2m_sde", "distilled"]
#: solvers whose maths needs Gaussian noise: refused for a Student-t model (``edm.nu``)
GAUSSIAN_ONLY: frozenset[str] = frozenset({"dpmpp_2m_sde"})


@dataclasses.dataclass(frozen=True)
class SamplerConfig(Checked):
    """EDM sampler settings (Karras et al. 2022, Algorithm 2); defaults are the reference's.

    ``S_churn = 0`` gives the deterministic sampler; ``S_churn > 0`` adds noise at every step
    whose sigma lies in ``[S_min, S_max]`` (the per-step increase is capped at
    ``sqrt(2) - 1`` as in EDM). ``solver``: ``"heun"`` (EDM, 2 N - 1 network calls for N
    steps), ``"euler"``, ``"dpmpp_2m"`` (DPM-Solver++(2M), second order with N calls) or
    ``"dpmpp_2m_sde"`` (its stochastic variant, noise strength ``eta``) or ``"distilled"``
    (a distilled student's N-call sampler, noise scale ``S_noise``; see
    :mod:`corrdiff_xr.training.distil`); see :mod:`corrdiff_xr.sampling`.

    ``precision``: the residual network's arithmetic while sampling. ``"bf16"`` runs it
    under bfloat16 autocast (convolutions and attention in bf16; the sampler's state, the
    preconditioner's skip term and the regression mean stay float32): 3.6x faster per
    network call on a Sapphire Rapids CPU (AMX), not yet measured on GPUs; members move by
    well under their spread (``benchmarks/packages.py`` measures both).
    """

    solver: SolverName = "heun"
    num_steps: int = setting(18, ge=1, le=MAX_STEPS)
    sigma_min: float = setting(0.002, gt=0)
    sigma_max: float = setting(800.0, gt=0)
    rho: float = setting(7.0, gt=0)
    S_churn: float = setting(0.0, ge=0)
    S_min: float = setting(0.0, ge=0)
    S_max: float = setting(INF, ge=0, finite=False)
    S_noise: float = setting(1.0, gt=0)
    eta: float = setting(1.0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"

    #: fields added after outputs were first labelled: left out of :meth:`record` at their
    #: default, so that stores written before them still match a resumed request
    LATER_FIELDS = {"precision": "fp32"}

    RULES = (
        Rule(("sigma_min", "sigma_max"), lambda lo, hi: lo < hi, "need sigma_min < sigma_max"),
        Rule(("S_min", "S_max"), lambda lo, hi: lo <= hi, "need S_min <= S_max"),
    )

    def record(self) -> dict[str, object]:
        """The settings as outputs label them (JSON-ready): every field but the
        :data:`LATER_FIELDS` at their defaults."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if self.LATER_FIELDS.get(f.name, ...) != getattr(self, f.name)
        }


def _overlap_pixels(shape: tuple[int, int] | None, overlap: int | None) -> int:
    # None: a quarter of the smaller patch side (no overlap without patches)
    return overlap if overlap is not None else 0 if shape is None else min(shape) // 4


def _patch_fits(shape: tuple[int, int] | None, overlap: int | None, boundary: int) -> bool:
    return shape is None or min(shape) - 2 * boundary - _overlap_pixels(shape, overlap) >= 1


@dataclasses.dataclass(frozen=True)
class PatchConfig(Checked):
    """How a domain is tiled into patches (see :mod:`corrdiff_xr.patching`).

    ``shape`` None means no patching (the whole domain is one patch). ``overlap`` is the
    number of pixels shared by the *kept* parts of neighbouring patches (None: a quarter of
    the smaller patch side); ``boundary`` is a halo on every side of each patch that the
    model sees as context but that gets zero weight when patches are fused. ``weights`` is
    ``"uniform"`` (plain average over overlaps) or ``"ramp"`` (linear ramps across overlaps,
    so seams blend smoothly). ``layout`` picks the patch grid: ``"compact"`` (fewest patches
    covering the domain) or ``"physicsnemo"`` (the reference's ``GridPatching2D`` grid, the
    halo averaged in like the rest; with uniform weights, for exact parity with its outputs).
    ``noise`` is inference's: ``"shared"`` draws every patch's latents and churn noise from
    one field over the global grid keyed by pixel position (:class:`corrdiff_xr.noise.
    FieldNoise`), so overlapping patches agree where they overlap; ``"independent"`` gives each
    patch noise of its own (the reference's way, which shows the patch grid as seams).
    ``mean``: inference's regression mean over the ``"whole"`` domain once per time, cut into
    the patches (as patched training does: the network is trained on the whole grid; above
    one 256 x 256 window computed in overlapping tiles, memory bounded by a window, which
    differs from one call by a measured tolerance, see :mod:`corrdiff_xr.inference.
    tiled_mean`); ``"single"``: the same in one call over any domain (exact, memory grows
    with the domain); or on each patch (``"patches"``: memory bounded by a patch, at a loss of
    context).
    The defaults are inference's (patches sampled alone, fused once: shared noise and ramps
    across a generous overlap hide the seams); patched training uses only ``shape``.
    """

    shape: tuple[int, int] | None = setting(None, ge=1)
    overlap: int | None = setting(None, ge=0)
    boundary: int = setting(0, ge=0)
    weights: Literal["uniform", "ramp"] = "ramp"
    layout: Literal["compact", "physicsnemo"] = "compact"
    noise: Literal["shared", "independent"] = "shared"
    mean: Literal["whole", "single", "patches"] = "whole"

    RULES = (
        Rule(
            ("shape", "overlap", "boundary"),
            _patch_fits,
            "the patch leaves no room for a kept part; need overlap + 2 * boundary < the "
            "smaller patch side (overlap None: a quarter of that side)",
        ),
    )

    @property
    def overlap_pixels(self) -> int:
        """``overlap``, or a quarter of the smaller patch side (0 without patches)."""
        return _overlap_pixels(self.shape, self.overlap)

    def resolved(self) -> PatchConfig:
        """This config with the overlap in pixels (what a grid is built from and recorded)."""
        return dataclasses.replace(self, overlap=self.overlap_pixels)
