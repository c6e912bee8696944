"""The tiny checkpoint: real layout, loadable by the same code, deterministic, small."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch

from editmgt.hub import check_checkpoint
from editmgt.tiny import TINY_IMAGE_SIZE, main, make_tiny_checkpoint, write_tiny_checkpoint

EXPECTED = {
    "editmgt": {"config.json", "diffusion_pytorch_model.safetensors"},
    "text_encoder": {"config.json", "model.safetensors"},
    "tokenizer": {"vocab.json", "merges.txt", "tokenizer_config.json"},
    "llm_encoder": {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"},
    "vqvae": {"config.json", "diffusion_pytorch_model.safetensors"},
    "scheduler": {"scheduler_config.json"},
}


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_layout_and_size(tiny_checkpoint: Path) -> None:
    for folder, files in EXPECTED.items():
        present = {p.name for p in (tiny_checkpoint / folder).iterdir()}
        assert files <= present, (folder, present)
    assert not list(tiny_checkpoint.rglob("*.bin"))
    total = sum(p.stat().st_size for p in tiny_checkpoint.rglob("*") if p.is_file())
    assert total < 5e6
    check_checkpoint(tiny_checkpoint)
    scheduler = json.loads((tiny_checkpoint / "scheduler" / "scheduler_config.json").read_text())
    config = json.loads((tiny_checkpoint / "editmgt" / "config.json").read_text())
    assert scheduler["mask_token_id"] == config["vocab_size"] - 1
    assert sum(config["axes_dims_rope"]) == config["attention_head_dim"]


def test_models_fit_together(tiny_checkpoint: Path) -> None:
    from editmgt.models.text_encoders import TextConditioner
    from editmgt.models.transformer import EditMGTTransformer
    from editmgt.models.vq import VQTokenizer

    transformer = EditMGTTransformer.from_pretrained(tiny_checkpoint / "editmgt")
    vq = VQTokenizer.from_pretrained(tiny_checkpoint / "vqvae")
    text = TextConditioner.from_pretrained(tiny_checkpoint)
    assert text.llm is not None
    assert vq.codebook_size == transformer.config.codebook_size
    assert text.text_dim == transformer.config.joint_attention_dim
    assert text.pooled_dim == transformer.config.pooled_projection_dim

    images = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    tokens = vq.encode(images)
    assert tokens.shape == (2, 8, 8)
    emb = text.encode(["make the cat black", "add a hat"])
    micro = torch.tensor([[64.0, 64.0, 0.0, 0.0, 6.0]]).expand(2, -1)
    out = transformer(tokens, emb.states, emb.pooled, micro, torch.tensor([3, 3]), reference_tokens=tokens)
    assert out.logits.shape == (2, vq.codebook_size, 8, 8)
    assert torch.isfinite(out.logits).all()


def test_deterministic_and_cached(tmp_path: Path, tiny_checkpoint: Path) -> None:
    again = write_tiny_checkpoint(tmp_path / "again", seed=0)
    assert _digests(again) == _digests(tiny_checkpoint)
    marker_mtime = (again / ".tiny-checkpoint.json").stat().st_mtime_ns
    assert make_tiny_checkpoint(again, seed=0) == again  # reused, not rebuilt
    assert (again / ".tiny-checkpoint.json").stat().st_mtime_ns == marker_mtime


def test_cli_other_seed(tmp_path: Path, tiny_checkpoint: Path) -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "editmgt.tiny", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "OUT_DIR" in help_text.upper() and "--seed" in help_text
    out = tmp_path / "seed1"
    assert main([str(out), "--seed", "1"]) == 0
    a, b = _digests(out), _digests(tiny_checkpoint)
    assert a.keys() == b.keys()
    assert a["editmgt/diffusion_pytorch_model.safetensors"] != b["editmgt/diffusion_pytorch_model.safetensors"]
    assert a["tokenizer/vocab.json"] == b["tokenizer/vocab.json"]  # tokenizers do not depend on the seed
