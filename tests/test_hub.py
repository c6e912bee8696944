"""Checkpoint resolution: local folders, the HF cache offline, safetensors only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import huggingface_hub
from editmgt.errors import CheckpointError, UnsafeWeightsError
from editmgt.hub import (
    DEFAULT_SUBFOLDERS,
    allow_patterns,
    check_model_folder,
    hub_offline,
    resolve_checkpoint,
)

from tests.conftest import REPO, REVISION


def test_local_folder_used_as_is(tiny_checkpoint: Path) -> None:
    assert resolve_checkpoint(tiny_checkpoint) == tiny_checkpoint
    assert resolve_checkpoint(str(tiny_checkpoint)) == tiny_checkpoint


def test_revision_with_a_local_folder_is_refused(tiny_checkpoint: Path) -> None:
    """A folder holds one version: a revision given with it would be silently ignored."""
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(tiny_checkpoint, revision=REVISION)
    message = str(err.value)
    assert f"revision={REVISION!r}" in message and "local folder" in message
    assert "leave revision out" in message and "Hub repo id" in message


def test_offline_pinned_revision_from_cache(offline_cache: Path) -> None:
    assert hub_offline()
    root = resolve_checkpoint(REPO, revision=REVISION)
    assert root == offline_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / REVISION
    assert (root / "editmgt" / "config.json").is_file()
    # ... and it loads through the ordinary code paths.
    from editmgt.models.text_encoders import TextConditioner
    from editmgt.models.transformer import EditMGTTransformer
    from editmgt.models.vq import VQTokenizer

    EditMGTTransformer.from_pretrained(root / "editmgt")
    VQTokenizer.from_pretrained(root / "vqvae")
    assert TextConditioner.from_pretrained(root).llm is not None


def test_offline_branch_name_and_explicit_cache_dir(offline_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_checkpoint(REPO).name == REVISION  # refs/main
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", "/nonexistent-cache")
    assert resolve_checkpoint(REPO, revision=REVISION, cache_dir=offline_cache).name == REVISION


def test_offline_unknown_revision(offline_cache: Path) -> None:
    other = "f" * 40
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(REPO, revision=other)
    message = str(info.value)
    assert other in message and "offline" in message and REVISION in message
    with pytest.raises(CheckpointError, match="none"):
        resolve_checkpoint("someone/not-cached", revision=REVISION)


def test_local_files_only_overrides_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        resolve_checkpoint(REPO, revision=REVISION, local_files_only=True, cache_dir=tmp_path)


def test_not_a_folder_nor_repo_id(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="neither"):
        resolve_checkpoint(str(tmp_path / "missing" / "deeper" / "folder"))
    with pytest.raises(CheckpointError, match="neither"):
        resolve_checkpoint("just-a-name")


def test_allow_patterns_exclude_pickles() -> None:
    patterns = allow_patterns(DEFAULT_SUBFOLDERS)
    assert "editmgt/*.safetensors" in patterns and "llm_encoder/*.model" in patterns
    assert not any(p.endswith((".bin", ".pt", ".ckpt", ".pth")) for p in patterns)
    from huggingface_hub.utils import filter_repo_objects

    files = [
        "editmgt/config.json",
        "editmgt/diffusion_pytorch_model.safetensors",
        "editmgt/diffusion_pytorch_model.bin",
        "text_encoder/pytorch_model.bin",
        "llm_encoder/tokenizer.model",
        "vqvae/model.ckpt",
        "README.md",
        "other/config.json",
    ]
    kept = set(filter_repo_objects(files, allow_patterns=patterns))
    assert kept == {"editmgt/config.json", "editmgt/diffusion_pytorch_model.safetensors", "llm_encoder/tokenizer.model"}


def test_folder_checks(tiny_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, root)
    (root / "vqvae" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"vqvae has no config.json"):
        resolve_checkpoint(root)
    shutil.copy(tiny_checkpoint / "vqvae" / "config.json", root / "vqvae" / "config.json")
    (root / "text_encoder" / "model.safetensors").rename(root / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match="pytorch_model.bin"):
        resolve_checkpoint(root)
    (root / "text_encoder" / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        check_model_folder(root / "text_encoder")
