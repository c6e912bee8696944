"""Train the tiny shapes EditMGT from scratch, offline, in the released checkpoint layout.

    python -m editmgt.research.shapes.train --out DIR [--seed 0] [--threads N]

Steps: (1) random tiny CLIP and Gemma2 text towers with real BPE tokenizers learnt from the
shapes vocabulary (`text_towers.py`); (2) edit triples from `data.py`; (3) a small
`VQModel` fitted to fixed pixel codes (`editmgt/train/vq_train.py`: the distinct 4 x 4
patches clustered into the codes first, so equal patches get equal ids on every machine;
the editor trains on those ids); (4) the triples as token grids (`tokens.py`); (5) the
transformer, started with copy heads (`editmgt/train/init.py`) and a short copy warm-up,
trained with the paper's objective (`editmgt/train/objective.py`, with its edit weighting,
edit masking and the grounding of the locating words' attention on) together with the text
towers' layers, on instructions partly perturbed by phrasing noise (`loop.py`,
`sampling.py`); (6) the checkpoint (`checkpoint.py`).
DIR then holds editmgt/, text_encoder/, tokenizer/, llm_encoder/, vqvae/, scheduler/,
editmgt_pipeline.json and train_log.json, loadable with `EditMGTPipeline.from_pretrained(DIR)`.
Everything is seeded; losses go to the log. The recipe's knobs are `recipe.ShapesRecipe`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from editmgt.machine import describe_cpu
from editmgt.research.shapes import data
from editmgt.research.shapes.checkpoint import save_transformer, transformer_config, write_scheduler_and_pipeline
from editmgt.research.shapes.loop import train_transformer
from editmgt.research.shapes.recipe import GROUNDING_ROWS, TARGETS, VQ_CODEBOOKS, ShapesRecipe, vq_schedule
from editmgt.research.shapes.text_towers import save_text_towers, write_text_towers
from editmgt.research.shapes.tokens import (EncodedTriples, agreement_mask, modal_codes, to_tensor,
                                            token_shares, tokens_touching, vq_check_rate)
from editmgt.train.init import init_copy_heads
from editmgt.train.objective import ObjectiveConfig, OptimConfig, count_parameters
from editmgt.train.vq_train import PixelCodes, VQConfig, pixel_codes, train_vq

logger = logging.getLogger(__name__)


@dataclass
class TriplePixels:
    """The training triples as pixels: (N, H, W, 3) uint8 images, (N, H, W) bool masks."""

    sources: np.ndarray
    targets: np.ndarray
    instructions: list[str]
    kinds: list[str]
    objects: np.ndarray                   # pixels of a shape in the source or the target
    regions: np.ndarray                   # the edit's target region
    checked: list[data.EditTriple]        # the VQ's reconstructions are checked on these


def draw_triples(recipe: ShapesRecipe) -> TriplePixels:
    """The recipe's `n_train` training triples."""
    triples = list(data.iter_triples(recipe.seed, recipe.n_train, "train",
                                     shared_names=recipe.shared_names))
    return TriplePixels(
        sources=np.stack([tr.source for tr in triples]),
        targets=np.stack([tr.target for tr in triples]),
        instructions=[tr.instruction for tr in triples],
        kinds=[tr.kind for tr in triples],
        objects=np.stack([data.shapes_union(tr.source_scene, recipe.image_size)
                          | data.shapes_union(tr.target_scene, recipe.image_size) for tr in triples]),
        regions=np.stack([tr.mask for tr in triples]),
        checked=triples[:280])


def fit_vq(pixels: TriplePixels, recipe: ShapesRecipe, pretrained_vq: Optional[Union[str, Path]],
           log: dict):
    """The VQ on training images plus dense scenes (every colour and kind well covered):
    returns the diffusers `VQModel` and, for `codebook_from="pixels"`, the pixel codes it was
    fitted to (else None)."""
    dense = np.stack([data.make_vq_image(recipe.seed, i, recipe.image_size)
                      for i in range(recipe.vq_dense_images)])
    in_pool = len(dense)                  # triples whose source and target the pool holds
    pool = to_tensor(np.concatenate([pixels.sources[:in_pool], pixels.targets[:in_pool], dense]))
    del dense

    def sample_batch(b: int, gen: torch.Generator) -> torch.Tensor:
        return pool[torch.randint(0, pool.shape[0], (b,), generator=gen)]

    codes: Optional[PixelCodes] = None
    if recipe.vq_train.codebook_from == "pixels":
        # the ids are fixed from the pixels first: every patch of the triples gets one
        rest = slice(in_pool, None)
        codes, log["vq_codes"] = pixel_codes(
            [pool, to_tensor(pixels.sources[rest]), to_tensor(pixels.targets[rest])], recipe.vq.factor,
            recipe.vq.num_vq_embeddings, seed=recipe.seed + 30, weight_power=recipe.vq_train.code_weight_power)
    if pretrained_vq is not None:
        from diffusers import VQModel

        vq_model = VQModel.from_pretrained(pretrained_vq, use_safetensors=True).eval()
    else:
        vq_model = train_vq(sample_batch, recipe.vq, recipe.vq_train, seed=recipe.seed + 30, codes=codes)
    log["vq"] = recipe.vq_train.history if pretrained_vq is None else []
    return vq_model, codes


