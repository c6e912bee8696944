"""End to end on a local Ray (2 CPUs): `batch` over a 6-row dataset in the MagicBrush schema
(one row's image is broken) with the tiny-shapes model, then `score` on that run.

One Ray session serves the whole module; the runs are module fixtures shared by the tests.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("ray.data", reason="the batch extra: pip install -e .[batch]")

from editmgt.__main__ import main  # noqa: E402
from editmgt.batch.edit import row_seed  # noqa: E402
from editmgt.batch.metrics import l1_distance  # noqa: E402
from tests.test_score_metrics import write_tiny_clip, write_tiny_dino  # noqa: E402

BAD_ROW = "101-2"
STEPS = "4"  # short sampling keeps the module fast; the pipeline's results do not depend on it


def _png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def write_magicbrush_like(folder: Path) -> Path:
    """6 rows with the features of osunlp/MagicBrush (img_id, turn_index, source_img, mask_img,
    instruction, target_img) as data/dev-*.parquet, as the Hub serves it; row 101-2 is not an image."""
    import datasets

    features = datasets.Features({"img_id": datasets.Value("string"), "turn_index": datasets.Value("int32"),
                                  "source_img": datasets.Image(), "mask_img": datasets.Image(),
                                  "instruction": datasets.Value("string"), "target_img": datasets.Image()})
    instructions = ["make the red circle blue", "remove the red circle", "make the background green",
                    "make the red circle yellow", "add a blue square", "make the picture grey"]
    rows: dict[str, list] = {name: [] for name in features}
    for i, instruction in enumerate(instructions):
        source = Image.new("RGB", (64, 64), (255, 255, 255))
        ImageDraw.Draw(source).ellipse((8 + 3 * i, 12, 36 + 3 * i, 40), fill=(220, 30, 30))
        target = source.copy()
        ImageDraw.Draw(target).ellipse((8 + 3 * i, 12, 36 + 3 * i, 40), fill=(30, 30, 220))
        mask = Image.new("RGB", (64, 64), (0, 0, 0))
        ImageDraw.Draw(mask).rectangle((4, 8, 44 + 3 * i, 44), fill=(255, 255, 255))
        img_id, turn = str(100 + i // 2), 1 + i % 2
        rows["img_id"].append(img_id)
        rows["turn_index"].append(turn)
        broken = f"{img_id}-{turn}" == BAD_ROW
        rows["source_img"].append({"bytes": b"GIF89a this is not an image", "path": None} if broken else _png(source))
        rows["mask_img"].append(_png(mask))
        rows["instruction"].append(instruction)
        rows["target_img"].append(_png(target))
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / "data" / "dev-00000-of-00001.parquet")
    return folder


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from editmgt.batch.execution import start_ray

    start_ray(None, num_cpus=2)
    assert [node["NodeManagerAddress"] for node in ray.nodes()] == ["127.0.0.1"]  # loopback only
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_magicbrush_like(tmp_path_factory.mktemp("magicbrush-like"))


def batch(dataset: Path, out: Path, *flags: str, capsys=None) -> dict:
    argv = ["batch", "--dataset", "magicbrush", "--dataset-source", str(dataset), "--model", "tiny-shapes",
            "--out", str(out), "--steps", STEPS, "--json", *flags]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out) if capsys is not None else {}


@pytest.fixture(scope="module")
def sweep_run(ray_session, dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sweep"
    batch(dataset, out, "--lambdas", "0,0.5", "--workers", "2")
    return out


def _results(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(out / "results.parquet").to_pylist()


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_batch_writes_images_and_results(sweep_run: Path):
    results = _results(sweep_run)
    assert [(r["id"], r["lambda"]) for r in results] == [
        (i, lam) for i in ("100-1", "100-2", "101-1", "101-2", "102-1", "102-2") for lam in (0.0, 0.5)]
    for row in results:
        assert row["seed"] == row_seed(0, row["id"])
        assert row["hold_lambda"] == row["lambda"]
        # tiny-shapes' recommended settings, with --steps from the command line
        assert (row["steps"], row["guidance"], row["sample_temperature"], row["keep_unchanged_pixels"]) == (4, 1.0, 0.25, True)
        if row["id"] == BAD_ROW:
            assert row["output"] is None and "not an image" in row["error"]
            continue
        assert row["error"] is None
        image = Image.open(sweep_run / row["output"])
        assert image.size == (64, 64)
        assert Image.open(sweep_run / row["attention"]).size == (64, 64)
        assert 0.0 <= row["changed_fraction"] <= 1.0 and row["l1_to_source"] >= 0.0 and row["seconds"] > 0
    assert next(r for r in results if r["id"] == "100-1")["keywords"] == ["circle", "red"]  # the zoo's keyword set
    run = json.loads((sweep_run / "run.json").read_text())
    assert run["status"] == "finished" and run["failed"] == 2 and run["results"] == 12
    assert run["identity"]["model"]["zoo_id"] == "tiny-shapes" and run["lambdas"] == [0.0, 0.5]
    assert {"torch", "ray", "datasets", "editmgt"} <= set(run["versions"])
    assert run["command"][:4] == ["python", "-m", "editmgt", "batch"]


def test_second_run_resumes_and_redoes_nothing(sweep_run: Path, dataset: Path, capsys):
    written = {p: p.stat().st_mtime_ns for p in sweep_run.rglob("*.png")} | \
              {p: p.stat().st_mtime_ns for p in (sweep_run / "records").iterdir()}
    before = _results(sweep_run)
    summary = batch(dataset, sweep_run, "--lambdas", "0,0.5", "--workers", "2", capsys=capsys)
    assert summary["edited"] == 0 and summary["failed"] == 2 and summary["pairs"] == 12
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert _results(sweep_run) == before


def test_one_and_two_workers_give_identical_images(sweep_run: Path, dataset: Path, tmp_path: Path):
    batch(dataset, tmp_path / "one", "--lambdas", "0,0.5", "--workers", "1")
    two, one = _results(sweep_run), _results(tmp_path / "one")
    assert [(r["id"], r["lambda"], r["seed"], r["error"] is None) for r in one] == \
           [(r["id"], r["lambda"], r["seed"], r["error"] is None) for r in two]
    for a, b in zip(one, two):
        if a["output"] is not None:
            assert np.array_equal(_pixels(tmp_path / "one" / a["output"]), _pixels(sweep_run / b["output"])), a["id"]
            assert a["l1_to_source"] == b["l1_to_source"]


def test_sweep_rows_equal_the_single_lambda_runs(sweep_run: Path, dataset: Path, tmp_path: Path):
    batch(dataset, tmp_path / "single", "--hold-lambda", "0.5", "--workers", "2")
    single = {r["id"]: r for r in _results(tmp_path / "single")}
    swept = {r["id"]: r for r in _results(sweep_run) if r["lambda"] == 0.5}
    assert set(single) == set(swept)
    for row_id, row in single.items():
        if row_id != BAD_ROW:
            assert np.array_equal(_pixels(tmp_path / "single" / row["output"]),
                                  _pixels(sweep_run / swept[row_id]["output"])), row_id
    changed = [np.abs(_pixels(sweep_run / r["output"]).astype(int) - _pixels(sweep_run / s["output"])).sum()
               for r in _results(sweep_run) if r["lambda"] == 0.0 and r["output"]
               for s in [swept[r["id"]]]]
    assert any(changed), "lambda 0 and 0.5 gave the same images: the sweep did not vary lambda"


def test_a_folder_of_another_run_is_refused(sweep_run: Path, dataset: Path):
    argv = ["batch", "--dataset", "magicbrush", "--dataset-source", str(dataset), "--model", "tiny-shapes",
            "--out", str(sweep_run), "--steps", "5", "--lambdas", "0,0.5"]
    assert main(argv) == 2


def test_score_the_run(sweep_run: Path, tmp_path_factory, capsys):
    root = tmp_path_factory.mktemp("scorers")
    clip, dino = write_tiny_clip(root / "clip"), write_tiny_dino(root / "dino")
    assert main(["score", str(sweep_run), "--benchmark", "magicbrush", "--clip-model", str(clip),
                 "--dino-model", str(dino), "--workers", "2", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table == json.loads((sweep_run / "score-magicbrush.json").read_text())
    assert table["lambdas"] == [0.0, 0.5] and table["rows_scored"] == 5 and table["failed_edits"] == 2
    l1 = table["metrics"]["l1"]
    assert l1["paper"] == 0.058 and l1["rows"] == {"0.0": 5, "0.5": 5}
    assert l1["difference"]["0.5"] == pytest.approx(l1["run"]["0.5"] - 0.058)
    assert table["metrics"]["clip_t"]["run"]["0.0"] is None  # MagicBrush's Hub rows have no captions
    assert (sweep_run / "score-magicbrush-lambda.png").is_file()
    assert "| L1 (↓) | 0.058 |" in (sweep_run / "score-magicbrush.md").read_text()
    # one row's L1 by hand: the edit against the dataset's target image
    import pyarrow.parquet as pq

    scores = {(r["id"], r["lambda"]): r for r in pq.read_table(sweep_run / "scores-magicbrush.parquet").to_pylist()}
    output = next(r["output"] for r in _results(sweep_run) if (r["id"], r["lambda"]) == ("100-1", 0.5))
    target = _target_of(sweep_run, "100-1")
    assert scores[("100-1", 0.5)]["l1"] == pytest.approx(l1_distance(Image.open(sweep_run / output), target), abs=1e-12)
    assert scores[("100-1", 0.5)]["clip_i"] < 1.0 and 0 < scores[("100-1", 0.5)]["dino"] <= 1.0


def _target_of(run: Path, row_id: str) -> Image.Image:
    """The target image of `row_id`, read straight from the dataset's parquet file."""
    import pyarrow.parquet as pq

    source = json.loads((run / "run.json").read_text())["identity"]["input"]["repo"]
    [table] = [pq.read_table(path) for path in Path(source).glob("data/*.parquet")]
    for row in table.to_pylist():
        if f"{row['img_id']}-{row['turn_index']}" == row_id:
            return Image.open(io.BytesIO(row["target_img"]["bytes"]))
    raise KeyError(row_id)


def test_a_model_that_does_not_load_fails_the_job_with_its_cause(ray_session, dataset: Path, tmp_path: Path, caplog):
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    argv = ["batch", "--dataset", "magicbrush", "--dataset-source", str(dataset), "--model", str(empty),
            "--out", str(tmp_path / "out")]
    assert main(argv) == 1
    assert "CheckpointError: missing transformer config file" in caplog.text
    assert not (tmp_path / "out" / "records").exists()
