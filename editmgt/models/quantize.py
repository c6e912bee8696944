"""8-bit weights: swap `nn.Linear` layers for bitsandbytes `Linear8bitLt` in place.

LLM.int8(): weights stored as int8 with one scale per output row, activations with
outliers above `threshold` kept in 16 bit. Runs on CUDA and (bitsandbytes >= 0.45) on CPU.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeReport:
    bytes_before: int  # parameters + buffers of the module before the swap
    bytes_after: int  # the same after it (int8 weights + per-row scales)
    n_layers: int  # number of nn.Linear layers swapped

    def __str__(self) -> str:
        return (
            f"{self.n_layers} linear layers to int8: {self.bytes_before / 2**20:.1f} MiB -> "
            f"{self.bytes_after / 2**20:.1f} MiB"
        )


def module_bytes(module: nn.Module) -> int:
    """Bytes held by the parameters and buffers of `module` (int8 scales included)."""
    total = sum(t.numel() * t.element_size() for t in module.parameters())
    total += sum(t.numel() * t.element_size() for t in module.buffers())
    for p in module.parameters():
        scb = getattr(p, "SCB", None)
        if isinstance(scb, torch.Tensor):
            total += scb.numel() * scb.element_size()
    return total


def _skipped(name: str, skip: Sequence[str]) -> bool:
    return any(name == s or name.endswith("." + s) or fnmatch.fnmatchcase(name, s) for s in skip)


def _to_int8(linear: nn.Linear, threshold: float) -> nn.Module:
    import bitsandbytes as bnb

    device = linear.weight.device
    layer = bnb.nn.Linear8bitLt(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        has_fp16_weights=False,
        threshold=threshold,
    )
    # Int8Params quantises when moved from the CPU to a device (the CPU included).
    layer.weight = bnb.nn.Int8Params(
        linear.weight.data.detach().cpu(), requires_grad=False, has_fp16_weights=False
    )
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data.detach().cpu(), requires_grad=False)
    return layer.to(device)


@torch.no_grad()
def quantize_8bit(module: nn.Module, skip: Sequence[str] = (), threshold: float = 6.0) -> QuantizeReport:
    """Replace every `nn.Linear` of `module` (except names matching `skip`: exact, suffix or
    glob) by `Linear8bitLt(has_fp16_weights=False, threshold=threshold)`, in place."""
    before = module_bytes(module)
    targets = [
        (name, child)
        for name, child in module.named_modules()
        if name and type(child) is nn.Linear and not _skipped(name, skip)
    ]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, _to_int8(linear, threshold))
    report = QuantizeReport(bytes_before=before, bytes_after=module_bytes(module), n_layers=len(targets))
    logger.info("quantize_8bit(%s): %s", type(module).__name__, report)
    return report
