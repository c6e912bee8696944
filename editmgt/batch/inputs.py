"""The rows a batch edits: a manifest file or a Hub dataset preset, in one column layout.

Every input becomes a pyarrow table with the columns of `COLUMNS`:

    id              str, unique: names the outputs and seeds the row
    image           the source image: a path (manifests) or {bytes, path} (Hub datasets)
    instruction     str
    mask            optional, like image: white = the region to edit
    target          optional, like image: the ground-truth edit (MagicBrush)
    output_caption  optional str: a caption of the edited image (Emu Edit), for CLIP-T

A manifest (JSONL, CSV or Parquet) has the columns `id`, `image` (a path relative to the
manifest), `instruction`, and optionally `mask`, `target` (paths) and `output_caption`.
A preset (`magicbrush`, `emu-edit`) names a Hub dataset, its pinned revision, its split and
how its columns map onto these. Images are not decoded here: a worker opens each one, so a
broken image fails its row only.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from editmgt.errors import InputError

logger = logging.getLogger(__name__)

COLUMNS = ("id", "image", "instruction", "mask", "target", "output_caption")
REQUIRED = ("id", "image", "instruction")
PATH_COLUMNS = ("image", "mask", "target")
MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class Preset:
    """A Hub dataset in the batch's column layout."""

    name: str
    repo: str
    revision: str  # commit id: the same rows on every machine
    split: str
    columns: dict[str, str]  # batch column -> dataset column
    id_columns: tuple[str, ...]  # dataset columns joined with '-' into the row id
    card: str  # where the schema was read


# Schemas read from the dataset cards (docs/BATCH.md cites them). The revisions are the commits
# the Hub served as `main` when the presets were written.
PRESETS: dict[str, Preset] = {
    "magicbrush": Preset(
        name="magicbrush",
        repo="osunlp/MagicBrush",
        revision="1d8d4629150d18ca50afab66391866f2085be989",
        split="dev",  # the Hub holds train and dev; the test split is a separate download
        columns={"image": "source_img", "instruction": "instruction", "mask": "mask_img", "target": "target_img"},
        id_columns=("img_id", "turn_index"),
        card="https://huggingface.co/datasets/osunlp/MagicBrush",
    ),
    "emu-edit": Preset(
        name="emu-edit",
        repo="facebook/emu_edit_test_set",
        revision="b31936a0b6c267e87d373014034cd8fb44ced2fb",
        split="test",
        columns={"image": "image", "instruction": "instruction", "output_caption": "output_caption"},
        id_columns=("idx",),
        card="https://huggingface.co/datasets/facebook/emu_edit_test_set",
    ),
}


@dataclass
class EditInputs:
    """The rows of one input, ready for Ray, and how to name the input in run.json."""

    table: Any  # pyarrow.Table with COLUMNS
    source: dict = field(default_factory=dict)  # {"manifest": path} or {"dataset": ..., "revision": ...}

    @property
    def ids(self) -> list[str]:
        return self.table.column("id").to_pylist()

    def __len__(self) -> int:
        return self.table.num_rows


