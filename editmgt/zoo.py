"""The model zoo: read and validate `checkpoints.yaml`, and say where each entry's weights are.

An entry names a model (its weights, its task, what pictures it knows), its recommended
settings (an `EditSettings`, checked on reading by the same code that checks every edit),
its working resolution and its keyword rule. The app, the command line (`python -m editmgt
edit --model tiny-shapes`) and the batch jobs read it.

Validation is strict and every message names the entry and the field, so a user who adds
an entry for their own fine-tune learns exactly what to fix. Resolution (is this entry
usable right now, and from where?) never downloads anything: it looks at overrides,
local folders and the local Hugging Face cache, and asks the caller whether the Hub is
reachable.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from editmgt.errors import InputError
from editmgt.keywords import KeywordRule
from editmgt.settings import EditSettings

logger = logging.getLogger(__name__)

ZOO_FILE = Path(__file__).resolve().parents[1] / "checkpoints.yaml"
STAGES = ("1", "2", "3", "base", "untrained")
TASKS = ("edit", "text-to-image")
INPUTS = ("photos", "shapes")  # what pictures a model knows; "shapes": 64 px synthetic shapes scenes only
ROLES = ("transformer", "vqvae", "text_encoder", "tokenizer", "llm_encoder", "scheduler")
REQUIRED_ROLES = ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler")
BUILTINS = ("tiny",)
ENTRY_KEYS = {"id", "label", "stage", "task", "inputs", "masked_edit", "source", "components", "settings",
              "resolution", "keyword_rule", "license", "size_gb", "summary", "description"}
REQUIRED_ENTRY_KEYS = ("id", "label", "stage", "task", "source", "components", "resolution", "license",
                       "size_gb", "summary", "description")
RESOLUTION_RANGE = (16, 4096)
SOURCE_KEYS = {"repo", "revision", "path", "builtin", "env", "expected"}
KEYWORD_RULE_KEYS = {"words", "first_of"}
TOP_KEYS = {"version", "default_preference", "models"}
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SUBFOLDER_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_WORD_RE = re.compile(r"^[a-z0-9]+$")


class ZooError(ValueError):
    """`checkpoints.yaml` is malformed; the message names the entry and field."""


@dataclass(frozen=True)
class Source:
    """Where an entry's weights come from, before overrides."""

    repo: Optional[str] = None
    revision: Optional[str] = None
    path: Optional[str] = None
    builtin: Optional[str] = None
    env: Optional[str] = None
    expected: Optional[str] = None


@dataclass(frozen=True)
class Entry:
    id: str
    label: str
    stage: str
    task: str
    source: Source
    components: dict  # role -> sub-folder or None
    settings: EditSettings  # the recommended settings (the app's, the API's and the command line's defaults)
    resolution: int  # working size: about resolution x resolution pixels at the image's aspect
    license: str
    size_gb: float
    summary: str  # one line: what the model can do (shown beside the app's model picker)
    description: str
    keyword_rule: Optional[KeywordRule] = None  # words region-hold reads when no keywords are given; None: all
    inputs: str = "photos"  # one of INPUTS
    masked_edit: bool = False

    @property
    def size_bytes(self) -> int:
        return int(self.size_gb * 1024**3)

    def keywords_for(self, instruction: str) -> Optional[tuple[str, ...]]:
        """The words region-hold reads when no keywords are given: the keyword rule's words of
        `instruction`, or None (every text row) without a rule or when it picks none."""
        return (self.keyword_rule.pick(instruction) or None) if self.keyword_rule else None


@dataclass(frozen=True)
class Resolved:
    """Where an entry loads from now: `kind` is builtin, local or hub; or why it cannot."""

    available: bool
    kind: Optional[str] = None  # "builtin" | "local" | "hub"
    location: Optional[str] = None  # builtin name, folder or repo id
    revision: Optional[str] = None
    reason: str = ""  # why unavailable, or a note (e.g. "not cached: downloads 7.5 GB")
    via: str = "checkpoints.yaml"  # or the env variable / --checkpoint that chose it


