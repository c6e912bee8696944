"""The driver of `python -m editmgt batch`: the run folder, resuming, results.parquet, run.json.

Run folder (`--out DIR`):

    run.json            the command, versions, model, input, settings, seed, lambdas, workers
    images/ID.lambda-L.png       the edited image of row ID at lambda L
    attention/ID.lambda-L.png    its localisation map (0 = black, 1 = white)
    records/ID.lambda-L.json     what the row gave (metrics or its error): the resume state
    results.parquet     every record with the settings, one row per input and lambda

Only this driver writes into the folder (the workers return their images), one file per row
and lambda, each written to a temporary name and renamed, so an interrupted run leaves whole
files. Re-running the same command reads `records/` and edits only the (row, lambda) pairs
that have no record; rows that failed are kept as failed unless `retry_failed`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from editmgt.batch.edit import EditJob, EditWorker
from editmgt.batch.execution import WorkerPlan, map_with_actors, to_dataset
from editmgt.batch.inputs import EditInputs
from editmgt.batch.models import ModelSource
from editmgt.errors import InputError
from editmgt.settings import EditSettings, names

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
RESULTS_FILE = "results.parquet"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class BatchRequest:
    """Everything one `batch` command asks for."""

    inputs: EditInputs
    model: ModelSource
    settings: EditSettings  # the model's recommended settings with the flags applied
    lambdas: list[float]
    out: Path
    seed: int = 0
    size: Optional[int] = None
    use_masks: bool = True
    dtype: str = "fp32"
    retry_failed: bool = False
    command: list[str] = field(default_factory=list)

    def identity(self) -> dict:
        """What must match for a second run to resume this one (lambdas may be added)."""
        settings = self.settings.as_dict()
        settings.pop("hold_lambda")  # the lambdas say which were run
        return {"model": self.model.describe(), "input": self.inputs.source, "settings": settings,
                "seed": self.seed, "size": self.size, "use_masks": self.use_masks, "dtype": self.dtype}


@dataclass
class BatchSummary:
    rows: int  # input rows
    pairs: int  # (row, lambda) pairs asked for
    ran: int  # pairs edited by this call
    failed: int  # pairs with an error in the run folder
    seconds: float
    out: Path
    first_result_seconds: Optional[float] = None  # until the first edit came back (Ray and actors starting)


def file_stem(row_id: str, lam: float) -> str:
    """File name (no suffix) of a row's output at one lambda; safe on every file system. Ids with
    other characters, or longer than 80, get a hash so that two ids never share a name."""
    safe = _UNSAFE.sub("_", row_id)[:80]
    if safe.startswith("."):  # no hidden files, no '..'
        safe = "_" + safe[1:]
    if safe != row_id:
        safe = f"{safe}-{hashlib.sha1(row_id.encode('utf-8')).hexdigest()[:10]}"
    return f"{safe}.lambda-{float(lam)!r}"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def read_records(out: Path) -> dict[tuple[str, float], dict]:
    """(id, lambda) -> record, from `out/records/*.json`."""
    records = {}
    for path in sorted((out / "records").glob("*.json")):
        record = json.loads(path.read_text())
        records[(record["id"], float(record["lambda"]))] = record
    return records


def _versions() -> dict:
    import importlib.metadata as metadata

    found = {"python": platform.python_version()}
    for package in ("editmgt", "torch", "diffusers", "transformers", "ray", "datasets", "pyarrow"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            if package == "editmgt":
                import editmgt

                found[package] = editmgt.__version__
    return found


def _check_same_run(out: Path, identity: dict) -> Optional[dict]:
    """The folder's run.json, after checking it is the same run; None for a new folder."""
    path = out / RUN_FILE
    if not path.is_file():
        return None
    previous = json.loads(path.read_text())
    differs = sorted(key for key in identity if previous.get("identity", {}).get(key) != _jsonable(identity[key]))
    if differs:
        raise InputError(f"{out} holds a run with other {', '.join(differs)}; give a new --out to start another run "
                         "(only --lambdas may change between runs of one folder)")
    return previous


def _jsonable(value):
    return json.loads(json.dumps(value))


