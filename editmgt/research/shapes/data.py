"""Deterministic synthetic editing triples: source image, instruction, target image, region.

A scene is a background (plain colour, vertical gradient or horizontal stripes) with one
to three shapes sitting on a 3 x 3 grid of cells. Every shape is named by colour and kind
("the red circle"); a scene never holds two shapes with the same name, so an instruction
always refers to exactly one shape. Edits mirror the paper's categories:

    colour   "make the red circle blue"          region = the shape
    add      "add a green star at the top left"  region = the new shape
    remove   "remove the blue square"            region = the shape
    replace  "turn the red circle into a star"   region = old | new shape
    background "make the background black"       region = everything but the shapes
    move     "move the red circle to the right"  region = old | new shape
    style    "make it black and white"           region = the whole image

Rendering is aliased (no anti-aliasing), so every pixel is a palette colour (gradients and
the grey style aside) and the target image is an exact function of (source, instruction).
Scenes are split by a stable hash into train and eval; eval also uses its own phrasings.
A third split, val, draws training scenes said with phrasings of its own (made of words the
other phrasings already use, so the vocabulary is unchanged): for choosing settings and recipe
changes on unseen phrasings without looking at the held-out report.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
GRID = 3
CELL = 20                      # cell side in pixels; cells start at MARGIN
MARGIN = 2
SHAPE = 16                     # shape bounding-box side in pixels

SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
}
# Background styles: a plain named colour, or a two-colour pattern.
BACKGROUNDS: tuple[str, ...] = ("white", "black", "gray", "gradient", "stripes")
PATTERN_COLOURS = ("white", "gray")        # the two colours gradients and stripes use
STRIPE_PERIOD = 8                          # pixels; 4 on, 4 off, aligned to the grid

SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star")
EDIT_KINDS: tuple[str, ...] = ("colour", "add", "remove", "replace", "background", "move", "style")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
SPLITS = ("train", "eval", "val")
SCENE_SPLIT = {"train": "train", "eval": "eval", "val": "train"}   # the scenes each split draws
SPLIT_LABELS = {"train": "training-split", "eval": "held-out", "val": "validation"}  # in reports
EVAL_SCENE_MODULUS = 8         # scenes whose hash % 8 == 0 are eval-only

# Templates: {obj} = "red circle", {colour}, {kind} (new shape kind), {pos}, {bg}.
# Eval and val phrasings are never used for training; val ones reuse the others' words only.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {
        "train": ("make the {obj} {colour}", "change the {obj} to {colour}",
                  "turn the {obj} {colour}", "recolor the {obj} {colour}",
                  "color the {obj} {colour}"),
        "eval": ("paint the {obj} {colour}", "change the color of the {obj} to {colour}"),
        "val": ("set the color of the {obj} to {colour}", "paint the {obj} in {colour}"),
    },
    "add": {
        "train": ("add a {colour} {kind} at the {pos}", "put a {colour} {kind} at the {pos}",
                  "draw a {colour} {kind} at the {pos}", "place a {colour} {kind} at the {pos}"),
        "eval": ("insert a {colour} {kind} at the {pos}", "add a {colour} {kind} in the {pos}"),
        "val": ("put a {colour} {kind} in the {pos}", "give it a {colour} {kind} at the {pos}"),
    },
    "remove": {
        "train": ("remove the {obj}", "delete the {obj}", "erase the {obj}",
                  "take away the {obj}"),
        "eval": ("get rid of the {obj}", "remove the {obj} from the picture"),
        "val": ("take the {obj} away", "erase the {obj} from the image"),
    },
    "replace": {
        "train": ("turn the {obj} into a {kind}", "replace the {obj} with a {kind}",
                  "change the {obj} into a {kind}", "make the {obj} a {kind}"),
        "eval": ("swap the {obj} for a {kind}", "transform the {obj} into a {kind}"),
        "val": ("swap the {obj} with a {kind}", "change the {obj} to a {kind}"),
    },
    "background": {
        "train": ("make the background {bg}", "change the background to {bg}",
                  "turn the background {bg}", "use a {bg} background"),
        "eval": ("set the background to {bg}", "give it a {bg} background"),
        "val": ("change the background into {bg}", "put a {bg} background"),
    },
    "move": {
        "train": ("move the {obj} to the {pos}", "shift the {obj} to the {pos}",
                  "put the {obj} at the {pos}", "place the {obj} at the {pos}"),
        "eval": ("slide the {obj} to the {pos}", "move the {obj} over to the {pos}"),
        "val": ("slide the {obj} over to the {pos}", "move the {obj} into the {pos}"),
    },
    "style": {
        "train": ("make it black and white", "make the image grayscale",
                  "convert the picture to grayscale", "remove all the color"),
        "eval": ("turn the image black and white", "make the picture grayscale"),
        "val": ("convert the image to grayscale", "make the picture black and white"),
    },
}
# How a background style is said in an instruction.
BACKGROUND_WORDS: dict[str, str] = {
    "white": "white", "black": "black", "gray": "gray",
    "gradient": "gradient", "stripes": "striped",
}


@dataclass(frozen=True)
class Shape:
    """One shape of a scene: kind, colour name and grid cell (0..8, row-major)."""

    kind: str
    colour: str
    cell: int

    @property
    def name(self) -> str:
        """How instructions refer to it, e.g. 'red circle'."""
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    """A background style and up to three shapes in distinct cells."""

    background: str
    shapes: tuple[Shape, ...]
    grayscale: bool = False

    def key(self) -> str:
        """Canonical text of the scene (for hashing and de-duplication)."""
        parts = sorted(f"{s.cell}:{s.kind}:{s.colour}" for s in self.shapes)
        return f"{self.background}|{'|'.join(parts)}|{int(self.grayscale)}"


@dataclass
class EditTriple:
    """One training or evaluation example.

    source, target: (H, W, 3) uint8; mask: (H, W) bool, True where the edit should act.
    `info` holds what the pixel checks need (the edited shape, requested colour, ...).
    """

    source: np.ndarray
    instruction: str
    target: np.ndarray
    mask: np.ndarray
    kind: str
    source_scene: Scene
    target_scene: Scene
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- rendering

def cell_box(cell: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the shape bounding box in a cell, x1/y1 exclusive."""
    row, col = divmod(cell, GRID)
    pad = (CELL - SHAPE) // 2
    x0 = MARGIN + col * CELL + pad
    y0 = MARGIN + row * CELL + pad
    return x0, y0, x0 + SHAPE, y0 + SHAPE


