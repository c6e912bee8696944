"""Pixel checks of a shapes edit: did the output carry out the triple's edit, which shapes it
had to leave alone and whether they survive, and the L1 and IoU measures of the evaluation.

Every check reads pixels only; the thresholds were fixed before any model was trained.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from editmgt.research.shapes import data

COLOUR_FRACTION = 0.5        # share of a shape's inner pixels that must have its colour
ABSENT_FRACTION = 0.2        # at most this share of a removed shape's pixels keep its colour
SHAPE_IOU = 0.5              # shape-kind check: best-matching kind and IoU >= this
BACKGROUND_L1 = 0.1          # background edits: mean L1 to the target background
STYLE_SATURATION = 0.08      # style edits: mean (max - min) channel spread on the shapes
STYLE_L1 = 0.1               # style edits: mean L1 to the target (structure kept)


def erode(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary erosion with a 3 x 3 square (pixels outside the image count as False)."""
    out = mask.copy()
    for _ in range(iterations):
        p = np.pad(out, 1, constant_values=False)
        acc = np.ones_like(out)
        for dy in range(3):
            for dx in range(3):
                acc &= p[dy:dy + out.shape[0], dx:dx + out.shape[1]]
        out = acc
    return out


def _colour_index(name: str) -> int:
    return list(data.all_colours()).index(name)


def colour_fraction(img: np.ndarray, mask: np.ndarray, colour: str) -> float:
    """Share of `mask` pixels whose nearest named colour is `colour`."""
    if not mask.any():
        return 0.0
    return float((data.classify_pixels(img)[mask] == _colour_index(colour)).mean())


def shape_kind_scores(img: np.ndarray, cell: int, colour: str) -> dict[str, float]:
    """IoU of the `colour` pixels of a cell with each shape kind drawn in that cell."""
    x0, y0, x1, y1 = data.cell_box(cell)
    box = np.zeros(img.shape[:2], bool)
    box[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = True
    painted = (data.classify_pixels(img) == _colour_index(colour)) & box
    scores = {}
    for kind in data.SHAPE_KINDS:
        ref = data.shape_mask(kind, cell, img.shape[0])
        union = (painted | ref).sum()
        scores[kind] = float((painted & ref).sum() / union) if union else 0.0
    return scores


def has_shape(img: np.ndarray, shape: data.Shape) -> bool:
    """The shape's colour fills its inner pixels and its kind matches best (IoU >= 0.5)."""
    inner = erode(data.shape_mask(shape.kind, shape.cell, img.shape[0]))
    if colour_fraction(img, inner, shape.colour) < COLOUR_FRACTION:
        return False
    scores = shape_kind_scores(img, shape.cell, shape.colour)
    best = max(scores, key=scores.get)
    return best == shape.kind and scores[best] >= SHAPE_IOU


def is_absent(img: np.ndarray, shape: data.Shape, keep: Optional[np.ndarray] = None) -> bool:
    """At most 20 % of the shape's inner pixels (outside `keep`) still have its colour."""
    inner = erode(data.shape_mask(shape.kind, shape.cell, img.shape[0]))
    if keep is not None:
        inner &= ~keep
    return colour_fraction(img, inner, shape.colour) <= ABSENT_FRACTION


def channel_spread(img: np.ndarray, mask: np.ndarray) -> float:
    """Mean (max - min) channel spread of `img` (H, W, 3 uint8) over `mask`, in [0, 1]:
    0 for grey pixels."""
    x = img.astype(np.float64) / 255.0
    return float((x.max(-1) - x.min(-1))[mask].mean())


def check_edit(output: np.ndarray, triple: data.EditTriple) -> bool:
    """Did `output` (H, W, 3 uint8) carry out the triple's edit? Judged from pixels only."""
    info, kind = triple.info, triple.kind
    if kind == "colour":
        new = info["new"]
        inner = erode(data.shape_mask(new.kind, new.cell, output.shape[0]))
        return colour_fraction(output, inner, new.colour) >= COLOUR_FRACTION
    if kind in ("add", "replace"):
        return has_shape(output, info["new"])
    if kind == "remove":
        return is_absent(output, info["old"])
    if kind == "move":
        new = info["new"]
        return has_shape(output, new) and is_absent(
            output, info["old"], keep=data.shape_mask(new.kind, new.cell, output.shape[0]))
    if kind == "background":
        region = erode(triple.mask, 2)
        diff = np.abs(output.astype(np.float64) - triple.target.astype(np.float64)) / 255.0
        return float(diff[region].mean()) <= BACKGROUND_L1
    if kind == "style":
        shapes = erode(data.shapes_union(triple.source_scene, output.shape[0]))
        l1 = float(np.abs(output.astype(np.float64) / 255.0 - triple.target.astype(np.float64) / 255.0).mean())
        return channel_spread(output, shapes) <= STYLE_SATURATION and l1 <= STYLE_L1
    raise ValueError(f"unknown edit kind {kind!r}")


def untouched_shapes(triple: data.EditTriple) -> list[data.Shape]:
    """Shapes of the source the edit must leave as they are: all of them for add and
    background edits, all but the named one for the others, none for the style edit."""
    if triple.kind == "style":
        return []
    touched = {triple.info.get("old"), triple.info.get("new")}
    return [s for s in triple.source_scene.shapes if s not in touched]


def others_kept(output: np.ndarray, triple: data.EditTriple) -> Optional[bool]:
    """Do all untouched shapes survive in `output`? None when the scene has none."""
    others = untouched_shapes(triple)
    return all(has_shape(output, s) for s in others) if others else None


def l1_to(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a - b| / 255 over every pixel."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 255.0)


def outside_l1(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean |a - b| / 255 over pixels outside `mask`; nan when there are none."""
    outside = ~mask
    if not outside.any():
        return float("nan")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)) / 255.0
    return float(diff[outside].mean())


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool masks (1 when both are empty)."""
    union = (pred | truth).sum()
    return float((pred & truth).sum() / union) if union else 1.0
