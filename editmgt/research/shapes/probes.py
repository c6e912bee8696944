"""Probes of a shapes EditMGT's internals: does the instruction reach the tokens it names?

    python -m editmgt.research.shapes.probes --model DIR [--n 280] [--seed 0]

- `text_stream_similarity`: after each block, the mean cosine (after LayerNorm) between the
  text-stream rows that hold the instruction's words, and their mean norm. A cosine of 1
  means every row carries the same vector, so no later block can tell one word from
  another (image tokens then attend to the text rows evenly).
- `first_step_accuracy`: on an all-masked canvas (the sampler's first step, no guidance),
  the share of tokens predicted right (argmax) among the tokens the edit changes and among
  the tokens of the shapes it leaves alone, per edit kind. An edit applied to every shape
  scores high on the first and near 0 on the second; a model that tells the named shape from
  the others scores high on both.
- `new_word_reading`: does the word that says what to draw reach the predictions (the new
  colour of a colour change, the new kind of an add or a replacement, the new place of a
  move)? On the first step, the KL divergence between the predictions for the instruction
  and for the same instruction with that word swapped, on the tokens either edit changes,
  and how often the first step's canvas passes each edit's check. A model that ignores the
  word has KL 0 and never follows the swap; one that reads it draws the swapped shape.
- `keeping_through_sampling`: the same untouched-shape tokens followed through a real edit
  (the sampler, guidance, every step): how many are on the canvas after each step, how many
  of those are the source's token, and how many of the step's full prediction are. It
  tells whether a shape the first step would keep is lost to guidance, to sampling, or to
  later steps.
- `untouched_fates`: what became of each shape an edit leaves alone, in sampled edits (lambda
  0): kept (`has_shape`), or else the named colour most of its inner pixels now show: the
  edit's new colour, its own colour (the form was lost), a background colour (gone), or
  another. It tells an edit applied to every shape from one that damages its neighbours.
- `phrasing_success`: the same edits said with every phrasing of their kind (training and
  held-out templates), sampled as the eval does: success per phrasing, and how often the
  shapes come out grey (the style edit). It separates what a phrasing does from what a scene
  does; runs of one recipe differ most in how they read held-out phrasings. `--phrasing
  KIND=TEMPLATE` adds phrasings of your own (one word of a failing phrasing swapped, say),
  to find which word a model misreads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from editmgt.research.shapes import data
from editmgt.research.shapes.checks import (STYLE_SATURATION, channel_spread, check_edit, erode, has_shape,
                                            untouched_shapes)
from editmgt.research.shapes.eval import measured_settings
from editmgt.settings import EditSettings
from editmgt.research.shapes.tokens import agreement_mask


@torch.inference_mode()
def text_stream_similarity(pipe, instruction: str, source: np.ndarray,
                           steps: Optional[int] = None) -> list[dict]:
    """Word-row cosine and norm of the text stream at the input and after every block, for
    one instruction on an all-masked canvas with `source` (H, W, 3 uint8) as reference;
    `steps` sets the timestep (steps - 1), by default the eval's sampler length."""
    steps = steps or measured_settings().steps
    model, text = pipe.transformer, pipe.text
    emb = text.encode([instruction])
    stream = text.llm if text.llm is not None else text.clip
    words = emb.token_ids[0] != stream.tokenizer.pad_token_id                   # (T,)
    if int(words.sum()) < 2:
        raise ValueError("the instruction needs at least two tokens")
    src = _encode(pipe, source[None]).to(pipe.device)                           # (1, h, w)
    rows: list[dict] = []

    def record(name: str, states: torch.Tensor) -> None:
        x = F.layer_norm(states[0, words].float(), states.shape[-1:])           # (W, C)
        cos = (x @ x.T) / x.shape[-1]
        n = x.shape[0]
        rows.append({"after": name, "word_cosine": float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1))),
                     "norm": float(states[0, words].float().norm(dim=-1).mean())})

    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    hooks = [model.encoder_proj_layer_norm.register_forward_hook(lambda m, i, o: record("input", o))]
    hooks += [b.register_forward_hook(lambda m, i, o, k=k: record(f"block {k}", o.text))
              for k, b in enumerate(blocks)]
    try:
        model(torch.full_like(src, model.config.mask_token_id), emb.states.to(model.dtype),
              emb.pooled.to(model.dtype), pipe.micro_conditions((source.shape[1], source.shape[0]), 1),
              torch.full((1,), steps - 1, device=pipe.device), reference_tokens=src)
    finally:
        for h in hooks:
            h.remove()
    return rows


