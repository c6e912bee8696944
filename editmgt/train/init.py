"""Initialisation for training an EditMGT transformer from scratch.

Copying the source is most of an edit, and the reference stream makes copying possible
only through attention: an image token must attend to the reference token at its own grid
position, which RoPE marks only by rotating a few dimensions. A small model trained from
a random start does not find that sharp positional attention in a few thousand steps
(measured: on random token grids, copy accuracy stays at chance after 400 steps), so
every shape it should keep is redrawn as noise. `init_copy_heads` gives one head of each
double block a constant query and key on the fastest-rotating RoPE pairs of the row and
column axes: its attention then peaks at its own position (the image token itself and the
source token), and copying is learnt within ~100 steps. The other heads, the text
projections and the single blocks are left as they are, so the text->image attention the
sampler localises with is not biased.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["positional_dims", "init_copy_heads"]


def positional_dims(axes_dims_rope: tuple[int, ...], pairs: int, spatial_axes: tuple[int, ...] = (1, 2)
                    ) -> list[int]:
    """Per-head dimensions of the first `pairs` rotation pairs (the fastest) of each spatial
    RoPE axis. axes_dims_rope: dims per position axis, e.g. (8, 12, 12) for (0, row, col)."""
    starts = [sum(axes_dims_rope[:a]) for a in range(len(axes_dims_rope))]
    dims = []
    for axis in spatial_axes:
        if 2 * pairs > axes_dims_rope[axis]:
            raise ValueError(f"axis {axis} has {axes_dims_rope[axis] // 2} rotation pairs, asked for {pairs}")
        dims += list(range(starts[axis], starts[axis] + 2 * pairs))
    return dims


@torch.no_grad()
def init_copy_heads(model: nn.Module, bias: float = 3.0, gain: float = 2.0, pairs: int = 2,
                    heads: int = 1) -> list[int]:
    """Make the first `heads` heads of every double block attend to their own position.

    Sets the image-stream q/k projection biases of those heads to `bias` on the positional
    dims (`positional_dims`), and the q/k RMS-norm gains of those dims to `gain` (the norm
    weights are shared by all heads of a block). Returns the per-head dims touched.
    """
    cfg = model.config
    dims = positional_dims(tuple(cfg.axes_dims_rope), pairs)
    head_dim = cfg.attention_head_dim
    index = torch.tensor([h * head_dim + d for h in range(heads) for d in dims])
    for block in model.transformer_blocks:
        attn = block.attn
        attn.to_q.bias[index] = bias
        attn.to_k.bias[index] = bias
        attn.norm_q.weight[dims] = gain
        attn.norm_k.weight[dims] = gain
    return dims

