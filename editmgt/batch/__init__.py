"""Batch edits and benchmark scoring on Ray Data (`python -m editmgt batch | score`).

    models.py    the --model argument (zoo id, folder or Hub repo) -> where to load and its settings
    inputs.py    the rows to edit: a manifest (JSONL / CSV / Parquet) or a Hub dataset preset
    edit.py      one row -> its edits (the one call into the pipeline) and the Ray actor around it
    execution.py starting or joining Ray, and running an actor class over a dataset
    run.py       the driver of `batch`: run folder, resume, results.parquet, run.json
    metrics.py   L1, CLIP-I, CLIP-T and DINO as the MagicBrush evaluation computes them
    score.py     the driver of `score`: per-row scores, the table against the paper, the lambda plot
    cli.py       the two sub-commands' flags (edit settings generated from `EditSettings`)
    bench.py     `python -m editmgt.batch.bench`: throughput against the number of workers

Ray, pyarrow and datasets are an optional extra (`pip install -e .[batch]`); nothing here
imports them at package import. docs/BATCH.md explains the design.
"""
