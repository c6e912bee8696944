"""8-bit swap (bitsandbytes Linear8bitLt) on the CPU: outputs stay close, memory drops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from editmgt.models.quantize import QuantizeReport, module_bytes, quantize_8bit

bnb = pytest.importorskip("bitsandbytes")


def test_mlp_close_and_smaller() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64), nn.LayerNorm(64), nn.Linear(64, 16))
    x = torch.randn(8, 64)
    with torch.no_grad():
        before = mlp(x)
    report = quantize_8bit(mlp, skip=("4",))
    assert isinstance(report, QuantizeReport)
    assert report.n_layers == 2
    assert isinstance(mlp[0], bnb.nn.Linear8bitLt) and isinstance(mlp[2], bnb.nn.Linear8bitLt)
    assert type(mlp[4]) is nn.Linear  # skipped by name
    assert mlp[0].weight.dtype == torch.int8
    assert report.bytes_after < 0.5 * report.bytes_before
    assert report.bytes_after == module_bytes(mlp)
    with torch.no_grad():
        after = mlp(x)
    assert after.dtype == before.dtype
    assert (after - before).abs().max() < 0.05 * before.abs().max()


def test_glob_skip_and_nothing_to_do() -> None:
    model = nn.ModuleDict({"proj_in": nn.Linear(8, 8), "head": nn.Linear(8, 4)})
    assert quantize_8bit(model, skip=("head*",)).n_layers == 1
    assert type(model["head"]) is nn.Linear
    conv = nn.Conv2d(3, 3, 1)
    report = quantize_8bit(conv)
    assert report.n_layers == 0 and report.bytes_before == report.bytes_after


def test_text_encoders_close(tiny_checkpoint: Path) -> None:
    from editmgt.models.text_encoders import TextConditioner

    text = TextConditioner.from_pretrained(tiny_checkpoint)
    prompts = ["make the cat wear a red hat", "remove the car"]
    reference = text.encode(prompts)
    before = module_bytes(text)
    reports = text.quantize_8bit()
    assert len(reports) == 2 and all(r.n_layers > 0 for r in reports)
    assert module_bytes(text) < before
    quantized = text.encode(prompts)  # the cache was cleared: really re-encoded
    for a, b in ((reference.states, quantized.states), (reference.pooled, quantized.pooled)):
        cos = torch.nn.functional.cosine_similarity(a.flatten(1).float(), b.flatten(1).float())
        assert (cos > 0.99).all(), cos