def encode_triples(pixels: TriplePixels, vq, codes: Optional[PixelCodes], recipe: ShapesRecipe,
                   log: dict) -> EncodedTriples:
    """The triples as the editor's token grids (`vq`: a `VQTokenizer`), target ids as
    `recipe.targets` says, and the VQ's round trip of the targets measured into `log`."""
    sources, targets = pixels.sources, pixels.targets
    if codes is not None:
        # the editor trains on the codes the VQ was fitted to; its encoder gives them back
        src_ids, tgt_ids = codes.lookup(to_tensor(sources)), codes.lookup(to_tensor(targets))
        probe = to_tensor(np.concatenate([sources[:256], targets[:256]]))
        log["encoder_code_agreement"] = float((vq.encode(probe, batch_size=256) == codes.lookup(probe))
                                              .float().mean())
        if log["encoder_code_agreement"] < 0.99:
            logger.warning("the VQ's encoder gives the recipe's patch codes for only %.1f%% of the tokens "
                           "(a VQ fitted to other codes, or too few VQ steps): the editor will see other "
                           "ids than it was trained on", 100 * log["encoder_code_agreement"])
    else:
        src_ids = vq.encode(to_tensor(sources), batch_size=256)
        tgt_ids = vq.encode(to_tensor(targets), batch_size=256)
    factor = recipe.image_size // src_ids.shape[-1]                        # pixels per token side
    unchanged = agreement_mask(sources, targets, factor)
    log["token_agreement_unchanged"] = float((src_ids == tgt_ids)[unchanged].float().mean())
    if recipe.targets == "canonical":
        # Equal pixels should be equal tokens wherever the editor has to draw them: changed
        # patches get the id their pixels most often have in the whole set.
        (_, tgt_ids), log["patch_id_purity"] = modal_codes([sources, targets], [src_ids, tgt_ids],
                                                           factor)
    if recipe.targets in ("snap", "canonical"):
        # Unchanged pixels are copied: a code flip there is tokenizer noise, and training on
        # it teaches the editor to redraw what it should copy.
        tgt_ids = torch.where(unchanged, src_ids, tgt_ids)
    checked = pixels.checked
    recon = vq.decode(tgt_ids[:len(checked)], batch_size=len(checked))
    log["vq_roundtrip_l1"] = float((recon - to_tensor(targets[:len(checked)])).abs().mean())
    log["vq_target_check_rate"] = vq_check_rate(recon, checked)
    return EncodedTriples(src_ids, tgt_ids, pixels.instructions, pixels.kinds,
                          tokens_touching(pixels.objects, factor), token_shares(pixels.regions, factor))


