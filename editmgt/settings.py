"""Edit settings: every knob of one edit, with its default, its limits and its meaning.

`EditSettings` is the one place where a setting is defined. The pipeline takes it, a zoo
entry's recommended settings are an instance of it, and the app, the command line, the
benchmark and the evaluation build it; none of them lists a default or a limit again. A
value out of range raises `InputError` with the setting's name, the allowed range and the
value given.

Adding a setting: add a field here (default, limits, help text) and use it where it acts
(the sampler or the pipeline). The app's control, the API's and MCP's arguments, the zoo's
validation and the command lines' flags follow from the field; `editmgt_app/controls.py`
changes only for a type no control shows yet (docs/ARCHITECTURE.md, "Adding a setting").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from editmgt.errors import InputError
from editmgt.sampling.smoothing import METHODS as SMOOTHING_METHODS

DEFAULT_NEGATIVE_PROMPT = (
    "worst quality, low quality, low res, blurry, distortion, watermark, logo, signature, "
    "text, jpeg artifacts, signature, sketch, duplicate, ugly, identifying mark"
)  # the released inference script's negative prompt
MAX_TEXT_CHARS = 1000  # instruction, prompt and negative prompt
MAX_KEYWORDS_CHARS = 100
MAX_SEED = 2**31 - 1
DRAWS = ("released", "inverse-cdf")
MASK_REFERENCES = ("masked", "source")


def _setting(default: Any, low: Optional[float] = None, high: Optional[float] = None,
             choices: tuple = (), help: str = "") -> Any:
    return field(default=default, metadata={"low": low, "high": high, "choices": choices, "help": help})


@dataclass(frozen=True)
class EditSettings:
    """How to sample one edit. Values are checked (and numbers coerced) on construction."""

    steps: int = _setting(16, 1, 100, help="sampling steps; the paper's standard is 16")
    guidance: float = _setting(6.0, 0.0, 20.0, help="classifier-free guidance scale; 1 or less turns it off")
    gamma: float = _setting(1.1, 0.0, 5.0, help="reference strength: the attention between the source and the "
                                               "rest gets the bias log(gamma); 1 = no bias, 0 = ignore the source")
    hold_lambda: float = _setting(0.0, 0.0, 1.0, help="region-hold threshold: newly drawn tokens whose "
                                                     "localisation score is below it take the source's token; "
                                                     "0 = off, 1 = every token held")
    hold_blocks: Optional[tuple[int, int]] = _setting(None, 0, None, help="first and last block (inclusive) whose "
                                                                          "text->image attention localises the edit; "
                                                                          "None = the model's default")
    keywords: Optional[tuple[str, ...]] = _setting(None, help="words of the instruction whose text rows the "
                                                              "localisation map reads; None = every row")
    smoothing: str = _setting("adaptive", choices=SMOOTHING_METHODS, help="how the localisation map is smoothed")
    smoothing_strength: float = _setting(1.0, 0.0, 5.0, help="strength of the smoothing")
    negative_prompt: str = _setting(DEFAULT_NEGATIVE_PROMPT, help="what guidance steers away from; "
                                                                  "'' = the empty prompt")
    sample_temperature: float = _setting(1.0, 0.01, 5.0, help="tokens are drawn from softmax(logits / t); "
                                                              "1 = the released sampler, lower = greedier")
    draw: str = _setting("released", choices=DRAWS, help="how tokens are drawn: 'released' draws what the "
                                                         "released scheduler draws for the same seed; "
                                                         "'inverse-cdf' is cheaper on the CPU (same distribution, "
                                                         "other tokens)")
    mask_reference: str = _setting("masked", choices=MASK_REFERENCES, help="with a user mask, the reference "
                                                                           "stream carries the mask id in the "
                                                                           "region ('masked', as released) or the "
                                                                           "clean source ('source')")
    keep_unchanged_pixels: bool = _setting(False, help="keep the photo's own pixels wherever no token changed "
                                                       "(off: every pixel is redrawn through the VQ, as in the paper)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check(f, getattr(self, f.name)))

    def replace(self, **changes: Any) -> "EditSettings":
        """A copy with `changes` applied (and checked); unknown names raise InputError."""
        unknown = sorted(set(changes) - set(names()))
        if unknown:
            raise InputError(f"unknown setting(s) {unknown}; known: {', '.join(names())}")
        return dataclasses.replace(self, **changes)

    def merged(self, overrides: Mapping[str, Any]) -> "EditSettings":
        """A copy with the values of `overrides` that are given: None and blank strings mean
        'keep this setting' (the app's and the API's 'use the model's default')."""
        return self.replace(**{k: v for k, v in overrides.items() if not _blank(v)})

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def names() -> tuple[str, ...]:
    """The settings' names, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(EditSettings))


def spec(name: str) -> dict[str, Any]:
    """Default, low, high, choices and help of one setting (what a UI control needs)."""
    for f in dataclasses.fields(EditSettings):
        if f.name == name:
            return {"default": f.default, **f.metadata}
    raise InputError(f"unknown setting {name!r}; known: {', '.join(names())}")


# ---------------------------------------------------------------------- checks
def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def check_number(name: str, value: Any, low: Optional[float], high: Optional[float], *,
                 integer: bool = False) -> float | int:
    """`value` as an int or float within [low, high] (either may be None), else InputError."""
    kind = "an integer" if integer else "a number"
    bounds = f" in [{low}, {high}]" if low is not None and high is not None else (
        f" >= {low}" if low is not None else (f" <= {high}" if high is not None else ""))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise InputError(f"{name} must be {kind}{bounds}, got {value!r}")
    if integer and value != int(value):
        raise InputError(f"{name} must be {kind}{bounds}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise InputError(f"{name} must be {kind}{bounds}, got {value!r}")
    return int(value) if integer else float(value)


def check_text(text: Any, what: str = "instruction", *, allow_empty: bool = False) -> str:
    """A stripped instruction / prompt of at most MAX_TEXT_CHARS characters that encodes as UTF-8."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InputError(f"the {what} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"the {what} holds characters that are not valid Unicode text (an unpaired surrogate); "
                         "retype or paste it again") from None
    text = text.strip()
    if not text and not allow_empty:
        raise InputError(f"the {what} is empty: say what to change, e.g. 'make the cat black'")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"the {what} has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    return text


