"""Pictures for the demo: the attention heat-map over the source with the held region
outlined, the L1-vs-lambda curve, and previews of the sweep's images. Every picture drawn
here has at most MAX_PLOT_PIXELS pixels, whatever the size or shape of the upload."""

from __future__ import annotations

import io
import math
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

OUTLINE_RGB = (0, 255, 255)
MAX_PLOT_PIXELS = 1024 * 1024  # heat-map, curve and sweep previews (the edited image itself is full size)


def bounded_size(size: tuple[int, int], max_pixels: int = MAX_PLOT_PIXELS) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, to at most `max_pixels` (sides at least 1)."""
    w, h = size
    if w * h <= max_pixels:
        return w, h
    scale = math.sqrt(max_pixels / (w * h))
    return max(1, int(w * scale)), max(1, int(h * scale))


def bounded(image: Image.Image, max_pixels: int = MAX_PLOT_PIXELS) -> Image.Image:
    """`image`, shrunk to at most `max_pixels` pixels when larger (aspect kept)."""
    size = bounded_size(image.size, max_pixels)
    return image if size == image.size else image.resize(size, Image.BICUBIC)


def heatmap_overlay(source: Image.Image, scores: np.ndarray, held: Optional[np.ndarray] = None,
                    alpha: float = 0.55, colormap: str = "inferno", min_side: int = 0) -> Image.Image:
    """Blend a colour map of `scores` (h, w) in [0, 1] over `source`; outline `held` (any
    grid, bool: the tokens held at the source, score < lambda) in cyan. Same size as source,
    except that a source whose shorter side is below `min_side` is first enlarged (nearest)
    by a whole factor, so small pictures stay legible on the page, and that the result never
    exceeds MAX_PLOT_PIXELS (a larger source, or a thin strip, is drawn smaller)."""
    source = source.convert("RGB")
    factor = -(-min_side // min(source.size)) if min_side > min(source.size) else 1
    factor = max(1, min(factor, math.isqrt(MAX_PLOT_PIXELS // (source.width * source.height))))
    size = bounded_size((source.width * factor, source.height * factor))
    if size != source.size:
        source = source.resize(size, Image.NEAREST if factor > 1 else Image.BILINEAR)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (size[1], size[0]):
        scores = np.asarray(Image.fromarray(scores, "F").resize(size, Image.BILINEAR))
    low, high = float(scores.min()), float(scores.max())
    scores = (scores - low) / (high - low) if high > low else np.zeros_like(scores)
    colours = matplotlib.colormaps[colormap](scores, bytes=True)[..., :3] / np.float32(255.0)  # (H, W, 3)
    base = np.asarray(source, dtype=np.float32) / 255.0
    blended = (1 - alpha) * base + alpha * colours
    out = (np.clip(blended, 0, 1) * 255).round().astype(np.uint8)
    if held is not None and np.asarray(held).any():
        held_img = Image.fromarray(np.asarray(held, dtype=np.uint8) * 255, "L").resize(size, Image.NEAREST)
        region = np.asarray(held_img) > 127
        width = max(1, round(min(size) / 128))
        edge = region & ~_erode(region, width)
        out[edge] = OUTLINE_RGB
    return Image.fromarray(out, "RGB")


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary erosion with a 4-neighbour cross; outside the image counts as set."""
    for _ in range(iterations):
        p = np.pad(mask, 1, constant_values=True)
        mask = mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask


def lambda_curve(lambdas: Sequence[float], l1_to_source: Sequence[float], current: Optional[float] = None,
                 baseline: Optional[float] = None, l1_to_reconstruction: Optional[Sequence[float]] = None,
                 size: tuple[int, int] = (520, 360)) -> Image.Image:
    """The L1-to-source curve over lambda, with a marker at `current` and a dashed line at
    the VQ-reconstruction baseline; returned as an RGB image (`size` pixels, shrunk to
    MAX_PLOT_PIXELS if larger)."""
    size = bounded_size(size)
    order = np.argsort(lambdas)
    lam = np.asarray(lambdas, dtype=float)[order]
    l1 = np.asarray(l1_to_source, dtype=float)[order]
    dpi = 100
    fig, ax = plt.subplots(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    try:
        ax.plot(lam, l1, "o-", color="#1f77b4", label="L1 to source")
        if l1_to_reconstruction is not None:
            ax.plot(lam, np.asarray(l1_to_reconstruction, dtype=float)[order], "s--", color="#ff7f0e",
                    alpha=0.7, label="L1 to VQ reconstruction")
        if baseline is not None:
            ax.axhline(baseline, color="gray", linestyle=":", label=f"VQ round trip ({baseline:.3f})")
        if current is not None:
            y = float(np.interp(current, lam, l1)) if len(lam) > 1 else float(l1[0])
            ax.plot([current], [y], marker="*", markersize=16, color="#d62728", linestyle="none",
                    label=f"current lambda = {current:g}")
        ax.set_xlabel("lambda (region-hold threshold)")
        ax.set_ylabel("mean |edit - source|")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")
