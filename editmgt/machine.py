"""What machine a run is on, for training logs and benchmark reports.

Training on CPU is seeded and gives identical weights run after run on one machine, but a
CPU with other vector units (or another torch build) sums floats in another order, so the
weights differ from the first steps on; logs record the CPU so such runs can be told apart.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_cpu() -> dict:
    """CPU model, the vector ISA torch dispatches to, visible cores, torch threads and version."""
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def device_name(device: torch.device) -> str:
    """A GPU's name, or the CPU's model with its cores and torch threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = describe_cpu()
    return (f"CPU {info['cpu']} ({info['cpu_capability']}; {info['cores']} cores visible, "
            f"torch threads {info['threads']})")
