"""Embeddings and small building blocks of the EditMGT transformer.

Everything here is a plain `nn.Module` (or a pure function) whose parameter names
follow the released checkpoint's state dict:

- `RMSNorm`                         RMS normalisation, statistics in float32
- `sinusoidal_embedding`            cos-first sinusoidal features (timesteps, micro-conds)
- `MLPEmbedding`                    linear_1 -> SiLU -> linear_2 (timestep / cond / pooled text)
- `TimestepTextEmbedding`           temb = MLP(sin(t)) + MLP(conditioning vector)
- `rotary_positions`, `rope_tables`, `apply_rope`   axial RoPE on (text, image) positions
- `TokenEmbedding`                  VQ ids -> (B, C, H, W) feature map (UVit conv embed)
- `MaskedTokenHead`                 (B, C, H, W) -> (B, codebook, H, W) logits (ConvMlm)
- `DownBlock`, `UpBlock`            2x down-sample / up-sample around the blocks
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "RMSNorm",
    "sinusoidal_embedding",
    "MLPEmbedding",
    "TimestepTextEmbedding",
    "Rope",
    "rotary_positions",
    "rope_tables",
    "apply_rope",
    "TokenEmbedding",
    "MaskedTokenHead",
    "DownBlock",
    "UpBlock",
]

Rope = tuple[Tensor, Tensor]  # (cos, sin), each (L, head_dim) float32


class RMSNorm(nn.Module):
    """RMS norm over the last axis; the mean square is taken in float32.

    The normalised value is cast to the weight's dtype before scaling, so a bf16 model
    gets bf16 out while the statistics never leave float32.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., dim) -> (..., dim) in the weight's dtype."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(self.weight.dtype) * self.weight


def sinusoidal_embedding(values: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Cos-first sinusoidal features without frequency shift (diffusers layout).

    values: (M,) any numeric dtype -> (M, dim) float32, [cos(v f_k); sin(v f_k)] with
    f_k = max_period^(-k / (dim/2)). The frequencies are computed in float64 and rounded
    once to float32 (correctly rounded, so they do not depend on the platform's float32
    `exp`); angles and cos/sin are float32 as in the released model. Large arguments
    (timestep x 1000, image sizes) make these features sensitive to the last bit of f_k.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half
    freqs = torch.exp(exponent.double()).float()  # (half,)
    angles = values.float()[:, None] * freqs[None, :]  # (M, half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class MLPEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers TimestepEmbedding / PixArt text projection)."""

    def __init__(self, in_dim: int, dim: int, bias: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim, bias=bias)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_dim) -> (B, dim)."""
        return self.linear_2(self.act(self.linear_1(x)))


class TimestepTextEmbedding(nn.Module):
    """temb = timestep_embedder(sin(t)) + text_embedder(conditioning vector).

    `t` is already scaled (the transformer passes step x 1000).
    """

    def __init__(self, dim: int, cond_dim: int, num_freq_channels: int = 256) -> None:
        super().__init__()
        self.num_freq_channels = num_freq_channels
        self.timestep_embedder = MLPEmbedding(num_freq_channels, dim)
        self.text_embedder = MLPEmbedding(cond_dim, dim)

    def forward(self, timestep: Tensor, cond: Tensor) -> Tensor:
        """timestep: (B,), cond: (B, cond_dim) -> (B, dim) in cond's dtype."""
        freqs = sinusoidal_embedding(timestep, self.num_freq_channels).to(cond.dtype)
        return self.timestep_embedder(freqs) + self.text_embedder(cond)


# ----------------------------------------------------------------------------- RoPE


def rotary_positions(text_len: int, grid: tuple[int, int], device=None) -> Tensor:
    """Positions of [text; image] tokens: text (0, 0, 0), image (0, row, col) row-major.

    Returns (text_len + h * w, 3) float64.
    """
    h, w = grid
    rows = torch.arange(h, device=device, dtype=torch.float64)
    cols = torch.arange(w, device=device, dtype=torch.float64)
    image = torch.zeros(h, w, 3, device=device, dtype=torch.float64)
    image[..., 1] = rows[:, None]
    image[..., 2] = cols[None, :]
    text = torch.zeros(text_len, 3, device=device, dtype=torch.float64)
    return torch.cat([text, image.reshape(h * w, 3)], dim=0)