def train_shapes(out_dir: Union[str, Path], recipe: Optional[ShapesRecipe] = None,
                 pretrained_vq: Optional[Union[str, Path]] = None) -> dict:
    """Run the whole recipe into `out_dir`; returns the training log (also train_log.json).

    pretrained_vq: a `vqvae/` folder to reuse instead of training the VQ (experiments only).
    With pixel codes (the default) the editor trains on the codes, not on what the reused
    encoder gives, so a VQ of the same recipe and seed repeats the whole run's transformer;
    a VQ fitted to other codes is reported (`encoder_code_agreement`). With a learnt
    codebook the reused encoder tokenises a few near-tie patches differently, and the
    transformer differs from the whole run's.
    """
    from editmgt.models.text_encoders import TextConditioner
    from editmgt.models.transformer import EditMGTTransformer, TransformerConfig
    from editmgt.models.vq import VQTokenizer

    recipe = recipe or ShapesRecipe()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log: dict = {"recipe": recipe.to_dict(), "timings": {}, "transformer": [], "vq": []}
    t_all = time.time()
    torch.manual_seed(recipe.seed)

    # 1. Text towers and tokenizers.
    t0 = time.time()
    write_text_towers(out, recipe)
    text = TextConditioner.from_pretrained(out, cache_size=0)
    log["timings"]["text_towers_s"] = round(time.time() - t0, 1)

    # 2. Triples.
    t0 = time.time()
    pixels = draw_triples(recipe)
    log["timings"]["data_s"] = round(time.time() - t0, 1)
    logger.info("%d training triples in %.1fs", len(pixels.instructions), time.time() - t0)

    # 3. VQ.
    t0 = time.time()
    vq_model, codes = fit_vq(pixels, recipe, pretrained_vq, log)
    vq_model.save_pretrained(out / "vqvae", safe_serialization=True)
    log["timings"]["vq_s"] = round(time.time() - t0, 1)
    vq = VQTokenizer(vq_model)

    # 4. Tokens.
    t0 = time.time()
    enc = encode_triples(pixels, vq, codes, recipe, log)
    del pixels
    log["timings"]["encode_s"] = round(time.time() - t0, 1)
    log["unique_instructions"] = len(set(enc.instructions))
    logger.info("tokens %s, %d unique instructions, VQ round-trip L1 %.4f, reconstructed "
                "targets passing the pixel check %.3f, unchanged patches with equal ids %.3f",
                tuple(enc.source.shape), log["unique_instructions"], log["vq_roundtrip_l1"],
                log["vq_target_check_rate"], log["token_agreement_unchanged"])

    # 5. Transformer (and the text towers' layers when recipe.train_text).
    t0 = time.time()
    cfg_dict = transformer_config(recipe, vq.codebook_size, text.text_dim, text.pooled_dim)
    torch.manual_seed(recipe.seed + 40)
    model = EditMGTTransformer(TransformerConfig.from_dict(cfg_dict))
    if recipe.copy_heads:
        init_copy_heads(model, heads=recipe.copy_heads)
    train_transformer(model, text, enc, recipe, log)
    log["timings"]["transformer_s"] = round(time.time() - t0, 1)
    log["transformer_parameters"] = count_parameters([model])

    # 6. Checkpoint.
    save_transformer(model, cfg_dict, out / "editmgt")
    if recipe.train_text:
        save_text_towers(text, out)
    write_scheduler_and_pipeline(out, cfg_dict["vocab_size"] - 1, recipe.image_size)
    log["timings"]["total_s"] = round(time.time() - t_all, 1)
    log["machine"] = describe_cpu()        # weights are identical run after run on one kind of CPU only
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    logger.info("checkpoint in %s: %.2f MB, %.1f min in all", out, size / 1e6,
                log["timings"]["total_s"] / 60)
    return log


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m editmgt.research.shapes.train",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--steps", type=int, default=None, help="transformer steps (override)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate of the editor and the text towers' layers (override)")
    parser.add_argument("--text-lr-scale", type=float, default=ShapesRecipe.text_lr_scale, metavar="S",
                        help="the text towers' layers learn at S times the editor's learning rate")
    parser.add_argument("--targets", choices=TARGETS, default=ShapesRecipe.targets,
                        help="target ids: the VQ's (vq), source ids where the pixels are unchanged "
                             "(snap), or snap plus each changed patch's modal id (canonical)")
    parser.add_argument("--grounding-weight", type=float, default=None,
                        help="weight of the attention-grounding KL on the --grounding-rows (override; "
                             "0 turns it off)")
    parser.add_argument("--mask-objects", action=argparse.BooleanOptionalAction, default=None,
                        help="in the edit-masked samples, hide every shape with the edit (override; "
                             "--no-mask-objects hides the edit alone)")
    parser.add_argument("--shared-names", type=float, default=ShapesRecipe.shared_names,
                        help="chance that a training scene's shapes share colours or kinds, so that "
                             "an instruction needs both words to find its shape (0: the recipe)")
    parser.add_argument("--grounding-rows", choices=GROUNDING_ROWS, default=ShapesRecipe.grounding_rows,
                        help="text rows the grounding term pulls onto the edit region: every row (all), "
                             "the words naming the edit (naming), or those less the new colour or "
                             "kind (locating, the default)")
    parser.add_argument("--reading-every", type=int, default=ShapesRecipe.reading_every,
                        help="every n-th edit step (between --reading-from and --reading-until) is a "
                             "reading step: edits of the --reading-kinds alone, the edit masked, the "
                             "loss on it only; 0: none")
    parser.add_argument("--reading-kinds", nargs="+", choices=data.EDIT_KINDS, default=list(ShapesRecipe.reading_kinds),
                        help="edit kinds the reading steps train on")
    parser.add_argument("--reading-from", type=int, default=ShapesRecipe.reading_from,
                        help="first edit step of the reading steps' span")
    parser.add_argument("--reading-until", type=int, default=ShapesRecipe.reading_until,
                        help="edit step where the reading steps' span ends")
    parser.add_argument("--reading-target", type=float, default=ShapesRecipe.reading_target, metavar="ACC",
                        help="run the reading block on past --reading-until while its last window's "
                             "accuracy on the changed tokens is under ACC (with --reading-until-latest)")
    parser.add_argument("--reading-until-latest", type=int, default=ShapesRecipe.reading_until_latest,
                        metavar="STEP", help="the latest edit step the reading block may run on to")
    parser.add_argument("--kind-repeats", nargs="+", default=[], metavar="KIND=N",
                        help="edit kinds drawn N times per epoch of the mix instead of once "
                             "(e.g. style=2 background=2)")
    parser.add_argument("--phrasing-keeps", nargs="*", default=list(ShapesRecipe.phrasing_keeps),
                        metavar="WORD", help="words the phrasing noise leaves alone besides the "
                                             "meaning words (none: pass the flag alone)")
    parser.add_argument("--insert-known", type=float, default=ShapesRecipe.phrasing_insert_known, metavar="P",
                        help="chance that a perturbed instruction also gets a word of the training "
                             "phrasings inserted (default: 0, none)")
    parser.add_argument("--vq-codebook", choices=VQ_CODEBOOKS, default="pixels",
                        help="the VQ stage: ids fixed from the pixel patches (pixels, the default) or a "
                             "codebook learnt from the distinct patches' latents (learnt)")
    parser.add_argument("--vq-codes", type=int, default=None,
                        help="the VQ's codebook size, and so the editor's output width (override; "
                             f"the recipe's {VQConfig.num_vq_embeddings}; with --vq-codebook pixels, at least "
                             "the training images' distinct patches gives every patch a code of its own)")
    parser.add_argument("--reuse-vq", type=Path, default=None,
                        help="vqvae/ folder written by an earlier run of this recipe (same seed): "
                             "skips fitting the VQ (about 6 minutes)")
    return parser


