"""The batch's inputs, model choice, seeds and flags, without Ray (offline, CPU, fast)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="the batch extra: pip install -e .[batch]")

from editmgt.__main__ import build_parser, main  # noqa: E402
from editmgt.batch.cli import parse_lambdas, settings_from_args  # noqa: E402
from editmgt.batch.edit import EditJob, row_keywords, row_seed  # noqa: E402
from editmgt.batch.inputs import COLUMNS, PRESETS, Preset, image_source, load_preset, preset_table, read_manifest  # noqa: E402
from editmgt.batch.models import resolve_model  # noqa: E402
from editmgt.batch.run import file_stem  # noqa: E402
from editmgt.errors import InputError  # noqa: E402
from editmgt.settings import MAX_SEED, EditSettings, names, spec  # noqa: E402
from editmgt.zoo import load_zoo  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- manifests
def _manifest_rows() -> list[dict]:
    return [{"id": "a", "image": "img/a.png", "instruction": "make it blue", "mask": "img/a-mask.png"},
            {"id": 7, "image": "img/b.png", "instruction": "remove the cat", "target": "img/b-out.png",
             "output_caption": "an empty sofa"}]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_manifest_formats_give_the_same_rows(tmp_path: Path, suffix: str):
    rows = _manifest_rows()
    path = tmp_path / f"edits{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".csv":
        header = ["id", "image", "instruction", "mask", "target", "output_caption"]
        lines = [",".join(header)] + [",".join(str(r.get(k, "")) for k in header) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in COLUMNS} | {"id": str(r["id"])} for r in rows]),
                       path)
    inputs = read_manifest(path)
    assert inputs.ids == ["a", "7"]
    got = inputs.table.to_pylist()
    assert got[0]["image"] == str(tmp_path / "img" / "a.png")  # relative to the manifest
    assert got[0]["mask"] == str(tmp_path / "img" / "a-mask.png") and got[0]["target"] is None
    assert got[1]["target"] == str(tmp_path / "img" / "b-out.png") and got[1]["output_caption"] == "an empty sofa"
    assert inputs.source == {"manifest": str(path)}


@pytest.mark.parametrize("lines, message", [
    ([{"id": "a", "instruction": "x"}], "missing column(s) ['image']"),
    ([{"id": "a", "image": "a.png", "instruction": "x"}, {"id": "a", "image": "b.png", "instruction": "y"}],
     "id 'a' is used twice"),
    ([{"id": " ", "image": "a.png", "instruction": "x"}], "the id is empty"),
])
def test_bad_manifests_say_what_to_fix(tmp_path: Path, lines, message):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        read_manifest(path)


def test_manifest_format_and_existence_are_checked(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(tmp_path / "missing.jsonl")
    (tmp_path / "m.txt").write_text("id\n")
    with pytest.raises(InputError, match="unknown format"):
        read_manifest(tmp_path / "m.txt")
    (tmp_path / "m.jsonl").write_text('{"id": "a", "image": "a.png", "instruction": "x"}\nnot json\n')
    with pytest.raises(InputError, match="line 2: not JSON"):
        read_manifest(tmp_path / "m.jsonl")


# ---------------------------------------------------------------------- Hub presets
def test_emu_edit_preset_maps_its_schema(tmp_path: Path):
    """Emu Edit's features (instruction, image, task, split, idx, hash, input_caption,
    output_caption) through load_dataset from a local folder in that schema."""
    import io

    import datasets
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG")
    features = datasets.Features({"instruction": datasets.Value("string"), "image": datasets.Image(),
                                  "task": datasets.Value("string"), "split": datasets.Value("string"),
                                  "idx": datasets.Value("int64"), "hash": datasets.Value("string"),
                                  "input_caption": datasets.Value("string"),
                                  "output_caption": datasets.Value("string")})
    rows = {"instruction": ["add a hat", "make it night"], "image": [{"bytes": buffer.getvalue(), "path": None}] * 2,
            "task": ["add", "global"], "split": ["test", "test"], "idx": [5, 9], "hash": ["h5", "h9"],
            "input_caption": ["a dog", "a street"], "output_caption": ["a dog in a hat", "a street at night"]}
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "data" / "test-00000-of-00001.parquet")
    inputs = load_preset("emu-edit", source=str(tmp_path))
    assert inputs.ids == ["5", "9"]
    first = inputs.table.to_pylist()[0]
    assert image_source(first["image"]) == buffer.getvalue()  # still encoded: workers decode
    assert first["output_caption"] == "a dog in a hat" and first["target"] is None and first["mask"] is None
    assert inputs.source == {"dataset": "emu-edit", "repo": str(tmp_path), "revision": None, "split": "test"}


def test_presets_are_pinned_to_commits():
    for preset in PRESETS.values():
        assert len(preset.revision) == 40 and int(preset.revision, 16) >= 0, preset.name


def test_preset_ids_must_be_unique():
    import pyarrow as pa

    preset = Preset("x", "o/x", "0" * 40, "test", {"image": "img", "instruction": "text"}, ("k",), card="")
    table = pa.table({"k": [1, 1], "img": [{"bytes": b"", "path": None}] * 2, "text": ["a", "b"]})
    with pytest.raises(InputError, match=r"ids \['1'\] repeat"):
        preset_table(table, preset)


def test_unknown_preset_is_refused():
    with pytest.raises(InputError, match="unknown dataset 'coco'"):
        load_preset("coco")


# ---------------------------------------------------------------------- model, settings, seeds
def test_zoo_id_brings_its_recommended_settings():
    model = resolve_model("tiny-shapes")
    assert Path(model.location) == REPO_ROOT / "checkpoints" / "tiny-shapes"
    assert model.resolution == 64 and model.revision is None
    assert model.keyword_rule == load_zoo()["tiny-shapes"].keyword_rule
    s = model.settings
    assert (s.steps, s.guidance, s.gamma, s.hold_lambda, s.sample_temperature, s.keep_unchanged_pixels, s.draw) == \
           (16, 1.0, 1.0, 0.1, 0.25, True, "inverse-cdf")
    assert s.keywords is None  # the zoo's keyword rule is applied per row, not as words
    assert model.describe()["keyword_rule"]["first_of"][1] == ["circle", "square", "star", "triangle"]


def test_folders_and_repos_get_the_library_defaults(tmp_path: Path):
    assert resolve_model(str(tmp_path)).settings == EditSettings()
    hub = resolve_model("owner/model", revision="a" * 40)
    assert (hub.location, hub.revision) == ("owner/model", "a" * 40)
    with pytest.raises(InputError, match="neither a zoo id"):
        resolve_model("no such model")
    with pytest.raises(InputError, match="--revision applies to Hub repos"):
        resolve_model("tiny-shapes", revision="b" * 40)


def test_flags_are_generated_from_edit_settings():
    parser = build_parser()
    args = parser.parse_args(["batch", "--manifest", "m.jsonl", "--model", "tiny", "--out", "o"])
    assert all(getattr(args, name) is None for name in names())  # no default re-listed here
    batch_help = next(a for a in parser._subparsers._group_actions[0].choices["batch"]._actions
                      if a.dest == "sample_temperature").help
    assert spec("sample_temperature")["help"] in batch_help
    args = parser.parse_args(["batch", "--manifest", "m.jsonl", "--model", "tiny", "--out", "o", "--guidance", "2.5",
                              "--hold-blocks", "1", "2", "--keywords", "cat, hat", "--no-keep-unchanged-pixels",
                              "--negative-prompt", ""])
    settings = settings_from_args(args, resolve_model("tiny-shapes").settings)
    assert settings.guidance == 2.5 and settings.hold_blocks == (1, 2) and settings.keywords == ("cat", "hat")
    assert settings.keep_unchanged_pixels is False and settings.negative_prompt == ""
    assert settings.sample_temperature == 0.25  # not given: the zoo's value


def test_out_of_range_settings_fail_with_the_settings_message(tmp_path: Path, caplog):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "image": "a.png", "instruction": "x"}\n')
    code = main(["batch", "--manifest", str(manifest), "--model", "tiny-shapes", "--out", str(tmp_path / "o"),
                 "--steps", "0"])
    assert code == 2 and "steps must be an integer in [1, 100], got 0" in caplog.text
    with pytest.raises(InputError, match=r"hold_lambda must be a number in \[0.0, 1.0\], got 1.5"):
        parse_lambdas("0,1.5")
    assert parse_lambdas("0, 0.1,0.1,0.5") == [0.0, 0.1, 0.5]


def test_row_seed_is_a_stable_hash_of_base_seed_and_id():
    expected = int.from_bytes(hashlib.sha256(b"3:row-17").digest()[:8], "big") % (MAX_SEED + 1)
    assert row_seed(3, "row-17") == expected
    seeds = {row_seed(0, str(i)) for i in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s <= MAX_SEED for s in seeds)
    assert row_seed(1, "row-17") != row_seed(3, "row-17")


def test_keywords_per_row_come_from_the_flag_or_the_models_keyword_rule():
    model = resolve_model("tiny-shapes")
    job = EditJob(model=model, settings=model.settings, base_seed=0)
    assert row_keywords(job, "make the red circle blue") == ("circle", "red")
    assert row_keywords(job, "make the picture grey") is None
    flagged = EditJob(model=model, settings=model.settings.replace(keywords="circle"), base_seed=0)
    assert row_keywords(flagged, "make the red circle blue") == ("circle",)


def test_output_names_are_safe_and_distinct():
    assert file_stem("100-1", 0.5) == "100-1.lambda-0.5"
    odd = [file_stem(i, 0.0) for i in ("a/b", "a_b", "a:b", "../x", "." * 3)]
    assert len(set(odd)) == len(odd) and all("/" not in s and not s.startswith(".") for s in odd)
    assert file_stem("x", 0.1) != file_stem("x", 0.10000000000000002)


# ---------------------------------------------------------------------- the docs name real code
DOC = REPO_ROOT / "docs" / "BATCH.md"


def test_batch_doc_states_the_pins_the_code_uses():
    from editmgt.batch import metrics
    from editmgt.batch.score import BENCHMARKS
    from editmgt.zoo import load_zoo

    released = load_zoo(REPO_ROOT / "checkpoints.yaml")["editmgt"].source.revision  # the pinned checkpoint

    text = DOC.read_text()
    for preset in PRESETS.values():
        assert f"`{preset.repo}` @ `{preset.revision}`" in text and f"| `{preset.split}`" in text, preset.name
    for repo, revision in ((metrics.CLIP_MODEL, metrics.CLIP_REVISION), (metrics.DINO_MODEL, metrics.DINO_REVISION)):
        assert f"`{repo}` | `{revision}`" in text
    assert released in text
    for bench, row in (("emu-edit", "Emu Edit test set"), ("magicbrush", "MagicBrush test set")):
        paper = BENCHMARKS[bench].paper
        assert f"| {row} | {paper['clip_i']:.3f} | {paper['clip_t']:.3f} | {paper['l1']:.3f} | {paper['dino']:.3f} |" in text


def test_batch_doc_names_only_code_and_flags_that_exist():
    import importlib

    text = DOC.read_text()
    for dotted in set(re.findall(r"`(editmgt(?:\.\w+)+)`", text)):
        module, _, attribute = dotted.rpartition(".")
        try:
            importlib.import_module(dotted)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), attribute), dotted
    for path in set(re.findall(r"`((?:editmgt|tests)/[\w/]*(?:\.py)?)`", text)):
        assert (REPO_ROOT / path).exists(), path
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    known = {flag for name in ("batch", "score") for action in commands[name]._actions for flag in action.option_strings}
    for flag in set(re.findall(r"`(--[a-z-]+)", text)) - {"--"}:
        assert flag in known, flag
    for name in ("EditWorker", "ScoreWorker", "PRESETS"):
        assert f"`{name}`" in text
    from editmgt.batch.edit import EditWorker  # noqa: F401
    from editmgt.batch.score import ScoreWorker  # noqa: F401


def test_package_docstring_lists_every_module():
    import editmgt.batch

    listed = set(re.findall(r"^\s+(\w+\.py)\s", editmgt.batch.__doc__, re.MULTILINE))
    present = {p.name for p in (REPO_ROOT / "editmgt" / "batch").glob("*.py")} - {"__init__.py"}
    assert listed == present


def test_readme_examples_parse():
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Batch edits and benchmarks", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("python -m editmgt ")]
    assert len(lines) == 6
    parser = build_parser()
    for line in lines:
        args = parser.parse_args(line.split()[3:])
        assert args.command in ("batch", "score")
