"""The docs that name code name code that exists.

docs/ARCHITECTURE.md and docs/PARITY.md refer to modules, classes, functions and files in
backticks (`editmgt.pipeline.EditMGTPipeline.sweep`, `editmgt/settings.py`); ARCHITECTURE.md's
file map lists one path per line. Every such name must resolve, so the docs cannot drift from
the code unnoticed.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("docs/ARCHITECTURE.md", "docs/PARITY.md")
_DOTTED = re.compile(r"^(editmgt|editmgt_app)(\.\w+)+$")
_PATH = re.compile(r"^[\w./-]+(\.(py|md|yaml|json|sh|txt|png)|/)$")


def backticked(text: str) -> list[str]:
    """Inline code spans of a markdown text (fenced blocks left out)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"`([^`\n]+)`", prose)


def resolve(dotted: str) -> object:
    """Import the longest module prefix of `dotted`, then get the remaining attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("doc", DOCS)
def test_every_dotted_name_resolves(doc):
    names = [n for n in backticked((ROOT / doc).read_text()) if _DOTTED.match(n)]
    assert names, f"{doc} names no code"
    missing = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"{doc} names code that does not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_exists(doc):
    text = (ROOT / doc).read_text()
    paths = [n for n in backticked(text) if _PATH.match(n) and "/" in n]
    for block in re.findall(r"```text\n(.*?)```", text, flags=re.S):  # the file map
        paths += [line.split()[0] for line in block.splitlines() if line.strip() and _PATH.match(line.split()[0])]
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"{doc} names files that do not exist: {missing}"


def test_the_checker_catches_a_missing_name():
    with pytest.raises(AttributeError):
        resolve("editmgt.pipeline.EditMGTPipeline.no_such_method")
    with pytest.raises(ModuleNotFoundError):
        resolve("editmgt_nothing.module")
