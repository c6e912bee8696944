"""Exceptions raised by editmgt. Catch `EditMGTError` for all of them."""


class EditMGTError(Exception):
    """Base class of every error editmgt raises on purpose."""


class CheckpointError(EditMGTError):
    """A checkpoint is missing, partial or cannot be read (the message names the file)."""


class UnsafeWeightsError(CheckpointError):
    """Only pickle-based weights (.bin, .pt, .ckpt, .pth) were found; safetensors are required."""


class WeightMismatchError(CheckpointError):
    """State-dict names or shapes differ from what the config builds."""


class InputError(EditMGTError, ValueError):
    """Bad user input: image, mask, instruction or an out-of-range number."""