def check_seed(seed: Any) -> int:
    return check_number("seed", seed, 0, MAX_SEED, integer=True)


def parse_keywords(value: Any) -> Optional[tuple[str, ...]]:
    """'cat, hat', ['cat', 'hat'] or None -> ('cat', 'hat') or None (blank)."""
    if _blank(value):
        return None
    if isinstance(value, str):
        if len(value) > MAX_KEYWORDS_CHARS:
            raise InputError(f"the keywords have {len(value)} characters; the limit is {MAX_KEYWORDS_CHARS}")
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(w, str) for w in value):
        raise InputError(f"keywords must be words separated by commas, got {value!r}")
    words = tuple(w.strip() for w in value if w.strip())
    if sum(len(w) for w in words) > MAX_KEYWORDS_CHARS:
        raise InputError(f"the keywords have more than {MAX_KEYWORDS_CHARS} characters")
    return words or None


def _check(f: dataclasses.Field, value: Any) -> Any:
    name, meta = f.name, f.metadata
    if f.name == "keywords":
        return parse_keywords(value)
    if f.name == "hold_blocks":
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise InputError(f"hold_blocks must be [first, last] block numbers, got {value!r}")
        first, last = (check_number(f"hold_blocks ({which})", v, meta["low"], meta["high"], integer=True)
                       for which, v in zip(("first", "last"), value))
        if first > last:
            raise InputError(f"hold_blocks: the first block ({first}) must not come after the last ({last})")
        return (first, last)
    if f.name == "negative_prompt":
        return check_text(value, "negative prompt", allow_empty=True)
    if isinstance(f.default, bool):
        if not isinstance(value, bool):
            raise InputError(f"{name} must be true or false, got {value!r}")
        return value
    if meta["choices"]:
        if value not in meta["choices"]:
            raise InputError(f"{name} must be one of {list(meta['choices'])}, got {value!r}")
        return value
    return check_number(name, value, meta["low"], meta["high"], integer=isinstance(f.default, int))
