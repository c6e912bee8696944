"""editmgt: image editing with a masked generative transformer (EditMGT)."""

from editmgt.errors import (
    CheckpointError,
    EditMGTError,
    InputError,
    UnsafeWeightsError,
    WeightMismatchError,
)

__all__ = [
    "CheckpointError",
    "EditMGTError",
    "InputError",
    "UnsafeWeightsError",
    "WeightMismatchError",
]
__version__ = "0.1.0"