def recipe_from_args(args: argparse.Namespace) -> ShapesRecipe:
    """The recipe's defaults with the command line's overrides."""
    steps = ShapesRecipe.steps if args.steps is None else args.steps
    return ShapesRecipe(seed=args.seed, shared_names=args.shared_names, targets=args.targets,
                        grounding_rows=args.grounding_rows,
                        steps=steps, reading_kinds=tuple(args.reading_kinds), reading_every=args.reading_every,
                        reading_from=args.reading_from, reading_until=args.reading_until,
                        reading_target=args.reading_target, reading_until_latest=args.reading_until_latest,
                        kind_repeats=_kind_repeats(args.kind_repeats), phrasing_keeps=tuple(args.phrasing_keeps),
                        phrasing_insert_known=args.insert_known, text_lr_scale=args.text_lr_scale,
                        vq=_vq_with(args), vq_train=vq_schedule(args.vq_codebook), objective=_objective_with(args),
                        optim=_optim_with(args))


def _kind_repeats(pairs: Sequence[str]) -> dict[str, int]:
    """["style=2", ...] -> {"style": 2} (the recipe checks the kinds and counts)."""
    repeats = {}
    for pair in pairs:
        kind, sep, count = pair.partition("=")
        if not sep or not count.isdigit():
            raise ValueError(f"--kind-repeats {pair!r}: use KIND=N, e.g. style=2")
        repeats[kind] = int(count)
    return repeats


def _vq_with(args: argparse.Namespace) -> VQConfig:
    vq = ShapesRecipe().vq
    if args.vq_codes is None:
        return vq
    if args.vq_codes < 2:
        raise ValueError(f"--vq-codes must be at least 2, got {args.vq_codes}")
    return dataclasses.replace(vq, num_vq_embeddings=args.vq_codes)


def _optim_with(args: argparse.Namespace) -> OptimConfig:
    optim = ShapesRecipe().optim
    return optim if args.lr is None else dataclasses.replace(optim, lr=args.lr)


def _objective_with(args: argparse.Namespace) -> ObjectiveConfig:
    objective = ShapesRecipe().objective
    if args.grounding_weight is not None:
        objective = dataclasses.replace(objective, grounding_weight=args.grounding_weight)
    if args.mask_objects is not None:
        objective = dataclasses.replace(objective, mask_objects=args.mask_objects)
    return objective


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    train_shapes(args.out, recipe_from_args(args), pretrained_vq=args.reuse_vq)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
