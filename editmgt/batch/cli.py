"""Flags of `python -m editmgt batch` and `python -m editmgt score`, and what they run.

The edit-setting flags are generated from `EditSettings` (one flag per field, its help and
choices from `editmgt.settings.spec`); none has a default here: a flag left out keeps the
model's recommended value (a zoo id's) or the library's default.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from editmgt.errors import InputError
from editmgt.settings import EditSettings, names, spec

logger = logging.getLogger("editmgt")


# ---------------------------------------------------------------------- shared flags
def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per EditSettings field: --steps, --guidance, ..., --keep-unchanged-pixels."""
    group = parser.add_argument_group("edit settings", "default: the model's recommended value (zoo ids), "
                                                       "else the library's default shown")
    for name in names():
        info = spec(name)
        flag = "--" + name.replace("_", "-")
        default = info["default"]
        text = f"{info['help']} (library default: {default!r})".replace("%", "%%")
        if isinstance(default, bool):
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif name == "hold_blocks":
            group.add_argument(flag, dest=name, type=int, nargs=2, metavar=("FIRST", "LAST"), default=None, help=text)
        elif name == "keywords":
            group.add_argument(flag, dest=name, default=None, metavar="WORDS", help=text + "; words separated by commas")
        elif info["choices"]:
            group.add_argument(flag, dest=name, choices=info["choices"], default=None, help=text)
        else:
            kind = int if isinstance(default, int) else float if isinstance(default, float) else str
            group.add_argument(flag, dest=name, type=kind, default=None, help=text)


def settings_from_args(args: argparse.Namespace, base: EditSettings) -> EditSettings:
    """`base` with every setting flag that was given (checked by EditSettings)."""
    given = {name: getattr(args, name) for name in names() if getattr(args, name, None) is not None}
    return base.replace(**given)


def add_execution_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution (Ray)")
    group.add_argument("--address", default=None,
                       help="join a Ray cluster: 'auto' (the cluster this node belongs to) or 'ray://HOST:PORT'; "
                            "without it a local Ray starts on this machine")
    group.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all of them)")
    group.add_argument("--workers", type=int, default=None, help="actors, each holding the models once "
                                                                 "(default: one per GPU, or 1 without GPUs)")
    group.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 when the cluster has GPUs, else 0")
    group.add_argument("--cpus-per-worker", type=float, default=None,
                       help="CPUs (torch threads) per actor (default 1; changing it may change float rounding)")
    group.add_argument("--batch-size", type=int, default=None, help="rows handed to an actor per call (default 1)")


def parse_lambdas(text: str) -> list[float]:
    """'0,0.1,0.5' -> [0.0, 0.1, 0.5] (each checked as a hold_lambda; repeats dropped)."""
    values = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"--lambdas: {part.strip()!r} is not a number") from None
        EditSettings(hold_lambda=value)  # the setting's own limits
        if value not in values:
            values.append(value)
    if not values:
        raise InputError("--lambdas: give at least one number, e.g. 0,0.1,0.5")
    return values


# ---------------------------------------------------------------------- batch
def add_batch_parser(commands) -> argparse.ArgumentParser:
    from editmgt.pipeline import DTYPES
    from editmgt.batch.inputs import PRESETS

    parser = commands.add_parser("batch", help="edit a manifest or a benchmark dataset on Ray Data",
                                 description="Edit every row of a manifest or dataset; re-running the same "
                                             "command resumes. See docs/BATCH.md.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="JSONL, CSV or Parquet with id, image, instruction "
                                           "[, mask, target, output_caption]; paths relative to the manifest")
    source.add_argument("--dataset", choices=sorted(PRESETS), help="a benchmark preset (a Hub dataset)")
    parser.add_argument("--dataset-source", default=None,
                        help="load the preset from this local folder or Hub repo instead (same schema)")
    parser.add_argument("--dataset-revision", default=None, help="override the preset's pinned revision")
    parser.add_argument("--split", default=None, help="override the preset's split")
    parser.add_argument("--model", required=True, help="zoo id (checkpoints.yaml), local folder or Hub repo id")
    parser.add_argument("--revision", default=None, help="Hub revision (commit id) to pin")
    parser.add_argument("--out", required=True, type=Path, help="run folder (created; an existing one is resumed)")
    parser.add_argument("--lambdas", default=None,
                        help="a, b, c: one batched sweep per row (default: the hold-lambda setting only)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; each row's seed derives from it and the row id")
    parser.add_argument("--size", type=int, default=None, help="model size: about SIZE x SIZE pixels at the image's "
                                                               "aspect (default: the model's resolution)")
    parser.add_argument("--no-masks", action="store_true", help="ignore the rows' masks (mask-free edits)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--retry-failed", action="store_true", help="also redo rows whose earlier try failed")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_settings_flags(parser)
    add_execution_flags(parser)
    return parser


