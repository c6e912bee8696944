"""Shared pytest fixtures (offline, CPU)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# No test may touch the network: every Hub look-up resolves from local caches only.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import huggingface_hub  # noqa: E402  (reads HF_HUB_OFFLINE at import)
import pytest  # noqa: E402

REPO = "tiny-owner/tiny-editmgt"  # a made-up repo id for the offline HF-cache tests
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny seeded checkpoint (`editmgt.tiny`), built once per test session."""
    from editmgt.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint", seed=0)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Outputs of the released code on a tiny random transformer (`tests/fixtures/parity`,
    its README says how they were made)."""
    return Path(__file__).resolve().parent / "fixtures" / "parity"


def cache_layout(checkpoint: Path, cache: Path, repo: str = REPO, revision: str = REVISION) -> Path:
    """Put `checkpoint` into `cache` exactly as huggingface_hub stores a download:
    models--owner--name/{blobs/<sha256>, snapshots/<revision>/<path> -> ../../blobs/..., refs/main}."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / revision
    for src in sorted(checkpoint.rglob("*")):
        if not src.is_file() or src.name.startswith("."):
            continue
        data = src.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / src.relative_to(checkpoint)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture()
def offline_cache(tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HF cache holding the tiny checkpoint; HF_HUB_OFFLINE=1 and HF_HUB_CACHE set
    (huggingface_hub reads its constants at import, so those are patched too)."""
    cache = tmp_path / "hf-cache"
    cache_layout(tiny_checkpoint, cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache
