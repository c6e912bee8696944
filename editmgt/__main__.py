"""Command line.

    python -m editmgt edit --model ZOO_ID_DIR_OR_REPO --image IN --instruction TEXT --out OUT [--steps N ...]
    python -m editmgt batch (--manifest FILE | --dataset NAME) --model M --out DIR   (Ray Data)
    python -m editmgt score RUN_DIR --benchmark magicbrush|emu-edit                 (Ray Data)

`edit` takes a zoo id of checkpoints.yaml (e.g. `tiny-shapes`: its recommended settings,
resolution and keyword rule), a checkpoint folder or a Hub repo id; every edit setting has a
flag (generated from `EditSettings`), and a flag left out keeps the model's recommendation.
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



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m editmgt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    from editmgt.batch.cli import add_batch_parser, add_score_parser, add_settings_flags
    from editmgt.pipeline import DTYPES

    edit = commands.add_parser("edit", help="edit one image with an instruction",
                               description="Edit one image. Settings default to the model's recommendation "
                                           "(a zoo id's), else to the library's defaults.")
    edit.add_argument("--model", required=True,
                      help="zoo id of checkpoints.yaml (e.g. tiny-shapes), local checkpoint folder or Hub repo id")
    edit.add_argument("--revision", default=None, help="Hub revision (commit hash) to pin")
    edit.add_argument("--image", required=True, type=Path)
    edit.add_argument("--instruction", required=True)
    edit.add_argument("--out", required=True, type=Path, help="output image path (PNG recommended)")
    edit.add_argument("--seed", type=int, default=None, help="default: a new random seed (printed)")
    edit.add_argument("--mask", type=Path, default=None, help="white = region to edit")
    edit.add_argument("--size", type=int, default=None, help="model size: about SIZE x SIZE pixels at the image's aspect (default: the model's resolution)")
    edit.add_argument("--device", default="cpu")
    edit.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    edit.add_argument("--attention-out", type=Path, default=None, help="also save the attention map (PNG)")
    edit.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_settings_flags(edit)

    add_batch_parser(commands)
    add_score_parser(commands)
    return parser


def run_edit(args: argparse.Namespace) -> dict:
    """Check the inputs, resolve and load the model (the local Hub cache only when the Hub is
    unreachable or HF_HUB_OFFLINE is set), edit, save; the summary as a dict."""
    from PIL import Image

    from editmgt.batch.cli import settings_from_args
    from editmgt.batch.models import resolve_model
    from editmgt.images import load_image, load_mask
    from editmgt.pipeline import DTYPES, EditMGTPipeline
    from editmgt.settings import check_text
    from editmgt.zoo import hub_reachable

    image = load_image(args.image)  # before any model loads: a wrong path fails at once
    if args.mask is not None:
        load_mask(args.mask, image.size)
    instruction = check_text(args.instruction)
    model = resolve_model(args.model, args.revision, hub_reachable=hub_reachable)
    settings = settings_from_args(args, model.settings)
    settings = settings.replace(keywords=settings.keywords or model.keywords_for(instruction))
    from_folder = Path(model.location).is_dir()
    pipe = EditMGTPipeline.from_pretrained(
        model.location, revision=model.revision, device=args.device, dtype=DTYPES[args.dtype],
        resolution=model.resolution, local_files_only=None if from_folder else not hub_reachable(),
    )
    result = pipe.edit(image, instruction, settings, seed=args.seed, mask=args.mask, size=args.size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(args.out)
    summary = {"out": str(args.out), "model": model.zoo_id or model.location, **result.summary()}
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
    from editmgt.zoo import ZooError

    try:
        summary = run_edit(args)
    except (EditMGTError, ZooError) as error:
        logger.error("%s", error)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        logger.info("saved %s (L1 to source %.4f, %.2f s)", summary["out"], summary["l1_to_source"], summary["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