def _write_run_json(out: Path, request: BatchRequest, plan: WorkerPlan, previous: Optional[dict], status: dict) -> None:
    lambdas = sorted(set(request.lambdas) | set((previous or {}).get("lambdas", [])))
    document = {
        "command": request.command,
        "identity": _jsonable(request.identity()),
        "lambdas": lambdas,
        "versions": _versions(),
        "workers": plan.describe(),
        "host": platform.node(),
        "started": (previous or {}).get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        **status,
    }
    _write_atomic(out / RUN_FILE, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def _save_record(out: Path, record: dict) -> None:
    """One worker record -> its PNG files and records/STEM.json."""
    stem = file_stem(record["id"], record["lambda"])
    saved = {key: record[key] for key in ("id", "lambda", "seed", "keywords", "l1_to_source",
                                          "l1_to_reconstruction", "changed_fraction", "seconds", "error")}
    saved["output"] = saved["attention"] = None
    if record["image_png"] is not None:
        saved["output"] = f"images/{stem}.png"
        _write_atomic(out / saved["output"], record["image_png"])
    if record["attention_png"] is not None:
        saved["attention"] = f"attention/{stem}.png"
        _write_atomic(out / saved["attention"], record["attention_png"])
    _write_atomic(out / "records" / f"{stem}.json", (json.dumps(saved) + "\n").encode("utf-8"))


def write_results(out: Path, settings: EditSettings) -> int:
    """records/ -> results.parquet (sorted by id and lambda), with one column per setting: the
    run's settings, `hold_lambda` being the row's lambda and `keywords` the words it read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    found = read_records(out)
    records = [found[key] for key in sorted(found)]
    base = settings.as_dict()
    rows = []
    columns = [name for name, _ in _record_fields()]
    for record in records:
        row = {column: record[column] for column in columns}
        row.update(base, hold_lambda=record["lambda"], keywords=record["keywords"])
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=_results_schema(settings))
    temporary = out / f".{RESULTS_FILE}.{os.getpid()}.tmp"
    pq.write_table(table, temporary)
    os.replace(temporary, out / RESULTS_FILE)
    return len(rows)


def _record_fields() -> list:
    """The columns of results.parquet before the settings."""
    import pyarrow as pa

    return [("id", pa.string()), ("lambda", pa.float64()), ("seed", pa.int64()), ("output", pa.string()),
            ("attention", pa.string()), ("l1_to_source", pa.float64()), ("l1_to_reconstruction", pa.float64()),
            ("changed_fraction", pa.float64()), ("seconds", pa.float64()), ("error", pa.string())]


def _results_schema(settings: EditSettings):
    import pyarrow as pa

    fields = _record_fields()
    kinds = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    for name in names():
        value = getattr(settings, name)
        if name in ("hold_blocks", "keywords"):
            kind = pa.list_(pa.int64() if name == "hold_blocks" else pa.string())
        else:
            kind = kinds[type(value)]
        fields.append((name, kind))
    return pa.schema(fields)


def run_batch(request: BatchRequest, plan: WorkerPlan) -> BatchSummary:
    """Edit every (row, lambda) pair of `request` that the run folder lacks; write the results."""
    import pyarrow as pa
    import pyarrow.compute as pc

    start = time.perf_counter()
    out = request.out
    out.mkdir(parents=True, exist_ok=True)
    previous = _check_same_run(out, request.identity())
    done = read_records(out)
    todo: dict[str, list[float]] = {}
    for row_id in request.inputs.ids:
        missing = [lam for lam in request.lambdas
                   if (row_id, lam) not in done or (request.retry_failed and done[(row_id, lam)]["error"])]
        if missing:
            todo[row_id] = missing
    pairs = len(request.inputs) * len(request.lambdas)
    logger.info("%d rows x %d lambdas: %d pairs done, %d to edit", len(request.inputs), len(request.lambdas),
                pairs - sum(map(len, todo.values())), sum(map(len, todo.values())))
    _write_run_json(out, request, plan, previous, {"status": "running"})
    ran, first_result = 0, None
    if todo:
        table = request.inputs.table
        table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(list(todo), pa.string())))
        table = table.append_column("lambdas", pa.array([todo[i] for i in table.column("id").to_pylist()],
                                                        pa.list_(pa.float64())))
        job = EditJob(model=request.model, settings=request.settings, base_seed=request.seed, size=request.size,
                      use_masks=request.use_masks, dtype=request.dtype)
        edited = map_with_actors(to_dataset(table, plan.batch_size), EditWorker, {"job": job}, plan)
        for batch in edited.iter_batches(batch_format="pyarrow", batch_size=None):
            first_result = first_result or time.perf_counter() - start
            for record in batch.to_pylist():
                _save_record(out, record)
                ran += 1
    count = write_results(out, request.settings)
    failed = sum(1 for record in read_records(out).values() if record["error"])
    seconds = time.perf_counter() - start
    _write_run_json(out, request, plan, previous, {
        "status": "finished", "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": len(request.inputs),
        "results": count, "failed": failed, "edited_by_last_call": ran, "seconds_of_last_call": round(seconds, 3)})
    logger.info("%s: %d results (%d failed), %d edited now in %.1f s", out, count, failed, ran, seconds)
    return BatchSummary(rows=len(request.inputs), pairs=pairs, ran=ran, failed=failed, seconds=seconds, out=out,
                        first_result_seconds=first_result)


def read_run(out: Path) -> dict:
    """A run folder's run.json."""
    path = Path(out) / RUN_FILE
    if not path.is_file():
        raise InputError(f"{out} is not a batch run folder (no {RUN_FILE})")
    return json.loads(path.read_text())

