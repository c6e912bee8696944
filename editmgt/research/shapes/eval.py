"""Measure a shapes EditMGT: edit success, leakage, localisation IoU, L1 against lambda.

    python -m editmgt.research.shapes.eval --model DIR --n 300 --seed 0 [--out runs/shapes-eval]

Edits held-out scenes with held-out phrasings (`data.py`, split "eval") and
prints one table:

- success: per edit kind and overall, checked from pixels (requested colour / shape kind
  in the target region, absence after removal, the new background, grey for the style);
  and per held-out phrasing (two per kind), where runs of one recipe differ most;
- leakage: mean L1 (pixels in [0, 1]) between the edit and the source outside the true
  target region, for every lambda of the grid (style edits have no outside and are left
  out); the VQ round-trip floor of the same pixels is printed beside it;
- the same two L1s measured to the lambda-1 image instead of the source: the paper's
  reference for Figure 4 (appendix C.6: the VQ round trip's own L1 would otherwise sit under
  every point, so the image at lambda = 1 is the baseline). At lambda 1 region-hold reverts
  every token, so that image is the source's VQ round trip (the source itself with
  `--keep-unchanged-pixels`); lambda 1 is always part of the grid;
- a perfect edit, every column measured the same way: the true target's own tokens, decoded
  (and blended like the pipeline's output when pixels are kept), so its success is the
  ceiling the VQ puts on a model's and its leakage the least any model can leak through it;
  `--keep-unchanged-pixels` measures the pipeline with the source's own pixels kept wherever
  no token changed, which can leak less than that floor;
- localisation: IoU between the true target mask and the tokens whose consolidated
  attention score is >= lambda (the tokens region-hold lets change), for block ranges
  "paper" (the 28-36 analogue), "all", "double" and "single"; for the paper range read
  from the rows of a keyword set only (the map the pipeline's `keyword` option gives):
  "paper, naming words" (every colour, shape, place and background word of the
  instruction) and "paper, locating words" (those less the new colour or kind: the words
  that find the edit, as the shapes recipe grounds them); and for the true region itself
  pooled to the transformer grid and consolidated the same way ("true region (ceiling)":
  what a perfect map can reach at this grid);
- region-hold reads the paper range's map from the locating words (the paper's keyword set
  M of Eq. 3, "such as a specific object"); `--hold-rows naming` makes it read every
  naming word, `--hold-rows all` every text row;
- the Figure 4 analogue: L1 to the source and to the lambda-1 image, and success, against
  lambda, saved as a plot;
- others kept: the share of edits whose untouched shapes all survive (`has_shape`), among
  the edits whose scene has shapes the instruction does not name (style edits left out);
  success looks at the named shape only, so an edit applied to every shape passes it;
- clean edits: the share of all edits that succeed and keep every untouched shape (an edit
  with none to keep needs only succeed), what a user asking for one change gets.

Every lambda of one scene is sampled from the same seed (`EditMGTPipeline.sweep`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from editmgt.images import changed_alpha, keep_unchanged, to_tensor
from editmgt.pipeline import micro_conditions
from editmgt.research.shapes import data
from editmgt.research.shapes.checks import check_edit, iou, l1_to, others_kept, outside_l1
from editmgt.settings import EditSettings

logger = logging.getLogger(__name__)

DEFAULT_LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
CEILING = "true region (ceiling)"  # the IoU rows' name for region_scores
# each keyword set of data.KEYWORD_SETS gives an IoU row "paper, <set> words", the paper
# range's map read from those words' rows only, and can be the rows region-hold reads
HOLD_ROWS = ("all", *data.KEYWORD_SETS)  # EvalSettings.hold_rows
SHAPES_MODEL = "tiny-shapes"  # the zoo entry whose recommended settings the evaluation measures


# ----------------------------------------------------------------------------- block ranges

def block_ranges(num_double: int, num_single: int, paper: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """The hold-block ranges compared: the 28-36 analogue, all, double only, single only."""
    n = num_double + num_single
    ranges = {"paper": tuple(paper), "all": tuple(range(n))}
    if num_double:
        ranges["double"] = tuple(range(num_double))
    if num_single:
        ranges["single"] = tuple(range(num_double, n))
    return ranges


@torch.inference_mode()
def attention_scores(pipe, tokens: torch.Tensor, source_tokens: torch.Tensor, instruction: str,
                     ranges: dict[str, tuple[int, ...]], gamma: float, smoothing: str,
                     strength: float, size: int, rows: Optional[torch.Tensor] = None
                     ) -> dict[str, np.ndarray]:
    """Consolidated scores (h, w) on the VQ grid per block range, from one forward pass of
    the conditional branch on the final canvas `tokens` (h, w) (the last sampling step's
    input), as the pipeline computes them for region-hold; `rows` (R,): only those text
    rows' attention (the pipeline's keyword map), else all rows."""
    from editmgt.models.transformer import AttentionProbe
    from editmgt.sampling.localization import consolidate

    model = pipe.transformer
    device = pipe.device
    text = pipe.text.encode([instruction])
    dtype = next(model.parameters()).dtype
    blocks = tuple(sorted({b for r in ranges.values() for b in r}))
    out = model(tokens[None].to(device), text.states.to(device, dtype), text.pooled.to(device, dtype),
                micro_conditions((size, size), 1, device), torch.zeros(1, dtype=torch.long, device=device),
                reference_tokens=source_tokens[None].to(device), gamma=gamma,
                probe=AttentionProbe(blocks=blocks, rows=rows))
    h, w = tokens.shape
    f = model.config.downsample_factor
    result = {}
    for name, r in ranges.items():
        loc = consolidate({b: out.text_to_image[b] for b in r}, (h // f, w // f), (h, w),
                          smoothing=smoothing, strength=strength)
        result[name] = loc.scores[0].reshape(h, w).float().cpu().numpy()
    return result


def region_scores(mask: np.ndarray, token_grid: tuple[int, int], factor: int, smoothing: str,
                  strength: float) -> np.ndarray:
    """The localisation an ideal attention map would give: the true region's share of each
    transformer token (mask (H, W) bool pixels; token_grid (h, w) the VQ grid; factor the
    transformer's down-sampling) consolidated like attention (rescale, smoothing, bicubic
    up-sampling), as (h, w) scores on the VQ grid. Its IoU is the ceiling the transformer
    grid and the consolidation put on any block range's. A region covering the whole
    picture (style edits) scores 1 everywhere: min-max rescaling is undefined for a
    constant map."""
    from editmgt.sampling.localization import consolidate

    h, w = token_grid
    if mask.all():
        return np.ones((h, w), np.float32)
    pooled = torch.from_numpy(mask.astype(np.float32))[None, None]
    pooled = torch.nn.functional.avg_pool2d(pooled, mask.shape[0] // (h // factor)).flatten(1)
    loc = consolidate({0: pooled[:, None]}, (h // factor, w // factor), (h, w),
                      smoothing=smoothing, strength=strength)
    return loc.scores[0].reshape(h, w).numpy()


# ----------------------------------------------------------------------------- evaluation

@lru_cache(maxsize=1)
def measured_settings() -> EditSettings:
    """The edit settings the evaluation samples with: the tiny-shapes model's recommendation
    (its zoo entry: the sampler length its training assumes, guidance, temperature and the
    inverse-cdf draw chosen on the training split), measured as the paper's method, every
    pixel decoded through the VQ (`--keep-unchanged-pixels` measures the product option),
    with the empty negative prompt (the recipe trains both it and the default as null prompts)."""
    from editmgt.zoo import load_zoo

    return load_zoo()[SHAPES_MODEL].settings.replace(keep_unchanged_pixels=False, negative_prompt="")


@dataclass
class EvalSettings:
    """What the evaluation runs: one EditSettings, the lambda grid and the rows region-hold reads."""

    edit: EditSettings = field(default_factory=measured_settings)
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    # the text rows region-hold's map reads: a keyword set of data.KEYWORD_SETS ("locating", the
    # words that find the edit: the paper's keyword set M of Eq. 3 and the rows the shapes
    # recipe grounds; "naming" adds the new colour or kind) or "all"; an instruction without
    # such words falls back to all rows
    hold_rows: str = "locating"

    def __post_init__(self) -> None:
        if self.hold_rows not in HOLD_ROWS:
            raise ValueError(f"unknown hold_rows {self.hold_rows!r}: use one of {HOLD_ROWS}")

    def record(self) -> dict:
        """JSON-friendly: the edit settings (but the lambda and keywords, set per edit), the grid and the rows."""
        edit = {k: v for k, v in self.edit.as_dict().items() if k not in ("hold_lambda", "keywords")}
        return {**edit, "lambdas": list(self.lambdas), "hold_rows": self.hold_rows}


@dataclass
class EvalResult:
    """Per-triple records and the summary table."""

    settings: dict
    records: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded as the pipeline rounds."""
    return (image.clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)


