"""Load, check, convert and resize user images and masks.

Every failure a user can cause (not an image, corrupt, too big, decompression bomb, mask of the
wrong size) raises `editmgt.errors.InputError` with the reason and the limit in the message.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from editmgt.errors import InputError

logger = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 50 * 2**20  # 50 MiB of encoded file
MAX_IMAGE_PIXELS = 40_000_000  # ~ 6300 x 6300
MAX_ASPECT_RATIO = 8.0  # longer side / shorter side; wider panoramas become grids one token thin
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white

ImageSource = Union[str, Path, bytes, bytearray, Image.Image, np.ndarray]


# ---------------------------------------------------------------------- loading
def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"the image is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise InputError(
            f"the image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,} pixels"
        )


def _open_bytes(data: bytes, max_bytes: int, max_pixels: int, what: str) -> Image.Image:
    if len(data) > max_bytes:
        raise InputError(f"{what} is {len(data):,} bytes; the limit is {max_bytes:,} bytes")
    if not data:
        raise InputError(f"{what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image.width, image.height, max_pixels)  # header only, before decoding
            image.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"{what} looks like a decompression bomb ({error}); the limit is {max_pixels:,} pixels") from error
    except UnidentifiedImageError as error:
        raise InputError(f"{what} is not an image file Pillow can read") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise InputError(f"{what} is corrupt or truncated: {error}") from error
    return image


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    """(H, W), (H, W, 1|3|4) uint8 / uint16 / bool / float in [0, 1] -> PIL."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InputError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {array.shape}")
    _check_pixels(array.shape[1], array.shape[0], max_pixels)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = (array.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError("the image array holds NaN or infinite values")
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise InputError(f"unsupported image array dtype {array.dtype}: use uint8, uint16, bool or float in [0, 1]")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[array.ndim if array.ndim == 2 else array.shape[-1]]
    return Image.fromarray(np.ascontiguousarray(array), mode=mode)


def _composite(image: Image.Image) -> Image.Image:
    """RGBA / LA / PA -> RGB on the white background."""
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: first frame, EXIF orientation, alpha on white, 16-bit scaled."""
    if getattr(image, "n_frames", 1) > 1:
        logger.info("animated image with %d frames: using the first", image.n_frames)
        image.seek(0)
        image = image.copy()
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as error:  # a broken EXIF block must not stop the edit
        logger.warning("ignoring unreadable EXIF orientation: %s", error)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (PNG 16-bit opens as I or I;16): scale 0..65535 to 0..255.
        array = np.asarray(image, dtype=np.float64)
        array = np.clip(array, 0, 65535) * (255.0 / 65535.0)
        return Image.fromarray(array.round().astype(np.uint8), mode="L").convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(array) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.nan_to_num(array) * scale, 0, 255).round().astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _composite(image)
    if mode == "P" and "transparency" not in image.info:
        return image.convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def open_image(src: ImageSource, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Path / bytes / PIL / numpy -> PIL image in its own mode, checked against the limits."""
    if isinstance(src, Image.Image):
        _check_pixels(src.width, src.height, max_pixels)
        return src
    if isinstance(src, np.ndarray):
        return _from_array(src, max_pixels)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _open_bytes(bytes(src), max_bytes, max_pixels, "the image data")
    if isinstance(src, (str, Path)):
        path = Path(src).expanduser()
        if not path.is_file():
            raise InputError(f"no image file at {path}")
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(f"the image file {path} is {size:,} bytes; the limit is {max_bytes:,} bytes")
        return _open_bytes(path.read_bytes(), max_bytes, max_pixels, f"the file {path}")
    raise InputError(f"cannot read an image from a {type(src).__name__}: pass a path, bytes, PIL image or array")


def load_image(src: ImageSource, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Path / bytes / PIL / numpy -> PIL RGB image (see `to_rgb` for the conversions)."""
    return to_rgb(open_image(src, max_bytes, max_pixels))


# ---------------------------------------------------------------------- resizing
def check_aspect_ratio(image_size: tuple[int, int], what: str = "the image") -> None:
    """InputError when `image_size` (width, height) is empty or longer than MAX_ASPECT_RATIO
    times its shorter side (a 1 x 4000 strip would become a grid one token thin)."""
    w, h = image_size
    if w <= 0 or h <= 0:
        raise InputError(f"{what} is empty ({w}x{h} pixels)")
    ratio = max(w, h) / min(w, h)
    if ratio > MAX_ASPECT_RATIO:
        raise InputError(
            f"{what} is {w}x{h} pixels, an aspect ratio of {ratio:.4g}:1; the limit is {MAX_ASPECT_RATIO:g}:1. "
            "Crop it (or pad it) to a less elongated shape"
        )


def fit_size(image_size: tuple[int, int], size: Optional[Union[int, tuple[int, int]]], multiple: int) -> tuple[int, int]:
    """(width, height) for the model: multiples of `multiple`, aspect kept.

    size None: the image's own size; int n: about n*n pixels at the image's aspect;
    (w, h): that size. Each side is rounded to the nearest multiple (at least one multiple).
    The image and an explicit (w, h) must be within MAX_ASPECT_RATIO (else InputError).
    """
    if multiple <= 0:
        raise InputError(f"multiple must be positive, got {multiple}")
    check_aspect_ratio(image_size)
    w, h = image_size
    if size is None:
        target_w, target_h = float(w), float(h)
    elif isinstance(size, int):
        if size <= 0:
            raise InputError(f"size must be positive, got {size}")
        scale = math.sqrt(size * size / (w * h))
        target_w, target_h = w * scale, h * scale
    else:
        target_w, target_h = float(size[0]), float(size[1])
        if target_w <= 0 or target_h <= 0:
            raise InputError(f"size must be positive, got {size}")
        check_aspect_ratio((size[0], size[1]), what="the requested size")
    return (
        max(multiple, int(round(target_w / multiple)) * multiple),
        max(multiple, int(round(target_h / multiple)) * multiple),
    )


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float32 in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None]


# ---------------------------------------------------------------------- masks
def _mask_array(src: ImageSource, max_pixels: int) -> np.ndarray:
    """Mask source -> (H, W) float in [0, 1], 1 = edit. Alpha wins when the mask has any
    transparency (painted strokes on a transparent layer); otherwise the grey level (white = edit)."""
    if isinstance(src, np.ndarray) and src.dtype == np.bool_ and src.ndim == 2:
        _check_pixels(src.shape[1], src.shape[0], max_pixels)
        return src.astype(np.float32)
    image = open_image(src, max_pixels=max_pixels)
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA"))[..., 3].astype(np.float32) / 255.0
        if alpha.min() < 1.0:
            return alpha
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def load_mask(
    src: ImageSource,
    size: tuple[int, int],
    grid: Optional[tuple[int, int]] = None,
    resize: bool = False,
    threshold: float = 0.5,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> torch.BoolTensor:
    """Mask -> bool tensor, True = region to edit (white, or opaque paint on a transparent layer).

    size: (width, height) of the image the mask belongs to; a mask of another size raises
    InputError unless `resize=True` stretches it. grid: (h, w) token grid; the mask is then
    made as the released mask processor makes it: 8-bit grey, LANCZOS-resized to the grid,
    and a cell is True when its value / 255 is at least `threshold`.
    Returns (height, width) without `grid`, else (h, w).
    """
    array = _mask_array(src, max_pixels)
    width, height = size
    if array.shape != (height, width):
        if not resize:
            raise InputError(
                f"the mask is {array.shape[1]}x{array.shape[0]} but the image is {width}x{height}; "
                "give a mask of the image's size (or pass resize=True to stretch it)"
            )
        logger.info("resizing mask from %dx%d to %dx%d", array.shape[1], array.shape[0], width, height)
        array = np.asarray(Image.fromarray(array, mode="F").resize((width, height), Image.BILINEAR))
    if grid is None:
        return torch.from_numpy(np.ascontiguousarray(array) >= threshold)
    grey = Image.fromarray((np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8), mode="L")
    cells = np.asarray(grey.resize((grid[1], grid[0]), Image.LANCZOS), dtype=np.float32) / 255.0
    return torch.from_numpy(cells >= threshold)


# ---------------------------------------------------------------------- compositing
def changed_alpha(changed: torch.Tensor, scale: int, margin: int = 1) -> torch.Tensor:
    """Where an edit's decoded pixels replace the source's: (h, w) bool token mask ->
    (h*scale, w*scale) float alpha in [0, 1].

    Alpha is 1 on every changed token and on the `margin` tokens around it (the decoder draws
    a token's neighbours too), then falls to 0 over half a token outside that, so the seam
    between decoded and source pixels is feathered. No changed token: alpha is all 0."""
    if changed.ndim != 2:
        raise ValueError(f"changed must be (h, w), got shape {tuple(changed.shape)}")
    if scale < 1 or margin < 0:
        raise ValueError(f"scale must be >= 1 and margin >= 0, got {scale}, {margin}")
    hard = changed.float()[None, None]
    if margin:
        hard = torch.nn.functional.max_pool2d(hard, 2 * margin + 1, stride=1, padding=margin)
    hard = torch.nn.functional.interpolate(hard, scale_factor=scale, mode="nearest")
    feather = scale | 1                      # odd box of about one token: half a token each side
    soft = hard
    for kernel in ((1, feather), (feather, 1)):  # separable: the same box mean, 2k not k^2 reads
        soft = torch.nn.functional.avg_pool2d(soft, kernel, stride=1, padding=(kernel[0] // 2, kernel[1] // 2),
                                              count_include_pad=False)
    return torch.maximum(soft, hard)[0, 0]


def keep_unchanged(edited: Image.Image, source: Image.Image, alpha: torch.Tensor) -> Image.Image:
    """The edit where `alpha` (any size, [0, 1]) is 1, the source's own pixels where it is 0,
    blended between; at `source`'s size (the edit is resized to it)."""
    if edited.size != source.size:
        edited = edited.resize(source.size, Image.BICUBIC)
    weights = alpha.float().clamp(0, 1)[None, None]
    if tuple(weights.shape[-2:]) != (source.height, source.width):
        weights = torch.nn.functional.interpolate(weights, size=(source.height, source.width), mode="bilinear",
                                                  align_corners=False)
    mask = Image.fromarray((weights[0, 0].numpy() * 255.0).round().astype(np.uint8), mode="L")
    return Image.composite(edited.convert("RGB"), source.convert("RGB"), mask)