@dataclass
class Zoo:
    entries: dict[str, Entry]
    default_preference: list[str]
    path: Optional[Path] = None
    overrides: dict[str, str] = field(default_factory=dict)  # id -> SRC from --checkpoint

    def __getitem__(self, model_id: str) -> Entry:
        return self.entries[model_id]

    def __contains__(self, model_id: str) -> bool:
        return model_id in self.entries

    @property
    def ids(self) -> list[str]:
        return list(self.entries)

    def resolve(self, model_id: str, hub_reachable: Callable[[], bool] = lambda: False,
                environ: Optional[dict] = None) -> Resolved:
        """Where `model_id` loads from now. Overrides win: --checkpoint, then the env variable."""
        entry = self.entries[model_id]
        environ = os.environ if environ is None else environ
        if model_id in self.overrides:
            return _resolve_src(entry, self.overrides[model_id], f"--checkpoint {model_id}=...", hub_reachable)
        if entry.source.env and environ.get(entry.source.env):
            return _resolve_src(entry, environ[entry.source.env], f"${entry.source.env}", hub_reachable)
        src = entry.source
        if src.builtin:
            return Resolved(True, "builtin", src.builtin, reason="built locally on first use")
        if src.path:  # relative paths are relative to the zoo file, not the working directory
            base = self.path.parent if self.path is not None else Path.cwd()
            return _resolve_local(entry, base / Path(src.path).expanduser(), "checkpoints.yaml")
        if src.repo:
            return _resolve_hub(entry, src.repo, src.revision, "checkpoints.yaml", hub_reachable)
        hint = f"set ${src.env} or " if src.env else ""
        return Resolved(False, reason=(src.expected or "no weights configured")
                        + f" ({hint}--checkpoint {model_id}=REPO_OR_PATH)")


def _resolve_src(entry: Entry, src: str, via: str, hub_reachable) -> Resolved:
    if src.startswith(("/", ".", "~")) or Path(src).expanduser().exists():
        return _resolve_local(entry, Path(src).expanduser(), via)
    repo, _, revision = src.partition("@")
    if not _REPO_RE.match(repo):
        return Resolved(False, reason=f"{via}: {src!r} is neither an existing folder nor a Hub repo id", via=via)
    return _resolve_hub(entry, repo, revision or None, via, hub_reachable)


def _resolve_local(entry: Entry, folder: Path, via: str) -> Resolved:
    if not folder.is_dir():
        return Resolved(False, reason=f"{via}: folder {folder} does not exist", via=via)
    transformer = entry.components["transformer"]
    if not (folder / transformer).is_dir():
        return Resolved(False, reason=f"{via}: {folder} has no '{transformer}/' sub-folder (the transformer)",
                        via=via)
    return Resolved(True, "local", str(folder), via=via)


def hub_cached(repo: str, revision: Optional[str], subfolder: str) -> bool:
    """True when the Hub cache already holds `subfolder/config.json` of repo@revision."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, f"{subfolder}/config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an unreadable cache just means "not cached"
        return False
    return isinstance(found, str)


def _resolve_hub(entry: Entry, repo: str, revision: Optional[str], via: str, hub_reachable) -> Resolved:
    if hub_cached(repo, revision, entry.components["transformer"]):
        return Resolved(True, "hub", repo, revision, reason="in the local Hub cache", via=via)
    if hub_reachable():
        return Resolved(True, "hub", repo, revision, reason=f"downloads about {entry.size_gb:g} GB on first use",
                        via=via)
    return Resolved(False, "hub", repo, revision, via=via,
                    reason=f"{repo}@{(revision or 'main')[:12]} is not in the local Hub cache and the Hub is "
                           "unreachable")


# ---------------------------------------------------------------------------- loading


def load_zoo(path: Path | str = ZOO_FILE, overrides: Optional[dict[str, str]] = None) -> Zoo:
    """Read and validate a zoo file; `overrides` maps id -> SRC (from --checkpoint)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ZooError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ZooError(f"{path}: not valid YAML: {err}") from None
    zoo = parse_zoo(raw, where=str(path))
    zoo.path = path.resolve()
    for model_id in overrides or {}:
        if model_id not in zoo.entries:
            raise ZooError(f"--checkpoint {model_id}=...: no entry '{model_id}' in {path} "
                           f"(known: {', '.join(zoo.ids)})")
    zoo.overrides = dict(overrides or {})
    return zoo


def parse_zoo(raw: Any, where: str = "checkpoints.yaml") -> Zoo:
    if not isinstance(raw, dict):
        raise ZooError(f"{where}: the top level must be a mapping with 'models'")
    _no_unknown(raw, TOP_KEYS, f"{where}")
    models = raw.get("models")
    if not isinstance(models, list) or not models:
        raise ZooError(f"{where}: 'models' must be a non-empty list of entries")
    entries: dict[str, Entry] = {}
    for index, item in enumerate(models):
        entry = parse_entry(item, f"{where}: models[{index}]")
        if entry.id in entries:
            raise ZooError(f"{where}: models[{index}]: duplicate id '{entry.id}'")
        entries[entry.id] = entry
    preference = raw.get("default_preference", list(entries))
    if not isinstance(preference, list) or not all(isinstance(p, str) for p in preference):
        raise ZooError(f"{where}: 'default_preference' must be a list of ids")
    # Ids named here but absent are allowed (e.g. tiny-shapes before it is added) and skipped.
    return Zoo(entries, preference)


