"""Shared pytest fixtures (offline, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny seeded checkpoint (`editmgt.tiny`), built once per test session."""
    from editmgt.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint", seed=0)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Parity fixtures of the released code (`../shared/fixtures/parity` beside the repo)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity"
    if not path.is_dir():
        pytest.skip(f"parity fixtures not found at {path}")
    return path
