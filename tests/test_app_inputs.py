"""The demo's input helpers and pictures: brush-editor masks, lambda lists, the settings'
control adapters, heat-map outline."""

import numpy as np
import pytest
from PIL import Image

from editmgt.errors import InputError
from editmgt.images import MAX_ASPECT_RATIO
from editmgt_app import controls
from editmgt_app.inputs import load_upload, mask_from_editor, parse_lambdas
from editmgt_app.plots import heatmap_overlay, lambda_curve


def test_mask_from_editor_uses_layer_alpha_resized_to_the_image():
    layer = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    layer.paste((0, 0, 0, 255), (0, 0, 10, 10))
    value = {"background": Image.new("RGB", (40, 20)), "layers": [layer], "composite": None}
    mask = mask_from_editor(value, (80, 40))
    assert mask.size == (80, 40) and mask.mode == "L"
    array = np.asarray(mask) > 0
    assert array[:20, :20].all() and not array[20:, 20:].any()


def test_empty_editor_layers_mean_no_mask():
    empty = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    assert mask_from_editor({"background": None, "layers": [empty], "composite": None}, (40, 20)) is None
    assert mask_from_editor({"background": None, "layers": [], "composite": None}, (40, 20)) is None
    assert mask_from_editor(None, (40, 20)) is None


def test_lambdas():
    assert parse_lambdas("0, 0.5;1") == [0.0, 0.5, 1.0]
    with pytest.raises(InputError, match=r"lambda must be a number in \[0.0, 1.0\], got 2"):
        parse_lambdas([0, 2])
    with pytest.raises(InputError, match="between 1 and 16"):
        parse_lambdas([])
    with pytest.raises(InputError, match="numbers separated by commas"):
        parse_lambdas("a, b")


def test_control_kinds_follow_the_settings_types():
    from editmgt.settings import names

    kinds = {name: controls.kind(name) for name in names()}
    assert kinds["steps"] == kinds["guidance"] == kinds["hold_lambda"] == "slider"
    assert kinds["smoothing"] == kinds["draw"] == kinds["mask_reference"] == "dropdown"
    assert kinds["keep_unchanged_pixels"] == "checkbox" and kinds["hold_blocks"] == "pair"
    assert kinds["keywords"] == "words" and kinds["negative_prompt"] == "text"
    assert controls.slider_step("steps") == 1 and controls.slider_step("guidance") == 0.1
    assert controls.slider_step("sample_temperature") == 0.01


def test_control_values_round_trip_and_blank_means_the_model_default():
    from editmgt.settings import EditSettings

    base = EditSettings(hold_blocks=(28, 36), keywords=("cat",))
    shown = {name: controls.to_control(name, getattr(base, name)) for name in ("hold_blocks", "keywords")}
    assert shown == {"hold_blocks": "28, 36", "keywords": "cat"}
    assert EditSettings().merged(controls.overrides(shown)) == EditSettings(hold_blocks=(28, 36), keywords=("cat",))
    assert controls.from_control("hold_blocks", "  ") is None and controls.from_control("hold_blocks", None) is None
    assert controls.from_control("hold_blocks", [1, 2]) == [1, 2]                 # the API's JSON list
    assert base.merged(controls.overrides({"hold_blocks": "", "keywords": ""})) == base
    with pytest.raises(InputError, match="hold_blocks must be two block numbers"):
        controls.from_control("hold_blocks", "four, five")
    with pytest.raises(InputError, match=r"unknown setting\(s\) \['lamda'\]"):
        controls.overrides({"lamda": 0.3})


def test_heatmap_outlines_the_held_region_and_curve_renders():
    source = Image.new("RGB", (64, 48), "white")
    scores = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    held = scores < 0.5
    out = np.asarray(heatmap_overlay(source, scores, held))
    assert out.shape == (48, 64, 3)
    assert (out == [0, 255, 255]).all(-1).any()  # outline drawn
    plain = np.asarray(heatmap_overlay(source, scores, np.zeros_like(held)))
    assert not (plain == [0, 255, 255]).all(-1).any()
    enlarged = heatmap_overlay(source, scores, held, min_side=200)  # 48 -> 5 x 48 = 240
    assert enlarged.size == (320, 240) and (np.asarray(enlarged) == [0, 255, 255]).all(-1).any()
    curve = lambda_curve([0, 0.5, 1], [0.3, 0.2, 0.1], current=0.25, baseline=0.1)
    assert curve.size == (520, 360)


def test_upload_with_an_extreme_aspect_ratio_is_refused(tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (4000, 1)).save(strip)
    with pytest.raises(InputError, match=rf"4000x1 pixels, an aspect ratio of 4000:1; the limit is "
                                         rf"{MAX_ASPECT_RATIO:g}:1"):
        load_upload(str(strip))
    at_limit = tmp_path / "wide.png"
    Image.new("RGB", (int(MAX_ASPECT_RATIO) * 8, 8)).save(at_limit)
    assert load_upload(str(at_limit)).image.size == (int(MAX_ASPECT_RATIO) * 8, 8)
