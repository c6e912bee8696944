"""checkpoints.yaml (`editmgt.zoo`): the shipped file validates, each kind of mistake is
reported with the entry and the field (settings by EditSettings' own checks), and the
keyword rule gives what the shapes research code's `locating_words` gives."""

import copy
from pathlib import Path

import pytest
import yaml

from editmgt.zoo import INPUTS, ZooError, choose_default, load_zoo, parse_checkpoint_flags, parse_zoo

ROOT = Path(__file__).resolve().parent.parent
RAW = yaml.safe_load((ROOT / "checkpoints.yaml").read_text())
STAGE3_REVISION = "0a00f14ea159728fb76ac99ed741f9deca5fee28"


def _entry(raw, model_id):
    return next(e for e in raw["models"] if e["id"] == model_id)


def test_shipped_zoo_has_the_required_entries():
    zoo = load_zoo(ROOT / "checkpoints.yaml")
    assert {"editmgt", "editmgt-stage2", "editmgt-stage1", "meissonic", "tiny"} <= set(zoo.ids)
    stage3 = zoo["editmgt"]
    assert (stage3.source.repo, stage3.source.revision) == ("WeiChow/EditMGT", STAGE3_REVISION)
    assert stage3.components["transformer"] == "editmgt" and stage3.stage == "3" and stage3.task == "edit"
    assert zoo["meissonic"].task == "text-to-image" and zoo["meissonic"].components["llm_encoder"] is None
    assert zoo["editmgt-stage1"].task == "text-to-image"
    assert zoo["tiny"].source.builtin == "tiny"
    assert zoo.default_preference[-1] == "tiny"


def test_unresolvable_entries_are_listed_with_a_reason(monkeypatch):
    monkeypatch.delenv("EDITMGT_STAGE2", raising=False)
    zoo = load_zoo(ROOT / "checkpoints.yaml")
    r = zoo.resolve("editmgt-stage2", hub_reachable=lambda: False)
    assert not r.available and "EDITMGT_STAGE2" in r.reason and "--checkpoint editmgt-stage2=" in r.reason
    r = zoo.resolve("editmgt", hub_reachable=lambda: False)
    assert not r.available and "unreachable" in r.reason
    assert zoo.resolve("editmgt", hub_reachable=lambda: True).available
    assert zoo.resolve("tiny").available
    # offline, the first available entry of the preference list is the shipped tiny-shapes model
    assert choose_default(zoo, lambda m: zoo.resolve(m, lambda: False)) == "tiny-shapes"


def test_relative_paths_resolve_against_the_zoo_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repo root
    r = load_zoo(ROOT / "checkpoints.yaml").resolve("tiny-shapes")
    assert r.available and r.kind == "local" and r.location == str(ROOT / "checkpoints" / "tiny-shapes")


def test_env_and_checkpoint_flag_point_an_entry_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "editmgt").mkdir()
    monkeypatch.setenv("EDITMGT_STAGE2", str(tmp_path))
    zoo = load_zoo(ROOT / "checkpoints.yaml")
    r = zoo.resolve("editmgt-stage2")
    assert r.available and r.kind == "local" and r.via == "$EDITMGT_STAGE2"
    zoo = load_zoo(ROOT / "checkpoints.yaml", overrides=parse_checkpoint_flags(["editmgt-stage2=/nope/x"]))
    r = zoo.resolve("editmgt-stage2")
    assert not r.available and "/nope/x does not exist" in r.reason
    zoo = load_zoo(ROOT / "checkpoints.yaml", overrides={"editmgt-stage1": "me/ft@abc"})
    r = zoo.resolve("editmgt-stage1", hub_reachable=lambda: True)
    assert r.available and (r.location, r.revision) == ("me/ft", "abc")
    with pytest.raises(ZooError, match="no entry 'nosuch'"):
        load_zoo(ROOT / "checkpoints.yaml", overrides={"nosuch": "x/y"})
    with pytest.raises(ZooError, match="ID=REPO_OR_PATH"):
        parse_checkpoint_flags(["justanid"])


def _broken(mutate):
    raw = copy.deepcopy(RAW)
    mutate(raw)
    return raw