def _token_mask(mask: np.ndarray, factor: int) -> torch.Tensor:
    """(H, W) bool pixels -> (H/f, W/f) bool tokens touching any True pixel."""
    h, w = mask.shape
    return torch.from_numpy(mask.reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3)))


def _untouched_pixels(triple: data.EditTriple) -> np.ndarray:
    """(H, W) bool: pixels of the shapes the edit leaves alone (`untouched_shapes`)."""
    others = np.zeros(triple.source.shape[:2], bool)
    for s in untouched_shapes(triple):
        others |= data.shape_mask(s.kind, s.cell, triple.source.shape[0])
    return others


def _encode(pipe, images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, h, w) VQ ids on the CPU."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    return pipe.vq.encode(pixels.to(pipe.device)).cpu()


def _first_step_logits(pipe, source_tokens: torch.Tensor, instructions: Sequence[str],
                       steps: Optional[int]) -> torch.Tensor:
    """(B, K, h, w) float logits of the sampler's first step: an all-masked canvas at timestep
    steps - 1, `source_tokens` (B, h, w) as reference, conditional branch only; on the CPU."""
    steps = steps or measured_settings().steps
    model = pipe.transformer
    n, size = len(instructions), source_tokens.shape[-1] * pipe.vq.scale_factor
    emb = pipe.text.encode(list(instructions))
    out = model(torch.full_like(source_tokens, model.config.mask_token_id).to(pipe.device),
                emb.states.to(model.dtype), emb.pooled.to(model.dtype), pipe.micro_conditions((size, size), n),
                torch.full((n,), steps - 1, device=pipe.device), reference_tokens=source_tokens.to(pipe.device))
    return out.logits.float().cpu()


@torch.inference_mode()
def first_step_accuracy(pipe, triples: Sequence[data.EditTriple], steps: Optional[int] = None,
                        batch_size: int = 35) -> dict:
    """Argmax accuracy on an all-masked canvas (timestep steps - 1, conditional branch only)
    on the tokens each edit changes and on those of the shapes it leaves alone; targets are
    the VQ ids of the target image, the source's id where a token's pixels are unchanged."""
    factor = pipe.vq.scale_factor
    per_kind: dict[str, dict[str, list[float]]] = {}
    totals = {"changed": [0, 0], "untouched": [0, 0]}
    for start in range(0, len(triples), batch_size):
        chunk = triples[start:start + batch_size]
        sources, targets = np.stack([t.source for t in chunk]), np.stack([t.target for t in chunk])
        src, tgt = _encode(pipe, sources), _encode(pipe, targets)
        tgt = torch.where(agreement_mask(sources, targets, factor), src, tgt)   # as the training targets
        logits = _first_step_logits(pipe, src, [t.instruction for t in chunk], steps)
        hit = logits.argmax(1) == tgt
        for j, t in enumerate(chunk):
            changed = tgt[j] != src[j]
            untouched = _token_mask(_untouched_pixels(t), factor) & ~changed
            kind = per_kind.setdefault(t.kind, {"changed": [], "untouched": []})
            for name, where in (("changed", changed), ("untouched", untouched)):
                if where.any():
                    kind[name].append(float(hit[j][where].float().mean()))
                    totals[name][0] += int(hit[j][where].sum())
                    totals[name][1] += int(where.sum())
    return {
        "changed": totals["changed"][0] / max(1, totals["changed"][1]),
        "untouched": totals["untouched"][0] / max(1, totals["untouched"][1]),
        "by_kind": {k: {name: (float(np.mean(v)) if v else None) for name, v in d.items()}
                    for k, d in per_kind.items()},
    }


