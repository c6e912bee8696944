"""The page as built by `build_demo`, without a browser: the settings' controls, the API's
parameters and the EditSettings fields stay in step; the model picker says what each model
can do and which are unavailable, and offers the examples that suit it; every example edits
on every offline model, and a fresh edit after them works (no hidden state left behind)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from editmgt.settings import names  # noqa: E402
from editmgt_app import controls  # noqa: E402
from editmgt_app.ui import PageText, for_display, load_examples  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_MODELS = ("tiny-shapes", "tiny")


@pytest.fixture(scope="module")
def demo(tiny_checkpoint):
    import app

    demo, service = app.create_app(app.parse_args(["--checkpoint", f"tiny={tiny_checkpoint}", "--device", "cpu",
                                                   "--memory-budget", "2"]))
    return demo, service


def handler(demo, name: str):
    """The page event whose function is `name` (its fn, inputs and outputs)."""
    found = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name]
    assert len(found) == 1, name
    return found[0]


def by_elem_id(demo, prefix: str) -> dict:
    return {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None) and b.elem_id.startswith(prefix)}


def test_controls_api_parameters_and_settings_fields_stay_in_step(demo):
    """One page control per EditSettings field and one /edit argument per field (the sweep's
    lambdas set hold_lambda), and nothing else; the Edit button passes the controls by name."""
    demo, _service = demo
    assert set(by_elem_id(demo, "setting-")) == {f"setting-{n}" for n in names()}
    api = demo.get_api_info()["named_endpoints"]
    params = {name: [p["parameter_name"] for p in api[name]["parameters"]] for name in api}
    assert params["/edit"] == ["image", "instruction", "model", "seed", "mask", "load_8bit", *names()]
    assert params["/sweep"][7:] == [n for n in names() if n != "hold_lambda"]
    assert set(params["/generate"][4:]) <= set(names())
    edit = handler(demo, "ui_edit")
    controls_by_id = {b._id: b.elem_id for b in by_elem_id(demo, "setting-").values()}
    assert sorted(controls_by_id[i._id] for i in edit.inputs if i._id in controls_by_id) == sorted(
        f"setting-{n}" for n in names())


def test_model_picker_marks_unavailable_models_and_shows_a_card(demo, monkeypatch):
    demo, service = demo
    monkeypatch.delenv("EDITMGT_STAGE2", raising=False)
    text = PageText(service)
    labels = dict((model_id, label) for label, model_id in text.choices())
    assert labels["editmgt-stage2"].endswith("unavailable: no public weights are known")
    assert "unavailable" not in labels["tiny-shapes"] and "unavailable" not in labels["tiny"]
    card = text.card("tiny-shapes")
    assert service.manager.zoo["tiny-shapes"].summary in card and "64 px" in card
    assert "Unavailable" in text.card("editmgt-stage2") and "EDITMGT_STAGE2" in text.card("editmgt-stage2")


def test_picking_a_model_shows_its_recommendation_and_examples_and_keeps_the_result(demo):
    """The model change fills every setting control with the model's recommendation (the
    keywords box too: nothing typed earlier stays hidden), shows its card and the examples
    that suit it, and writes nothing to the result panels."""
    demo, service = demo
    change = handler(demo, "on_model_change")
    out_ids = [getattr(o, "elem_id", None) for o in change.outputs]
    assert not {"edit-output", "heatmap", "curve", "info", "sweep-gallery"} & set(out_ids)
    zoo = service.manager.zoo
    for model_id in OFFLINE_MODELS + ("editmgt-stage2",):
        values = dict(zip(out_ids, change.fn(model_id)))
        for name in names():
            assert values[f"setting-{name}"] == controls.to_control(name, getattr(zoo[model_id].settings, name))
        assert zoo[model_id].summary in values["model-card"]
        for inputs in ("photos", "shapes"):
            assert values[f"examples-{inputs}"]["visible"] == (inputs == zoo[model_id].inputs)
    assert dict(zip(out_ids, change.fn("tiny-shapes")))["setting-draw"] == "inverse-cdf"


def test_examples_fill_only_the_photo_and_the_instruction(demo):
    demo, _service = demo
    datasets = [b for b in demo.blocks.values() if isinstance(b, gr.Dataset)]
    assert len(datasets) == 2
    image, instruction = by_elem_id(demo, "source-image")["source-image"], by_elem_id(demo, "instruction")["instruction"]
    for dataset in datasets:
        filled = [f for f in demo.fns.values() if dataset in f.inputs or any(t[0] is dataset for t in f.targets)]
        assert filled
        targets = {o._id for f in filled for o in f.outputs}
        assert targets <= {image._id, instruction._id}, targets


def test_every_example_edits_on_every_offline_model_and_a_fresh_edit_follows(demo):
    """Each example (photos and shapes scenes) through the page's Edit handler on each offline
    model, with the controls as the model change sets them; then the user's own photo and
    instruction with a keyword left in the box from before: the edit works and says so."""
    demo, service = demo
    change, edit = handler(demo, "on_model_change"), handler(demo, "ui_edit")
    change_ids = [getattr(o, "elem_id", None) for o in change.outputs]
    examples = load_examples()
    assert {e["inputs"] for e in examples} == {"photos", "shapes"}
    for model_id in OFFLINE_MODELS:
        shown = dict(zip(change_ids, change.fn(model_id)))
        values = {name: shown[f"setting-{name}"] for name in names()}
        for example in examples:
            out = edit.fn(example["path"], example["instruction"], model_id, False, None, 0, False, False, "",
                          progress=None, **values)
            info = out[4]
            assert info["model"] == model_id and 0 <= info["changed_fraction"] <= 1, example["file"]
            if model_id == "tiny-shapes" and example["inputs"] == "photos":
                assert any("synthetic shapes scenes" in n for n in info["notes"])
            if model_id == "tiny-shapes" and example["inputs"] == "shapes":
                assert info["notes"] == [] and info["keywords"]           # the keyword rule's words
        values["keywords"] = "cat"                                        # left in the box earlier
        own = ROOT / "examples" / "rocket.jpg"
        out = edit.fn(str(own), "make the sky purple", model_id, False, None, 0, True, True, "0, 0.5, 1",
                      progress=None, **values)
        before_after, gallery, info = out[0], out[3], out[4]
        assert info["keywords"] in (None, ["purple"]) and any("'cat'" in n for n in info["notes"])
        assert before_after[0].size == before_after[1].size
        assert len(gallery.value) == 3 + (values["hold_lambda"] not in (0, 0.5, 1))


def test_small_pictures_are_enlarged_for_the_page_only():
    small = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    shown = for_display(small)
    assert shown.size == (256, 256)
    assert np.array_equal(np.asarray(shown)[::4, ::4], np.asarray(small))      # nearest: pixels kept
    large = Image.new("RGB", (512, 300))
    assert for_display(large) is large
