"""Batch throughput against the number of workers (a benchmark command, not a test).

    python -m editmgt.batch.bench [--rows 32] [--workers 1,2] [--model tiny-shapes] [--out DIR]

Writes a manifest of held-out shapes edits (`editmgt.research.shapes.data`, split 'eval'), starts one
local Ray, then runs the same `batch` once per worker count into its own run folder and
prints, per worker count: wall seconds of the whole job (actor start and model loading
included), edits per second over the whole job, edits per second once the first edit came
back (the steady rate), and the mean seconds one edit took inside its worker.

As a benchmark tool, not a product path, it may use the research package's shapes data
generator to make its synthetic manifest; the batch code itself does not import it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

logger = logging.getLogger("editmgt.batch.bench")


def write_shapes_manifest(folder: Path, rows: int, seed: int = 0) -> Path:
    """`rows` held-out shapes edits as PNGs + manifest.jsonl (image, target, mask, instruction)."""
    from PIL import Image

    from editmgt.research.shapes.data import make_triple

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(rows):
        triple = make_triple(seed, index, split="eval")
        names = {"image": f"{index:04d}.png", "target": f"{index:04d}-target.png", "mask": f"{index:04d}-mask.png"}
        Image.fromarray(triple.source).save(folder / names["image"])
        Image.fromarray(triple.target).save(folder / names["target"])
        Image.fromarray(triple.mask.astype("uint8") * 255).save(folder / names["mask"])
        lines.append(json.dumps({"id": f"shapes-{index:04d}", "instruction": triple.instruction, **names}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    from editmgt.batch.cli import parse_lambdas
    from editmgt.batch.execution import plan_workers, start_ray
    from editmgt.batch.inputs import read_manifest
    from editmgt.batch.models import resolve_model
    from editmgt.batch.run import BatchRequest, run_batch

    parser = argparse.ArgumentParser(prog="python -m editmgt.batch.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2,4")
    parser.add_argument("--model", default="tiny-shapes")
    parser.add_argument("--lambdas", default=None, help="a sweep per row (default: the model's lambda)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="where the manifest and run folders go (default: temp)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    out = args.out or Path(tempfile.mkdtemp(prefix="editmgt-batch-bench-"))
    inputs = read_manifest(write_shapes_manifest(out / "inputs", args.rows))
    model = resolve_model(args.model)
    lambdas = parse_lambdas(args.lambdas) if args.lambdas else [model.settings.hold_lambda]
    start_ray(None, args.num_cpus)
    import ray

    report = {"rows": args.rows, "lambdas": lambdas, "model": args.model,
              "cluster_cpus": ray.cluster_resources().get("CPU"), "cluster_gpus": ray.cluster_resources().get("GPU", 0),
              "runs": []}
    for workers in (int(w) for w in args.workers.split(",")):
        request = BatchRequest(inputs=inputs, model=model, settings=model.settings, lambdas=lambdas,
                               out=out / f"run-{workers}-workers", command=["python", "-m", "editmgt.batch.bench"])
        summary = run_batch(request, plan_workers(workers))
        import pyarrow.parquet as pq

        seconds = [s for s in pq.read_table(request.out / "results.parquet", columns=["seconds"]).column(0).to_pylist()
                   if s is not None]
        report["runs"].append({"workers": workers, "edits": summary.ran, "wall_seconds": round(summary.seconds, 2),
                               "edits_per_second": round(summary.ran / summary.seconds, 3),
                               "first_result_seconds": round(summary.first_result_seconds, 2),
                               "steady_edits_per_second": round((summary.ran - 1) / (summary.seconds
                                                                                     - summary.first_result_seconds), 3),
                               "mean_seconds_per_edit_in_worker": round(sum(seconds) / len(seconds), 3)})
        logger.info("%d worker(s): %s", workers, report["runs"][-1])
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