# The word that says what an edit draws, for the edits that draw a new shape.
READ_WORDS: dict[str, str] = {"colour": "new colour", "add": "new kind", "replace": "new kind",
                              "move": "new place"}


def swap_read_word(triple: data.EditTriple) -> Optional[data.EditTriple]:
    """`triple` with the word that says what to draw swapped (`READ_WORDS`): the first other
    colour, kind or free cell (in the data's order) that the scene allows, drawn instead
    (`data.redraw`), e.g. "make the red circle blue" -> "make the red circle green"; None
    when the scene allows no other (a replacement whose other kinds are all taken)."""
    if triple.kind not in READ_WORDS:
        raise ValueError(f"a {triple.kind} edit has no word that says what to draw: use {', '.join(READ_WORDS)}")
    new, old = triple.info["new"], triple.info.get("old")
    if triple.kind == "colour":
        options = [dataclasses.replace(new, colour=c) for c in data.SHAPE_COLOURS if c not in (new.colour, old.colour)]
    elif triple.kind == "move":
        taken = {s.cell for s in triple.source_scene.shapes}
        options = [dataclasses.replace(new, cell=c) for c in range(len(data.POSITIONS)) if c not in taken | {new.cell}]
    else:
        options = [dataclasses.replace(new, kind=k) for k in data.SHAPE_KINDS if k not in (new.kind, old and old.kind)]
    names = {(s.kind, s.colour) for s in triple.source_scene.shapes if s != old}
    allowed = [s for s in options if (s.kind, s.colour) not in names]
    return data.redraw(triple, allowed[0]) if allowed else None


@torch.inference_mode()
def new_word_reading(pipe, triples: Sequence[data.EditTriple], kind: str = "colour",
                     steps: Optional[int] = None) -> dict:
    """First-step (all-masked, conditional) reading of the word that says what to draw, over
    the edits of `kind` among `triples` (`READ_WORDS`) that allow a swap: `kl`, the mean KL
    divergence between the predictions for the instruction and for the instruction with that
    word swapped (`swap_read_word`), on the tokens either edit changes; `done`, how often the
    first step's canvas (argmax on those tokens, the source's token elsewhere) passes the
    edit's check; `follows_swap`, how often the swapped instruction's canvas passes the
    swapped edit's."""
    pairs = [(t, swap_read_word(t)) for t in triples if t.kind == kind]
    chosen, swapped = [t for t, s in pairs if s is not None], [s for _, s in pairs if s is not None]
    if not chosen:
        raise ValueError(f"no {kind} edits among the triples")
    src = _encode(pipe, np.stack([t.source for t in chosen]))
    changed = ((_encode(pipe, np.stack([t.target for t in chosen])) != src)
               | (_encode(pipe, np.stack([t.target for t in swapped])) != src))           # (B, h, w)

    def passed(logp: torch.Tensor, edits: list[data.EditTriple]) -> float:
        canvas = torch.where(changed, logp.argmax(1), src)
        images = pipe.vq.decode(canvas.to(pipe.device)).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        images = (images * 255).round().astype(np.uint8)
        return float(np.mean([check_edit(img, t) for img, t in zip(images, edits)]))

    asked = _first_step_logits(pipe, src, [t.instruction for t in chosen], steps).log_softmax(1)
    other = _first_step_logits(pipe, src, [t.instruction for t in swapped], steps).log_softmax(1)
    kl = (asked.exp() * (asked - other)).sum(1)[changed].mean()
    return {"n": len(chosen), "kl": float(kl), "done": passed(asked, chosen),
            "follows_swap": passed(other, swapped)}


def _untouched_tokens(triple: data.EditTriple, factor: int) -> torch.Tensor:
    """(h, w) bool: tokens of the shapes `triple` leaves alone whose pixels do not change."""
    unchanged = agreement_mask(triple.source[None], triple.target[None], factor)[0]
    return _token_mask(_untouched_pixels(triple), factor) & unchanged


