"""Resolve a checkpoint (local folder or Hugging Face Hub repo) to a local folder, safetensors only.

A local directory is used as it is. A repo id is fetched with `huggingface_hub.snapshot_download`,
restricted to the configuration, tokenizer and safetensors files of the sub-folders asked for:
pickle files (.bin, .pt, .ckpt, .pth) are never downloaded nor read. Offline
(`HF_HUB_OFFLINE=1`, or `local_files_only=True`) a repo resolves from the local HF cache.

Layout of the released repo (`WeiChow/EditMGT`): `editmgt/` (transformer), `text_encoder/`,
`tokenizer/`, `llm_encoder/`, `vqvae/`, `scheduler/`; Meissonic has `transformer/` instead of
`editmgt/` and no `llm_encoder/`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from editmgt.errors import CheckpointError, UnsafeWeightsError

logger = logging.getLogger(__name__)

DEFAULT_SUBFOLDERS: tuple[str, ...] = (
    "editmgt",
    "transformer",
    "text_encoder",
    "tokenizer",
    "llm_encoder",
    "vqvae",
    "scheduler",
)
# Folders that hold weights (config.json + safetensors); the others hold only text files.
MODEL_SUBFOLDERS: tuple[str, ...] = ("editmgt", "transformer", "text_encoder", "llm_encoder", "vqvae")
ALLOWED_SUFFIXES: tuple[str, ...] = ("json", "txt", "model", "safetensors")
PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".ckpt", ".pth", ".pkl", ".pickle")
_TRUE = {"1", "on", "yes", "true"}


def allow_patterns(subfolders: Sequence[str]) -> list[str]:
    """`snapshot_download` patterns: only json / txt / sentencepiece model / safetensors files."""
    return [f"{folder.strip('/')}/*.{suffix}" for folder in subfolders for suffix in ALLOWED_SUFFIXES]


def ignore_patterns() -> list[str]:
    """Never fetch pickle-based weights, whatever the allow patterns say."""
    return [f"*{suffix}" for suffix in PICKLE_SUFFIXES]


def hub_offline() -> bool:
    """True when the Hub must not be contacted (read at call time, not at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The HF cache folder: `HF_HUB_CACHE` / `HF_HOME` as set now, else huggingface_hub's default."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def check_model_folder(folder: Union[str, Path], config_name: str = "config.json") -> Path:
    """Check that `folder` holds `config_name` and safetensors weights, before anything loads it.

    Raises CheckpointError (names the missing folder or file) or UnsafeWeightsError when the
    only weights are pickle files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    if not (folder / config_name).is_file():
        raise CheckpointError(f"checkpoint folder {folder} has no {config_name}")
    if any(folder.glob("*.safetensors")):
        return folder
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeWeightsError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); editmgt loads safetensors "
            "only, because pickle files can run code when read. Convert them to .safetensors first."
        )
    raise CheckpointError(f"checkpoint folder {folder} has no *.safetensors weights")


def check_checkpoint(root: Union[str, Path], subfolders: Sequence[str] = DEFAULT_SUBFOLDERS) -> Path:
    """Check every weights sub-folder of `root` that is present (absent ones are optional here)."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {root} does not exist")
    for name in subfolders:
        if name in MODEL_SUBFOLDERS and (root / name).exists():
            check_model_folder(root / name)
    return root


def _cached_revisions(cache_dir: Path, repo_id: str) -> list[str]:
    storage = cache_dir / ("models--" + repo_id.replace("/", "--"))
    names = []
    if (storage / "refs").is_dir():
        names += [f"{p.name} -> {p.read_text().strip()}" for p in sorted((storage / "refs").iterdir()) if p.is_file()]
    if (storage / "snapshots").is_dir():
        names += sorted(p.name for p in (storage / "snapshots").iterdir())
    return names


def resolve_checkpoint(
    repo_or_dir: Union[str, Path],
    revision: Optional[str] = None,
    subfolders: Optional[Sequence[str]] = None,
    local_files_only: Optional[bool] = None,
    cache_dir: Optional[Union[str, Path]] = None,
) -> Path:
    """Local folder or Hub repo id -> local folder with the checkpoint's sub-folders.

    `subfolders`: which sub-folders to fetch from the Hub (default: all of DEFAULT_SUBFOLDERS);
    `local_files_only`: None follows HF_HUB_OFFLINE; `cache_dir`: None follows HF_HUB_CACHE.
    `revision` pins a Hub repo; a local folder holds one version, so a revision with a folder
    is refused (CheckpointError) rather than silently ignored.
    The weights sub-folders present are checked (config + safetensors) before returning.
    """
    subfolders = tuple(DEFAULT_SUBFOLDERS if subfolders is None else subfolders)
    local = Path(repo_or_dir).expanduser()
    if local.is_dir():
        if revision is not None:
            raise CheckpointError(
                f"revision={revision!r} was given with the local folder {local}, but a folder holds one "
                "version and cannot be pinned: leave revision out to load the folder as it is, or pass "
                "the Hub repo id ('owner/name') to load that revision"
            )
        logger.info("using local checkpoint %s", local)
        return check_checkpoint(local, subfolders)
    repo_id = str(repo_or_dir)
    if local.exists() or repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise CheckpointError(f"{repo_id!r} is neither a checkpoint folder nor a Hub repo id 'owner/name'")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    offline = hub_offline() if local_files_only is None else bool(local_files_only)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    where = f"{repo_id}@{revision or 'main'}"
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(cache),
            local_files_only=offline,
            allow_patterns=allow_patterns(subfolders),
            ignore_patterns=ignore_patterns(),
        )
    except LocalEntryNotFoundError as error:
        known = _cached_revisions(cache, repo_id)
        raise CheckpointError(
            f"{where} is not in the local Hugging Face cache {cache} and the Hub "
            f"{'may not be contacted (offline mode)' if offline else 'could not be reached'}; "
            f"cached revisions: {', '.join(known) if known else 'none'}. Download it once online, "
            "or pass a local folder."
        ) from error
    except HFValidationError as error:
        raise CheckpointError(f"invalid repo id or revision {where}: {error}") from error
    except HfHubHTTPError as error:
        raise CheckpointError(f"could not fetch {where} from the Hub: {error}") from error
    except OSError as error:  # network errors surface as OSError subclasses in some versions
        raise CheckpointError(f"could not fetch {where}: {error}") from error
    logger.info("resolved %s to %s", where, folder)
    return check_checkpoint(Path(folder), subfolders)
