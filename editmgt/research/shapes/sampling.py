"""What each training step of the shapes recipe draws: the triples (epochs over the mix, or
over the reading kinds), the prompts (phrasing noise, null prompts for guidance), the copy
warm-up's random grids, and the grounding term's regions and text rows."""

from __future__ import annotations

import logging
from collections import deque
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from editmgt.research.shapes import data
from editmgt.research.shapes.recipe import ShapesRecipe

logger = logging.getLogger(__name__)


class PromptSampler:
    """The text side of a training batch: each triple's instruction, perturbed with
    probability `noise` (`data.perturb_phrasing`), or one of the null prompts with
    probability `dropout` (for classifier-free guidance). Seeded."""

    def __init__(self, instructions: Sequence[str], noise: float, dropout: float,
                 null_prompts: Sequence[str], seed: int, keep: Sequence[str] = (),
                 insert_known: float = 0.0) -> None:
        self.instructions = list(instructions)
        self.noise, self.dropout = float(noise), float(dropout)
        self.null_prompts = list(null_prompts)
        self.keep = frozenset(keep)                  # words the noise leaves alone (with MEANING_WORDS)
        self.insert_known = float(insert_known)      # chance of a known word inserted too
        self.rng = np.random.default_rng(seed)

    def __call__(self, index: torch.Tensor) -> list[str]:
        prompts = []
        for i in index.tolist():
            prompt = self.instructions[i]
            if self.rng.random() < self.noise:
                prompt = data.perturb_phrasing(prompt, self.rng, keep=self.keep, insert_known=self.insert_known)
            if self.rng.random() < self.dropout:
                prompt = self.null_prompts[int(self.rng.integers(len(self.null_prompts)))]
            prompts.append(prompt)
        return prompts


class EpochSampler:
    """Batches of indices drawn without replacement from `pool`, reshuffled (seeded by
    `generator`) whenever fewer than a batch remain."""

    def __init__(self, pool: Sequence[int], generator: torch.Generator) -> None:
        if not len(pool):
            raise ValueError("no training triples to draw from")
        self.pool = torch.as_tensor(list(pool), dtype=torch.long)
        self.generator = generator
        self.order = self.pool[torch.randperm(self.pool.numel(), generator=generator)]
        self.cursor = 0

    def draw(self, batch_size: int) -> torch.Tensor:
        if self.cursor + batch_size > self.order.numel():
            self.order = self.pool[torch.randperm(self.pool.numel(), generator=self.generator)]
            self.cursor = 0
        index = self.order[self.cursor:self.cursor + batch_size]
        self.cursor += batch_size
        return index


class ReadingSpan:
    """Which transformer steps are reading steps, the span's end moved on while the reading
    steps have not learnt: when the step after the span comes and the accuracy of the last
    `recipe.log_every` reading steps on the changed tokens is under `recipe.reading_target`,
    the span grows by `recipe.log_every` edit steps, up to `recipe.reading_until_latest`."""

    def __init__(self, recipe: ShapesRecipe) -> None:
        self.recipe = recipe
        self.until = recipe.reading_span_end()                 # edit step where the span ends now
        self.recent: deque[float] = deque(maxlen=recipe.log_every)

    def is_reading(self, step: int) -> bool:
        """Whether transformer step `step` (0-based) is a reading step; call once per step, in order."""
        r = self.recipe
        if (r.reading_target is not None and step == r.copy_warmup_steps + self.until
                and self.until < r.reading_until_latest and self.recent):
            accuracy = self.accuracy()
            if accuracy < r.reading_target:
                self.until = min(self.until + r.log_every, r.reading_until_latest)
                logger.info("reading steps' accuracy %.3f is under %.2f: the block runs on to edit step %d",
                            accuracy, r.reading_target, self.until)
        return r.is_reading_step(step, until=self.until)

    def record(self, edit_acc: float) -> None:
        """A reading step's accuracy on the changed tokens."""
        self.recent.append(float(edit_acc))

    def accuracy(self) -> Optional[float]:
        """Mean accuracy of the last window of reading steps (None before any)."""
        return sum(self.recent) / len(self.recent) if self.recent else None


def copy_batch(codes: torch.Tensor, batch_size: int, grid: tuple[int, int],
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(source, target) of a pure copy task: grids of codes drawn uniformly from `codes`,
    target = source. Nothing but attention to the same position in the reference stream
    predicts them, and every code is seen equally often, so the embedding -> attention ->
    head path learns to reproduce any code (real scenes show most codes a few times only,
    under a flood of background tokens)."""
    pick = torch.randint(0, codes.numel(), (batch_size, *grid), generator=generator)
    source = codes[pick]
    return source, source.clone()


def named_regions(regions: torch.Tensor, texts: Sequence[str], null_prompts: Sequence[str]
                  ) -> torch.Tensor:
    """regions (B, h, w) with the samples whose prompt was dropped to a null prompt zeroed:
    a null prompt names no region, so the grounding term leaves them out."""
    named = torch.tensor([t not in null_prompts for t in texts], dtype=regions.dtype)
    return regions * named[:, None, None]


def naming_rows(text, texts: Sequence[str],
                words_of: Optional[Callable[[str], list[str]]] = None) -> torch.Tensor:
    """(B, T) float: 1 on the text-stream rows of each instruction's words that name the
    edit (`words_of`, default `naming_words`), 0 elsewhere; all zero for a null prompt."""
    words_of = words_of or data.naming_words
    rows = torch.zeros(len(texts), text.text_length)
    for i, prompt in enumerate(texts):
        words = words_of(prompt)
        if words:
            rows[i, text.keyword_rows(prompt, words)] = 1.0
    return rows