@torch.inference_mode()
def keeping_through_sampling(pipe, triples: Sequence[data.EditTriple], guidance: float,
                             settings: Optional[EditSettings] = None, seed: int = 0) -> list[dict]:
    """Per sampling step, over the untouched-shape tokens of every triple that has any:
    `committed` (share on the canvas after the step), `kept` (share of the committed ones
    equal to the source's token) and `predicted_kept` (share of the step's full prediction,
    after sampling, equal to it). Plain edits (lambda 0) at `guidance`, the other sampler
    settings from `settings`; seeds as in the eval command."""
    settings = (settings or measured_settings()).replace(guidance=guidance)
    factor = pipe.vq.scale_factor
    counts = np.zeros((settings.steps, 3), np.int64)               # committed, kept, predicted kept
    total = 0
    for i, triple in enumerate(triples):
        where = _untouched_tokens(triple, factor)
        if not where.any():
            continue
        traces: list[tuple[torch.Tensor, torch.Tensor]] = []
        result = pipe.edit(triple.source, triple.instruction, settings, hold_lambda=0.0, seed=seed * 1_000_003 + i,
                           size=triple.source.shape[0],
                           callback=lambda t: traces.append((t.tokens[0].cpu(), t.predicted[0].cpu())))
        source = result.source_tokens
        total += int(where.sum())
        for step, (canvas, predicted) in enumerate(traces):
            committed = where & (canvas != pipe.mask_token_id)
            counts[step] += [int(committed.sum()), int((committed & (canvas == source)).sum()),
                             int((where & (predicted == source)).sum())]
    return [{"step": k, "committed": c / max(total, 1), "kept": kept / max(c, 1),
             "predicted_kept": pk / max(total, 1)} for k, (c, kept, pk) in enumerate(counts.tolist())]


def greyed(output: np.ndarray, triple: data.EditTriple) -> bool:
    """Whether the shapes of the triple's target come out grey in `output` (H, W, 3 uint8):
    the style edit's look, by the eval's style threshold."""
    shapes = erode(data.shapes_union(triple.target_scene, output.shape[0]))
    return bool(shapes.any()) and channel_spread(output, shapes) <= STYLE_SATURATION


Edit = Callable[[np.ndarray, str, int], np.ndarray]   # (source, instruction, seed) -> output


def sampled_edit(pipe, settings: Optional[EditSettings] = None) -> Edit:
    """An `Edit` that samples `pipe` at lambda 0 with the eval's settings (`measured_settings`)."""
    settings = (settings or measured_settings()).replace(hold_lambda=0.0)

    def edit(source: np.ndarray, instruction: str, seed: int) -> np.ndarray:
        result = pipe.edit(source, instruction, settings, seed=seed, size=source.shape[0])
        return np.asarray(result.image.convert("RGB"))
    return edit


FATES = ("kept", "took the new colour", "kept its colour, lost its form", "gone", "another colour")


def shape_fate(output: np.ndarray, shape: data.Shape, new_colour: Optional[str] = None) -> str:
    """What `shape` (one the edit leaves alone) became in `output` (H, W, 3 uint8): one of
    `FATES`, read from the named colour most of its inner pixels now show."""
    if has_shape(output, shape):
        return "kept"
    inner = erode(data.shape_mask(shape.kind, shape.cell, output.shape[0]))
    names = list(data.all_colours())
    counts = np.bincount(data.classify_pixels(output)[inner], minlength=len(names))
    colour = names[int(counts.argmax())]
    if colour == new_colour:
        return "took the new colour"
    if colour == shape.colour:
        return "kept its colour, lost its form"
    return "gone" if colour in data.BACKGROUND_COLOURS else "another colour"


def untouched_fates(edit: Edit, triples: Sequence[data.EditTriple], seed: int = 0) -> dict[str, dict[str, int]]:
    """edit kind -> {fate: number of untouched shapes} over the `triples` that have such
    shapes, each sampled once with the eval's seed for its index (lambda 0)."""
    out: dict[str, dict[str, int]] = {}
    for i, t in enumerate(triples):
        others = untouched_shapes(t)
        if not others:
            continue
        output = edit(t.source, t.instruction, seed * 1_000_003 + i)
        counts = out.setdefault(t.kind, dict.fromkeys(FATES, 0))
        for shape in others:
            counts[shape_fate(output, shape, t.info.get("colour"))] += 1
    return out


