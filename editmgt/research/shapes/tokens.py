"""The shapes triples as the editor trains on them: pixels to token grids, the token masks of
shapes, changes and target regions, and the VQ's own ceiling on edit success."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from editmgt.research.shapes import data
from editmgt.research.shapes.checks import check_edit
from editmgt.train.vq_train import lookup_modal, modal_ids, patch_keys


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


@dataclass
class EncodedTriples:
    """The training set as tokens: ids (N, h, w) and the instruction of each triple."""

    source: torch.Tensor
    target: torch.Tensor
    instructions: list[str]
    kinds: list[str]
    objects: torch.Tensor                 # (N, h, w) bool: tokens showing a shape in source or target
    regions: torch.Tensor                 # (N, h, w) float: share of each token's pixels in the target region


def token_shares(mask: np.ndarray, factor: int) -> torch.Tensor:
    """(N, H, W) bool pixels -> (N, H/factor, W/factor) float, the share of each token's
    factor x factor patch that is True."""
    n, h, w = mask.shape
    return torch.from_numpy(mask.reshape(n, h // factor, factor, w // factor, factor)
                            .mean(axis=(2, 4), dtype=np.float32))


def tokens_touching(mask: np.ndarray, factor: int) -> torch.Tensor:
    """(N, H, W) bool pixels -> (N, H/factor, W/factor) bool, True where the token's
    factor x factor patch holds any True pixel."""
    return token_shares(mask, factor) > 0


def agreement_mask(sources: np.ndarray, targets: np.ndarray, factor: int) -> torch.Tensor:
    """Token positions whose pixels are identical in source and target.

    sources, targets: (N, H, W, 3) uint8 -> (N, H/factor, W/factor) bool, True where the
    factor x factor patch under the token is unchanged."""
    return ~tokens_touching((sources != targets).any(-1), factor)


def modal_codes(images: Sequence[np.ndarray], ids: Sequence[torch.Tensor], factor: int
                ) -> tuple[list[torch.Tensor], float]:
    """Replace every token by the id the VQ most often gives its exact pixels.

    images[k]: (N_k, H, W, 3) uint8 and ids[k]: (N_k, H/factor, W/factor) their VQ ids. The
    encoder's receptive field and group norms make ids depend on the whole image, so equal
    patches carry many ids; the modal id over all the images is a function of the patch
    alone. Returns the modal ids in the shapes of `ids`, and the purity: the share of tokens
    whose id already was their patch's modal id.
    """
    keys = [patch_keys(to_tensor(img), factor) for img in images]
    num_codes = int(max(int(t.max()) for t in ids)) + 1
    table_keys, table_ids, purity = modal_ids(torch.cat([k.flatten() for k in keys]),
                                              torch.cat([t.flatten() for t in ids]), num_codes)
    out = [lookup_modal(k, table_keys, table_ids).to(t.dtype) for k, t in zip(keys, ids)]
    return out, purity


def vq_check_rate(recon: torch.Tensor, triples: Sequence[data.EditTriple]) -> float:
    """Share of `triples` whose VQ-reconstructed target (`recon`, one per triple) passes the
    eval's pixel check: the ceiling the VQ puts on edit success."""
    images = (recon.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return float(np.mean([check_edit(image, t) for image, t in zip(images, triples, strict=True)]))

