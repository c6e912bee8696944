"""Command line.

    python -m editmgt edit --model DIR_OR_REPO --image IN --instruction TEXT --out OUT
    python -m editmgt batch (--manifest FILE | --dataset NAME) --model M --out DIR   (Ray Data)
    python -m editmgt score RUN_DIR --benchmark magicbrush|emu-edit                 (Ray Data)

`batch` and `score` live in `editmgt.batch` and need the `batch` extra (`pip install -e .[batch]`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from editmgt.errors import EditMGTError

logger = logging.getLogger("editmgt")

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m editmgt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    edit = commands.add_parser("edit", help="edit one image with an instruction")
    edit.add_argument("--model", required=True, help="local checkpoint folder or Hub repo id")
    edit.add_argument("--revision", default=None, help="Hub revision (commit hash) to pin")
    edit.add_argument("--image", required=True, type=Path)
    edit.add_argument("--instruction", required=True)
    edit.add_argument("--out", required=True, type=Path, help="output image path (PNG recommended)")
    edit.add_argument("--lambda", dest="hold_lambda", type=float, default=0.0, help="region-hold threshold in [0, 1]")
    edit.add_argument("--steps", type=int, default=16)
    edit.add_argument("--guidance", type=float, default=6.0)
    edit.add_argument("--gamma", type=float, default=1.1, help="reference strength (1 = no bias)")
    edit.add_argument("--seed", type=int, default=None)
    edit.add_argument("--sample-temperature", type=float, default=1.0,
                      help="tokens are drawn from softmax(logits / T); 1 = the released sampler, lower = greedier")
    edit.add_argument("--mask", type=Path, default=None, help="white = region to edit")
    edit.add_argument("--keep-unchanged-pixels", action="store_true",
                      help="keep the image's own pixels wherever no token changed (default: every pixel "
                           "is redrawn through the VQ, as in the paper)")
    edit.add_argument("--keyword", action="append", default=None,
                      help="localise with the rows of this word only (repeat for several words)")
    edit.add_argument("--size", type=int, default=None, help="model size: about SIZE x SIZE pixels at the image's aspect (default: the model's resolution)")
    edit.add_argument("--device", default="cpu")
    edit.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    edit.add_argument("--attention-out", type=Path, default=None, help="also save the attention map (PNG)")
    edit.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    from editmgt.batch.cli import add_batch_parser, add_score_parser

    add_batch_parser(commands)
    add_score_parser(commands)
    return parser


def run_edit(args: argparse.Namespace) -> dict:
    import torch
    from PIL import Image

    from editmgt.pipeline import EditMGTPipeline

    pipe = EditMGTPipeline.from_pretrained(
        args.model, revision=args.revision, device=args.device, dtype=getattr(torch, DTYPES[args.dtype])
    )
    result = pipe.edit(
        args.image,
        args.instruction,
        steps=args.steps,
        guidance=args.guidance,
        gamma=args.gamma,
        hold_lambda=args.hold_lambda,
        keywords=args.keyword,
        seed=args.seed,
        mask=args.mask,
        size=args.size,
        sample_temperature=args.sample_temperature,
        keep_unchanged_pixels=args.keep_unchanged_pixels,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(args.out)
    summary = {"out": str(args.out), **result.summary()}
    if args.attention_out is not None and result.attention_map is not None:
        heat = (result.attention_map.numpy() * 255).round().astype("uint8")
        Image.fromarray(heat).save(args.attention_out)
        summary["attention_out"] = str(args.attention_out)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command in ("batch", "score"):
        from editmgt.batch.cli import run_command

        try:
            return run_command(args, argv)
        except (EditMGTError, ValueError) as error:  # ValueError: a malformed checkpoints.yaml (ZooError)
            logger.error("%s", error)
            return 2
    try:
        summary = run_edit(args)
    except EditMGTError as error:
        logger.error("%s", error)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        logger.info("saved %s (L1 to source %.4f, %.2f s)", summary["out"], summary["l1_to_source"], summary["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
