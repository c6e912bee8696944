"""Image and mask loading: every mode, every input kind, every limit, on generated images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editmgt.errors import InputError
from editmgt.images import MAX_ASPECT_RATIO, changed_alpha, fit_size, keep_unchanged, load_image, load_mask


def _png(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=kwargs.pop("format", "PNG"), **kwargs)
    return buf.getvalue()


def _rgb(w: int = 40, h: int = 30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None].repeat(w, 1)
    return Image.fromarray(np.concatenate([x, y, 255 - x], axis=2), mode="RGB")


def test_sources_path_bytes_pil_numpy(tmp_path: Path) -> None:
    image = _rgb()
    path = tmp_path / "a.png"
    image.save(path)
    expected = np.asarray(image)
    for src in (path, str(path), path.read_bytes(), image, expected):
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (40, 30)
        assert np.array_equal(np.asarray(out), expected)


@pytest.mark.parametrize(
    "mode",
    ["L", "1", "P", "CMYK", "YCbCr", "I;16", "I", "F", "LA"],
)
def test_modes_to_rgb(mode: str) -> None:
    base = _rgb()
    if mode == "I;16":
        array = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        image = Image.fromarray(array, mode="I;16")
    elif mode == "I":
        array = np.asarray(base.convert("L"), dtype=np.int32) * 257
        image = Image.fromarray(array, mode="I")
    elif mode == "F":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) / 255.0, mode="F")
    else:
        image = base.convert(mode)
    out = load_image(image)
    assert out.mode == "RGB" and out.size == base.size
    if mode in ("I;16", "I", "F", "L"):
        grey = np.asarray(base.convert("L"), dtype=np.int16)
        assert np.abs(np.asarray(out)[..., 0].astype(np.int16) - grey).max() <= 1


def test_16bit_png_roundtrip() -> None:
    array = np.linspace(0, 65535, 64 * 8).reshape(8, 64).astype(np.uint16)
    data = _png(Image.fromarray(array, mode="I;16"))
    out = np.asarray(load_image(data))
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert load_image(array).getpixel((63, 7))[0] == 255  # uint16 array


def test_alpha_composited_on_white() -> None:
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:, :5, 3] = 255  # left half opaque, right half transparent
    out = np.asarray(load_image(Image.fromarray(rgba, mode="RGBA")))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 9]) == (255, 255, 255)
    palette = Image.fromarray(rgba, mode="RGBA").convert("P")
    palette.info["transparency"] = palette.getpixel((9, 0))
    assert tuple(np.asarray(load_image(palette))[0, 9]) == (255, 255, 255)


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = load_image(buf.getvalue())
    assert out.mode == "RGB" and out.getpixel((0, 0))[0] > 200


def test_exif_orientation_applied() -> None:
    image = _rgb(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    out = load_image(_png(image, format="JPEG", exif=exif.tobytes()))
    assert out.size == (30, 40)


def test_numpy_variants() -> None:
    assert load_image(np.ones((5, 6), dtype=bool)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.full((5, 6, 3), 0.5, dtype=np.float32)).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(np.zeros((5, 6, 1), dtype=np.uint8)).size == (6, 5)
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((3, 5, 6), dtype=np.uint8))
    with pytest.raises(InputError, match="dtype"):
        load_image(np.zeros((5, 6), dtype=np.int64))
    with pytest.raises(InputError, match="NaN"):
        load_image(np.full((5, 6), np.nan, dtype=np.float32))


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not an image"):
        load_image(b"this is plain text, not a picture")
    with pytest.raises(InputError, match="corrupt|truncated"):
        load_image(_png(_rgb(200, 200))[:300])
    with pytest.raises(InputError, match="no image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="empty"):
        load_image(b"")
    with pytest.raises(InputError, match="cannot read"):
        load_image(12345)


def test_limits_are_named() -> None:
    data = _png(_rgb(100, 100))
    with pytest.raises(InputError, match=f"limit is {len(data) - 1:,} bytes"):
        load_image(data, max_bytes=len(data) - 1)
    with pytest.raises(InputError, match="limit is 9,999 pixels"):
        load_image(data, max_pixels=9_999)
    with pytest.raises(InputError, match="limit is 100 pixels"):
        load_image(np.zeros((20, 20), dtype=np.uint8), max_pixels=100)


def test_decompression_bomb_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 10000 x 10000 PNG of one colour compresses to a few hundred kB.
    data = _png(Image.new("L", (10_000, 10_000)), optimize=False, compress_level=9)
    assert len(data) < 1_000_000
    with pytest.raises(InputError, match="pixels"):
        load_image(data)  # 1e8 pixels > MAX_IMAGE_PIXELS, refused from the header
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    with pytest.raises(InputError, match="decompression bomb"):
        load_image(data, max_pixels=10**9)  # Pillow's own guard, turned into InputError


def test_fit_size_keeps_the_aspect_in_multiples() -> None:
    w, h = fit_size((100, 50), 64, 16)
    assert w % 16 == 0 and h % 16 == 0 and w > h
    assert fit_size((64, 32), None, 16) == (64, 32)
    assert fit_size((64, 32), (70, 60), 16) == (64, 64)
    assert fit_size((5, 5), None, 16) == (16, 16)
    with pytest.raises(InputError):
        fit_size((5, 5), 0, 16)


@pytest.mark.parametrize("image_size", [(1, 4000), (300, 1), (int(MAX_ASPECT_RATIO) * 100 + 1, 100)])
def test_fit_size_refuses_extreme_aspect_ratios(image_size: tuple[int, int]) -> None:
    """A thin strip would become a grid one token thin (and 1 x 4000 about 4000 tokens long)."""
    w, h = image_size
    with pytest.raises(InputError) as err:
        fit_size(image_size, 1024, 16)
    message = str(err.value)
    assert f"{w}x{h} pixels" in message and f"{max(w, h) / min(w, h):.4g}:1" in message
    assert f"the limit is {MAX_ASPECT_RATIO:g}:1" in message and "Crop" in message
    with pytest.raises(InputError, match="aspect ratio"):
        fit_size(image_size, None, 16)
    with pytest.raises(InputError, match="the requested size is 16x4096 pixels"):
        fit_size((100, 100), (16, 4096), 16)


def test_fit_size_at_the_aspect_limit_keeps_about_size_squared_pixels() -> None:
    ratio = int(MAX_ASPECT_RATIO)
    w, h = fit_size((ratio * 100, 100), 1024, 16)
    assert w % 16 == 0 and h % 16 == 0 and round(w / h) == ratio
    assert 0.9 * 1024**2 <= w * h <= 1.1 * 1024**2
    assert fit_size((100, ratio * 100), 64, 16) == (16, 16 * round(64 * ratio**0.5 / 16))


def test_mask_white_and_alpha() -> None:
    grey = np.zeros((32, 48), dtype=np.uint8)
    grey[:, :24] = 255
    mask = load_mask(Image.fromarray(grey), (48, 32))
    assert mask.dtype == torch.bool and mask.shape == (32, 48)
    assert mask[:, :24].all() and not mask[:, 24:].any()
    strokes = np.zeros((32, 48, 4), dtype=np.uint8)
    strokes[:16, :, 3] = 255  # black paint, opaque, on a transparent layer
    mask = load_mask(Image.fromarray(strokes, mode="RGBA"), (48, 32))
    assert mask[:16].all() and not mask[16:].any()
    assert load_mask(grey > 0, (48, 32)).sum() == 32 * 24


def test_mask_grid_and_size_mismatch() -> None:
    grey = np.zeros((64, 64), dtype=np.uint8)
    grey[:, :40] = 255  # 40 of 64 columns = 5 of 8 cells
    grid = load_mask(grey, (64, 64), grid=(8, 8))
    assert grid.shape == (8, 8) and grid[:, :5].all() and not grid[:, 5:].any()
    with pytest.raises(InputError, match="the mask is 64x64 but the image is 128x64"):
        load_mask(grey, (128, 64))
    stretched = load_mask(grey, (128, 64), resize=True)
    assert stretched.shape == (64, 128)


# ---------------------------------------------------------------------- compositing
def test_changed_alpha_covers_the_changed_tokens_and_their_margin_then_feathers() -> None:
    changed = torch.zeros(6, 7, dtype=torch.bool)
    changed[2, 3] = True
    alpha = changed_alpha(changed, scale=4, margin=1)
    assert alpha.shape == (24, 28)
    assert torch.all(alpha[4:16, 8:20] == 1.0)                       # the token and the ring around it
    band = torch.cat([alpha[16:18, 8:20].flatten(), alpha[4:16, 20:22].flatten()])
    assert torch.all((band > 0) & (band < 1))                        # the feather, half a token wide
    far = torch.ones_like(alpha, dtype=torch.bool)
    far[2:18, 6:22] = False
    assert torch.all(alpha[far] == 0.0)                              # beyond it the source is kept
    no_margin = changed_alpha(changed, scale=4, margin=0)
    assert torch.all(no_margin[8:12, 12:16] == 1.0) and no_margin[4:8, 8:12].max() < 1.0
    assert not changed_alpha(torch.zeros(3, 3, dtype=torch.bool), scale=8).any()
    with pytest.raises(ValueError):
        changed_alpha(changed[None], scale=4)


def test_keep_unchanged_blends_at_the_source_size() -> None:
    source = _rgb(40, 30)
    edited = Image.new("RGB", (20, 16), (255, 0, 0))                 # the model ran smaller
    alpha = torch.zeros(16, 20)
    alpha[:, :8] = 1.0                                              # the left 40 % was edited
    out = keep_unchanged(edited, source, alpha)
    assert out.size == source.size
    pixels, original = np.asarray(out), np.asarray(source)
    assert np.array_equal(pixels[:, 20:], original[:, 20:])         # untouched: the source's own pixels
    assert np.all(pixels[:, :14] == (255, 0, 0))                     # edited: the edit
    assert np.array_equal(np.asarray(keep_unchanged(edited, source, torch.zeros(16, 20))), original)
