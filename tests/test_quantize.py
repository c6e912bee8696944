"""8-bit swap (bitsandbytes Linear8bitLt) on the CPU: outputs stay close, memory drops."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from editmgt.models.quantize import (LIBRARY_NOTICES, QuantizeReport, module_bytes, quantize_8bit,
                                     quiet_bitsandbytes_logs)

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


EIGHT_BIT_RUN = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
import torch
from torch import nn
from editmgt.models.quantize import quantize_8bit
mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
quantize_8bit(mlp)
mlp.eval()  # inference: bitsandbytes' MatMul8bitLt, which announces its cast on every call
with torch.no_grad():
    for _ in range(20):
        mlp(torch.randn(4, 16))
"""


def test_bitsandbytes_notices_are_logged_once_not_on_every_matmul() -> None:
    """A fresh process (bitsandbytes' import-time notice fires once per process): 20 passes
    through two int8 layers used to print 40 cast warnings, and the import a remote-kernel
    warning; now the cast is one INFO line and nothing from bitsandbytes is a warning."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", EIGHT_BIT_RUN], capture_output=True, text=True, env=env,
                         cwd=root, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    cast = [line for line in lines if "MatMul8bitLt: inputs will be cast" in line]
    assert len(cast) == 1 and cast[0].startswith("INFO editmgt.models.quantize:"), cast
    library = [line for line in lines if line.split(" ")[0] in ("WARNING", "ERROR")
               and line.split(" ")[1].startswith(("bitsandbytes", "kernels"))]
    assert library == []
    kernel = [line for line in lines if "kernels-community" in line]
    assert all(line.startswith("DEBUG editmgt.models.quantize:") for line in kernel), kernel


def test_quiet_bitsandbytes_logs_installs_each_filter_once() -> None:
    quiet_bitsandbytes_logs()
    quiet_bitsandbytes_logs()
    for name, text, _level in LIBRARY_NOTICES:
        assert sum(getattr(f, "text", None) == text for f in logging.getLogger(name).filters) == 1