def shape_mask(kind: str, cell: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) bool mask of a shape of `kind` drawn in `cell` (aliased)."""
    x0, y0, x1, y1 = cell_box(cell)
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    w = x1 - x0
    if kind == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
    elif kind == "square":
        inset = w // 8
        draw.rectangle([x0 + inset, y0 + inset, x1 - 1 - inset, y1 - 1 - inset], fill=255)
    elif kind == "triangle":
        draw.polygon([(x0 + w / 2 - 0.5, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=255)
    elif kind == "star":
        cx, cy = x0 + (w - 1) / 2, y0 + (w - 1) / 2 + 0.5
        r_out, r_in = w / 2, w / 4.2
        pts = []
        for i in range(10):
            r = r_out if i % 2 == 0 else r_in
            a = -np.pi / 2 + i * np.pi / 5
            pts.append((cx + r * np.cos(a), cy + r * np.sin(a)))
        draw.polygon(pts, fill=255)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    return np.asarray(img) > 127


def background_image(background: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size, 3) uint8 background of the given style."""
    if background in BACKGROUND_COLOURS:
        return np.broadcast_to(np.array(BACKGROUND_COLOURS[background], np.uint8),
                               (size, size, 3)).copy()
    a = np.array(BACKGROUND_COLOURS[PATTERN_COLOURS[0]], np.float64)
    b = np.array(BACKGROUND_COLOURS[PATTERN_COLOURS[1]], np.float64)
    if background == "gradient":
        t = np.linspace(0.0, 1.0, size)[:, None, None]          # (H, 1, 1), top to bottom
        img = a * (1 - t) + b * t
        return np.broadcast_to(np.round(img), (size, size, 3)).astype(np.uint8).copy()
    if background == "stripes":
        rows = (np.arange(size) // (STRIPE_PERIOD // 2)) % 2 == 0
        img = np.where(rows[:, None, None], a, b)
        return np.broadcast_to(img, (size, size, 3)).astype(np.uint8).copy()
    raise ValueError(f"unknown background {background!r}")


def to_grayscale(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, replicated to 3 channels, uint8."""
    y = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.repeat(np.round(y)[..., None], 3, axis=-1).astype(np.uint8)


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size, 3) uint8 image of a scene."""
    img = background_image(scene.background, size)
    for s in scene.shapes:
        img[shape_mask(s.kind, s.cell, size)] = SHAPE_COLOURS[s.colour]
    return to_grayscale(img) if scene.grayscale else img


def shapes_union(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) bool: pixels covered by any shape."""
    out = np.zeros((size, size), bool)
    for s in scene.shapes:
        out |= shape_mask(s.kind, s.cell, size)
    return out


# ----------------------------------------------------------------------------- sampling

def scene_split(scene: Scene) -> str:
    """'eval' for the held-out eighth of scenes (stable hash), else 'train'."""
    h = zlib.crc32(scene.key().encode("utf-8"))
    return "eval" if h % EVAL_SCENE_MODULUS == 0 else "train"


def _random_scene(rng: np.random.Generator, min_shapes: int = 1, max_shapes: int = 3,
                  shared_names: float = 0.0) -> Scene:
    """shared_names: chance that every shape after the first shares its colour or its kind
    with an earlier one, so that an instruction needs both words to find its shape."""
    n = int(rng.integers(min_shapes, max_shapes + 1))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    share = shared_names > 0 and rng.random() < shared_names   # no draw at 0: streams unchanged
    names: set[tuple[str, str]] = set()
    shapes: list[Shape] = []
    for c in cells:
        while True:
            kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
            colour = list(SHAPE_COLOURS)[int(rng.integers(len(SHAPE_COLOURS)))]
            if share and shapes:
                earlier = shapes[int(rng.integers(len(shapes)))]
                if rng.integers(2):
                    kind = earlier.kind
                else:
                    colour = earlier.colour
            if (kind, colour) not in names:
                break
        names.add((kind, colour))
        shapes.append(Shape(kind, colour, int(c)))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(background, tuple(shapes))


def _pick(rng: np.random.Generator, options: list) -> object:
    return options[int(rng.integers(len(options)))]


def _replace_shape(scene: Scene, old: Shape, new: Optional[Shape]) -> Scene:
    shapes = tuple(s for s in scene.shapes if s != old) + ((new,) if new is not None else ())
    return Scene(scene.background, shapes, scene.grayscale)


def _edit(rng: np.random.Generator, scene: Scene, kind: str) -> Optional[tuple[Scene, dict]]:
    """Apply an edit of `kind` to `scene`; None if the scene does not allow it."""
    names = {(s.kind, s.colour) for s in scene.shapes}
    free_cells = [c for c in range(GRID * GRID) if c not in {s.cell for s in scene.shapes}]
    if kind == "colour":
        old = _pick(rng, list(scene.shapes))
        colours = [c for c in SHAPE_COLOURS if c != old.colour and (old.kind, c) not in names]
        if not colours:
            return None
        new = Shape(old.kind, _pick(rng, colours), old.cell)
        return _replace_shape(scene, old, new), {"obj": old.name, "colour": new.colour,
                                                 "old": old, "new": new}
    if kind == "add":
        if len(scene.shapes) >= 3 or not free_cells:
            return None
        options = [(k, c) for k in SHAPE_KINDS for c in SHAPE_COLOURS if (k, c) not in names]
        k, c = _pick(rng, options)
        new = Shape(k, c, int(_pick(rng, free_cells)))
        return _replace_shape(scene, None, new), {"colour": c, "kind": k,
                                                  "pos": POSITIONS[new.cell], "new": new}
    if kind == "remove":
        if len(scene.shapes) < 1:
            return None
        old = _pick(rng, list(scene.shapes))
        return _replace_shape(scene, old, None), {"obj": old.name, "old": old}
    if kind == "replace":
        old = _pick(rng, list(scene.shapes))
        kinds = [k for k in SHAPE_KINDS if k != old.kind and (k, old.colour) not in names]
        if not kinds:
            return None
        new = Shape(_pick(rng, kinds), old.colour, old.cell)
        return _replace_shape(scene, old, new), {"obj": old.name, "kind": new.kind,
                                                 "old": old, "new": new}
    if kind == "background":
        bg = _pick(rng, [b for b in BACKGROUNDS if b != scene.background])
        return Scene(bg, scene.shapes, scene.grayscale), {"bg": BACKGROUND_WORDS[bg],
                                                          "background": bg}
    if kind == "move":
        if not free_cells:
            return None
        old = _pick(rng, list(scene.shapes))
        new = Shape(old.kind, old.colour, int(_pick(rng, free_cells)))
        return _replace_shape(scene, old, new), {"obj": old.name, "pos": POSITIONS[new.cell],
                                                 "old": old, "new": new}
    if kind == "style":
        return Scene(scene.background, scene.shapes, True), {}
    raise ValueError(f"unknown edit kind {kind!r}")


def _region(source: Scene, target: Scene, kind: str, info: dict, size: int) -> np.ndarray:
    if kind == "style":
        return np.ones((size, size), bool)
    if kind == "background":
        return ~(shapes_union(source, size) | shapes_union(target, size))
    mask = np.zeros((size, size), bool)
    for key in ("old", "new"):
        if key in info:
            s = info[key]
            mask |= shape_mask(s.kind, s.cell, size)
    return mask


def say(template: str, info: dict) -> str:
    """An edit's instruction: `template` (of `TEMPLATES`) filled from the edit's `info`."""
    return template.format(**{k: v for k, v in info.items() if isinstance(v, str)})


def make_triple(seed: int, index: int, split: str = "train", kind: Optional[str] = None,
                size: int = IMAGE_SIZE, shared_names: float = 0.0) -> EditTriple:
    """The `index`-th triple of a seeded stream; the same arguments give the same triple.

    split: 'train', 'eval' (scenes and phrasings never overlap with train's) or 'val'
    (training scenes, phrasings of its own).
    kind: force an edit kind; by default edit kinds cycle with the index so that every
    block of 7 consecutive indices covers each kind once.
    shared_names: chance that a scene's shapes share colours or kinds (`_random_scene`);
    0, the default, is the stream every evaluation uses.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    edit_kind = kind if kind is not None else EDIT_KINDS[index % len(EDIT_KINDS)]
    if edit_kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {edit_kind!r}")
    rng = np.random.default_rng([seed, index, SPLITS.index(split)])
    for _ in range(1000):
        scene = _random_scene(rng, shared_names=shared_names)
        if scene_split(scene) != SCENE_SPLIT[split]:
            continue
        edited = _edit(rng, scene, edit_kind)
        if edited is None:
            continue
        target_scene, info = edited
        template = _pick(rng, list(TEMPLATES[edit_kind][split]))
        instruction = say(template, info)
        source, target = render(scene, size), render(target_scene, size)
        mask = _region(scene, target_scene, edit_kind, info, size)
        info = dict(info, template=template)
        return EditTriple(source, instruction, target, mask, edit_kind, scene, target_scene,
                          info)
    raise RuntimeError("could not sample a triple (should not happen)")


def redraw(triple: EditTriple, new: Shape) -> EditTriple:
    """The same edit of the same source with `new` drawn in place of the shape it draws
    (colour changes, adds, replacements, moves): another colour, kind or place, said with
    the same template. The caller keeps `new` a shape the edit could have made."""
    if "new" not in triple.info:
        raise ValueError(f"a {triple.kind} edit draws no new shape")
    scene = _replace_shape(triple.target_scene, triple.info["new"], new)
    said = {"colour": new.colour, "kind": new.kind, "pos": POSITIONS[new.cell]}
    info = dict(triple.info, new=new, **{k: v for k, v in said.items() if k in triple.info})
    instruction = say(info["template"], info)
    size = triple.source.shape[0]
    return EditTriple(triple.source, instruction, render(scene, size),
                      _region(triple.source_scene, scene, triple.kind, info, size), triple.kind,
                      triple.source_scene, scene, info)


def iter_triples(seed: int, n: int, split: str = "train", start: int = 0,
                 shared_names: float = 0.0) -> Iterator[EditTriple]:
    """Yield triples `start` .. `start + n - 1` of the seeded stream."""
    for i in range(start, start + n):
        yield make_triple(seed, i, split, shared_names=shared_names)


def make_vq_image(seed: int, index: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """A dense scene for training the VQ: 3 to 9 shapes (names may repeat), any background,
    grey one time in three. Dense scenes give every colour, kind and edge enough pixels."""
    rng = np.random.default_rng([seed, index, 7])
    n = int(rng.integers(3, GRID * GRID + 1))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    colours = list(SHAPE_COLOURS)
    shapes = tuple(Shape(SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))],
                         colours[int(rng.integers(len(colours)))], int(c)) for c in cells)
    scene = Scene(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], shapes,
                  grayscale=bool(rng.integers(3) == 0))
    return render(scene, size)


