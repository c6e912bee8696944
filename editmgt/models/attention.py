"""Joint attention of EditMGT: a weights module plus a stateless function.

`Attention` only holds the projections (names as in the released checkpoint).
`joint_attention` runs one attention over the concatenated streams

    [text (T); image (N); reference (N_r)]

with RoPE on all of them, an optional additive bias (the gamma bias from
`reference_bias`) and, when asked through an `AttentionProbe`, returns the text->image
probabilities of that block as a value: softmax over the [text; image] keys of the
text-query rows only, without the gamma bias and without reference keys, image
columns kept. The full (L, L) attention matrix is never materialised for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from editmgt.models.embeddings import RMSNorm, Rope, apply_rope

__all__ = [
    "AttentionProbe",
    "Attention",
    "JointAttentionOutput",
    "joint_attention",
    "reference_bias",
]


@dataclass
class AttentionProbe:
    """Request for text->image attention probabilities.

    blocks:    global block indices to capture (double blocks first, then single).
    rows:      (R,) text-query rows to keep; None keeps all T rows.
    keep_rows: False -> mean over the kept rows, (B, heads, N);
               True  -> (B, heads, R, N).
    detach_text: compute them from detached text queries and keys, so that a loss on
               them (training's grounding term) moves the image keys, not the text stream.
    """

    blocks: tuple[int, ...]
    rows: Optional[Tensor] = None
    keep_rows: bool = False
    detach_text: bool = False


class JointAttentionOutput(NamedTuple):
    text: Tensor                    # (B, T, C)
    image: Tensor                   # (B, N, C)
    reference: Optional[Tensor]     # (B, N_r, C) or None
    text_to_image: Optional[Tensor]  # (B, heads, N) / (B, heads, R, N) float32, or None


class Attention(nn.Module):
    """Projection weights of one attention layer.

    dim:        model width (heads x head_dim).
    context:    True for double blocks: the text stream has its own projections
                (add_q/k/v_proj, norm_added_q/k, to_add_out).
    pre_only:   True for single blocks: no output projection (the block's proj_out
                mixes attention and MLP outputs).
    """

    def __init__(
        self, dim: int, heads: int, head_dim: int, context: bool, pre_only: bool, eps: float = 1e-6
    ) -> None:
        super().__init__()
        if heads * head_dim != dim:
            raise ValueError(f"heads x head_dim = {heads} x {head_dim} != dim {dim}")
        self.heads = heads
        self.head_dim = head_dim
        self.norm_q = RMSNorm(head_dim, eps)
        self.norm_k = RMSNorm(head_dim, eps)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        if context:
            self.add_k_proj = nn.Linear(dim, dim)
            self.add_v_proj = nn.Linear(dim, dim)
            self.add_q_proj = nn.Linear(dim, dim)
        if not pre_only:
            self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        if context:
            self.to_add_out = nn.Linear(dim, dim)
            self.norm_added_q = RMSNorm(head_dim, eps)
            self.norm_added_k = RMSNorm(head_dim, eps)
        self.context = context
        self.pre_only = pre_only

    def _heads(self, x: Tensor) -> Tensor:
        """(B, L, C) -> (B, heads, L, head_dim)."""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def qkv(self, x: Tensor, text_stream: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised per-head q, k, v of one stream. x: (B, L, C) -> 3 x (B, heads, L, D)."""
        if text_stream and self.context:
            q, k, v = self.add_q_proj(x), self.add_k_proj(x), self.add_v_proj(x)
            norm_q, norm_k = self.norm_added_q, self.norm_added_k
        else:
            q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
            norm_q, norm_k = self.norm_q, self.norm_k
        return norm_q(self._heads(q)), norm_k(self._heads(k)), self._heads(v)

    def out_image(self, x: Tensor) -> Tensor:
        """Output projection of image / reference tokens (identity for single blocks)."""
        return x if self.pre_only else self.to_out[1](self.to_out[0](x))

    def out_text(self, x: Tensor) -> Tensor:
        """Output projection of text tokens (identity for single blocks)."""
        return self.to_add_out(x) if self.context else x


def reference_bias(
    context_len: int, reference_len: int, gamma: float, dtype: torch.dtype, device=None
) -> Optional[Tensor]:
    """Additive gamma bias over the joint sequence [context (text+image); reference].

    log(gamma) where exactly one of (query, key) is a reference token, 0 elsewhere;
    None when no bias is needed (gamma == 1 or no reference). gamma == 0 gives -inf,
    i.e. the reference is cut off. Returns (L, L), L = context_len + reference_len,
    broadcast over batch and heads by SDPA.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if reference_len == 0 or gamma == 1.0:
        return None
    is_ref = torch.zeros(context_len + reference_len, dtype=torch.bool, device=device)
    is_ref[context_len:] = True
    cross = is_ref[:, None] ^ is_ref[None, :]
    # log of the float32 gamma (as the released code computes it), then cast to q's dtype;
    # kept a tensor (no .item()), so building the bias never waits on the host
    log_gamma = torch.log(torch.tensor(gamma, dtype=torch.float32)).to(device=device, dtype=dtype)
    return torch.where(cross, log_gamma, torch.zeros((), dtype=dtype, device=device))


def _text_to_image(q: Tensor, k: Tensor, text_len: int, image_len: int, probe: AttentionProbe) -> Tensor:
    """Text->image probabilities from the text-query rows only (float32, no bias).

    q, k: (B, heads, L, D) after RoPE -> (B, heads, N) or (B, heads, R, N).
    """
    q_text = q[:, :, :text_len]
    if probe.rows is not None:
        q_text = q_text.index_select(2, probe.rows.to(q.device))
    k_ctx = k[:, :, : text_len + image_len]
    if probe.detach_text:
        q_text = q_text.detach()
        k_ctx = torch.cat([k_ctx[:, :, :text_len].detach(), k_ctx[:, :, text_len:]], dim=2)
    scores = torch.matmul(q_text.float(), k_ctx.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = scores.softmax(dim=-1)[..., text_len:]
    return probs if probe.keep_rows else probs.mean(dim=2)


def joint_attention(
    attn: Attention,
    text: Tensor,
    image: Tensor,
    reference: Optional[Tensor],
    rope: Rope,
    bias: Optional[Tensor] = None,
    probe: Optional[AttentionProbe] = None,
) -> JointAttentionOutput:
    """Attention over [text; image; reference] with shared RoPE tables.

    text: (B, T, C) (normalised), image: (B, N, C), reference: (B, N_r, C) or None.
    rope: (cos, sin), each (T + N + N_r, D), positions in the same order.
    bias: additive (L, L) in q's dtype, or None for the unmasked fast path.
    probe: when given, also return the text->image probabilities (rows / keep_rows
    from the probe; its `blocks` are the caller's business).
    """
    text_len, image_len = text.shape[1], image.shape[1]
    streams = [attn.qkv(text, text_stream=True), attn.qkv(image)]
    if reference is not None:
        streams.append(attn.qkv(reference))
    q, k, v = (torch.cat(parts, dim=2) for parts in zip(*streams))  # (B, heads, L, D)
    q, k = apply_rope(q, rope), apply_rope(k, rope)

    text_to_image = None
    if probe is not None:
        text_to_image = _text_to_image(q, k, text_len, image_len, probe)

    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    out = out.transpose(1, 2).flatten(2)  # (B, L, C)
    text_out = attn.out_text(out[:, :text_len])
    image_out = attn.out_image(out[:, text_len : text_len + image_len])
    ref_out = attn.out_image(out[:, text_len + image_len :]) if reference is not None else None
    return JointAttentionOutput(text_out, image_out, ref_out, text_to_image)
