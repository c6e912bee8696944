"""checkpoints.yaml: the shipped file validates, and each kind of mistake is reported with
the entry and the field."""

import copy
from pathlib import Path

import pytest
import yaml

from editmgt_app.zoo import ZooError, choose_default, load_zoo, parse_checkpoint_flags, parse_zoo

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
    (lambda r: _entry(r, "tiny")["defaults"].update(steps=0), r"defaults: field 'steps' must be in \[1, 256\]"),
    (lambda r: _entry(r, "tiny")["defaults"].update(hold_blocks=[5, 2]), r"field 'hold_blocks' must be"),
    (lambda r: _entry(r, "tiny")["defaults"].update(sample_temperature=0.0),
     r"defaults: field 'sample_temperature' must be in \[0.01, 10.0\]"),
    (lambda r: _entry(r, "tiny")["defaults"].update(lamda=0.2), r"defaults: unknown key\(s\) \['lamda'\]"),
    (lambda r: _entry(r, "tiny")["defaults"].update(keep_unchanged_pixels="yes"),
     r"defaults: field 'keep_unchanged_pixels' must be"),
    (lambda r: _entry(r, "tiny")["defaults"].update(keywords="verbs"),
     r"defaults: field 'keywords' must be one of naming, locating, got 'verbs'"),
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


def test_examples_are_real_files_with_licences():
    from PIL import Image

    from editmgt_app.ui import load_examples

    examples = load_examples()
    kinds = {Path(e["path"]).parent.name for e in examples}
    assert kinds == {"examples", "shapes"}, "photos and the shapes scenes are both offered"
    for e in examples:
        assert e["instruction"].strip() and e["license"].strip()
        with Image.open(e["path"]) as im:
            assert min(im.size) >= 32
