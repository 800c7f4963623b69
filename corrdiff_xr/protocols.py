"""The interfaces the method layers meet at, as :class:`typing.Protocol`\\ s.

A sampler (:mod:`corrdiff_xr.sampling`) knows nothing about CorrDiff: it calls a
:class:`Denoiser` and draws its noise from one :data:`RandomSource` per sample. Anything with
the right call signature is a denoiser (a preconditioned network, a closure that adds the
conditioning and the regression mean, a patch-fusing wrapper, a test's analytic posterior
mean); anything with :meth:`NoiseSource.randn` and :meth:`NoiseSource.chi2` draws noise like a
generator does (:class:`corrdiff_xr.noise.FieldNoise`, the shared field of patched
inference). These are structural types: nothing subclasses them.

The module imports torch only (and the sampler settings for type checking), so every layer
may use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from corrdiff_xr.config_sampling import SamplerConfig

__all__ = ["ConditionalDenoiser", "Denoiser", "NoiseSource", "RandomSource", "Sampler"]


class Denoiser(Protocol):
    """``denoise(x, sigma) -> D(x; sigma)``: the denoised estimate of a noised batch.

    ``x`` has shape ``(N, ...)`` and ``sigma`` shape ``(N,)`` (one noise level per sample);
    the result has the shape of ``x``.
    """

    def __call__(self, x: Tensor, sigma: Tensor, /) -> Tensor: ...


class ConditionalDenoiser(Protocol):
    """``denoiser(x, sigma, *, condition, offsets) -> D(x; sigma, condition)``.

    The preconditioned network as the training loss calls it
    (:func:`~corrdiff_xr.edm.residual_loss`; e.g. an :class:`~corrdiff_xr.edm.EDMPrecond`):
    ``sigma`` of shape ``(N,)``, ``condition`` the conditioning channels ``(N, C, h, w)`` and
    ``offsets`` None or the ``(N, 2)`` global origins of patches. Sampling closes over the
    condition and offsets to make a :class:`Denoiser`.
    """

    def __call__(
        self, x: Tensor, sigma: Tensor, /, *, condition: Tensor, offsets: Tensor | None
    ) -> Tensor: ...


@runtime_checkable
class NoiseSource(Protocol):
    """A source of noise that stands where a :class:`torch.Generator` stands for a sampler.

    The samplers draw latents and every step's noise with :meth:`randn`; Student-t noise
    scales a whole draw by one chi-square from :meth:`chi2`. ``isinstance(obj, NoiseSource)``
    tells such a source from a generator.
    """

    def randn(
        self,
        shape: Sequence[int],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The next standard-normal draw of ``shape``."""
        ...

    def chi2(self, nu: float) -> float:
        """A chi-square with ``nu`` degrees of freedom for the last draw."""
        ...


#: where a sampler draws one sample's noise: a seeded generator or a :class:`NoiseSource`
RandomSource: TypeAlias = torch.Generator | NoiseSource


class Sampler(Protocol):
    """The one signature of every solver (see :mod:`corrdiff_xr.sampling`).

    ``sampler(denoise, x, sigmas, *, generators=None, config=None, nu=None)`` integrates from
    the already noised ``x`` at ``sigmas[0]`` down the decreasing schedule ``sigmas`` and
    returns the sample at ``sigmas[-1]``, with the churn settings of ``config``.
    """

    def __call__(
        self,
        denoise: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        generators: Sequence[RandomSource] | None = None,
        config: SamplerConfig | None = None,
        nu: float | None = None,
    ) -> Tensor: ...