def phrasing_success(edit: Edit, triples: Sequence[data.EditTriple], kind: str,
                     seed: int = 0, extra: Sequence[str] = ()) -> dict[str, dict]:
    """Every edit of `kind` among `triples`, said with each template of the kind and then with
    the `extra` templates (a word swapped, say): per template, {"split": "train" | "eval" |
    "val" | "extra", "n", "success" (the edit's pixel check), "grey" (share of outputs whose
    shapes are grey, `greyed`)}. Triple i is sampled with the eval's seed for index i whatever
    the phrasing, so phrasings differ in their words only."""
    chosen = [(i, t) for i, t in enumerate(triples) if t.kind == kind]
    if not chosen:
        raise ValueError(f"no {kind} edits among the triples")
    for template in extra:
        check_template(kind, template)
    said = {template: split for split in data.SPLITS for template in data.TEMPLATES[kind][split]}
    for template in extra:
        said.setdefault(template, "extra")
    out = {}
    for template, split in said.items():
        outputs = [(edit(t.source, data.say(template, t.info), seed * 1_000_003 + i), t) for i, t in chosen]
        out[template] = {"split": split, "n": len(outputs),
                         "success": float(np.mean([check_edit(o, t) for o, t in outputs])),
                         "grey": float(np.mean([greyed(o, t) for o, t in outputs]))}
    return out


def check_template(kind: str, template: str) -> None:
    """Raise ValueError unless `template` can say every `kind` edit: it must name exactly the
    fields ({obj}, {colour}, ...) the kind's own templates name."""
    if kind not in data.EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}: use one of {', '.join(data.EDIT_KINDS)}")
    wanted = set(re.findall(r"{(\w+)}", data.TEMPLATES[kind]["train"][0]))
    leftover = re.sub(r"{\w+}", "", template)
    if set(re.findall(r"{(\w+)}", template)) != wanted or "{" in leftover or "}" in leftover:
        fields = " ".join("{" + f + "}" for f in sorted(wanted)) or "no fields"
        raise ValueError(f"a {kind} phrasing must name {fields} and nothing else in braces; got {template!r}")


