"""The driver of `python -m editmgt score RUN_DIR --benchmark magicbrush|emu-edit`.

The run's inputs are read again from what run.json recorded; each row's edits (every lambda)
are scored by a pool of Ray actors holding CLIP and DINO, against the benchmark's reference:
the ground-truth edit for MagicBrush, the source image for Emu Edit (Emu Edit's test set has
no ground truth; its paper and Table 1 compare with the input). Written into the run folder:

    scores-BENCH.parquet     one row per (id, lambda): l1, clip_i, clip_t, dino, error
    score-BENCH.json / .md   per metric: the run's mean, the paper's EditMGT row, the difference
    score-BENCH-lambda.png   each metric against lambda, when the run swept lambdas
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from editmgt.batch.execution import WorkerPlan, map_with_actors, to_dataset
from editmgt.batch.inputs import image_source, reopen_inputs
from editmgt.batch.metrics import ScoreModels
from editmgt.batch.run import RESULTS_FILE, read_run
from editmgt.errors import InputError

logger = logging.getLogger(__name__)

METRICS = ("clip_i", "clip_t", "l1", "dino")  # Table 1's column order
LABELS = {"clip_i": "CLIP-I", "clip_t": "CLIP-T (CLIP-out)", "l1": "L1", "dino": "DINO"}
LOWER_IS_BETTER = {"l1"}


@dataclass(frozen=True)
class Benchmark:
    name: str
    reference: str  # the input column an edit is compared with
    paper: dict[str, float]  # EditMGT's row of the paper's Table 1


# EditMGT's row of Table 1 (the paper: ../shared/seeds/editmgt-paper.txt), MagicBrush protocol.
BENCHMARKS = {
    "emu-edit": Benchmark("emu-edit", "image", {"clip_i": 0.878, "clip_t": 0.308, "l1": 0.093, "dino": 0.832}),
    "magicbrush": Benchmark("magicbrush", "target", {"clip_i": 0.911, "clip_t": 0.301, "l1": 0.058, "dino": 0.881}),
}


def score_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("lambda", pa.float64()), *[(m, pa.float64()) for m in METRICS],
                      ("error", pa.string())])


class ScoreWorker:
    """Ray Data actor: loads CLIP and DINO once, scores every edit of the rows it is given."""

    def __init__(self, models: ScoreModels, reference: str, run_dir: str, outputs: dict[str, list]) -> None:
        import torch

        from editmgt.batch.execution import use_assigned_cpus
        from editmgt.batch.metrics import ProtocolEncoders

        use_assigned_cpus()
        self.encoders = ProtocolEncoders(models, "cuda" if torch.cuda.is_available() else "cpu")
        self.reference, self.run_dir, self.outputs = reference, Path(run_dir), outputs

    def __call__(self, batch):
        import pyarrow as pa

        records = [record for row in batch.to_pylist() for record in self.score_row(row)]
        return pa.Table.from_pylist(records, schema=score_schema())

    def score_row(self, row: dict) -> list[dict]:
        from editmgt.images import load_image

        edits = self.outputs[row["id"]]  # [(lambda, output path in the run folder)]
        try:
            reference = image_source(row[self.reference])
            if reference is None:
                raise InputError(f"row {row['id']} has no {self.reference} image to compare with")
            scores = self.encoders.score([load_image(self.run_dir / path) for _, path in edits], load_image(reference),
                                         row["output_caption"])
        except Exception as error:  # noqa: BLE001 - recorded in the row; the job goes on
            logger.warning("scoring row %s failed: %s: %s", row["id"], type(error).__name__, error)
            return [{"id": row["id"], "lambda": lam, **dict.fromkeys(METRICS), "error": f"{type(error).__name__}: {error}"}
                    for lam, _ in edits]
        return [{"id": row["id"], "lambda": lam, **values, "error": None} for (lam, _), values in zip(edits, scores)]


@dataclass
class ScoreReport:
    table: dict  # what score-BENCH.json holds
    markdown: str
    plot: Optional[Path]


def score_run(run_dir: Path, benchmark: str, models: ScoreModels, plan: WorkerPlan) -> ScoreReport:
    """Score every edit of `run_dir`; write and return the table against the paper."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if benchmark not in BENCHMARKS:
        raise InputError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[benchmark]
    run = read_run(run_dir)
    if not (run_dir / RESULTS_FILE).is_file():
        raise InputError(f"{run_dir} has no {RESULTS_FILE}: the batch has not finished once")
    results = pq.read_table(run_dir / RESULTS_FILE, columns=["id", "lambda", "output", "error"]).to_pylist()
    outputs: dict[str, list] = {}
    for result in results:
        if result["output"] is not None:
            outputs.setdefault(result["id"], []).append((result["lambda"], result["output"]))
    if not outputs:
        raise InputError(f"{run_dir}: no edited images to score")
    inputs = reopen_inputs(run["identity"]["input"])
    table = inputs.table.filter(pc.is_in(inputs.table.column("id"), value_set=pa.array(list(outputs), pa.string())))
    scored = map_with_actors(to_dataset(table, plan.batch_size), ScoreWorker,
                             {"models": models, "reference": bench.reference, "run_dir": str(run_dir),
                              "outputs": outputs}, plan)
    rows = sorted((row for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None)
                   for row in batch.to_pylist()), key=lambda r: (r["id"], r["lambda"]))
    _write_parquet(run_dir / f"scores-{benchmark}.parquet", pa.Table.from_pylist(rows, schema=score_schema()))
    table_doc = summarise(rows, bench, failed_edits=sum(1 for r in results if r["error"]))
    table_doc.update(run=str(run_dir), models=models.describe())
    markdown = to_markdown(table_doc)
    (run_dir / f"score-{benchmark}.json").write_text(json.dumps(table_doc, indent=2) + "\n")
    (run_dir / f"score-{benchmark}.md").write_text(markdown + "\n")
    plot = plot_lambdas(table_doc, run_dir / f"score-{benchmark}-lambda.png") if len(table_doc["lambdas"]) > 1 else None
    return ScoreReport(table_doc, markdown, plot)


