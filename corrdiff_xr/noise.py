"""Noise keyed by what a sample *is*, never by how it was scheduled.

One mechanism serves every use of keyed randomness (inference noise, the training loader's
patch origins, validation members): a *key* of integers is hashed by
:class:`numpy.random.SeedSequence` (a stable hash: unlike Python's ``hash()`` it does not
change between processes) into a 63-bit seed for :meth:`torch.Generator.manual_seed`
(:func:`keyed_seed`, :func:`keyed_generator`). So a draw depends on its key only: not on the
batch, the chunk, the worker or the number of any of them.

Each use has its :class:`KeyLayout`: a purpose, the words of its key in order, a
domain-separation word (``tag``) and which half of the hash becomes the seed's high bits.
The layouts are frozen: they reproduce, bit for bit, the streams of the three recipes this
module replaced, on which the shipped model, the demo's scores and every test's numbers rest.

===================  ==========================================  =========  ============
layout               key words (SeedSequence entropy, in order)  tag        high half
===================  ==========================================  =========  ============
:data:`INFERENCE`    seed, time, member, patch row, patch col    none       state word 0
:data:`TRAIN_PATCH`  seed, epoch, time index                     0x9A7C4    state word 1
:data:`VALIDATION`   seed, time index, member                    0x7A11D    state word 1
:data:`FIELD`        seed, time, member, draw, tile row, col     0xF1E1D    state word 0
:data:`FIELD_T`      seed, time, member, draw                    0x7D157    state word 0
===================  ==========================================  =========  ============

:data:`FIELD` keys the noise of patched inference with shared noise (:class:`FieldNoise`):
one standard-normal field per (seed, time, member) over the *global* fine grid, drawn in
square tiles of :data:`FIELD_TILE` pixels on a lattice anchored at pixel (0, 0), each tile
from its own key. A patch takes the part of the field it covers, so overlapping patches
start from the same latents and receive the same churn noise where they overlap, and a
pixel's noise depends on where it is, never on which patch, block or worker draws it.
Student-t noise (t-EDM) divides a whole draw by one ``sqrt(chi2(nu) / nu)``
(:func:`student_t_scale`); for the shared field that chi-square is keyed by :data:`FIELD_T`
(no tile words: one per field, so every patch of a member sees the same scale).

The tag is appended after the key words (it came last in the original recipes), so the two
training keys never coincide; inference keys, untagged, have five words or more against the
others' four (a word of 2**32 or more counts as two: the caveat of SeedSequence's entropy).
Time is keyed by its int64 nanoseconds since 1970, counted in its own calendar for cftime axes
(:func:`time_key`, :func:`corrdiff_xr.timekeys.to_ns`), so the same valid time gives the same
noise in any selection, chunking or worker of a run. Words that may be negative
(times before 1970, patch origins past the domain's edge) are taken modulo 2**64; the others
must be non-negative. A new use adds a layout with a new tag, never reuses one.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

if TYPE_CHECKING:
    import cftime
    import torch

    from corrdiff_xr.protocols import RandomSource

__all__ = [
    "FIELD",
    "FIELD_T",
    "FIELD_TILE",
    "INFERENCE",
    "TRAIN_PATCH",
    "VALIDATION",
    "FieldNoise",
    "KeyLayout",
    "TimeLike",
    "keyed_generator",
    "keyed_seed",
    "patch_generator",
    "patch_seed",
    "student_t_scale",
    "time_key",
]

_MASK64 = (1 << 64) - 1
_MASK63 = (1 << 63) - 1

#: one valid time: a ``numpy.datetime64``, a cftime datetime, or its int64 nanoseconds
TimeLike: TypeAlias = "np.datetime64 | np.integer | int | cftime.datetime"


@dataclasses.dataclass(frozen=True)
class KeyLayout:
    """How one use of keyed noise lays out its key (see the module docstring's table).

    Attributes
    ----------
    purpose
        What the noise is for (named in errors).
    words
        Names of the key's words, in the order they enter the hash.
    tag
        Domain-separation word appended after the key words (None: none).
    high_word
        Which of the first two 32-bit state words of the SeedSequence becomes the high bits
        of the 63-bit seed (the other gives the low 31 bits).
    wrapped
        Words taken modulo 2**64, so that negative values are valid keys.
    """

    purpose: str
    words: tuple[str, ...]
    tag: int | None = None
    high_word: int = 1
    wrapped: frozenset[str] = frozenset()

    def entropy(self, key: Sequence[int]) -> list[int]:
        """The SeedSequence entropy of ``key``: its checked words, then the tag."""
        if len(key) != len(self.words):
            raise ValueError(
                f"a {self.purpose} key has {len(self.words)} words ({', '.join(self.words)}), "
                f"got {len(key)}: {tuple(key)}"
            )
        out: list[int] = []
        for name, value in zip(self.words, key):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{self.purpose} key word {name} must be an integer, got {value!r}")
            value = int(value)
            if name in self.wrapped:
                value &= _MASK64
            elif value < 0:
                raise ValueError(
                    f"{self.purpose} key word {name} must be non-negative, got {value}"
                )
            out.append(value)
        return out if self.tag is None else [*out, self.tag]


#: sampler noise of one patch of one member at one time (inference)
INFERENCE = KeyLayout(
    "inference patch",
    ("seed", "time", "member", "row", "col"),
    tag=None,
    high_word=0,
    wrapped=frozenset({"time", "row", "col"}),
)
#: the random patch origin of one training sample in one epoch (training loader)
TRAIN_PATCH = KeyLayout("training patch", ("seed", "epoch", "time_index"), tag=0x9A7C4)
#: sampler noise of one ensemble member of one validation sample
VALIDATION = KeyLayout("validation member", ("seed", "time_index", "member"), tag=0x7A11D)
#: one tile of the shared noise field of one member at one time, for its ``draw``-th draw
FIELD = KeyLayout(
    "inference noise field",
    ("seed", "time", "member", "draw", "row", "col"),
    tag=0xF1E1D,
    high_word=0,
    wrapped=frozenset({"time", "row", "col"}),
)
#: the chi-square of the ``draw``-th Student-t field of one member at one time (t-EDM)
FIELD_T = KeyLayout(
    "inference Student-t scale",
    ("seed", "time", "member", "draw"),
    tag=0x7D157,
    high_word=0,
    wrapped=frozenset({"time"}),
)
#: side of the square tiles of :data:`FIELD` (pixels)
FIELD_TILE = 16


def student_t_scale(
    source: RandomSource | None,
    n: int,
    nu: float,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` factors ``sqrt(nu / k)``, ``k ~ chi2(nu)``: a standard-normal draw times one of
    them is multivariate Student-t with ``nu`` degrees of freedom.

    ``source`` is a :class:`torch.Generator` (None: torch's global one), from which one
    integer seeds NumPy's chi-square sampler (torch has none that takes a generator), or a
    :class:`FieldNoise`, whose scale is keyed by :data:`FIELD_T` for its last draw.
    """
    import torch

    from corrdiff_xr.protocols import NoiseSource

    if isinstance(source, NoiseSource):
        k = np.full(n, source.chi2(nu))  # one field, one scale
    else:
        on = source.device if source is not None else "cpu"
        seed = int(torch.randint(0, 2**62, (1,), generator=source, device=on))
        k = np.random.default_rng(seed).chisquare(nu, size=n)
    return torch.as_tensor(np.sqrt(nu / k), dtype=dtype, device=device)


def keyed_seed(layout: KeyLayout, *key: int) -> int:
    """A 63-bit seed, a function of ``layout`` and ``key`` only.

    Parameters
    ----------
    layout
        The use (:data:`INFERENCE`, :data:`TRAIN_PATCH`, :data:`VALIDATION`).
    *key
        The key's words, in ``layout.words`` order.

    Returns
    -------
    int
        In ``[0, 2**63)``, suitable for :meth:`torch.Generator.manual_seed`.

    Raises
    ------
    ValueError, TypeError
        A key of the wrong length, a word that is not an integer, or a negative word the
        layout does not wrap, named with its value.
    """
    words = np.random.SeedSequence(layout.entropy(key)).generate_state(2, dtype=np.uint32)
    high, low = int(words[layout.high_word]), int(words[1 - layout.high_word])
    return (high << 31 | low >> 1) & _MASK63


def keyed_generator(
    layout: KeyLayout, *key: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A :class:`torch.Generator` on ``device`` seeded with :func:`keyed_seed`."""
    import torch

    return torch.Generator(device=device).manual_seed(keyed_seed(layout, *key))


def time_key(time: TimeLike) -> int:
    """The time as int64 nanoseconds since 1970, folded to a non-negative 64-bit integer.

    ``time`` is a ``datetime64``, a cftime datetime (counted in its own calendar, see
    :func:`corrdiff_xr.timekeys.to_ns`) or already such nanoseconds (an integer).
    """
    from corrdiff_xr.timekeys import to_ns

    if isinstance(time, numbers.Integral) or np.issubdtype(np.asarray(time).dtype, np.integer):
        return int(time) & _MASK64
    return int(to_ns(np.asarray([time]))[0]) & _MASK64


def patch_seed(seed: int, time: TimeLike, member: int, origin: tuple[int, int]) -> int:
    """The :data:`INFERENCE` seed of one patch of one member at one time.

    Parameters
    ----------
    seed
        The run's base seed (a non-negative integer).
    time
        Valid time (``datetime64`` or cftime) or its int64 nanoseconds (:func:`time_key`).
    member
        Ensemble member index.
    origin
        ``(row, col)`` of the patch's top-left pixel on the global fine grid (may be negative
        when patches reach past the domain edge).

    Returns
    -------
    int
        Deterministic in its arguments only; suitable for ``torch.Generator.manual_seed``.
    """
    if seed < 0 or member < 0:
        raise ValueError(f"seed and member must be non-negative, got seed={seed}, member={member}")
    row, col = origin
    return keyed_seed(INFERENCE, int(seed), time_key(time), int(member), int(row), int(col))


def patch_generator(
    seed: int,
    time: TimeLike,
    member: int,
    origin: tuple[int, int],
    *,
    device: torch.device | str = "cpu",
) -> torch.Generator:
    """A :class:`torch.Generator` on ``device`` seeded with :func:`patch_seed`."""
    import torch

    return torch.Generator(device=device).manual_seed(patch_seed(seed, time, member, origin))


class FieldNoise:
    """The part of the shared noise field (:data:`FIELD`) under one patch, draw after draw.

    Stands where a :class:`torch.Generator` stands for the samplers (they call
    :meth:`randn` for latents and for every churn or SDE step), so a patch's ``d``-th draw
    is the ``d``-th field of its (seed, time, member) restricted to its pixels.

    Parameters
    ----------
    seed, time, member
        As for :func:`patch_seed`.
    origin
        ``(row, col)`` of the patch's top-left pixel on the global fine grid (may be < 0).
    """

    def __init__(self, seed: int, time: TimeLike, member: int, origin: tuple[int, int]):
        if seed < 0 or member < 0:
            raise ValueError(
                f"seed and member must be non-negative, got seed={seed}, member={member}"
            )
        self.key = (int(seed), time_key(time), int(member))
        self.origin = (int(origin[0]), int(origin[1]))
        self.draws = 0

    def randn(
        self,
        shape: Sequence[int],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """The next draw, of shape ``(C, h, w)``: the field's pixels under the patch."""
        import torch

        if len(shape) != 3:
            raise ValueError(f"FieldNoise draws (channels, rows, cols) fields, got {tuple(shape)}")
        channels, h, w = (int(v) for v in shape)
        (r0, c0), t = self.origin, FIELD_TILE
        rows = range(r0 // t, (r0 + h - 1) // t + 1)
        cols = range(c0 // t, (c0 + w - 1) // t + 1)
        field = torch.empty((channels, len(rows) * t, len(cols) * t), dtype=dtype, device=device)
        for i, row in enumerate(rows):
            for j, col in enumerate(cols):
                g = keyed_generator(FIELD, *self.key, self.draws, row, col, device=field.device)
                block = torch.randn((channels, t, t), generator=g, dtype=dtype, device=field.device)
                field[:, i * t : (i + 1) * t, j * t : (j + 1) * t] = block
        self.draws += 1
        dy, dx = r0 - rows[0] * t, c0 - cols[0] * t
        return field[:, dy : dy + h, dx : dx + w]

    def chi2(self, nu: float) -> float:
        """The chi-square (``nu`` degrees of freedom) of the last draw's whole field, the
        same under every patch (:data:`FIELD_T`)."""
        if self.draws == 0:
            raise ValueError("FieldNoise.chi2 scales a draw: call randn first")
        rng = np.random.default_rng(keyed_seed(FIELD_T, *self.key, self.draws - 1))
        return float(rng.chisquare(nu))
