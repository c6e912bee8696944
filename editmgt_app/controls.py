"""One Gradio control per edit setting, made from the setting's type and its `spec()` (label,
help, limits, choices): a visible control for the page and a hidden input for the API; and the
thin adapters between a control's value and the setting's value (`EditSettings` checks it).

The kind of control follows the field's type: a checkbox (bool), a dropdown (choices), a
slider (a number with both limits), a number box (a number without), a box of two whole
numbers (a pair such as `hold_blocks`), a box of comma-separated words (`keywords`), a text
box (other text). A new setting of one of these types needs no change here.
"""

from __future__ import annotations

import copy
import math
import re
import typing
from functools import lru_cache
from typing import Any

import gradio as gr

from editmgt.errors import InputError
from editmgt.settings import EditSettings, names, spec

KINDS = ("checkbox", "dropdown", "slider", "number", "pair", "words", "text")


@lru_cache(maxsize=None)
def kind(name: str) -> str:
    """The control kind of setting `name` (one of KINDS), from its type and its spec."""
    info, hint = spec(name), typing.get_type_hints(EditSettings)[name]
    inner = [a for a in typing.get_args(hint) if a is not type(None)]  # Optional[X] -> [X]
    hint = inner[0] if len(inner) == 1 and typing.get_origin(hint) is typing.Union else hint
    if hint is bool:
        return "checkbox"
    if info["choices"]:
        return "dropdown"
    if hint in (int, float):
        return "slider" if info["low"] is not None and info["high"] is not None else "number"
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (int, int):
        return "pair"
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[:1] == (str,):
        return "words"
    if hint is str:
        return "text"
    raise TypeError(f"setting {name!r} has a type ({hint}) no control shows: add a kind in {__name__}")


def label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def slider_step(name: str) -> float:
    """1 for whole numbers, else the power of ten nearest a hundredth of the range."""
    info = spec(name)
    if isinstance(info["default"], int):
        return 1
    return 10 ** math.floor(math.log10((info["high"] - info["low"]) / 100))


def page_control(name: str, value: Any, elem_prefix: str = "setting-") -> gr.Component:
    """The page's control of setting `name`, showing `value` (a setting value); its elem_id is
    `elem_prefix` + name."""
    info, what = spec(name), kind(name)
    common = dict(label=label(name), info=info["help"], elem_id=f"{elem_prefix}{name}")
    shown = to_control(name, value)
    if what == "checkbox":
        return gr.Checkbox(value=shown, **common)
    if what == "dropdown":
        return gr.Dropdown(list(info["choices"]), value=shown, **common)
    if what == "slider":
        return gr.Slider(info["low"], info["high"], value=shown, step=slider_step(name), **common)
    if what == "number":
        return gr.Number(value=shown, **common)
    placeholder = {"pair": "first, last (blank = the model's)", "words": "cat, hat (blank = the model's)"}
    return gr.Textbox(value=shown, placeholder=placeholder.get(what, "blank = the model's"), **common)


def api_input(name: str) -> gr.Component:
    """The API's hidden input of setting `name`: None (blank) means the model's recommendation."""
    what = kind(name)
    if what == "checkbox":
        return json_input({"anyOf": [{"type": "boolean"}, {"type": "null"}]}, value=None, label=name)
    if what == "pair":
        pair = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}
        return json_input({"anyOf": [pair, {"type": "null"}]}, value=None, label=name)
    if what in ("slider", "number"):
        return gr.Number(value=None, label=name)
    return gr.Textbox(value=None, label=name)


def api_meaning(name: str) -> str:
    """What an API argument that is a setting means (the MCP tools and view_api show it)."""
    info = spec(name)
    choices = f" (one of {', '.join(info['choices'])})" if info["choices"] else ""
    pair = "; [first, last]" if kind(name) == "pair" else ""
    return f"{info['help']}{choices}{pair}; blank = the model's recommendation (see models)"


def json_input(schema: dict, **kwargs) -> gr.JSON:
    """gr.JSON for an API argument that announces `schema` (valid JSON Schema, so MCP clients
    and gradio_client know the type) instead of Gradio's `{"type": {}}`, which MCP rejects."""
    component = gr.JSON(**kwargs)
    component.api_info = lambda: copy.deepcopy(schema)
    return component


def to_control(name: str, value: Any) -> Any:
    """A setting value as its page control shows it."""
    what = kind(name)
    if what == "pair":
        return "" if value is None else f"{value[0]}, {value[1]}"
    if what == "words":
        return ", ".join(value) if value else ""
    return value


def from_control(name: str, value: Any) -> Any:
    """A page control's or an API input's value as a setting value for `EditSettings.merged`
    (None and blank: the model's recommendation)."""
    if kind(name) == "pair" and isinstance(value, str):
        parts = [p for p in re.split(r"[\s,;-]+", value.strip()) if p]
        if not parts:
            return None
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise InputError(f"{name} must be two block numbers 'first, last' (e.g. '28, 36'), or blank for "
                             f"the model's recommendation; got {value!r}") from None
    return value


def overrides(values: dict[str, Any]) -> dict[str, Any]:
    """{setting: control value} -> {setting: value} for `EditSettings.merged`; unknown names refused."""
    unknown = sorted(set(values) - set(names()))
    if unknown:
        raise InputError(f"unknown setting(s) {unknown}; known: {', '.join(names())}")
    return {name: from_control(name, value) for name, value in values.items()}
