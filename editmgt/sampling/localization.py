"""Multi-layer attention consolidation (EditMGT section 4, Eq. 3).

Text->image attention probabilities captured by the transformer (see
``AttentionProbe``) are averaged over blocks, heads and text rows into one score per
image token, rescaled to [0, 1] per sample, smoothed on the transformer grid and
up-sampled (bicubic) to the VQ token grid, where the sampler's region-hold reads them.
Selecting keyword rows is the text side's job; rows arrive already selected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from editmgt.errors import InputError
from editmgt.sampling.smoothing import smooth_scores

_RESCALE_EPS = 1e-8
# Blocks whose text->image attention localises the edit in the released 42-block model.
RELEASED_HOLD_BLOCKS = range(28, 37)
RELEASED_NUM_BLOCKS = 42


@dataclass
class LocalizationMap:
    """Per-token localisation scores at three stages."""

    raw: Tensor        # (B, N) mean attention before rescale, N = h * w
    grid: Tensor       # (B, h, w) rescaled + smoothed, transformer grid
    scores: Tensor     # (B, H * W) bicubic up-sample of ``grid`` to the VQ token grid


def default_hold_blocks(num_blocks: int) -> tuple[int, ...]:
    """Blocks 28-36 of the released 42-block model, or the same relative depth of a model
    with `num_blocks` blocks (double blocks first, then single)."""
    if num_blocks == RELEASED_NUM_BLOCKS:
        return tuple(RELEASED_HOLD_BLOCKS)
    first = min(num_blocks - 1, round(RELEASED_HOLD_BLOCKS.start / RELEASED_NUM_BLOCKS * num_blocks))
    last = min(num_blocks - 1,
               max(first, round((RELEASED_HOLD_BLOCKS.stop - 1) / RELEASED_NUM_BLOCKS * num_blocks)))
    return tuple(range(first, last + 1))


def mean_attention(text_to_image: dict[int, Tensor]) -> Tensor:
    """Mean over blocks, heads and (if present) rows: (B, heads[, R], N) per block -> (B, N)."""
    if not text_to_image:
        raise InputError("no text->image attention was captured (empty dict)")
    maps = [text_to_image[k].float() for k in sorted(text_to_image)]
    shapes = {tuple(m.shape) for m in maps}
    if len(shapes) == 1:
        stacked = torch.stack(maps, dim=1)                   # (B, blocks, heads[, R], N)
        return stacked.mean(dim=tuple(range(1, stacked.ndim - 1)))
    # blocks disagree (e.g. rows kept in some only): reduce each, then average blocks
    per_block = [m.mean(dim=tuple(range(1, m.ndim - 1))) for m in maps]
    return torch.stack(per_block, dim=1).mean(dim=1)


def rescale(scores: Tensor) -> Tensor:
    """Per-sample min-max to [0, 1) along the last dim, +1e-8 in the denominator."""
    low = scores.amin(dim=-1, keepdim=True)
    high = scores.amax(dim=-1, keepdim=True)
    return (scores - low) / (high - low + _RESCALE_EPS)


def upsample(grid: Tensor, out_grid: tuple[int, int]) -> Tensor:
    """Bicubic (align_corners=False) up-sample (B, h, w) -> (B, H * W), float32."""
    out = F.interpolate(grid.float().unsqueeze(1), size=tuple(out_grid), mode="bicubic",
                        align_corners=False)
    return out.flatten(1)


def consolidate(text_to_image: dict[int, Tensor], grid: tuple[int, int],
                out_grid: tuple[int, int], smoothing: str = "adaptive",
                strength: float = 1.0) -> LocalizationMap:
    """Attention maps -> localisation scores.

    text_to_image: block index -> (B, heads, N) or (B, heads, R, N) probabilities.
    grid: (h, w) transformer grid with h * w = N; out_grid: (H, W) VQ token grid.
    smoothing / strength: see :func:`editmgt.sampling.smoothing.smooth_scores`.
    """
    h, w = grid
    raw = mean_attention(text_to_image)                      # (B, N)
    if raw.shape[-1] != h * w:
        raise InputError(f"attention has {raw.shape[-1]} image tokens, grid {grid} needs {h * w}")
    scaled = rescale(raw).reshape(-1, h, w)                  # (B, h, w)
    smoothed = smooth_scores(scaled, smoothing, strength)    # (B, h, w)
    return LocalizationMap(raw=raw, grid=smoothed, scores=upsample(smoothed, out_grid))