def _no_unknown(mapping: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ZooError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _field(mapping: dict, key: str, types, where: str, required: bool = True):
    if key not in mapping or mapping[key] is None:
        if required:
            raise ZooError(f"{where}: field '{key}' is missing")
        return None
    value = mapping[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ZooError(f"{where}: field '{key}' must be {_type_name(types)}, got {value!r}")
    if not isinstance(value, types):
        raise ZooError(f"{where}: field '{key}' must be {_type_name(types)}, got {value!r}")
    return value


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def parse_entry(item: Any, where: str) -> Entry:
    if not isinstance(item, dict):
        raise ZooError(f"{where}: an entry must be a mapping")
    model_id = item.get("id")
    if isinstance(model_id, str):
        where = f"{where} (id '{model_id}')"
    _no_unknown(item, ENTRY_KEYS, where)
    for key in REQUIRED_ENTRY_KEYS:
        if key not in item:
            raise ZooError(f"{where}: field '{key}' is missing")
    model_id = _field(item, "id", str, where)
    if not _ID_RE.match(model_id):
        raise ZooError(f"{where}: field 'id' must be lower-case letters, digits, '.', '_' or '-', got {model_id!r}")
    stage = str(_field(item, "stage", (int, str), where))
    if stage not in STAGES:
        raise ZooError(f"{where}: field 'stage' must be one of {list(STAGES)}, got {item['stage']!r}")
    task = _field(item, "task", str, where)
    if task not in TASKS:
        raise ZooError(f"{where}: field 'task' must be one of {list(TASKS)}, got {task!r}")
    size_gb = float(_field(item, "size_gb", (int, float), where))
    if size_gb <= 0:
        raise ZooError(f"{where}: field 'size_gb' must be positive, got {size_gb}")
    resolution = _field(item, "resolution", int, where)
    if not RESOLUTION_RANGE[0] <= resolution <= RESOLUTION_RANGE[1]:
        raise ZooError(f"{where}: field 'resolution' must be in {list(RESOLUTION_RANGE)}, got {resolution}")
    inputs = _field(item, "inputs", str, where, required=False) or "photos"
    if inputs not in INPUTS:
        raise ZooError(f"{where}: field 'inputs' must be one of {list(INPUTS)}, got {inputs!r}")
    summary = _field(item, "summary", str, where)
    if "\n" in summary.strip():
        raise ZooError(f"{where}: field 'summary' must be one line (the model picker shows it)")
    return Entry(
        id=model_id,
        label=_field(item, "label", str, where),
        stage=stage,
        task=task,
        source=_parse_source(item["source"], f"{where}: source"),
        components=_parse_components(item["components"], f"{where}: components"),
        settings=_parse_settings(item.get("settings"), f"{where}: settings"),
        resolution=resolution,
        license=_field(item, "license", str, where),
        size_gb=size_gb,
        summary=summary.strip(),
        description=_field(item, "description", str, where),
        keyword_rule=_parse_keyword_rule(item.get("keyword_rule"), f"{where}: keyword_rule"),
        inputs=inputs,
        masked_edit=bool(_field(item, "masked_edit", bool, where, required=False) or False),
    )


def _parse_source(raw: Any, where: str) -> Source:
    if not isinstance(raw, dict):
        raise ZooError(f"{where}: must be a mapping with repo+revision, path, builtin or env")
    _no_unknown(raw, SOURCE_KEYS, where)
    src = Source(**{k: _field(raw, k, str, where, required=False) for k in SOURCE_KEYS})
    kinds = [k for k in ("repo", "path", "builtin") if getattr(src, k)]
    if len(kinds) > 1:
        raise ZooError(f"{where}: give only one of repo, path, builtin (got {kinds})")
    if not kinds and not src.env:
        raise ZooError(f"{where}: give one of repo (+ revision), path, builtin, or at least env")
    if src.repo:
        if not _REPO_RE.match(src.repo):
            raise ZooError(f"{where}: field 'repo' must look like owner/name, got {src.repo!r}")
        if not src.revision:
            raise ZooError(f"{where}: field 'revision' is missing (pin the Hub repo to a commit)")
        if not _SHA_RE.match(src.revision):  # allowed (e.g. while a commit is being verified); said once per load
            logger.info("%s: revision %r is a branch or tag, not a commit id: downloads follow it", where,
                        src.revision)
    elif src.revision:
        raise ZooError(f"{where}: field 'revision' only applies to a Hub 'repo'")
    if src.builtin and src.builtin not in BUILTINS:
        raise ZooError(f"{where}: field 'builtin' must be one of {list(BUILTINS)}, got {src.builtin!r}")
    if src.env and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", src.env):
        raise ZooError(f"{where}: field 'env' must be an environment variable name, got {src.env!r}")
    return src


def _parse_components(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ZooError(f"{where}: must be a mapping of {list(ROLES)} to sub-folders")
    _no_unknown(raw, set(ROLES), where)
    out = {}
    for role in ROLES:
        value = raw.get(role)
        if value is None:
            if role in REQUIRED_ROLES:
                raise ZooError(f"{where}: field '{role}' is missing")
            out[role] = None
            continue
        if not isinstance(value, str) or not _SUBFOLDER_RE.match(value) or ".." in value.split("/"):
            raise ZooError(f"{where}: field '{role}' must be a relative sub-folder like 'vqvae' "
                           f"(letters, digits, '_', '-', '.', '/'; no '..' or leading '/'), got {value!r}")
        out[role] = value
    return out


def _parse_settings(raw: Any, where: str) -> EditSettings:
    """The entry's recommended settings: `EditSettings` with the values given (field names
    and limits are EditSettings' own); a ZooError naming the entry, the field and the limit."""
    if raw is None:
        return EditSettings()
    if not isinstance(raw, dict):
        raise ZooError(f"{where}: must be a mapping of setting names to values")
    try:
        return EditSettings().replace(**raw)
    except InputError as err:
        raise ZooError(f"{where}: {err}") from None


def _parse_keyword_rule(raw: Any, where: str) -> Optional[KeywordRule]:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ZooError(f"{where}: must be a mapping with 'words' (and optionally 'first_of')")
    _no_unknown(raw, KEYWORD_RULE_KEYS, where)
    words = _word_list(raw.get("words"), f"{where}: words")
    groups = raw.get("first_of") or []
    if not isinstance(groups, list):
        raise ZooError(f"{where}: field 'first_of' must be a list of word lists")
    first_of = tuple(frozenset(_word_list(g, f"{where}: first_of[{i}]")) for i, g in enumerate(groups))
    try:
        return KeywordRule(frozenset(words), first_of)
    except ValueError as err:
        raise ZooError(f"{where}: {err}") from None


def _word_list(raw: Any, where: str) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise ZooError(f"{where}: must be a non-empty list of words")
    bad = [w for w in raw if not isinstance(w, str) or not _WORD_RE.match(w)]
    if bad:
        raise ZooError(f"{where}: words must be single lower-case words (letters and digits), got {bad!r}")
    return list(raw)


def parse_checkpoint_flags(flags: list[str]) -> dict[str, str]:
    """`["ID=SRC", ...]` -> {id: src}; raises ZooError on a malformed flag."""
    out = {}
    for flag in flags or []:
        model_id, sep, src = flag.partition("=")
        if not sep or not model_id or not src:
            raise ZooError(f"--checkpoint {flag!r}: expected ID=REPO_OR_PATH")
        out[model_id] = src
    return out


def choose_default(zoo: Zoo, resolve: Callable[[str], Resolved]) -> str:
    """The first id of `default_preference` that exists and is available, else the first
    available entry."""
    for model_id in list(zoo.default_preference) + zoo.ids:
        if model_id in zoo.entries and resolve(model_id).available:
            return model_id
    raise ZooError("no model in the zoo is available (not even the built-in tiny model)")


# ---------------------------------------------------------------------------- where weights are


def hub_reachable() -> bool:
    """Whether huggingface.co answers within 2 s; False at once when HF_HUB_OFFLINE is set.
    Asked once per process (the answer is kept)."""
    from editmgt.hub import hub_offline

    return not hub_offline() and _hub_answers()


@lru_cache(maxsize=1)
def _hub_answers() -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=2.0):
            return True
    except OSError:
        return False


def cache_dir() -> Path:
    """Where built-in models are written: $EDITMGT_CACHE or ~/.cache/editmgt."""
    return Path(os.environ.get("EDITMGT_CACHE", Path.home() / ".cache" / "editmgt")).expanduser()


_build_lock = threading.Lock()


def builtin_folder(name: str) -> Path:
    """The folder of a built-in model, built on first use (later calls reuse the build)."""
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in model {name!r}")
    from editmgt.tiny import make_tiny_checkpoint

    with _build_lock:
        return make_tiny_checkpoint(cache_dir() / "tiny-seed0", seed=0)
