"""EditSettings: one place for every setting's default, limits and meaning."""

from __future__ import annotations

import dataclasses

import pytest

from editmgt.errors import InputError
from editmgt.settings import (DEFAULT_NEGATIVE_PROMPT, MAX_TEXT_CHARS, EditSettings, check_seed, check_text, names,
                              parse_keywords, spec)


def test_defaults_are_the_released_inference_settings():
    s = EditSettings()
    assert (s.steps, s.guidance, s.gamma, s.hold_lambda) == (16, 6.0, 1.1, 0.0)
    assert s.negative_prompt == DEFAULT_NEGATIVE_PROMPT and s.draw == "released" and s.mask_reference == "masked"
    assert names() == tuple(f.name for f in dataclasses.fields(EditSettings))
    assert all(spec(name)["help"] for name in names())              # every setting says what it means


def test_values_are_coerced_and_frozen():
    s = EditSettings(steps=8.0, guidance=3, keywords="cat, hat ,", hold_blocks=[2, 4])
    assert s.steps == 8 and isinstance(s.steps, int) and s.guidance == 3.0 and isinstance(s.guidance, float)
    assert s.keywords == ("cat", "hat") and s.hold_blocks == (2, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 4


@pytest.mark.parametrize("name", [n for n in names() if spec(n)["low"] is not None and spec(n)["high"] is not None])
def test_every_limit_is_enforced_with_its_name_and_range(name):
    low, high = spec(name)["low"], spec(name)["high"]
    assert EditSettings(**{name: low}) and EditSettings(**{name: high})
    for bad in (low - 1, high + 1, float("nan"), "3", True):
        with pytest.raises(InputError, match=rf"{name} must be .* in \[{low}, {high}\], got"):
            EditSettings(**{name: bad})


@pytest.mark.parametrize("name, bad, message", [
    ("steps", 2.5, "steps must be an integer"),
    ("smoothing", "blur", "smoothing must be one of"),
    ("draw", "gumbel", "draw must be one of"),
    ("mask_reference", "clean", "mask_reference must be one of"),
    ("keep_unchanged_pixels", 1, "must be true or false"),
    ("hold_blocks", [5, 2], "must not come after"),
    ("hold_blocks", [1, 2, 3], r"\[first, last\]"),
    ("hold_blocks", [-1, 2], "hold_blocks \\(first\\) must be"),
    ("keywords", "x" * 101, "the limit is 100"),
    ("negative_prompt", "\ud800", "unpaired surrogate"),
    ("negative_prompt", "x" * (MAX_TEXT_CHARS + 1), "the limit is"),
])
def test_bad_values_say_what_is_wrong(name, bad, message):
    with pytest.raises(InputError, match=message):
        EditSettings(**{name: bad})


def test_replace_checks_and_refuses_unknown_names():
    s = EditSettings().replace(hold_lambda=0.3)
    assert s.hold_lambda == 0.3
    with pytest.raises(InputError, match="unknown setting"):
        EditSettings().replace(keyword="cat")
    with pytest.raises(InputError, match="hold_lambda"):
        EditSettings().replace(hold_lambda=2)


def test_merged_keeps_what_is_blank():
    model = EditSettings(guidance=1.0, hold_lambda=0.1, keywords="red")
    merged = model.merged({"guidance": None, "hold_lambda": "", "steps": 8, "keywords": "  "})
    assert merged == model.replace(steps=8)
    assert merged.as_dict()["keywords"] == ["red"] and merged.as_dict()["steps"] == 8


def test_text_seed_and_keyword_checks():
    assert check_text("  make it blue ") == "make it blue"
    assert check_text(None, "negative prompt", allow_empty=True) == ""
    for bad, message in ((" ", "empty"), (3, "must be text"), ("a\udc00b", "surrogate")):
        with pytest.raises(InputError, match=message):
            check_text(bad)
    assert check_seed(7.0) == 7
    with pytest.raises(InputError, match="seed"):
        check_seed(-1)
    assert parse_keywords(["a", " b "]) == ("a", "b") and parse_keywords(" , ") is None
    with pytest.raises(InputError, match="words separated by commas"):
        parse_keywords([1, 2])
