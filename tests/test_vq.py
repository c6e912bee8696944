"""VQTokenizer on the tiny VQModel: shapes from the config, mask ids, batching, dtypes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editmgt.errors import CheckpointError, InputError, UnsafeWeightsError
from editmgt.models.vq import VQTokenizer


@pytest.fixture(scope="module")
def vq(tiny_checkpoint: Path) -> VQTokenizer:
    return VQTokenizer.from_pretrained(tiny_checkpoint / "vqvae")


def _images(n: int, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    blobs = torch.rand(n, 3, 4, 4, generator=gen)
    return torch.nn.functional.interpolate(blobs, size=(h, w), mode="bilinear")


def test_config_facts(vq: VQTokenizer) -> None:
    assert vq.scale_factor == 2 ** (len(vq.model.config.block_out_channels) - 1) == 8
    assert vq.codebook_size == 64
    assert vq.token_grid(64, 96) == (8, 12)
    with pytest.raises(InputError, match="multiple"):
        vq.token_grid(60, 64)


def test_encode_matches_quantizer_indices(vq: VQTokenizer) -> None:
    images = _images(2)
    tokens = vq.encode(images)
    assert tokens.shape == (2, 8, 8) and tokens.dtype == torch.long
    # Reference: the quantizer's argmin over the codebook, on the raw [0, 1] pixels.
    latents = vq.model.encode(images).latents.permute(0, 2, 3, 1).reshape(-1, vq.latent_channels)
    expected = torch.cdist(latents, vq.model.quantize.embedding.weight).argmin(-1).reshape(2, 8, 8)
    assert torch.equal(tokens, expected)
    assert tokens.unique().numel() > 4  # the tiny codebook is really used


def test_non_square_and_batching(vq: VQTokenizer) -> None:
    images = _images(3, 48, 80)
    tokens = vq.encode(images)
    assert tokens.shape == (3, 6, 10)
    assert torch.equal(vq.encode(images, batch_size=1), tokens)
    decoded = vq.decode(tokens)
    assert decoded.shape == (3, 3, 48, 80)
    assert torch.allclose(vq.decode(tokens, batch_size=2), decoded, atol=1e-5)


def test_decode_mask_ids_as_zero_and_clips(vq: VQTokenizer) -> None:
    tokens = vq.encode(_images(1))
    masked = tokens.clone()
    masked[0, :4] = 71  # the transformer's mask id (vocab - 1), outside the codebook
    zeroed = tokens.clone()
    zeroed[0, :4] = 0
    out = vq.decode(masked)
    assert torch.equal(out, vq.decode(zeroed))
    assert out.min() >= 0 and out.max() <= 1


def test_bad_shapes(vq: VQTokenizer) -> None:
    with pytest.raises(InputError):
        vq.encode(torch.rand(3, 64, 64))
    with pytest.raises(InputError):
        vq.decode(torch.zeros(8, 8, dtype=torch.long))


def test_bf16_encoder_fp32_decoder(tiny_checkpoint: Path, vq: VQTokenizer) -> None:
    mixed = VQTokenizer.from_pretrained(tiny_checkpoint / "vqvae", dtype=torch.bfloat16, decode_dtype=torch.float32)
    assert mixed.dtype == torch.bfloat16 and mixed.decode_dtype == torch.float32
    images = _images(2)
    tokens = mixed.encode(images)
    assert (tokens == vq.encode(images)).float().mean() > 0.8
    out = mixed.decode(tokens)
    assert out.dtype == torch.float32
    assert torch.allclose(out, vq.decode(tokens), atol=1e-5)
    half = VQTokenizer.from_pretrained(tiny_checkpoint / "vqvae", dtype=torch.float16)
    assert half.decode_dtype == torch.float32  # force_upcast


def test_folder_checks(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        VQTokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "vqvae").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        VQTokenizer.from_pretrained(tmp_path / "vqvae")
    (tmp_path / "vqvae" / "config.json").write_text("{}")
    (tmp_path / "vqvae" / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UnsafeWeightsError, match="safetensors"):
        VQTokenizer.from_pretrained(tmp_path / "vqvae")
