"""ZeroGPU support. Import this module before anything touches CUDA (app.py does so first).

On a ZeroGPU Space `spaces.GPU` attaches a GPU for the decorated call; elsewhere (or when
`spaces` is not installed) the decorator is a no-op. Never `torch.compile` on ZeroGPU.
"""

from __future__ import annotations

import os
from typing import Callable

try:  # must come before torch initialises CUDA
    import spaces  # type: ignore
except ImportError:  # not on a Space: a no-op decorator below
    spaces = None

ON_ZERO_GPU = spaces is not None and bool(os.environ.get("SPACES_ZERO_GPU"))
MAX_DURATION_S = 120  # ZeroGPU's per-call ceiling for a regular account


def gpu(duration: Callable[..., float] | float = 60):
    """`spaces.GPU(duration=...)` where available, else the function unchanged. `duration`
    may be a callable taking the wrapped function's arguments (dynamic duration)."""
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def edit_duration(steps: int, batch: int, resolution: int) -> float:
    """Seconds to ask ZeroGPU for: about 0.12 s per step and sample at 1024 px on an H200
    slice (the paper: 2 s per 16-step edit on an H100, bf16), plus loading slack."""
    per_step = 0.12 * (resolution / 1024) ** 2 * max(1, batch)
    return float(min(MAX_DURATION_S, 20 + steps * per_step * 2))
