"""The --model argument: a zoo id (`checkpoints.yaml`), a local folder or a Hub repo id.

A zoo id brings its recommended settings (the defaults the command-line flags override), its
resolution and its keyword rule (`editmgt.zoo`); a folder or a repo gets the library's defaults
(`EditSettings()`). `python -m editmgt edit` resolves its --model here too.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from editmgt.errors import InputError
from editmgt.keywords import KeywordRule
from editmgt.settings import EditSettings
from editmgt.zoo import ZOO_FILE, builtin_folder, load_zoo

logger = logging.getLogger(__name__)

_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModelSource:
    """Where the workers load the pipeline from, and the model's recommended settings."""

    argument: str  # what the user passed to --model
    location: str  # local folder or Hub repo id
    revision: Optional[str]  # Hub revision (a commit id when pinned); None for a folder
    settings: EditSettings  # recommended settings, before the command line's flags
    resolution: Optional[int] = None  # model resolution; None = the checkpoint's own
    keyword_rule: Optional[KeywordRule] = None  # the words region-hold reads when no --keywords; None: all
    zoo_id: Optional[str] = None

    def keywords_for(self, instruction: str) -> Optional[tuple[str, ...]]:
        """The keyword rule's words of `instruction`, or None (every word)."""
        return (self.keyword_rule.pick(instruction) or None) if self.keyword_rule else None

    def describe(self) -> dict:
        """JSON-friendly record for run.json."""
        rule = self.keyword_rule
        return {"argument": self.argument, "zoo_id": self.zoo_id, "location": self.location,
                "revision": self.revision, "resolution": self.resolution,
                "keyword_rule": None if rule is None else {"words": sorted(rule.words),
                                                           "first_of": [sorted(g) for g in rule.first_of]}}


def zoo_model(model_id: str, zoo_file: Path = ZOO_FILE,
              hub_reachable: Callable[[], bool] = lambda: True) -> Optional[ModelSource]:
    """The zoo entry `model_id` of `checkpoints.yaml` as a ModelSource, or None when no entry
    has that id. Raises InputError when the entry exists but has no usable weights (a Hub
    entry that is not cached counts as usable while `hub_reachable()` says so)."""
    zoo = load_zoo(zoo_file)
    if model_id not in zoo:
        return None
    entry = zoo[model_id]
    if entry.task != "edit":
        raise InputError(f"model {model_id!r} is a {entry.task} model; batch edits need an edit model")
    where = zoo.resolve(model_id, hub_reachable=hub_reachable)  # a Hub entry downloads on first use
    if not where.available:
        raise InputError(f"model {model_id!r} has no usable weights: {where.reason}")
    location = str(builtin_folder(where.location)) if where.kind == "builtin" else where.location
    return ModelSource(argument=model_id, location=location, revision=where.revision, settings=entry.settings,
                       resolution=entry.resolution, keyword_rule=entry.keyword_rule, zoo_id=model_id)


def resolve_model(model: str, revision: Optional[str] = None,
                  hub_reachable: Callable[[], bool] = lambda: True) -> ModelSource:
    """--model (and --revision) -> ModelSource. Zoo ids win over folders of the same name."""
    source = zoo_model(model, hub_reachable=hub_reachable)
    if source is not None:
        if revision is not None:
            if source.revision is None:
                raise InputError(f"--revision applies to Hub repos; zoo model {model!r} loads from {source.location}")
            source = dataclasses.replace(source, revision=revision)
        return source
    folder = Path(model).expanduser()
    if folder.is_dir():
        if revision is not None:
            raise InputError(f"--revision applies to Hub repos; {model!r} is a local folder")
        return ModelSource(argument=model, location=str(folder.resolve()), revision=None, settings=EditSettings())
    if _REPO_RE.match(model):
        if revision is None:
            logger.warning("model %s without --revision: the download is not pinned", model)
        return ModelSource(argument=model, location=model, revision=revision, settings=EditSettings())
    raise InputError(f"--model {model!r} is neither a zoo id of {ZOO_FILE.name}, an existing folder, "
                     "nor a Hub repo id (owner/name)")
