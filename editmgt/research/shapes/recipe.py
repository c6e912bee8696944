"""The tiny-shapes recipe: every knob of a training run, with the shipped model's values as defaults.

`ShapesRecipe()` is the recipe `python -m editmgt.research.shapes.train --out DIR` runs;
`train_log.json` of a run records it (`ShapesRecipe.to_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from editmgt.research.shapes import data
from editmgt.train.objective import ObjectiveConfig, OptimConfig
from editmgt.train.vq_train import VQConfig, VQTrainConfig

TARGETS = ("vq", "snap", "canonical")   # ShapesRecipe.targets choices
GROUNDING_ROWS = ("all", *data.KEYWORD_SETS)   # ShapesRecipe.grounding_rows choices
VQ_CODEBOOKS = ("pixels", "learnt")   # vq_schedule choices


def vq_schedule(codebook: str) -> VQTrainConfig:
    """The VQ stage of the recipe: "pixels" (the default: ids fixed from the pixel patches,
    then the encoder and decoder fitted to them, so the ids are the same on every machine) or
    "learnt" (auto-encoder warm-up, k-means of the distinct patches' latents, quantised steps,
    id-locality steps)."""
    common = dict(batch_size=16, lr=4e-3, pixel_loss="l1+mse", detail_weight=10.0)
    if codebook == "pixels":
        return VQTrainConfig(ae_steps=0, steps=600, codebook_from="pixels", code_weight_power=0.5,
                             code_vectors="centres", decoder_steps=800, decoder_lr=2e-3, **common)
    if codebook == "learnt":
        return VQTrainConfig(ae_steps=300, steps=900, kmeans_batches=64, codebook_from="patches",
                             locality_steps=1000, locality_lr=2e-3, **common)
    raise ValueError(f"unknown VQ codebook {codebook!r}: use {', '.join(VQ_CODEBOOKS)}")


@dataclass
class ShapesRecipe:
    """Every knob of the shipped tiny-shapes model (defaults reproduce it)."""

    seed: int = 0
    image_size: int = data.IMAGE_SIZE
    n_train: int = 16000                  # training triples (cached as tokens)
    # chance that a training scene's shapes share colours or kinds, so that finding the shape
    # takes both words (data.make_triple); 0 is the stream the evaluation draws
    shared_names: float = 0.0
    # text towers (random; their layers train with the editor when train_text)
    text_dim: int = 32                    # Gemma2 hidden = joint_attention_dim
    pooled_dim: int = 32                  # CLIP projection = pooled_projection_dim
    clip_hidden: int = 32
    text_layers: int = 3
    text_init_range: float = 0.1          # std of the random towers' weights
    # train the towers' layers with the editor (token embeddings stay frozen random, so a
    # word training never shows looks like the pseudo-words of the phrasing noise)
    train_text: bool = True
    # the towers' layers learn at this times the editor's rate: at the editor's full rate they
    # move too fast for some seeds to learn to read the instruction in time
    text_lr_scale: float = 0.5
    phrasing_noise: float = 0.5           # share of training instructions perturbed
    # words the phrasing noise leaves alone besides data.MEANING_WORDS: the style edit's words
    # for the picture ("make the image grayscale"), which say what the edit covers as
    # "background" does for a background change
    phrasing_keeps: tuple[str, ...] = ("image", "picture")
    # chance that a perturbed instruction also gets one word of the training phrasings
    # inserted (data.insertable_words: "color", "remove", "background", ...), so that a known
    # word out of its place does not decide the edit; 0 (the shipped recipe) draws nothing
    phrasing_insert_known: float = 0.0
    # VQ
    vq: VQConfig = field(default_factory=VQConfig)
    # the ids are clusters of the distinct pixel patches, fixed before the VQ trains, so they
    # are the same on every machine and equal patches always get equal ids
    vq_train: VQTrainConfig = field(default_factory=lambda: vq_schedule("pixels"))
    vq_dense_images: int = 8000           # dense scenes mixed into the VQ's training images
    # target ids: "vq" (the VQ's codes of the target image), "snap" (source id where the
    # patch is unchanged), "canonical" (snap, and each changed patch's pixels -> their modal id)
    targets: str = "snap"
    # transformer
    num_layers: int = 2
    num_single_layers: int = 4
    heads: int = 4
    head_dim: int = 32
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    downsample: bool = True               # 2x2 VQ tokens per transformer token, as released
    copy_heads: int = 1                   # heads per double block started as copy heads (train/init.py)
    copy_warmup_steps: int = 200          # first steps: reproduce random token grids (copy_batch)
    kind_repeats: dict = field(default_factory=dict)   # edit kind -> times per epoch (default 1)
    # reading steps: every reading_every-th edit step (0: none) among edit steps
    # [reading_from, reading_until) trains on edits of reading_kinds alone, every changed token
    # masked and the loss on those tokens only, so the instruction is the only source of the
    # answer; reading_until None: to the end. The default is a block of 600 such steps on the
    # edits that name what to draw (a colour or a kind) once the model can draw, while the
    # learning rate is still high, and early enough to leave most of the run (1 750 of 2 800
    # edit steps) to the mix after it: without it those words never reach the predictions
    reading_kinds: tuple[str, ...] = ("colour", "add", "replace")
    reading_every: int = 1
    reading_from: int = 450
    reading_until: Optional[int] = 1050
    # a block that has not learnt to read by reading_until may run on, a window of log_every
    # reading steps at a time, while the last window's accuracy on the changed tokens is under
    # reading_target, to edit step reading_until_latest at most (ReadingSpan); the run's length
    # is unchanged, the extra reading steps replace mixed ones. None: the span ends at
    # reading_until. A draw that reads by reading_until trains exactly as without it
    reading_target: Optional[float] = None
    reading_until_latest: Optional[int] = None
    # text rows the grounding term reads (when objective.grounding_weight > 0): "all";
    # "naming", the rows of the words that name the edit (colours, shapes, places, backgrounds);
    # or "locating", those less the new colour or kind (`locating_words`): the words that find
    # the edit, so the words that say what to draw stay free
    grounding_rows: str = "locating"
    # optimisation
    steps: int = 2800                     # edit steps, after the copy warm-up
    batch_size: int = 32
    # mask_objects: the edit-masked samples hide every shape with the edit, so a fully hidden
    # shape is no sign that it is the one to change; with the peak rate 6e-4 the model keeps
    # more of the untouched shapes and reads "the color of" on more draws
    objective: ObjectiveConfig = field(default_factory=lambda: ObjectiveConfig(
        text_dropout=0.1, edit_share=0.5, mask_edit_prob=0.5, grounding_weight=0.2,
        mask_objects=True))
    # total_steps 0: the cosine decay spans the whole run (copy warm-up + edit steps)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=6e-4, warmup_steps=100, total_steps=0, min_lr_ratio=0.1))
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.targets not in TARGETS:
            raise ValueError(f"unknown targets {self.targets!r}: use {', '.join(TARGETS)}")
        if self.grounding_rows not in GROUNDING_ROWS:
            raise ValueError(f"unknown grounding_rows {self.grounding_rows!r}: use {', '.join(GROUNDING_ROWS)}")
        unknown = [k for k in self.reading_kinds if k not in data.EDIT_KINDS]
        if unknown:
            raise ValueError(f"unknown reading_kinds {unknown}: use {', '.join(data.EDIT_KINDS)}")
        bad = {k: n for k, n in self.kind_repeats.items() if k not in data.EDIT_KINDS or n < 1}
        if bad:
            raise ValueError(f"bad kind_repeats {bad}: kinds of {', '.join(data.EDIT_KINDS)}, counts >= 1")
        template_words = {w for per_kind in data.TEMPLATES.values() for t in per_kind["train"] for w in t.split()}
        foreign = [w for w in self.phrasing_keeps if w not in template_words]
        if foreign:
            raise ValueError(f"phrasing_keeps {foreign} are not words of a training template")
        if not 0.0 <= self.phrasing_insert_known <= 1.0:
            raise ValueError(f"phrasing_insert_known is a chance: between 0 and 1, got {self.phrasing_insert_known}")
        if not 0.0 <= self.shared_names <= 1.0:
            raise ValueError(f"shared_names is a chance: between 0 and 1, got {self.shared_names}")
        if self.reading_every < 0:
            raise ValueError("reading_every must be 0 (no reading steps) or positive")
        if self.reading_every == 1 and self.reading_from <= 0 and self.reading_span_end() >= self.steps:
            raise ValueError("reading_every 1 over every edit step leaves no step for the other edits: "
                             "bound it with reading_from / reading_until")
        if not self.text_lr_scale > 0.0:
            raise ValueError(f"text_lr_scale must be positive (train_text False freezes the towers), "
                             f"got {self.text_lr_scale}")
        if self.reading_target is not None and not 0.0 < self.reading_target <= 1.0:
            raise ValueError(f"reading_target is an accuracy: above 0 and at most 1, got {self.reading_target}")
        if (self.reading_target is None) != (self.reading_until_latest is None):
            raise ValueError("reading_target and reading_until_latest go together: "
                             "the block runs on while under the target, to the latest step")
        if self.reading_until_latest is not None:
            if self.reading_until is None or self.reading_every == 0:
                raise ValueError("reading_until_latest extends a bounded span of reading steps: "
                                 "set reading_every and reading_until")
            if not self.reading_until <= self.reading_until_latest < self.steps:
                raise ValueError(f"reading_until_latest must lie between reading_until ({self.reading_until}) "
                                 f"and the last edit step ({self.steps - 1}), got {self.reading_until_latest}")

    def is_reading_step(self, step: int, until: Optional[int] = None) -> bool:
        """Whether transformer step `step` (0-based, copy warm-up included) is a reading step;
        `until`: the edit step where the span ends, if not `reading_until` (`ReadingSpan`)."""
        until = self.reading_span_end() if until is None else until
        edit_step = step - self.copy_warmup_steps - self.reading_from
        return (self.reading_every > 0 and 0 <= edit_step < until - self.reading_from
                and edit_step % self.reading_every == self.reading_every - 1)

    def reading_span_end(self) -> int:
        """The edit step where the reading steps' span ends (at most the last)."""
        return self.steps if self.reading_until is None else min(self.reading_until, self.steps)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["vq_train"].pop("history", None)
        return d