def perfect_edit(pipe, triple: data.EditTriple, source_tokens: torch.Tensor,
                 keep_unchanged_pixels: bool) -> tuple[np.ndarray, float]:
    """What a model that predicts the true target's tokens exactly returns: ((H, W, 3) uint8,
    the share of tokens that differ from `source_tokens` (h, w)).

    The target is encoded by the pipeline's VQ and decoded; with `keep_unchanged_pixels` the
    source's own pixels are kept where its tokens equal `source_tokens`, by the pipeline's own
    blend (`images.changed_alpha`, `images.keep_unchanged`)."""
    target_tokens = pipe.vq.encode(to_tensor(Image.fromarray(triple.target)))[0]     # (h, w)
    changed = target_tokens.cpu() != source_tokens.cpu()
    image = _to_uint8(pipe.vq.decode(target_tokens[None])[0])
    if keep_unchanged_pixels:
        alpha = changed_alpha(changed, pipe.vq.scale_factor)
        image = np.asarray(keep_unchanged(Image.fromarray(image), Image.fromarray(triple.source), alpha))
    return image, float(changed.float().mean())


def keyword_row(name: str) -> str:
    """The IoU row of keyword set `name`: the paper range's map from those words' rows."""
    return f"paper, {name} words"


def evaluate(model_dir: str | Path, n: int = 300, seed: int = 0,
             settings: Optional[EvalSettings] = None, pipe=None,
             save_examples: Optional[Path] = None, split: str = "eval") -> EvalResult:
    """Edit `n` held-out triples at every lambda and measure them (see module doc).

    split="train" measures training scenes with training phrasings instead (for choosing
    sampler settings without looking at the held-out set); split="val" training scenes said
    with the val phrasings (for choosing changes meant to read unseen phrasings)."""
    from editmgt.pipeline import EditMGTPipeline

    settings = settings or EvalSettings()
    edit = settings.edit
    pipe = pipe or EditMGTPipeline.from_pretrained(model_dir)
    cfg = pipe.transformer.config
    ranges = block_ranges(cfg.num_layers, cfg.num_single_layers, pipe.default_hold_blocks())
    lambdas = sorted(set(settings.lambdas) | {0.0, 1.0})   # the un-held edit and the reference
    result = EvalResult(settings=dict(settings.record(), lambdas=lambdas, ranges=ranges, split=split))
    size = data.IMAGE_SIZE
    t0 = time.time()
    for i in range(n):
        tr = data.make_triple(seed, i, split)
        keywords = {name: words_of(tr.instruction) for name, words_of in data.KEYWORD_SETS.items()}
        hold_words = keywords.get(settings.hold_rows) or None       # the keyword set M, or all rows
        outs = pipe.sweep(Image.fromarray(tr.source), tr.instruction, lambdas, edit, keywords=hold_words,
                          seed=seed * 1_000_003 + i, size=size)
        recon = _to_uint8(pipe.vq.decode(outs[0].source_tokens[None])[0])
        perfect, perfect_changed = perfect_edit(pipe, tr, outs[0].source_tokens, edit.keep_unchanged_pixels)
        images = [np.asarray(o.image.convert("RGB")) for o in outs]
        reference = images[lambdas.index(1.0)]                   # every token held: Figure 4's baseline
        scores = attention_scores(pipe, outs[0].edited_tokens, outs[0].source_tokens, tr.instruction,
                                  ranges, edit.gamma, edit.smoothing, edit.smoothing_strength, size)
        for name, words in keywords.items():
            if words:
                row = keyword_row(name)
                scores[row] = attention_scores(
                    pipe, outs[0].edited_tokens, outs[0].source_tokens, tr.instruction,
                    {row: ranges["paper"]}, edit.gamma, edit.smoothing, edit.smoothing_strength, size,
                    rows=pipe.text.keyword_rows(tr.instruction, words))[row]
        scale = size // outs[0].edited_tokens.shape[0]
        scores[CEILING] = region_scores(tr.mask, tuple(outs[0].edited_tokens.shape),
                                        cfg.downsample_factor, edit.smoothing, edit.smoothing_strength)
        ious = {}
        for name in [*ranges, *map(keyword_row, data.KEYWORD_SETS), CEILING]:
            if name not in scores:                                  # no such keyword: no such map
                ious[name] = [float("nan")] * len(IOU_THRESHOLDS)
                continue
            up = np.kron(scores[name], np.ones((scale, scale)))     # token scores on pixels
            ious[name] = [iou(up >= t, tr.mask) for t in IOU_THRESHOLDS]
        result.records.append({
            "index": i, "kind": tr.kind, "instruction": tr.instruction,
            "phrasing": tr.info["template"],
            "success": [bool(check_edit(img, tr)) for img in images],
            "kept": [others_kept(img, tr) for img in images],
            "leakage": [outside_l1(img, tr.source, tr.mask) for img in images],
            "l1": [l1_to(img, tr.source) for img in images],
            "leakage_ref": [outside_l1(img, reference, tr.mask) for img in images],
            "l1_ref": [l1_to(img, reference) for img in images],
            "floor": outside_l1(recon, tr.source, tr.mask),
            "perfect": {"success": bool(check_edit(perfect, tr)), "kept": others_kept(perfect, tr),
                        "leakage": outside_l1(perfect, tr.source, tr.mask), "l1": l1_to(perfect, tr.source),
                        "leakage_ref": outside_l1(perfect, reference, tr.mask),
                        "l1_ref": l1_to(perfect, reference), "changed": perfect_changed},
            "changed": [o.changed_fraction for o in outs],
            "iou": ious,
        })
        if save_examples is not None and i < 14:
            save_examples.mkdir(parents=True, exist_ok=True)
            strip = np.concatenate([tr.source, tr.target] + images, axis=1)
            Image.fromarray(strip).save(save_examples / f"{i:03d}_{tr.kind}.png")
        if (i + 1) % 25 == 0:
            logger.info("%d/%d edits (%.0fs)", i + 1, n, time.time() - t0)
    result.summary = summarise(result.records, lambdas)
    result.summary["split"] = split
    result.summary["hold_rows"] = settings.hold_rows
    result.summary["keep_unchanged_pixels"] = edit.keep_unchanged_pixels
    result.summary["seconds"] = round(time.time() - t0, 1)
    return result


