"""Global self-attention in memory linear in the tokens, and the bound on where it is built.

**Memory.** :func:`self_attention` computes ``softmax(q k^T / sqrt(d)) v`` with
``scaled_dot_product_attention``. Its fused kernels (flash attention on the CPU, flash or
memory-efficient on CUDA) never hold the tokens x tokens score matrix, forward or backward,
but torch only dispatches to them when the last dimension of ``q``, ``k``, ``v`` has stride 1;
otherwise it falls back to the math backend, which materialises the matrix (8.5 GB for the
46 k tokens of a 172 x 268 level). So the inputs are made stride-1 first (an O(tokens) copy).
Queries are also split into chunks of at most ``chunk`` rows: each softmax row depends on one
query only, so the numbers are those of one call, and should any backend still materialise
scores (e.g. one disabled with ``torch.nn.attention.sdpa_kernel``), inference peaks at
``chunk x tokens`` scores rather than ``tokens^2``.

**Bound.** Time stays quadratic in the tokens whatever the kernel (46 k tokens at 32 channels:
about 90 s forward + backward on two CPU cores), so the U-Net builds global attention only at
levels whose *global* grid has at most :data:`MAX_ATTENTION_TOKENS` (128 x 128) pixels; finer
levels leave it out, with a warning that names the level, the tokens, the bound and the fix.
The rule is deterministic in the grid a network is built for, so a checkpoint rebuilds the
same layers; the reference's own grids (CorrDiff on HRRR's 1056 x 1792: 66 x 112 = 7 392
tokens at the bottleneck) are all within it. A checkpoint written before the rule with
attention beyond the bound is refused on load (its attention weights fit no layer).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

__all__ = ["MAX_ATTENTION_TOKENS", "QUERY_CHUNK", "attention_fits", "self_attention"]

log = logging.getLogger(__name__)

#: the most pixels of a level's global grid that global self-attention is built over
MAX_ATTENTION_TOKENS = 128 * 128
#: query rows per ``scaled_dot_product_attention`` call
QUERY_CHUNK = 8192


def self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, chunk: int = QUERY_CHUNK
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for (..., tokens, d) tensors, in O(tokens) memory.

    Parameters
    ----------
    q, k, v : Tensor
        Queries, keys and values, (n, heads, tokens, d).
    chunk : int
        Most query rows per kernel call.
    """
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if q.shape[-2] <= chunk:
        return F.scaled_dot_product_attention(q, k, v)
    parts = [F.scaled_dot_product_attention(part, k, v) for part in q.split(chunk, dim=-2)]
    return torch.cat(parts, dim=-2)


def attention_fits(img_shape: tuple[int, int], level: int, *, what: str) -> bool:
    """Whether global attention at ``level`` of a network for ``img_shape`` is within the
    bound; if not, warn naming the level, its tokens, the bound and the fix (``what``: the
    layers concerned)."""
    h, w = -(-img_shape[0] // 2**level), -(-img_shape[1] // 2**level)  # padded grids round up
    if h * w <= MAX_ATTENTION_TOKENS:
        return True
    log.warning(
        "%s left out: global self-attention at level %d (%dx%d = %d tokens, grid %dx%d) "
        "exceeds the bound of %d tokens (time grows with tokens^2). To keep attention, put it "
        "at a coarser level (network.attn_resolutions) or add a level (network.channel_mult)",
        what, level, h, w, h * w, img_shape[0], img_shape[1], MAX_ATTENTION_TOKENS,
    )  # fmt: skip
    return False
