"""Padding an image to the multiple a U-Net can halve, and cropping the output back.

A SongUNet of ``L`` levels halves the image ``L - 1`` times, so each side must divide by
``2 ** (L - 1)``. ``NetworkConfig.padding`` lets any grid through: the network pads its input
(after the positional channels, so they still describe the real pixels) at the bottom and
right edges up to that multiple, and crops its output back to the input's shape. The loss and
every caller see only real pixels, so padded pixels carry no loss weight and need no mask. An
image that already fits is passed through untouched (bit-identical to no padding).

``"reflect"`` mirrors the image about its last row / column (the edge not repeated, as
:func:`torch.nn.functional.pad` does, and as often as needed for images smaller than the
pad); ``"zero"`` pads with zeros; ``"none"`` refuses an image that does not fit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["crop", "pad_to_multiple", "padded_size"]


def padded_size(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that holds ``n``."""
    return -(-n // multiple) * multiple


def _mirror(n: int, size: int, device: torch.device) -> torch.Tensor:
    """Indices ``0 .. size - 1`` into an axis of ``n``, mirrored past its end."""
    pos = torch.arange(size, device=device)
    if n == 1:
        return torch.zeros_like(pos)
    period = 2 * (n - 1)
    pos = pos % period
    return torch.where(pos >= n, period - pos, pos)


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str) -> torch.Tensor:
    """``x`` (..., h, w) padded at the bottom and right to sides divisible by ``multiple``.

    Raises ValueError for ``mode="none"`` when it does not fit already.
    """
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, multiple), padded_size(w, multiple)
    if (ph, pw) == (h, w):
        return x
    if mode == "zero":
        return F.pad(x, (0, pw - w, 0, ph - h))
    if mode == "reflect":
        # gathers, not F.pad(mode="reflect"): any pad length works, and the CUDA backward is
        # deterministic under torch.use_deterministic_algorithms (reflection_pad2d's is not)
        x = x.index_select(-2, _mirror(h, ph, x.device))
        return x.index_select(-1, _mirror(w, pw, x.device))
    raise ValueError(
        f"an image of {h}x{w} (y, x) needs sides divisible by {multiple}, and network padding "
        f"is {mode!r}: set padding to 'reflect' or 'zero', or crop the grid to "
        f"{h // multiple * multiple}x{w // multiple * multiple}"
    )


def crop(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The top-left ``shape`` (h, w) of ``x`` (..., H, W): undoes :func:`pad_to_multiple`."""
    h, w = shape
    return x if tuple(x.shape[-2:]) == (h, w) else x[..., :h, :w]
