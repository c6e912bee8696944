"""Attention consolidation against the released tokens_to_attn / rescale / up-sample."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editmgt.errors import InputError
from editmgt.sampling.localization import (LocalizationMap, consolidate, mean_attention,
                                           rescale, upsample)

PARITY = Path(__file__).resolve().parent / "fixtures" / "parity"
SINGLE_BLOCKS = (2, 3, 4)


@pytest.fixture(scope="module")
def outputs():
    return load_file(str(PARITY / "outputs.safetensors"))


@pytest.mark.parametrize("case", ["", "edit_gamma1.", "t2i."])
def test_scores_match_released(outputs, case):
    # the conditional half of the CFG batch is element 1
    attn = {k: outputs[f"{case}attn_text_to_image.{k}"][1:] for k in SINGLE_BLOCKS}
    result = consolidate(attn, grid=(4, 4), out_grid=(8, 8))
    assert isinstance(result, LocalizationMap)
    assert (result.raw - outputs[f"{case}local_scores_raw"]).abs().max() <= 1e-5
    assert (rescale(result.raw) - outputs[f"{case}local_scores_rescaled"]).abs().max() <= 1e-5
    assert result.grid.shape == (1, 4, 4) and result.scores.shape == (1, 64)


def test_upsample_matches_released():
    fx = load_file(str(PARITY / "smoothing.safetensors"))
    out = upsample(fx["upsample_in"].reshape(1, 32, 32), (64, 64))
    assert (out - fx["upsample_out"]).abs().max() <= 1e-5


def test_rows_and_grid_shapes():
    g = torch.Generator().manual_seed(0)
    rows = torch.softmax(torch.randn(3, 2, 5, 24, generator=g), -1)      # (B, heads, R, N)
    attn = {7: rows, 9: rows.flip(1)}
    result = consolidate(attn, grid=(4, 6), out_grid=(8, 12), smoothing="gaussian")
    assert torch.allclose(result.raw, rows.mean(dim=(1, 2)), atol=1e-6)
    assert result.grid.shape == (3, 4, 6) and result.scores.shape == (3, 96)
    assert torch.allclose(result.grid.amin((1, 2)), torch.zeros(3), atol=1e-6)
    # rows already averaged (B, heads, N) gives the same raw scores
    flat = {7: rows.mean(2), 9: rows.flip(1).mean(2)}
    assert torch.allclose(mean_attention(flat), result.raw, atol=1e-6)


def test_per_sample_rescale_is_independent():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 2, 16, generator=g)
    both = consolidate({0: a}, (4, 4), (8, 8)).scores
    first = consolidate({0: a[:1]}, (4, 4), (8, 8)).scores
    assert torch.allclose(both[:1], first, atol=1e-6)


def test_bad_inputs():
    with pytest.raises(InputError):
        consolidate({}, (4, 4), (8, 8))
    with pytest.raises(InputError):
        consolidate({0: torch.rand(1, 2, 15)}, (4, 4), (8, 8))