def _write_parquet(path: Path, table) -> None:
    import pyarrow.parquet as pq

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)


def summarise(rows: list[dict], bench: Benchmark, failed_edits: int = 0) -> dict:
    """Per-row scores -> per metric and lambda: the mean over rows that have the metric, the
    paper's value and the difference (run - paper)."""
    lambdas = sorted({row["lambda"] for row in rows})
    metrics = {}
    for metric in METRICS:
        entry = {"label": LABELS[metric], "better": "lower" if metric in LOWER_IS_BETTER else "higher",
                 "paper": bench.paper[metric], "run": {}, "difference": {}, "rows": {}}
        for lam in lambdas:
            values = [row[metric] for row in rows if row["lambda"] == lam and row[metric] is not None]
            key = repr(lam)
            entry["rows"][key] = len(values)
            mean = sum(values) / len(values) if values else None
            entry["run"][key] = mean
            entry["difference"][key] = None if mean is None else mean - bench.paper[metric]
        metrics[metric] = entry
    return {"benchmark": bench.name, "reference": bench.reference, "lambdas": lambdas, "metrics": metrics,
            "rows_scored": len({row["id"] for row in rows if row["error"] is None}),
            "scoring_errors": sum(1 for row in rows if row["error"]), "failed_edits": failed_edits}


def _number(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def to_markdown(doc: dict) -> str:
    """The table: one line per metric; the run (per lambda), the paper, the difference."""
    lambdas = [repr(lam) for lam in doc["lambdas"]]
    single = len(lambdas) == 1
    header = ["metric", "paper (EditMGT)"]
    header += ["run", "difference"] if single else [part for lam in lambdas for part in (f"λ={lam}", "Δ")]
    lines = [f"{doc['benchmark']}: {doc['rows_scored']} rows scored against their {doc['reference']} "
             f"(failed edits: {doc['failed_edits']}, scoring errors: {doc['scoring_errors']})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in doc["metrics"].values():
        cells = [f"{entry['label']} ({'↓' if entry['better'] == 'lower' else '↑'})", _number(entry["paper"])]
        for lam in lambdas:
            cells += [_number(entry["run"][lam]), _number(entry["difference"][lam], signed=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_lambdas(doc: dict, path: Path) -> Path:
    """Each metric against lambda, the paper's value as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lambdas = doc["lambdas"]
    fig, axes = plt.subplots(1, len(doc["metrics"]), figsize=(3.2 * len(doc["metrics"]), 3.0), constrained_layout=True)
    for ax, entry in zip(axes, doc["metrics"].values()):
        values = [entry["run"][repr(lam)] for lam in lambdas]
        shown = [(lam, v) for lam, v in zip(lambdas, values) if v is not None]
        if shown:
            ax.plot(*zip(*shown), marker="o", label="this run")
        else:
            ax.text(0.5, 0.5, "no values in this run", transform=ax.transAxes, ha="center", fontsize=8)
        ax.axhline(entry["paper"], linestyle="--", color="grey", label="paper (EditMGT)")
        ax.set_title(f"{entry['label']} ({entry['better']} is better)", fontsize=9)
        ax.set_xlabel("lambda")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{doc['benchmark']}: metrics against lambda", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
