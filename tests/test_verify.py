"""`python -m editmgt.verify`: parity report on the fixtures and state-dict manifests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from editmgt import verify

SPEC = Path(__file__).resolve().parent / "fixtures" / "spec"  # the released state-dict manifests


@pytest.fixture(scope="module")
def report(parity_dir: Path) -> list[verify.Comparison]:
    torch.set_num_threads(1)
    with torch.no_grad():
        return verify.parity(parity_dir)


def test_parity_all_ok(report):
    bad = [r.line() for r in report if r.status != "ok"]
    assert not bad, "\n".join(bad)


def test_parity_covers_every_tensor(report, parity_dir):
    names = {r.name for r in report}
    outputs = load_file(str(parity_dir / "outputs.safetensors"))
    assert {k for k in outputs if not k.startswith("trace.")} <= names
    smoothing = load_file(str(parity_dir / "smoothing.safetensors"))
    assert {k for k in smoothing if k.startswith("smooth_out.") or k == "upsample_out"} <= names


def test_parity_cli_detects_a_change(parity_dir, tmp_path, capsys):
    folder = tmp_path / "parity"
    shutil.copytree(parity_dir, folder)
    outputs = load_file(str(folder / "outputs.safetensors"))
    outputs["logits_edit_gamma"] = outputs["logits_edit_gamma"] + 1e-3
    save_file(outputs, str(folder / "outputs.safetensors"))
    assert verify.main(["parity", str(folder)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("logits_edit_gamma ") and line.endswith("FAIL") for line in lines)
    assert any(line.startswith("logits_t2i ") and line.endswith("ok") for line in lines)


@pytest.mark.parametrize("name", ["state_dict_editmgt.tsv", "state_dict_meissonic.tsv"])
def test_manifest_exact_match(name, capsys):
    tsv = SPEC / name
    assert verify.manifest_differences(tsv) == []
    assert verify.main(["manifest", str(tsv)]) == 0
    assert "exact match" in capsys.readouterr().out


def test_manifest_altered_fails(tmp_path, capsys):
    tsv = SPEC / "state_dict_editmgt.tsv"
    lines = tsv.read_text().splitlines()
    altered = []
    for line in lines:
        if line.startswith("single_transformer_blocks.3.proj_mlp.weight\t"):
            line = line.replace("4096x1024", "4096x1000")
        if line.startswith("embed.layer_norm.weight\t"):
            line = line.replace("embed.layer_norm.weight", "embed.norm.weight")
        altered.append(line)
    bad = tmp_path / "altered.tsv"
    bad.write_text("\n".join(altered) + "\n")
    diffs = verify.manifest_differences(bad)
    text = "\n".join(diffs)
    assert "single_transformer_blocks.3.proj_mlp.weight" in text
    assert "embed.layer_norm.weight" in text and "embed.norm.weight" in text
    assert verify.main(["manifest", str(bad)]) == 1
    assert "MISMATCH" in capsys.readouterr().out