# ---------------------------------------------------------------------- manifests
def read_manifest(path: Union[str, Path]) -> EditInputs:
    """A JSONL / CSV / Parquet manifest -> EditInputs (paths made absolute)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(handle)]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise InputError(f"manifest {path.name}: unknown format; use one of {', '.join(MANIFEST_SUFFIXES)}")
    rows = _check_rows(rows, path.name)
    for row in rows:
        for column in PATH_COLUMNS:
            if row[column] is not None:
                row[column] = str((path.parent / str(row[column])).resolve())
    return EditInputs(table=_to_table(rows, path_columns=True), source={"manifest": str(path)})


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"manifest {path.name}, line {number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"manifest {path.name}, line {number}: each line must be a JSON object")
            rows.append(row)
    return rows


def _check_rows(rows: list[dict], where: str) -> list[dict]:
    """Required columns present, ids unique non-empty strings, instructions text; other columns dropped."""
    if not rows:
        raise InputError(f"{where}: no rows")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise InputError(f"{where}: missing column(s) {missing}; a manifest needs {list(REQUIRED)} "
                         f"and may have {[c for c in COLUMNS if c not in REQUIRED]}")
    seen: set[str] = set()
    out = []
    for number, row in enumerate(rows, 1):
        row_id = row.get("id")
        if row_id is None or isinstance(row_id, bool) or str(row_id).strip() == "":
            raise InputError(f"{where}, row {number}: the id is empty")
        row_id = str(row_id).strip()
        if row_id in seen:
            raise InputError(f"{where}, row {number}: id {row_id!r} is used twice; ids must be unique")
        seen.add(row_id)
        if row.get("image") is None:
            raise InputError(f"{where}, row {number} (id {row_id!r}): no image")
        instruction = row.get("instruction")
        out.append({
            "id": row_id,
            "image": row["image"],
            "instruction": "" if instruction is None else str(instruction),
            "mask": row.get("mask"),
            "target": row.get("target"),
            "output_caption": None if row.get("output_caption") is None else str(row["output_caption"]),
        })
    return out


def _to_table(rows: list[dict], path_columns: bool):
    import pyarrow as pa

    image = pa.string() if path_columns else pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("image", image), ("instruction", pa.string()), ("mask", image),
                        ("target", image), ("output_caption", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


# ---------------------------------------------------------------------- Hub datasets
def load_preset(name: str, source: Optional[str] = None, revision: Optional[str] = None,
                split: Optional[str] = None) -> EditInputs:
    """A preset's dataset through `datasets.load_dataset`. `source` replaces the preset's repo
    (a local folder in the same schema, or a mirror); `revision` and `split` override the pins."""
    if name not in PRESETS:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    import datasets

    repo = source or preset.repo
    local = Path(repo).expanduser().is_dir()
    if local:
        repo = str(Path(repo).expanduser().resolve())
    revision = None if local else (revision or preset.revision)
    split = split or preset.split
    logger.info("loading %s (%s@%s, split %s)", name, repo, revision or "local", split)
    data = datasets.load_dataset(repo, revision=revision, split=split)
    missing = [c for c in (*preset.columns.values(), *preset.id_columns) if c not in data.column_names]
    if missing:
        raise InputError(f"dataset {repo} (split {split}) lacks the column(s) {missing} of the {name} preset; "
                         f"it has {data.column_names}")
    for column, feature in data.features.items():  # keep images encoded: workers decode them
        if isinstance(feature, datasets.Image) and column in preset.columns.values():
            data = data.cast_column(column, datasets.Image(decode=False))
    table = preset_table(data.data.table, preset)
    return EditInputs(table=table, source={"dataset": name, "repo": repo, "revision": revision, "split": split})


def preset_table(table, preset: Preset):
    """A dataset's arrow table -> the batch's columns (ids from `preset.id_columns`)."""
    import pyarrow as pa

    parts = [table.column(c).to_pylist() for c in preset.id_columns]
    ids = ["-".join(str(v) for v in values) for values in zip(*parts)]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise InputError(f"{preset.name}: ids {duplicates[:5]} repeat; the id columns {preset.id_columns} "
                         "do not identify rows")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns, fields = [], []
    for name in COLUMNS:
        if name == "id":
            columns.append(pa.array(ids, pa.string()))
            fields.append(pa.field("id", pa.string()))
            continue
        kind = pa.string() if name in ("instruction", "output_caption") else image_type
        source = preset.columns.get(name)
        column = table.column(source) if source else pa.nulls(table.num_rows, kind)
        columns.append(column.cast(kind) if source else column)
        fields.append(pa.field(name, kind))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def read_inputs(manifest: Optional[str] = None, dataset: Optional[str] = None, *, dataset_source: Optional[str] = None,
                dataset_revision: Optional[str] = None, split: Optional[str] = None) -> EditInputs:
    """Exactly one of a manifest path or a preset name -> EditInputs."""
    if (manifest is None) == (dataset is None):
        raise InputError("give either --manifest FILE or --dataset NAME")
    if manifest is not None:
        return read_manifest(manifest)
    return load_preset(dataset, dataset_source, dataset_revision, split)


def reopen_inputs(source: dict) -> EditInputs:
    """The inputs a run recorded in run.json (its `input` entry), read again."""
    if "manifest" in source:
        return read_manifest(source["manifest"])
    return load_preset(source["dataset"], source.get("repo"), source.get("revision"), source.get("split"))


def image_source(value: Any) -> Optional[Union[str, bytes]]:
    """A cell of an image column -> what `editmgt.images.load_image` opens (path or bytes), or None."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value
