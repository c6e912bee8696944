"""What the demo accepts: bounded uploads converted to RGB (via `editmgt.images`), masks
from the brush editor, and numbers checked against their ranges. Every refusal is an `InputError` whose
message says what was wrong and what is allowed (the UI turns it into a `gr.Error`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from PIL import Image

from editmgt.errors import InputError
from editmgt.images import check_aspect_ratio, open_image, to_rgb
from editmgt.settings import MAX_TEXT_CHARS as MAX_INSTRUCTION_CHARS  # noqa: F401 - the page's text boxes
from editmgt.settings import check_text

logger = logging.getLogger(__name__)

MAX_UPLOAD_MB = 20  # passed to launch(max_file_size=...) too
MAX_PIXELS = 4096 * 4096  # decoded size limit (16.8 megapixels); the library allows more
MAX_SEED = 2**31 - 1
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


def check_instruction(text: Any, what: str = "instruction") -> str:
    """The stripped instruction (or prompt): `editmgt.settings.check_text` refuses empty,
    over-long, non-text and not-valid-Unicode (lone surrogate) values."""
    return check_text(text, what)


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


def check_number(name: str, value: Any, low: float, high: float, *, integer: bool = False) -> float | int:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise InputError(f"{name} must be {kind} in [{low}, {high}], got {value!r}")
    if integer and value != int(value):
        raise InputError(f"{name} must be {kind} in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise InputError(f"{name} must be {kind} in [{low}, {high}], got {value!r}")
    return int(value) if integer else float(value)


def parse_lambdas(value: Any) -> list[float]:
    """'0, 0.2, 0.5' or [0, 0.2] -> checked floats in [0, 1] (at most 16)."""
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
    if not values or len(values) > 16:
        raise InputError(f"give between 1 and 16 lambdas, got {len(values)}")
    return [check_number("lambda", v, 0.0, 1.0) for v in values]


def parse_keywords(text: Any) -> Optional[list[str]]:
    """The keyword box: one word, or several separated by commas ("red, circle"), -> a list
    for the pipeline's `keyword`; None when blank. At most 100 characters."""
    if text is None:
        return None
    text = str(text)
    if len(text) > 100:
        raise InputError(f"the keyword has {len(text)} characters; the limit is 100")
    words = [w.strip() for w in text.split(",") if w.strip()]
    return words or None


def parse_block(value: Any, name: str) -> Any:
    """A hold-block box of the page: blank (or None) -> None, the model's default; text ->
    its number (the range is checked where the model is known)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise InputError(f"{name} must be a block number, or blank for the model's default; "
                             f"got {value!r}") from None
    return value