def parse_phrasing(text: str) -> tuple[str, str]:
    """"KIND=TEMPLATE" (e.g. "colour=change the hue of the {obj} to {colour}") -> (kind, template)."""
    kind, sep, template = text.partition("=")
    if not sep or not template.strip():
        raise ValueError(f"give a phrasing as KIND=TEMPLATE, e.g. 'colour=change the hue of the {{obj}} to "
                         f"{{colour}}'; got {text!r}")
    kind, template = kind.strip(), " ".join(template.split())
    check_template(kind, template)
    return kind, template


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m editmgt.research.shapes.probes", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (e.g. checkpoints/tiny-shapes)")
    parser.add_argument("--n", type=int, default=280, help="triples for the first-step accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, nargs="*", default=[1.0, measured_settings().guidance],
                        help="guidance scales for the keeping-through-sampling table")
    parser.add_argument("--n-sampled", type=int, default=56,
                        help="triples sampled for that table (those with untouched shapes count)")
    parser.add_argument("--n-phrasings", type=int, default=56,
                        help="triples said with every phrasing of their kind (0: skip that table)")
    parser.add_argument("--phrasing", action="append", default=[], metavar="KIND=TEMPLATE",
                        help="also say that kind's edits this way in the phrasing table, e.g. "
                             "'colour=change the hue of the {obj} to {colour}' (repeatable)")
    parser.add_argument("--phrasing-kinds", nargs="+", choices=data.EDIT_KINDS, default=list(data.EDIT_KINDS),
                        metavar="KIND", help="the edit kinds of the phrasing table (default: all)")
    parser.add_argument("--n-fates", type=int, default=140,
                        help="triples sampled for the untouched shapes' fates (0: skip that table)")
    parser.add_argument("--split", choices=data.SPLITS, default="eval",
                        help="triples of the held-out scenes and phrasings (eval), of the training ones "
                             "(train), or training scenes said with the val phrasings (val)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    extra: dict[str, list[str]] = {}
    for text in args.phrasing:
        try:
            kind, template = parse_phrasing(text)
        except ValueError as err:
            parser.error(str(err))
        if kind not in args.phrasing_kinds:
            parser.error(f"--phrasing {text!r} is a {kind} phrasing, but --phrasing-kinds leaves {kind} out")
        extra.setdefault(kind, []).append(template)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from editmgt.pipeline import EditMGTPipeline

    pipe = EditMGTPipeline.from_pretrained(args.model)
    which = data.SPLIT_LABELS[args.split]
    scene = data.Scene("white", (data.Shape("circle", "red", 4), data.Shape("square", "blue", 0)))
    instruction = "remove the red circle"
    print(f"text stream, word rows of {instruction!r}:")
    print("| after | word-row cosine | norm |\n|---|---|---|")
    for row in text_stream_similarity(pipe, instruction, data.render(scene)):
        print(f"| {row['after']} | {row['word_cosine']:.3f} | {row['norm']:.1f} |")
    triples = [data.make_triple(args.seed, i, args.split) for i in range(max(args.n, args.n_fates, args.n_phrasings))]
    acc = first_step_accuracy(pipe, triples[:args.n])
    print(f"\nfirst step (all masked), n = {args.n} {which} triples: tokens the edit changes "
          f"{100 * acc['changed']:.1f} % right, tokens of untouched shapes {100 * acc['untouched']:.1f} % right")
    print("| edit kind | changed | untouched shapes |\n|---|---|---|")
    for kind in data.EDIT_KINDS:
        if kind in acc["by_kind"]:
            v = acc["by_kind"][kind]
            cells = [f"{100 * v[k]:.1f} %" if v[k] is not None else "-" for k in ("changed", "untouched")]
            print(f"| {kind} | {cells[0]} | {cells[1]} |")
    print("\n" + json.dumps(acc))
    print(f"\nthe word that says what to draw, first step, {which} edits (of {args.n}):")
    print("| edit | word swapped | n | KL when swapped | drawn as asked | follows the swap |\n|---|---|---|---|---|---|")
    for kind, word in READ_WORDS.items():
        r = new_word_reading(pipe, triples[:args.n], kind)
        print(f"| {kind} | {word} | {r['n']} | {r['kl']:.4f} | {100 * r['done']:.1f} % | {100 * r['follows_swap']:.1f} % |")
    for guidance in args.guidance:
        rows = keeping_through_sampling(pipe, triples[:args.n_sampled], guidance, seed=args.seed)
        print(f"\nuntouched-shape tokens through sampling, guidance {guidance:g} "
              f"({args.n_sampled} {which} triples, lambda 0):")
        print("| step | on the canvas | of those, the source's token | full prediction = source |"
              "\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['step']} | {100 * r['committed']:.1f} % | {100 * r['kept']:.1f} % | "
                  f"{100 * r['predicted_kept']:.1f} % |")
    if args.n_phrasings:
        edit = sampled_edit(pipe)
        print(f"\nthe same {which} edits said every way (first {args.n_phrasings} triples, lambda 0):")
        print("| edit kind | phrasing | split | n | success | shapes grey |\n|---|---|---|---|---|---|")
        for kind in args.phrasing_kinds:
            for template, r in phrasing_success(edit, triples[:args.n_phrasings], kind, args.seed,
                                                extra.get(kind, ())).items():
                print(f"| {kind} | {template} | {r['split']} | {r['n']} | {100 * r['success']:.1f} % "
                      f"| {100 * r['grey']:.1f} % |")
    if args.n_fates:
        fates = untouched_fates(sampled_edit(pipe), triples[:args.n_fates], args.seed)
        print(f"\nwhat became of the shapes the edit leaves alone (first {args.n_fates} triples, lambda 0):")
        print("| edit kind | " + " | ".join(FATES) + " |\n" + "|---" * (len(FATES) + 1) + "|")
        for kind in data.EDIT_KINDS:
            if kind in fates:
                print(f"| {kind} | " + " | ".join(str(fates[kind][f]) for f in FATES) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
