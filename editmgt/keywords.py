"""A model's keyword rule: the words of an instruction whose text rows region-hold reads when
no keywords are given.

A rule is zoo data (`checkpoints.yaml`, an entry's `keyword_rule`): the words it picks, and
groups of which only the first word the instruction says counts. The tiny-shapes model picks
the colours, shapes, places and backgrounds it knows, with the shape colours and the shape
kinds as groups: "make the red circle blue" gives ('circle', 'red'), the words that find the
edit, not the colour it asks for (the map the model was trained to produce).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class KeywordRule:
    """words: the words the rule may pick (lower case); first_of: groups of those words of
    which only the first one the instruction says is picked."""

    words: frozenset[str]
    first_of: tuple[frozenset[str], ...] = ()

    def __post_init__(self) -> None:
        outside = sorted(set().union(*self.first_of) - self.words) if self.first_of else []
        if outside:
            raise ValueError(f"first_of names words that are not among the words: {outside}")

    def pick(self, instruction: str) -> tuple[str, ...]:
        """The rule's words in `instruction` (case and punctuation ignored), sorted; () for none."""
        picked: set[str] = set()
        groups_seen: set[int] = set()
        for word in _WORD.findall(instruction.lower()):
            group = next((i for i, members in enumerate(self.first_of) if word in members), None)
            if group in groups_seen:
                continue
            if group is not None:
                groups_seen.add(group)
            if word in self.words:
                picked.add(word)
        return tuple(sorted(picked))


def missing_keywords(instruction: str, keywords: tuple[str, ...]) -> tuple[str, ...]:
    """The keywords that do not occur in `instruction` (case ignored): region-hold cannot read
    their rows (`TextConditioner.keyword_rows` refuses them)."""
    text = instruction.lower()
    return tuple(k for k in keywords if k.strip().lower() not in text)
