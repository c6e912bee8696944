"""`python -m editmgt.bench`: the CPU preset runs every mode and reports numbers (no timing
assertions), and the sampling loop issues no host-sync operator."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from editmgt import bench

SPEC = Path(__file__).resolve().parent / "fixtures" / "spec"  # the released state-dict manifests
TINY = ["--preset", "cpu", "--device", "cpu", "--size", "128", "--steps", "3", "--runs", "1", "--warmup", "0"]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x >= 0


def test_cli_prints_every_mode_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "editmgt.bench", *TINY, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("device: CPU") and "torch" in line and "commit" in line for line in lines)
    report = json.loads(out.read_text())
    reported = [name for mode in bench.MODES for name in (bench.DRAW_MODES if mode == "draw" else [mode])]
    assert [m["mode"] for m in report["modes"]] == reported
    for mode in report["modes"]:
        assert "skipped" not in mode, mode
        row = next(line for line in lines if line.split() and line.split()[0] == mode["mode"])
        numbers = [float(v) for v in row.split()[1:4]]
        assert numbers == pytest.approx([mode["min_s"], mode["median_s"], mode["max_s"]], abs=1e-4)
        assert all(_finite(v) for v in (mode["min_s"], mode["median_s"], mode["max_s"]))
        assert mode["runs"] == 1 and _finite(mode["peak_bytes"])
    assert _finite(report["derived"]["sweep8_over_one_edit"])
    assert _finite(report["derived"]["draw_released_over_inverse_cdf"])
    assert "region_hold_overhead_pct" in report["derived"]
    assert report["torch"] == torch.__version__ and report["size"] == 128


def test_sampling_loop_has_no_host_syncs():
    """torch.profiler over one region-hold loop of the reduced stack: no .item(), no
    data-dependent shapes (nonzero, masked_select), no is_nonzero (Python `if tensor`)."""
    torch.manual_seed(0)
    preset = dict(bench.PRESETS["cpu"], size=128)
    pipe = bench.build_stack(preset, "cpu", torch.float32)
    inputs = bench.loop_inputs(pipe, bench.test_image(128), 128)
    profile = bench.profile_loop(pipe, inputs, steps=3)
    assert profile["sync_ops_total"] == 0, profile["sync_op_counts"]
    assert profile["top"], "the profiler saw no operators"


def test_built_in_configs_match_the_spec_headers():
    """The bench embeds the released configs (the device machine has no shared/ folder)."""
    sd, vq = SPEC / "state_dict_editmgt.tsv", SPEC / "vqvae_amused.tsv"
    header = sd.read_text().splitlines()[1]
    assert json.loads(header.split("config=", 1)[1]) == bench.FULL_TRANSFORMER
    resolved = next(line for line in vq.read_text().splitlines() if line.startswith("# resolved VQModel.config="))
    assert json.loads(resolved.split("=", 1)[1]) == bench.FULL_VQ
    with torch.device("meta"):
        model = bench.EditMGTTransformer(bench.TransformerConfig.from_dict(bench.FULL_TRANSFORMER))
    total = int(sd.read_text().splitlines()[0].split("total_parameters=")[1].split()[0])
    assert sum(p.numel() for p in model.parameters()) == total


def test_stand_in_text_has_the_real_shapes():
    text = bench.RandomTextConditioner("cpu").encode(["a", "b", "a"])
    assert text.states.shape == (3, 256, 2304) and text.pooled.shape == (3, 1024) and text.token_ids.shape == (3, 256)
    assert torch.equal(text.states[0], text.states[2]) and not torch.equal(text.states[0], text.states[1])


def test_device_name_says_which_cpu(monkeypatch):
    """Reports name the CPU model and the vector ISA torch uses (seeded CPU runs give other
    numbers on other vector units); without /proc/cpuinfo the platform's machine name."""
    from editmgt import machine

    name = bench.device_name(torch.device("cpu"))
    assert machine.cpu_model() in name and torch.backends.cpu.get_cpu_capability() in name
    assert f"torch threads {torch.get_num_threads()}" in name

    def unreadable(self, *args, **kwargs):
        raise OSError("no such file")

    monkeypatch.setattr(machine.Path, "read_text", unreadable)
    assert machine.cpu_model() == (machine.platform.processor() or machine.platform.machine())
