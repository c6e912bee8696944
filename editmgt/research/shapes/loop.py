"""The shapes recipe's training loop: the editor (and the text towers' layers) on the encoded
triples, after a copy warm-up, with reading steps where the recipe puts them."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional, Sequence

import numpy as np
import torch

from editmgt.pipeline import micro_conditions
from editmgt.research.shapes import data
from editmgt.research.shapes.recipe import ShapesRecipe
from editmgt.research.shapes.sampling import (EpochSampler, PromptSampler, ReadingSpan, copy_batch,
                                              named_regions, naming_rows)
from editmgt.research.shapes.text_towers import text_trainables
from editmgt.research.shapes.tokens import EncodedTriples
from editmgt.settings import DEFAULT_NEGATIVE_PROMPT
from editmgt.train.objective import EditBatch, count_parameters, make_optimizer, train_step

logger = logging.getLogger(__name__)


def _mean_of_numbers(values: Sequence[float]) -> Optional[float]:
    """Mean of the values that are not nan, rounded for the log; None if there are none."""
    kept = [v for v in values if not np.isnan(v)]
    return round(float(np.mean(kept)), 6) if kept else None


def _shown(value: Optional[float]) -> str:
    """A logged mean for the log line: 4 decimals, or '-' where the window had none."""
    return "-" if value is None else f"{value:.4f}"


def train_transformer(model: torch.nn.Module, text, enc: EncodedTriples, recipe: ShapesRecipe,
                      log: dict) -> None:
    """Train `model` (and `text`'s layers when `recipe.train_text`) for the recipe's copy
    warm-up and edit steps; appends each log window's means to `log["transformer"]` and
    records where the reading steps' span ended (`log["reading_until"]`). Leaves both in
    eval mode."""
    t0 = time.time()
    text_params = text_trainables(text) if recipe.train_text else []
    logger.info("transformer: %d parameters; text towers: %d trained", count_parameters([model]),
                sum(p.numel() for p in text_params))
    trained = torch.nn.ModuleList([model, text]) if recipe.train_text else model
    optimizer = make_optimizer(trained, recipe.optim, {text: recipe.text_lr_scale} if recipe.train_text else None)
    gen = torch.Generator().manual_seed(recipe.seed + 50)
    # the pipeline's default negative prompt is trained as a null prompt too
    null_prompts = ["", DEFAULT_NEGATIVE_PROMPT]
    prompts = PromptSampler(enc.instructions, recipe.phrasing_noise, recipe.objective.text_dropout,
                            null_prompts, seed=recipe.seed + 60, keep=recipe.phrasing_keeps,
                            insert_known=recipe.phrasing_insert_known)
    micro = micro_conditions((recipe.image_size, recipe.image_size), 1)
    kinds = enc.kinds
    mixed = EpochSampler([i for i, k in enumerate(kinds) for _ in range(recipe.kind_repeats.get(k, 1))], gen)
    reading = (EpochSampler([i for i, k in enumerate(kinds) if k in recipe.reading_kinds], gen)
               if recipe.reading_every else None)
    reading_objective = dataclasses.replace(recipe.objective, edit_share=1.0, mask_edit_prob=1.0)
    window: list[dict] = []
    reading_window: list[dict] = []
    used_codes = torch.unique(torch.cat([enc.source.flatten(), enc.target.flatten()]))
    total = recipe.copy_warmup_steps + recipe.steps
    optim = dataclasses.replace(recipe.optim, total_steps=recipe.optim.total_steps or total)
    text.train(recipe.train_text)
    span = ReadingSpan(recipe)
    for step in range(total):
        is_reading = span.is_reading(step)
        if step < recipe.copy_warmup_steps:
            source, target = copy_batch(used_codes, recipe.batch_size, tuple(enc.source.shape[1:]), gen)
            texts, objects, regions, rows = [""] * recipe.batch_size, None, None, None
        else:
            index = (reading if is_reading else mixed).draw(recipe.batch_size)
            source, target, objects = enc.source[index], enc.target[index], enc.objects[index]
            texts = prompts(index)
            regions = named_regions(enc.regions[index], texts, null_prompts)
            grounded_rows = recipe.objective.grounding_weight > 0 and recipe.grounding_rows in data.KEYWORD_SETS
            rows = naming_rows(text, texts, data.KEYWORD_SETS[recipe.grounding_rows]) if grounded_rows else None
        with torch.set_grad_enabled(recipe.train_text):
            emb = text(texts)
        batch = EditBatch(target, source, emb.states, emb.pooled,
                          micro.expand(source.shape[0], -1), objects, regions, rows)
        stats = train_step(model, optimizer, batch, reading_objective if is_reading else recipe.objective,
                           optim, step, gen)
        (reading_window if is_reading else window).append(stats)
        if is_reading:
            span.record(stats["edit_acc"])
        if (step + 1) % recipe.log_every == 0 or step == total - 1:
            mean = {k: _mean_of_numbers([w[k] for w in window]) for k in (window or reading_window)[0]}
            # reading steps: their loss (changed tokens only) and accuracy on the changed tokens
            mean["reading_loss"] = _mean_of_numbers([w["loss"] for w in reading_window])
            mean["reading_edit_acc"] = _mean_of_numbers([w["edit_acc"] for w in reading_window])
            mean.update(step=step + 1, seconds=round(time.time() - t0, 1))
            log["transformer"].append(mean)
            # a window may hold reading steps only (a block of them): its other means are None
            logger.info("step %d/%d loss %s acc %s copy %s edit %s keep %s grounding %s reading edit %s "
                        "lr %.2e (%.0fs)", step + 1, total, *(_shown(mean[k]) for k in (
                            "loss", "acc", "copy_acc", "edit_acc", "keep_acc", "grounding", "reading_edit_acc")),
                        stats["lr"], mean["seconds"])
            window, reading_window = [], []
    text.eval()
    model.eval()
    log["reading_until"] = span.until          # where the reading steps' span ended (edit step)