@pytest.mark.parametrize("mutate, message", [
    (lambda r: _entry(r, "tiny").update(colour="red"), r"id 'tiny'.*unknown key\(s\) \['colour'\]"),
    (lambda r: _entry(r, "editmgt")["source"].pop("revision"), r"id 'editmgt'.*source: field 'revision' is missing"),
    (lambda r: _entry(r, "editmgt")["components"].update(vqvae="../etc"), r"id 'editmgt'.*components: field 'vqvae'"),
    (lambda r: _entry(r, "editmgt")["components"].update(vqvae="/abs"), r"components: field 'vqvae' must be a relative"),
    (lambda r: _entry(r, "editmgt")["components"].pop("transformer"), r"components: field 'transformer' is missing"),
    (lambda r: r["models"].append(copy.deepcopy(_entry(r, "tiny"))), r"duplicate id 'tiny'"),
    (lambda r: _entry(r, "tiny").update(stage=7), r"id 'tiny'.*field 'stage' must be one of"),
    (lambda r: _entry(r, "tiny").update(task="inpaint"), r"field 'task' must be one of"),
    (lambda r: _entry(r, "tiny").pop("license"), r"id 'tiny'.*field 'license' is missing"),
    (lambda r: _entry(r, "tiny")["settings"].update(steps=0),
     r"id 'tiny'.*settings: steps must be an integer in \[1, 100\], got 0"),
    (lambda r: _entry(r, "editmgt")["settings"].update(guidance=30),
     r"id 'editmgt'.*settings: guidance must be a number in \[0.0, 20.0\], got 30"),
    (lambda r: _entry(r, "tiny")["settings"].update(hold_blocks=[5, 2]), r"settings: hold_blocks: the first block \(5\)"),
    (lambda r: _entry(r, "tiny")["settings"].update(sample_temperature=0.0),
     r"settings: sample_temperature must be a number in \[0.01, 5.0\]"),
    (lambda r: _entry(r, "tiny")["settings"].update(draw="fast"), r"settings: draw must be one of \['released'"),
    (lambda r: _entry(r, "tiny")["settings"].update(lamda=0.2), r"settings: unknown setting\(s\) \['lamda'\]"),
    (lambda r: _entry(r, "tiny")["settings"].update(keep_unchanged_pixels="yes"),
     r"settings: keep_unchanged_pixels must be true or false"),
    (lambda r: _entry(r, "tiny").update(settings=[1]), r"settings: must be a mapping"),
    (lambda r: _entry(r, "tiny").update(resolution=8), r"field 'resolution' must be in \[16, 4096\], got 8"),
    (lambda r: _entry(r, "tiny").pop("resolution"), r"field 'resolution' is missing"),
    (lambda r: _entry(r, "tiny").update(inputs="videos"), r"field 'inputs' must be one of \['photos', 'shapes'\]"),
    (lambda r: _entry(r, "tiny").pop("summary"), r"id 'tiny'.*field 'summary' is missing"),
    (lambda r: _entry(r, "tiny").update(summary="two\nlines"), r"field 'summary' must be one line"),
    (lambda r: _entry(r, "tiny").update(keyword_rule="locating"), r"keyword_rule: must be a mapping"),
    (lambda r: _entry(r, "tiny").update(keyword_rule={"words": ["Red"]}), r"keyword_rule: words: words must be"),
    (lambda r: _entry(r, "tiny").update(keyword_rule={"words": ["red"], "first_of": [["red", "blue"]]}),
     r"first_of names words that are not among the words: \['blue'\]"),
    (lambda r: _entry(r, "tiny").update(keyword_rule={"words": ["red"], "verbs": []}), r"unknown key\(s\) \['verbs'\]"),
    (lambda r: _entry(r, "tiny")["source"].update(repo="a/b"), r"only one of repo, path, builtin"),
    (lambda r: _entry(r, "editmgt")["source"].update(repo="not a repo"), r"field 'repo' must look like owner/name"),
    (lambda r: r.update(extra=1), r"unknown key\(s\) \['extra'\]"),
])
def test_validation_names_entry_and_field(mutate, message):
    with pytest.raises(ZooError, match=message):
        parse_zoo(_broken(mutate))


def test_user_can_add_an_entry_without_code(tmp_path):
    raw = copy.deepcopy(RAW)
    mine = copy.deepcopy(_entry(raw, "editmgt-stage2"))
    mine.update(id="my-finetune", label="My fine-tune", source={"path": str(tmp_path)})
    raw["models"].append(mine)
    (tmp_path / "editmgt").mkdir()
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(raw))
    zoo = load_zoo(path)
    assert zoo.resolve("my-finetune").available


def test_bad_yaml_is_reported(tmp_path):
    path = tmp_path / "zoo.yaml"
    path.write_text("models: [\n")
    with pytest.raises(ZooError, match="not valid YAML"):
        load_zoo(path)


def test_recommended_settings_are_edit_settings():
    """An entry's settings are an EditSettings with the yaml's values and EditSettings' defaults
    for the rest; resolution and the keyword rule are entry fields."""
    from editmgt.settings import EditSettings

    zoo = load_zoo()
    shapes = zoo["tiny-shapes"]
    assert isinstance(shapes.settings, EditSettings)
    assert (shapes.settings.guidance, shapes.settings.hold_lambda, shapes.settings.draw) == (1.0, 0.1, "inverse-cdf")
    assert shapes.settings.smoothing == EditSettings().smoothing and shapes.resolution == 64
    assert shapes.inputs == "shapes" and zoo["editmgt"].inputs == "photos"
    assert zoo["editmgt"].settings.hold_blocks == (28, 36) and zoo["editmgt"].keyword_rule is None
    assert shapes.keywords_for("make the red circle blue") == ("circle", "red")
    assert shapes.keywords_for("make it black and white") == ("black", "white")
    assert shapes.keywords_for("make the cat black") == ("black",)
    assert shapes.keywords_for("hello") is None and zoo["tiny"].keywords_for("make the red circle blue") is None
    assert all(e.summary and "\n" not in e.summary for e in zoo.entries.values())


def test_examples_are_real_files_with_licences():
    from PIL import Image

    from editmgt_app.ui import load_examples

    examples = load_examples()
    kinds = {Path(e["path"]).parent.name for e in examples}
    assert kinds == {"examples", "shapes"}, "photos and the shapes scenes are both offered"
    assert {e["inputs"] for e in examples} == set(INPUTS)
    for e in examples:
        assert e["instruction"].strip() and e["license"].strip()
        with Image.open(e["path"]) as im:
            assert min(im.size) >= 32
