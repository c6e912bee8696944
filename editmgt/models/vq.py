"""VQTokenizer: images <-> VQ token ids around a diffusers `VQModel` (the aMUSEd VQ-GAN).

Facts (spec section 5): pixels in [0, 1] go straight into the encoder (no normalisation);
tokens are the quantizer's nearest-codebook indices; decoding replaces ids outside the
codebook (the mask id) by 0, looks the codes up in the codebook and clips to [0, 1].
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from editmgt.errors import InputError
from editmgt.hub import check_model_folder

logger = logging.getLogger(__name__)


class VQTokenizer(nn.Module):
    """Wraps a `VQModel`; the encoder runs in the model dtype, the decoder in `decode_dtype`.

    `decode_dtype=None` keeps the model dtype, except float16 with `force_upcast` -> float32.
    The codebook lives with the decoder; encoder latents are cast to it for the look-up.
    """

    def __init__(self, model: nn.Module, decode_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.model = model.eval()
        encode_dtype = next(model.encoder.parameters()).dtype
        if decode_dtype is None:
            upcast = encode_dtype == torch.float16 and bool(getattr(model.config, "force_upcast", False))
            decode_dtype = torch.float32 if upcast else encode_dtype
        for part in (model.quantize, model.post_quant_conv, model.decoder):
            part.to(dtype=decode_dtype)
        # Contiguous (not channels-last) convolutions: channels-last runs other kernels on the
        # CPU, which move near-tied latents to other codes (0.5 % of the tokens), so the source
        # would no longer tokenise as the released pipeline tokenises it.

    @classmethod
    def from_pretrained(
        cls,
        folder: Union[str, Path],
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
        decode_dtype: Optional[torch.dtype] = None,
    ) -> "VQTokenizer":
        """Load `config.json` + safetensors from a `vqvae/` folder (diffusers layout)."""
        from diffusers import VQModel

        folder = check_model_folder(folder)
        # Load in float32, then cast each half, so an fp32 decoder keeps the full-precision weights.
        model = VQModel.from_pretrained(folder, use_safetensors=True, local_files_only=True, torch_dtype=torch.float32)
        model.to(device=device)
        for part in (model.encoder, model.quant_conv):
            part.to(dtype=dtype)
        return cls(model, decode_dtype=decode_dtype)

    # ------------------------------------------------------------------ facts from the config
    @property
    def scale_factor(self) -> int:
        """Pixels per token side: 2 ** (number of encoder blocks - 1)."""
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.num_vq_embeddings)

    @property
    def latent_channels(self) -> int:
        return int(self.model.config.vq_embed_dim or self.model.config.latent_channels)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Encoder dtype."""
        return next(self.model.encoder.parameters()).dtype

    @property
    def decode_dtype(self) -> torch.dtype:
        return next(self.model.decoder.parameters()).dtype

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) token grid of an image of `height` x `width` pixels (must be multiples)."""
        s = self.scale_factor
        if height % s or width % s or height <= 0 or width <= 0:
            raise InputError(f"image size {width}x{height} is not a positive multiple of the VQ scale {s}")
        return height // s, width // s

    # ------------------------------------------------------------------ encode / decode
    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: Optional[int] = None) -> torch.LongTensor:
        """(B, 3, H, W) in [0, 1] -> (B, H/s, W/s) token ids, `batch_size` images at a time."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = self.token_grid(images.shape[-2], images.shape[-1])
        codebook_dtype = self.model.quantize.embedding.weight.dtype
        out = []
        step = batch_size or images.shape[0]
        for chunk in images.split(step):
            chunk = chunk.to(device=self.device, dtype=self.dtype)
            latents = self.model.encode(chunk).latents
            _, _, (_, _, indices) = self.model.quantize(latents.to(codebook_dtype))
            out.append(indices.reshape(chunk.shape[0], h, w))
        return torch.cat(out).long()

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
        """(B, h, w) ids -> (B, 3, h*s, w*s) in [0, 1], dtype `decode_dtype`.

        Ids outside [0, codebook_size) (the mask id and other extra ids) are decoded as id 0.
        """
        if tokens.ndim != 3:
            raise InputError(f"expected tokens of shape (B, h, w), got {tuple(tokens.shape)}")
        tokens = tokens.to(self.device).long()
        tokens = torch.where((tokens >= 0) & (tokens < self.codebook_size), tokens, torch.zeros_like(tokens))
        out = []
        step = batch_size or tokens.shape[0]
        for chunk in tokens.split(step):
            b, h, w = chunk.shape
            shape = (b, h, w, self.latent_channels)
            if self.model.config.lookup_from_codebook:
                sample = self.model.decode(chunk.reshape(-1), force_not_quantize=True, shape=shape).sample
            else:
                codes = self.model.quantize.get_codebook_entry(chunk.reshape(-1), shape)
                sample = self.model.decode(codes, force_not_quantize=True).sample
            out.append(sample.clamp(0, 1).contiguous())
        return torch.cat(out)