def _mean(values) -> float:
    values = [v for v in values if v == v]                          # drop nan
    return float(np.mean(values)) if values else float("nan")


def summarise(records: list[dict], lambdas: Sequence[float]) -> dict:
    """Aggregate per-triple records into the printed table's numbers."""
    kinds = [k for k in data.EDIT_KINDS if any(r["kind"] == k for r in records)]
    s: dict = {"n": len(records), "lambdas": list(lambdas), "iou_thresholds": list(IOU_THRESHOLDS)}
    s["success_by_kind"] = {k: _mean([r["success"][0] for r in records if r["kind"] == k])
                            for k in kinds}
    s["count_by_kind"] = {k: sum(r["kind"] == k for r in records) for k in kinds}
    # per held-out phrasing: runs of one recipe differ most in how they read a phrasing
    by_phrasing: dict[str, dict[str, list]] = {k: {} for k in kinds}
    for r in records:
        by_phrasing[r["kind"]].setdefault(r["phrasing"], []).append(r["success"][0])
    s["success_by_phrasing"] = {k: {p: {"n": len(v), "success": _mean(v)} for p, v in per.items()}
                                for k, per in by_phrasing.items()}
    s["success"] = [_mean([r["success"][j] for r in records]) for j in range(len(lambdas))]
    s["leakage"] = [_mean([r["leakage"][j] for r in records]) for j in range(len(lambdas))]
    s["l1"] = [_mean([r["l1"][j] for r in records]) for j in range(len(lambdas))]
    s["changed"] = [_mean([r["changed"][j] for r in records]) for j in range(len(lambdas))]
    s["leakage_floor"] = _mean([r["floor"] for r in records])
    # to the lambda-1 image, the paper's Figure 4 reference
    s["leakage_ref"] = [_mean([r["leakage_ref"][j] for r in records]) for j in range(len(lambdas))]
    s["l1_ref"] = [_mean([r["l1_ref"][j] for r in records]) for j in range(len(lambdas))]
    perfect = [r["perfect"] for r in records]
    s["perfect"] = {key: _mean([p[key] for p in perfect])
                    for key in ("success", "leakage", "l1", "changed", "leakage_ref", "l1_ref")}
    s["perfect"]["kept"] = _mean([p["kept"] for p in perfect if p["kept"] is not None])
    s["perfect"]["clean"] = _mean([p["success"] and p["kept"] is not False for p in perfect])
    with_others = [r for r in records if r["kept"][0] is not None]
    s["n_kept"] = len(with_others)
    s["kept"] = [_mean([r["kept"][j] for r in with_others]) for j in range(len(lambdas))]
    s["kept_by_kind"] = {k: _mean([r["kept"][0] for r in with_others if r["kind"] == k])
                         for k in kinds if any(r["kind"] == k for r in with_others)}
    s["clean"] = [_mean([r["success"][j] and r["kept"][j] is not False for r in records])
                  for j in range(len(lambdas))]
    names = list(records[0]["iou"]) if records else []
    s["iou"] = {name: [_mean([r["iou"][name][t] for r in records]) for t in range(len(IOU_THRESHOLDS))]
                for name in names}
    s["iou_by_kind"] = {name: {k: max(_mean([r["iou"][name][t] for r in records if r["kind"] == k])
                                      for t in range(len(IOU_THRESHOLDS))) for k in kinds}
                        for name in names}
    s["halving_lambdas"] = halving_lambdas(lambdas, s["success"], s["leakage"])
    s["halving_lambdas_ref"] = halving_lambdas(lambdas, s["success"], s["leakage_ref"])
    return s