def vocabulary() -> list[str]:
    """Every word any template (train, eval or val) can produce, sorted."""
    words: set[str] = set()
    fills = list(SHAPE_COLOURS) + list(SHAPE_KINDS) + list(BACKGROUND_WORDS.values())
    fills += [w for p in POSITIONS for w in p.split()]
    for per_kind in TEMPLATES.values():
        for templates in per_kind.values():
            for t in templates:
                for w in t.split():
                    if not (w.startswith("{") and w.endswith("}")):
                        words.add(w)
    words.update(fills)
    return sorted(words)


# ----------------------------------------------------------------------------- pixel checks

def nearest_colour(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    """Name of the palette colour nearest (L2) to an RGB triple."""
    names = list(palette)
    cols = np.array([palette[n] for n in names], np.float64)
    d = ((cols - np.asarray(rgb, np.float64)[None]) ** 2).sum(-1)
    return names[int(d.argmin())]


def all_colours() -> dict[str, tuple[int, int, int]]:
    """Shape and background colours together (for classifying pixels)."""
    return {**SHAPE_COLOURS, **BACKGROUND_COLOURS}


def classify_pixels(img: np.ndarray) -> np.ndarray:
    """(H, W) int: index into list(all_colours()) of each pixel's nearest colour."""
    pal = all_colours()
    cols = np.array(list(pal.values()), np.float64)                    # (P, 3)
    d = ((img.astype(np.float64)[:, :, None, :] - cols[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


# ----------------------------------------------------------------------------- phrasing noise

# Words an instruction's meaning rests on: what fills a template, the articles (a new shape
# vs an existing one) and the words that name the two scene-wide edits. Everything else
# (verbs, prepositions, "it", ...) is phrasing and may be swapped for an unknown word.
MEANING_WORDS: frozenset[str] = frozenset(
    [*SHAPE_COLOURS, *SHAPE_KINDS, *BACKGROUND_WORDS.values(), *BACKGROUND_COLOURS,
     *(w for p in POSITIONS for w in p.split()), "a", "the", "background", "grayscale", "color"])
# the meaning words that say which region an edit changes (training's grounding rows)
NAMING_WORDS: frozenset[str] = MEANING_WORDS - {"a", "the"}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def naming_words(prompt: str) -> list[str]:
    """The words of `prompt` that name the edit (`NAMING_WORDS`), sorted; [] for none."""
    return sorted(set(prompt.split()) & NAMING_WORDS)


def locating_words(prompt: str) -> list[str]:
    """The naming words that find the edit, not those that say what to draw: a shape colour
    or kind after the first of its category ("make the red circle *blue*", "swap the purple
    star for a *triangle*") is left out. Sorted; [] for none."""
    kept, seen = set(), set()
    for word in prompt.split():
        category = ("colour" if word in SHAPE_COLOURS else
                    "kind" if word in SHAPE_KINDS else None)
        if category in seen:
            continue
        if category:
            seen.add(category)
        if word in NAMING_WORDS:
            kept.add(word)
    return sorted(kept)


# keyword sets (instruction -> words): the text rows training grounds and region-hold reads
KEYWORD_SETS = {"naming": naming_words, "locating": locating_words}


@functools.lru_cache(maxsize=1)
def _template_words() -> frozenset[str]:
    return frozenset(vocabulary())


def pseudo_word(rng: np.random.Generator, min_len: int = 2, max_len: int = 7) -> str:
    """A random lower-case letter string that is not a word of any template."""
    known = _template_words()
    while True:
        n = int(rng.integers(min_len, max_len + 1))
        word = "".join(_LETTERS[int(i)] for i in rng.integers(0, len(_LETTERS), n))
        if word not in known:
            return word


@functools.lru_cache(maxsize=1)
def insertable_words() -> tuple[str, ...]:
    """Words of the training phrasings that the phrasing noise may insert as distractors
    (`perturb_phrasing`'s `insert_known`), sorted: every word of a training template but
    what fills one (colours, kinds, places, backgrounds) and "a", which would turn a named
    shape into a new one. Other kinds' verbs and the scene-wide words ("color", "background",
    "grayscale") are among them. No eval or val phrasing is used."""
    fills = {*SHAPE_COLOURS, *SHAPE_KINDS, *BACKGROUND_WORDS.values(), *BACKGROUND_COLOURS,
             *(w for p in POSITIONS for w in p.split()), "a"}
    words = {w for per_kind in TEMPLATES.values() for t in per_kind["train"] for w in t.split()}
    return tuple(sorted(w for w in words if not w.startswith("{") and w not in fills))


def perturb_phrasing(instruction: str, rng: np.random.Generator, replace: float = 0.25,
                     drop: float = 0.1, insert: float = 0.25, keep: Iterable[str] = (),
                     insert_known: float = 0.0) -> str:
    """Training-time phrasing noise: each word outside `MEANING_WORDS` and `keep` is replaced
    by a pseudo-word with probability `replace` or dropped with probability `drop`, and one
    pseudo-word is inserted at a random place with probability `insert`; then, with
    probability `insert_known`, one word of the training phrasings (`insertable_words`) is too.
    `keep` does not change the random draws, only which words they may touch; with
    `insert_known` 0 no draw is made for it.

    The text towers have never seen most verbs an unseen phrasing uses; trained with this
    noise the editor learns that the meaning lives in the colour, shape, position and
    background words, not in the verb, and (with `insert_known`) that a known word out of
    its place does not change which edit is asked for. No evaluation phrasing or word is used."""
    kept = MEANING_WORDS | frozenset(keep)
    words = []
    for w in instruction.split():
        u = rng.random()
        if w in kept or u >= replace + drop:
            words.append(w)
        elif u < replace:
            words.append(pseudo_word(rng))
    if rng.random() < insert:
        words.insert(int(rng.integers(0, len(words) + 1)), pseudo_word(rng))
    if insert_known > 0 and rng.random() < insert_known:
        known = insertable_words()
        words.insert(int(rng.integers(0, len(words) + 1)), known[int(rng.integers(len(known)))])
    return " ".join(words)