def run_batch_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from editmgt.batch.execution import plan_workers, start_ray
    from editmgt.batch.inputs import read_inputs
    from editmgt.batch.models import resolve_model
    from editmgt.batch.run import BatchRequest, run_batch
    from editmgt.settings import check_seed

    model = resolve_model(args.model, args.revision)
    settings = settings_from_args(args, model.settings)
    lambdas = parse_lambdas(args.lambdas) if args.lambdas else [settings.hold_lambda]
    inputs = read_inputs(args.manifest, args.dataset, dataset_source=args.dataset_source,
                         dataset_revision=args.dataset_revision, split=args.split)
    request = BatchRequest(inputs=inputs, model=model, settings=settings, lambdas=lambdas, out=args.out.resolve(),
                           seed=check_seed(args.seed), size=args.size, use_masks=not args.no_masks, dtype=args.dtype,
                           retry_failed=args.retry_failed, command=["python", "-m", "editmgt", *argv])
    start_ray(args.address, args.num_cpus)
    plan = plan_workers(args.workers, args.gpus_per_worker, args.cpus_per_worker, args.batch_size)
    summary = run_batch(request, plan)
    result = {"out": str(summary.out), "rows": summary.rows, "pairs": summary.pairs, "edited": summary.ran,
              "failed": summary.failed, "seconds": round(summary.seconds, 3)}
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------------- score
def add_score_parser(commands) -> argparse.ArgumentParser:
    from editmgt.batch.metrics import CLIP_MODEL, CLIP_REVISION, DINO_MODEL, DINO_REVISION
    from editmgt.batch.score import BENCHMARKS

    parser = commands.add_parser("score", help="score a batch run with the MagicBrush protocol",
                                 description="L1, CLIP-I, CLIP-T and DINO of a run's edits, against the "
                                             "paper's Table 1. See docs/BATCH.md.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a folder written by `batch`")
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--clip-model", default=CLIP_MODEL, help="CLIP folder or Hub repo (default: %(default)s)")
    parser.add_argument("--clip-revision", default=None, help=f"default for {CLIP_MODEL}: {CLIP_REVISION}")
    parser.add_argument("--dino-model", default=DINO_MODEL, help="DINO ViT folder or Hub repo (default: %(default)s)")
    parser.add_argument("--dino-revision", default=None, help=f"default for {DINO_MODEL}: {DINO_REVISION}")
    parser.add_argument("--json", action="store_true", help="print the table as JSON on stdout")
    add_execution_flags(parser)
    return parser


def run_score_command(args: argparse.Namespace) -> int:
    from editmgt.batch.execution import plan_workers, start_ray
    from editmgt.batch.metrics import ScoreModels
    from editmgt.batch.score import score_run

    models = ScoreModels.choose(args.clip_model, args.clip_revision, args.dino_model, args.dino_revision)
    start_ray(args.address, args.num_cpus)
    plan = plan_workers(args.workers, args.gpus_per_worker, args.cpus_per_worker, args.batch_size)
    report = score_run(args.run_dir.resolve(), args.benchmark, models, plan)
    sys.stdout.write(json.dumps(report.table, indent=2) + "\n" if args.json else report.markdown + "\n")
    return 0


def run_command(args: argparse.Namespace, argv: Sequence[str]) -> Optional[int]:
    """Run `batch` or `score`; None for other commands. A failed Ray job (an actor that could
    not load its model, say) returns 1 with Ray's message, which names the cause."""
    commands = {"batch": lambda: run_batch_command(args, argv), "score": lambda: run_score_command(args)}
    if args.command not in commands:
        return None
    try:
        return commands[args.command]()
    except Exception as error:
        if not type(error).__module__.startswith("ray."):
            raise
        cause = str(error).strip().splitlines()[-1]  # Ray's message ends with the remote error
        logger.error("the Ray job failed (Ray's log above has the whole trace): %s", cause)
        return 1