def halving_lambdas(lambdas: Sequence[float], success: Sequence[float], leakage: Sequence[float],
                    max_loss: float = 0.05) -> list[float]:
    """The lambdas after the first (lambda 0) whose leakage is at most half of lambda 0's
    while their success is at most `max_loss` below it: the leakage target the shapes model
    is measured against."""
    return [lam for j, lam in enumerate(lambdas)
            if j > 0 and leakage[j] <= leakage[0] / 2 and success[j] >= success[0] - max_loss]


def format_table(summary: dict) -> str:
    """The printed report (plain text, markdown-friendly)."""
    what = data.SPLIT_LABELS[summary.get("split", "eval")]
    lines = [f"n = {summary['n']} {what} triples", "", "| edit kind | n | success (lambda 0) |",
             "|---|---|---|"]
    for k, v in summary["success_by_kind"].items():
        lines.append(f"| {k} | {summary['count_by_kind'][k]} | {100 * v:.1f} % |")
    lines.append(f"| **overall** | {summary['n']} | **{100 * summary['success'][0]:.1f} %** |")
    by_phrasing = summary["success_by_phrasing"]
    if any(by_phrasing.values()):
        lines += ["", "| edit kind | phrasing | n | success (lambda 0) |", "|---|---|---|---|"]
        for k, per in by_phrasing.items():
            for phrasing, v in per.items():
                lines.append(f"| {k} | {phrasing} | {v['n']} | {100 * v['success']:.1f} % |")
    hold = summary.get("hold_rows", "all")
    rows = f"the {hold} words" if hold in data.KEYWORD_SETS else "all text rows"
    lines += ["", f"region-hold reads the paper range's map from {rows}"]
    if summary.get("keep_unchanged_pixels"):
        lines += ["", "pixels where no token changed are the source's own (--keep-unchanged-pixels)"]
    # the L1 columns: to the source, and to the lambda-1 image
    l1_keys = ["leakage", "l1", "leakage_ref", "l1_ref"]
    l1_names = {"leakage": "leakage (L1 outside region)", "l1": "L1 to source",
                "leakage_ref": "leakage to the lambda-1 image", "l1_ref": "L1 to the lambda-1 image"}
    header = ["lambda", "success", "others kept", "clean edits", *(l1_names[k] for k in l1_keys), "tokens changed"]

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    lines += ["", row(header), "|---" * len(header) + "|"]
    for j, lam in enumerate(summary["lambdas"]):
        lines.append(row([f"{lam:.2f}", f"{100 * summary['success'][j]:.1f} %", f"{100 * summary['kept'][j]:.1f} %",
                          f"{100 * summary['clean'][j]:.1f} %", *(f"{summary[k][j]:.4f}" for k in l1_keys),
                          f"{100 * summary['changed'][j]:.1f} %"]))
    lines.append(row(["VQ floor", "", "", "", f"{summary['leakage_floor']:.4f}", *[""] * len(l1_keys)]))
    p = summary["perfect"]
    lines.append(row(["perfect edit (the target's own tokens)", f"{100 * p['success']:.1f} %",
                      f"{100 * p['kept']:.1f} %", f"{100 * p['clean']:.1f} %",
                      *(f"{p[k]:.4f}" for k in l1_keys), f"{100 * p['changed']:.1f} %"]))
    kept_kinds = summary["kept_by_kind"]
    lines += ["", f"others kept: {summary['n_kept']} edits whose scene has shapes the instruction does not "
              "touch; at lambda 0 by kind: "
              + ", ".join(f"{k} {100 * v:.1f} %" for k, v in kept_kinds.items())]

    def listed(lams: list[float]) -> str:
        return ", ".join(f"{lam:.2f}" for lam in lams) if lams else "none"

    lines.append("")
    lines.append("lambdas that halve leakage losing <= 5 points of success: " + listed(summary["halving_lambdas"]))
    lines.append("the same, leakage measured to the lambda-1 image (the paper's Figure 4 reference): "
                 + listed(summary["halving_lambdas_ref"]))
    lines += ["", "| block range | " + " | ".join(f"IoU@{t:.1f}" for t in summary["iou_thresholds"])
              + " | best |", "|---|" + "---|" * (len(summary["iou_thresholds"]) + 1)]
    for name, values in summary["iou"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {max(values):.3f} |")
    kinds = list(summary["success_by_kind"])
    lines += ["", "| block range | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, per_kind in summary["iou_by_kind"].items():
        lines.append(f"| {name} (best IoU) | " + " | ".join(f"{per_kind[k]:.3f}" for k in kinds) + " |")
    return "\n".join(lines)


def plot_curve(summary: dict, path: Path) -> None:
    """Figure 4 analogue: L1 and leakage (to the source and to the lambda-1 image, the paper's
    reference) and success against lambda."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lam = summary["lambdas"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(lam, summary["l1"], "o-", label="L1 to source (all pixels)")
    ax.plot(lam, summary["leakage"], "s-", label="leakage (outside target)")
    ax.plot(lam, summary["l1_ref"], "o--", color="tab:blue", alpha=0.6, label="L1 to the lambda-1 image")
    ax.plot(lam, summary["leakage_ref"], "s--", color="tab:orange", alpha=0.6,
            label="leakage to the lambda-1 image")
    ax.axhline(summary["leakage_floor"], color="gray", ls=":", label="VQ round-trip floor")
    ax.axhline(summary["perfect"]["leakage"], color="tab:purple", ls="--", lw=1, label="perfect edit's leakage")
    ax.set_xlabel("lambda (region-hold threshold)")
    ax.set_ylabel("mean L1 (pixels in [0, 1])")
    ax2 = ax.twinx()
    ax2.plot(lam, [100 * v for v in summary["success"]], "^--", color="tab:green", label="success %")
    ax2.set_ylabel("edit success (%)")
    ax2.set_ylim(0, 100)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="center left")
    ax.set_title(f"tiny-shapes: L1 and success vs lambda (n={summary['n']})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def contact_sheet(folder: Path, path: Path, rows: int = len(data.EDIT_KINDS)) -> None:
    """Stack the first `rows` example strips of `folder` (one per edit kind: source, true
    target, then the edit at every lambda) into one picture at `path`."""
    strips = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))[:rows]]
    if strips:
        Image.fromarray(np.concatenate(strips, axis=0)).save(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m editmgt.research.shapes.eval", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (e.g. checkpoints/tiny-shapes)")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/shapes-eval"),
                        help="folder for summary.json, records.json, the plot and example strips")
    defaults = EvalSettings()
    parser.add_argument("--steps", type=int, default=defaults.edit.steps)
    parser.add_argument("--guidance", type=float, default=defaults.edit.guidance)
    parser.add_argument("--gamma", type=float, default=defaults.edit.gamma)
    parser.add_argument("--sample-temperature", type=float, default=defaults.edit.sample_temperature,
                        help="the sampler draws each step's tokens from softmax(logits / t)")
    parser.add_argument("--hold-rows", choices=HOLD_ROWS, default=defaults.hold_rows,
                        help="text rows region-hold reads: the words that find the edit "
                             "(locating), every word naming it (naming), or all")
    parser.add_argument("--keep-unchanged-pixels", action="store_true",
                        help="keep the source's own pixels wherever no token changed (the pipeline "
                             "option; the paper's method decodes every pixel)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--split", choices=data.SPLITS, default="eval",
                        help="eval: held-out scenes and phrasings (the report); train: training "
                             "scenes and phrasings (for choosing settings); val: training scenes "
                             "said with phrasings neither of the others uses (for choosing changes "
                             "that should read unseen phrasings)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    edit = measured_settings().replace(steps=args.steps, guidance=args.guidance, gamma=args.gamma,
                                       sample_temperature=args.sample_temperature,
                                       keep_unchanged_pixels=args.keep_unchanged_pixels)
    settings = EvalSettings(edit=edit, hold_rows=args.hold_rows)
    result = evaluate(args.model, args.n, args.seed, settings, save_examples=args.out / "examples",
                      split=args.split)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"settings": result.settings,
                                                       **result.summary}, indent=1) + "\n")
    (args.out / "records.json").write_text(json.dumps(result.records) + "\n")
    plot_curve(result.summary, args.out / "l1_vs_lambda.png")
    contact_sheet(args.out / "examples", args.out / "examples.png")
    print(format_table(result.summary))
    print(f"\nsettings: {json.dumps(result.settings)}")
    print(f"time: {result.summary['seconds']:.0f}s; plot: {args.out / 'l1_vs_lambda.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
