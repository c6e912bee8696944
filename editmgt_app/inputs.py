"""What the demo accepts besides the edit settings (those are checked by `EditSettings`):
bounded uploads converted to RGB (via `editmgt.images`), masks from the brush editor, the work
one request may ask for, and the sweep's lambda grid. Every refusal is an `InputError` whose
message says what was wrong and what is allowed (the UI turns it into a `gr.Error`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from PIL import Image

from editmgt.errors import InputError
from editmgt.images import check_aspect_ratio, open_image, to_rgb
from editmgt.settings import check_number, spec

logger = logging.getLogger(__name__)

MAX_UPLOAD_MB = 20  # passed to launch(max_file_size=...) too
MAX_PIXELS = 4096 * 4096  # decoded size limit (16.8 megapixels); the library allows more
MAX_LAMBDAS = 16  # lambdas of one sweep
# Work of one request: pixels at the model x steps x samples (the edit plus the sweep's lambdas).
# 16 steps x 25 samples, or 100 steps x 4, at 1024 x 1024: about a minute on one GPU.
MAX_WORK = 1024 * 1024 * 400


@dataclass
class Upload:
    image: Image.Image  # RGB, 8-bit, EXIF-rotated, first frame
    notes: list[str] = field(default_factory=list)  # conversions applied, for the info panel


def load_upload(path: Any, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_UPLOAD_MB * 2**20) -> Upload:
    """Open an uploaded file as RGB with the library's checks (size, pixel limit,
    decompression bomb, corrupt file); grayscale, palette, RGBA, CMYK, 16-bit and animated
    inputs are converted, not refused, and the conversion is noted."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise InputError("no image: upload, paste or take a photo first")
    raw = open_image(path, max_bytes=max_bytes, max_pixels=max_pixels)
    check_aspect_ratio(raw.size)  # before any work: thin strips make huge grids and heat-maps
    notes = []
    frames = getattr(raw, "n_frames", 1)
    if frames > 1:
        notes.append(f"animated ({frames} frames): used the first frame")
    if raw.mode != "RGB":
        notes.append(f"converted from {raw.mode} to RGB")
    return Upload(to_rgb(raw), notes)


def mask_from_editor(value: Optional[dict], image_size: tuple[int, int]) -> Optional[Image.Image]:
    """The brush editor's value {background, layers, composite} -> an 'L' mask (255 = edit)
    at `image_size`, from the union of the drawn layers' alpha; None when nothing is drawn."""
    if not value:
        return None
    layers = [layer for layer in (value.get("layers") or []) if layer is not None]
    alpha = None
    for layer in layers:
        array = _as_array(layer)
        if array.ndim == 3 and array.shape[2] == 4:
            drawn = array[..., 3] > 0
        else:  # no alpha: anything non-black counts as painted
            drawn = (array.reshape(array.shape[0], array.shape[1], -1).max(axis=2) > 0)
        alpha = drawn if alpha is None else (alpha | drawn) if alpha.shape == drawn.shape else alpha
    if alpha is None or not alpha.any():
        return None
    mask = Image.fromarray(alpha.astype(np.uint8) * 255, "L")
    return mask if mask.size == tuple(image_size) else mask.resize(tuple(image_size), Image.NEAREST)


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Image.Image):
        return np.asarray(value)
    return np.asarray(Image.open(str(value)))


def check_work(model_size: tuple[int, int], steps: int, samples: int) -> None:
    """InputError when `samples` edits of `steps` steps at `model_size` (width, height at the
    model) exceed MAX_WORK, saying which knobs bring it down."""
    w, h = model_size
    work = w * h * steps * samples
    if work > MAX_WORK:
        raise InputError(
            f"this request is too much work: {w}x{h} pixels at the model x {steps} steps x {samples} "
            f"sample(s) = {work / 1e6:,.0f} megapixel-steps; the limit is {MAX_WORK / 1e6:,.0f}. "
            "Use fewer steps, fewer sweep lambdas, or turn the sweep off"
        )


def parse_lambdas(value: Any) -> list[float]:
    """'0, 0.2, 0.5' or [0, 0.2] -> floats checked against hold_lambda's limits (at most MAX_LAMBDAS)."""
    if isinstance(value, str):
        items = [v for v in value.replace(";", ",").split(",") if v.strip()]
        try:
            values = [float(v) for v in items]
        except ValueError:
            raise InputError(f"lambdas must be numbers separated by commas, got {value!r}") from None
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        raise InputError(f"lambdas must be a list of numbers in [0, 1], got {value!r}")
    if not values or len(values) > MAX_LAMBDAS:
        raise InputError(f"give between 1 and {MAX_LAMBDAS} lambdas, got {len(values)}")
    limits = spec("hold_lambda")
    return [check_number("lambda", v, limits["low"], limits["high"]) for v in values]
