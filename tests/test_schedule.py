"""Mask schedules against the released scheduler's table (parity fixtures)."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editmgt.errors import InputError
from editmgt.sampling.schedule import mask_ratio, remask_count, temperatures, timesteps

PARITY = Path(__file__).resolve().parent / "fixtures" / "parity"


def test_timesteps_and_temperatures_match_fixture():
    out = load_file(str(PARITY / "outputs.safetensors"))
    assert torch.equal(timesteps(16), out["scheduler.timesteps"])
    assert torch.equal(temperatures(16), out["scheduler.temperatures"])
    assert timesteps(16).dtype == torch.int64


def test_remask_counts_match_table():
    sched = json.loads((PARITY / "case.json").read_text())["scheduler"]
    n, seq = sched["num_inference_steps"], sched["seq_len"]
    for row in sched["table"]:
        i = row["step_index"]
        progress = (torch.tensor(i) + 1) / n
        assert mask_ratio(progress).item() == row["mask_ratio_float32"]
        count = remask_count(i, n, seq, torch.tensor([seq]))
        assert count.tolist() == [row["remasked_if_fully_masked"]], row


def test_remask_count_clamps_and_start_ratio():
    unknown = torch.tensor([64, 3, 1, 0])
    counts = remask_count(0, 16, 64, unknown)
    assert counts.tolist() == [63, 2, 1, 1]
    half = remask_count(0, 16, 64, torch.tensor([32, 32]), torch.tensor([0.5, 0.25]))
    assert half.tolist() == [31, 15]     # floor(64 * 0.5 * 0.9952), floor(64 * 0.25 * 0.9952)
    assert remask_count(15, 16, 64, unknown).tolist() == [0, 0, 0, 0]


def test_schedules_shape_and_ends():
    r = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(mask_ratio(r, "cosine"), torch.tensor([1.0, math.sqrt(0.5), 0.0]),
                          atol=1e-6)
    assert torch.allclose(mask_ratio(r, "linear"), torch.tensor([1.0, 0.5, 0.0]))
    assert torch.allclose(mask_ratio(r, "arccos"), torch.tensor([1.0, 2 / 3, 0.0]), atol=1e-6)
    with pytest.raises(InputError):
        mask_ratio(r, "square")
    with pytest.raises(InputError):
        remask_count(16, 16, 64, torch.tensor([64]))
