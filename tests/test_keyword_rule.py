"""The zoo's keyword rule (`editmgt.keywords`, data in checkpoints.yaml) picks, in every
instruction the shapes data generator can say, exactly the words the research code's
`locating_words` picks (the research package is imported here, in the test only)."""

import itertools
import string

import numpy as np

from editmgt.keywords import KeywordRule, missing_keywords
from editmgt.research.shapes import data
from editmgt.zoo import load_zoo


def every_instruction() -> list[str]:
    """Every template of every edit kind and split, with every fill its placeholders can take."""
    fills = {"obj": [f"{c} {k}" for c in data.SHAPE_COLOURS for k in data.SHAPE_KINDS],
             "colour": list(data.SHAPE_COLOURS), "kind": list(data.SHAPE_KINDS), "pos": list(data.POSITIONS),
             "bg": list(data.BACKGROUND_WORDS.values())}
    out = []
    for per_split in data.TEMPLATES.values():
        for template in itertools.chain(*per_split.values()):
            keys = [name for _, name, _, _ in string.Formatter().parse(template) if name]
            for values in itertools.product(*(fills[k] for k in keys)):
                out.append(data.say(template, dict(zip(keys, values))))
    return out


def test_the_rule_is_locating_words_on_every_instruction():
    rule = load_zoo()["tiny-shapes"].keyword_rule
    instructions = every_instruction()
    rng = np.random.default_rng(0)  # and the training phrasing noise: pseudo-words, dropped and inserted words
    instructions += [data.perturb_phrasing(t, rng, insert_known=0.5) for t in instructions[::7]]
    instructions += [data.make_triple(seed, i, split).instruction
                     for seed in (0, 2026) for split in data.SPLITS for i in range(50)]
    assert len(set(instructions)) > 5000
    for instruction in instructions:
        assert list(rule.pick(instruction)) == data.locating_words(instruction), instruction


def test_rule_semantics():
    rule = KeywordRule(frozenset({"red", "blue", "circle", "star", "top"}),
                       (frozenset({"red", "blue"}), frozenset({"circle", "star"})))
    assert rule.pick("make the red circle blue") == ("circle", "red")
    assert rule.pick("Turn the BLUE star into a circle, at the top.") == ("blue", "star", "top")
    assert rule.pick("make it grey") == ()
    assert missing_keywords("make the cat black", ("Cat", "hat", "black")) == ("hat",)
