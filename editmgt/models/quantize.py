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

# bitsandbytes notices that repeat on every forward pass or concern a feature editmgt never uses:
# (library logger, text the message contains, level at which editmgt logs the first one).
LIBRARY_NOTICES: tuple[tuple[str, str, int], ...] = (
    # int8 layers cast float32 inputs to float16: expected on the CPU, said on every matmul
    ("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast", logging.INFO),
    # at import, on CPUs with AVX512-BF16, bitsandbytes asks the Hub for a remote 4-bit kernel;
    # editmgt uses int8 only and never trusts remote code, so the refusal is no news
    ("bitsandbytes.backends.cpu.ops", "gemm_4bit_forward from kernels-community", logging.DEBUG),
    ("kernels._internals.hf_hub", "kernels-community/quantization-bitsandbytes", logging.DEBUG),
)


class _FirstNoticeOnly(logging.Filter):
    """Drops a library logger's records that contain `text`; the first one is logged again,
    once, by editmgt at `level`."""

    def __init__(self, text: str, level: int) -> None:
        super().__init__()
        self.text, self.level, self.seen = text, level, False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.text not in message:
            return True
        if not self.seen:
            self.seen = True
            logger.log(self.level, "%s: %s (said once; repeats are dropped)", record.name, message)
        return False


def quiet_bitsandbytes_logs() -> None:
    """Log each of LIBRARY_NOTICES once, at its level, instead of as a warning every time. Call
    before bitsandbytes is imported (diffusers imports it when loading any model) to catch its
    import-time notice too; calling again does nothing."""
    for name, text, level in LIBRARY_NOTICES:
        library_logger = logging.getLogger(name)
        if not any(isinstance(f, _FirstNoticeOnly) and f.text == text for f in library_logger.filters):
            library_logger.addFilter(_FirstNoticeOnly(text, level))


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
    quiet_bitsandbytes_logs()
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