def rope_tables(positions: Tensor, axes_dims: Sequence[int], theta: float = 10000.0) -> Rope:
    """Axial RoPE tables; frequencies in float64, adjacent rotation pairs.

    positions: (L, len(axes_dims)) -> (cos, sin), each (L, sum(axes_dims)) float32.
    """
    positions = positions.to(torch.float64)
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(axes_dims):
        exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim
        angles = torch.outer(positions[:, axis], 1.0 / (theta**exponent))  # (L, dim/2)
        cos_parts.append(angles.cos().repeat_interleave(2, dim=1))
        sin_parts.append(angles.sin().repeat_interleave(2, dim=1))
    return torch.cat(cos_parts, dim=-1).float(), torch.cat(sin_parts, dim=-1).float()


def apply_rope(x: Tensor, rope: Rope) -> Tensor:
    """Rotate adjacent pairs of the last axis. x: (B, heads, L, D) -> same shape and dtype."""
    cos, sin = rope
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs.unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(-2)
    return (x.float() * cos + rotated * sin).to(x.dtype)


# ------------------------------------------------------------ token embed / head


class TokenEmbedding(nn.Module):
    """VQ ids -> embedding -> RMSNorm -> 1x1 conv (UVit conv embed, no bias)."""

    def __init__(self, vocab_size: int, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, dim)
        self.layer_norm = RMSNorm(dim, eps)
        self.conv = nn.Conv2d(dim, dim, kernel_size=1, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: (B, H, W) int -> (B, dim, H, W)."""
        x = self.layer_norm(self.embeddings(tokens))
        return self.conv(x.permute(0, 3, 1, 2))


class MaskedTokenHead(nn.Module):
    """1x1 conv -> RMSNorm over channels -> 1x1 conv to codebook logits (ConvMlm, no bias)."""

    def __init__(self, dim: int, codebook_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=1, bias=False)
        self.layer_norm = RMSNorm(dim, eps)
        self.conv2 = nn.Conv2d(dim, codebook_size, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, dim, H, W) -> (B, codebook_size, H, W)."""
        x = self.conv1(x)
        x = self.layer_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv2(x)


def _channel_rms_norm(norm: RMSNorm, x: Tensor) -> Tensor:
    """RMSNorm over the channel axis of (B, C, H, W)."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Downsample2x(nn.Module):
    """RMSNorm over channels, then a 2x2 stride-2 conv (no bias)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.conv = nn.Conv2d(dim, dim, kernel_size=2, stride=2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H/2, W/2); H and W must be even."""
        return self.conv(_channel_rms_norm(self.norm, x))


class _Upsample2x(nn.Module):
    """RMSNorm over channels, then a 2x2 stride-2 transposed conv (no bias)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.conv = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, C, 2h, 2w)."""
        return self.conv(_channel_rms_norm(self.norm, x))


class DownBlock(nn.Module):
    """Optional 2x down-sample before the transformer blocks (identity when disabled)."""

    def __init__(self, dim: int, enabled: bool, eps: float = 1e-6) -> None:
        super().__init__()
        self.downsample: Optional[_Downsample2x] = _Downsample2x(dim, eps) if enabled else None

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H/f, W/f)."""
        return x if self.downsample is None else self.downsample(x)


class UpBlock(nn.Module):
    """Optional 2x up-sample after the transformer blocks (identity when disabled)."""

    def __init__(self, dim: int, enabled: bool, eps: float = 1e-6) -> None:
        super().__init__()
        self.upsample: Optional[_Upsample2x] = _Upsample2x(dim, eps) if enabled else None

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, C, h*f, w*f)."""
        return x if self.upsample is None else self.upsample(x)
