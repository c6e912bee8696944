"""Mask schedules shared by sampling and training.

A schedule maps progress r in [0, 1] to the fraction of tokens that stay masked:
``cosine`` (cos(r pi/2), the sampler default), ``linear`` (1 - r) and ``arccos``
(arccos(r) / (pi/2), the Muse/Meissonic training draw). The sampler asks
:func:`remask_count` how many tokens to mask again after step ``i`` of ``N``; the
arithmetic is done in float32 in the same order as the released scheduler so the
counts match its table exactly (see ``scheduler.table`` in the parity fixtures).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from editmgt.errors import InputError

SCHEDULES = ("cosine", "linear", "arccos")

DeviceLike = Optional[Union[str, torch.device]]


def mask_ratio(progress: Tensor, schedule: str = "cosine") -> Tensor:
    """Masked fraction for ``progress`` in [0, 1] (any shape, float); same shape back."""
    if not torch.is_floating_point(progress):
        progress = progress.float()
    if schedule == "cosine":
        return torch.cos(progress * math.pi / 2)
    if schedule == "linear":
        return 1 - progress
    if schedule == "arccos":
        return torch.arccos(progress) / (math.pi / 2)
    raise InputError(f"unknown mask schedule {schedule!r}; expected one of {SCHEDULES}")


def timesteps(num_steps: int, device: DeviceLike = None) -> Tensor:
    """Scheduler step values N-1 ... 0, int64 (N,)."""
    if num_steps < 1:
        raise InputError(f"num_steps must be >= 1, got {num_steps}")
    return torch.arange(num_steps, device=device).flip(0)


def temperatures(num_steps: int, start: float = 2.0, end: float = 0.0,
                 device: DeviceLike = None) -> Tensor:
    """Gumbel temperatures per step, float32 (N,), linear from ``start`` to ``end``."""
    if num_steps < 1:
        raise InputError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(start, end, num_steps, device=device, dtype=torch.float32)


def remask_count(step_index: int, num_steps: int, seq_len: int, unknown: Tensor,
                 start_ratio: Optional[Tensor] = None, schedule: str = "cosine") -> Tensor:
    """Number of tokens to mask again after step ``step_index`` (0-based) of ``num_steps``.

    unknown: (B,) int, tokens that were masked when the step began.
    start_ratio: (B,) float, masked fraction at the start of sampling (None = 1).
    Returns (B,) int64: floor(seq_len * start_ratio * mask_ratio((i+1)/N)) in float32,
    then clamped to at most unknown-1 and at least 1; 0 on the last step.
    """
    if not 0 <= step_index < num_steps:
        raise InputError(f"step_index {step_index} outside [0, {num_steps})")
    device = unknown.device
    if step_index == num_steps - 1:
        return torch.zeros(unknown.shape, dtype=torch.long, device=device)
    # int64 / int -> float32, as the released scheduler computes it.
    step = torch.full((), step_index + 1, dtype=torch.long, device=device)
    progress = step / num_steps
    ratio = mask_ratio(progress, schedule)
    if start_ratio is not None:
        ratio = start_ratio.to(device=device, dtype=torch.float32) * ratio
    count = (seq_len * ratio).floor().long().expand(unknown.shape)
    count = torch.minimum(unknown.long() - 1, count)
    return count.clamp(min=1)
