"""Train a small diffusers `VQModel` (the aMUSEd/Meissonic VQ layout) on a domain.

Images go in as RGB in [0, 1] (no normalisation, as the released VQ). Phases: (1) a plain
auto-encoder warm-up; (2) a k-means codebook, clustered from encoder latents or from the
mean latent of each distinct pixel patch (`codebook_from`); (3) vector-quantised training
(pixel loss plus the quantiser's codebook/commitment term), restarting codes left unused
so the codebook does not collapse; (4) optionally an id-locality phase: the encoder is
pulled to give every patch the id it most often has (so equal pixels get equal ids
whatever the rest of the image holds) and the decoder is re-fitted to the result.

Or, for a domain with few distinct patches (`codebook_from="pixels"`), the ids are fixed
before any training: the distinct pixel patches are clustered into the codes
(`pixel_codes`), the encoder learns to give each patch its code and the decoder to draw the
patches of a code grid (`train_vq_on_codes`). The ids are then a function of the pixels
alone, the same on every machine, whatever the float noise of training.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers import VQModel
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclass
class VQConfig:
    """Size of the tiny VQ model (down-sampling factor = 2 ** (len(channels) - 1))."""

    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    latent_channels: int = 16
    num_vq_embeddings: int = 512
    norm_num_groups: int = 8

    @property
    def factor(self) -> int:
        """Pixels per token side."""
        return 2 ** (len(self.block_out_channels) - 1)

    def build(self) -> VQModel:
        """A fresh VQModel in the released layout (lookup_from_codebook, no mid attention)."""
        n = len(self.block_out_channels)
        return VQModel(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block, act_fn="silu",
            latent_channels=self.latent_channels, sample_size=32,
            num_vq_embeddings=self.num_vq_embeddings, norm_num_groups=self.norm_num_groups,
            mid_block_add_attention=False, lookup_from_codebook=True, force_upcast=True,
        )


@dataclass
class VQTrainConfig:
    """Optimisation of the VQ model: a plain auto-encoder warm-up, a k-means codebook
    initialised on its latents, then vector-quantised training with dead-code restarts."""

    ae_steps: int = 150           # steps without quantisation
    steps: int = 300              # quantised steps after the k-means initialisation
    batch_size: int = 32
    lr: float = 2e-3
    pixel_loss: str = "l1+mse"    # "mse", "l1" or "l1+mse" (l1 keeps shape edges crisp)
    detail_weight: float = 0.0    # per-pixel weight 1 + w (saturation + edge strength) of x
    kmeans_batches: int = 8       # batches of latents the codebook is clustered from
    kmeans_iters: int = 15
    restart_every: int = 25       # steps between dead-code restarts (0 = never)
    # "latents": k-means / restarts over all encoder outputs (frequent patches get many
    # codes); "patches": over the mean latent of each distinct pixel patch, so a patch
    # seen a million times counts once and keeps one code whatever its context; "pixels":
    # the codes are clusters of the distinct pixel patches, fixed before training
    # (`pixel_codes`; `steps` then counts the steps of `train_vq_on_codes`, and the
    # auto-encoder, k-means and locality phases do not run)
    codebook_from: str = "latents"
    # "pixels": a distinct patch seen n times weighs n ** code_weight_power in the clustering
    # (0: every patch alike, so backgrounds lose exactness; 1: rare edge patches merge)
    code_weight_power: float = 0.5
    # "pixels": the codebook's vectors. "random": N(0, 1) draws; "centres": the code centres'
    # whitened principal components mixed half and half with such draws, so the decoder's
    # input already says what a code's patches look like and close patches stay apart
    code_vectors: str = "random"
    # "pixels": steps after `steps` that train the decoder alone (the encoder has learnt the
    # codes by then; a decoder step costs about half a joint step)
    decoder_steps: int = 0
    decoder_lr: float = 2e-3
    # id locality (after the quantised steps): fine-tune the encoder so that every distinct
    # patch gets the id it most often has (cross-entropy over the frozen codebook) while
    # the decoder is re-fitted to the ids the encoder then gives
    locality_steps: int = 0
    locality_batches: int = 64    # batches the modal-id table is counted on
    locality_lr: float = 1e-3
    log_every: int = 25
    history: list = field(default_factory=list)


def vq_reconstruct(vq: VQModel, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """images (B, 3, H, W) in [0, 1] -> (reconstruction, commit loss, ids (B, h, w))."""
    h = vq.encode(images).latents                                         # (B, C, h, w)
    quant, commit, (_, _, ids) = vq.quantize(h)
    dec = vq.decoder(vq.post_quant_conv(quant), None)
    b, _, hh, ww = h.shape
    return dec, commit, ids.view(b, hh, ww)


@torch.no_grad()
def encode_ids(vq: VQModel, images: Tensor, batch_size: int = 256) -> Tensor:
    """images (N, 3, H, W) in [0, 1] -> VQ ids (N, h, w) int64."""
    vq.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        h = vq.encode(images[i:i + batch_size]).latents
        _, _, (_, _, ids) = vq.quantize(h)
        out.append(ids.view(h.shape[0], h.shape[2], h.shape[3]))
    return torch.cat(out)


@torch.no_grad()
def decode_ids(vq: VQModel, ids: Tensor) -> Tensor:
    """VQ ids (B, h, w) -> images (B, 3, H, W) clipped to [0, 1]."""
    vq.eval()
    b, hh, ww = ids.shape
    shape = (b, hh, ww, vq.config.latent_channels)
    img = vq.decode(ids.reshape(b, -1), force_not_quantize=True, shape=shape).sample
    return img.clamp(0, 1)


def _restart_dead_codes(vq: VQModel, usage: Tensor, latents: Tensor,
                        generator: torch.Generator, keys: Optional[Tensor] = None) -> int:
    """Move codes unused since the last restart onto random encoder outputs (with `keys`,
    onto the mean latents of random distinct patches)."""
    dead = (usage == 0).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    if keys is not None:
        flat = patch_means(latents, keys)
    else:
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator)
    noise = 0.01 * torch.randn(dead.numel(), flat.shape[1], generator=generator)
    with torch.no_grad():
        vq.quantize.embedding.weight[dead] = flat[pick] + noise
    return int(dead.numel())


def detail_weights(x: Tensor, weight: float) -> Tensor:
    """(B, 1, H, W) pixel weights 1 + weight * (saturation + edge strength), mean 1.

    Small coloured objects and their outlines are a few percent of the pixels; without
    extra weight the auto-encoder learns the background first and their hues last."""
    sat = x.amax(1, keepdim=True) - x.amin(1, keepdim=True)                  # (B, 1, H, W)
    dy = (x[:, :, 1:] - x[:, :, :-1]).abs().amax(1, keepdim=True)
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().amax(1, keepdim=True)
    edge = F.pad(dy, (0, 0, 0, 1)) + F.pad(dx, (0, 1, 0, 0))
    w = 1.0 + weight * (sat + edge.clamp(max=1.0))
    return w / w.mean()


def pixel_loss(rec: Tensor, x: Tensor, kind: str, detail_weight: float = 0.0) -> Tensor:
    """Reconstruction loss of the VQ: mean-squared, mean-absolute or their sum, optionally
    weighted per pixel by `detail_weights`."""
    w = detail_weights(x, detail_weight) if detail_weight > 0 else torch.ones_like(x[:, :1])
    if kind == "mse":
        return (w * (rec - x) ** 2).mean()
    if kind == "l1":
        return (w * (rec - x).abs()).mean()
    if kind == "l1+mse":
        return (w * ((rec - x).abs() + (rec - x) ** 2)).mean()
    raise ValueError(f"unknown pixel loss {kind!r}")


def patch_keys(images: Tensor, factor: int) -> Tensor:
    """(B, 3, H, W) images in [0, 1] -> (B, H/f, W/f) int64 hash of each token's exact
    f x f pixel patch (8-bit values), equal keys for equal patches."""
    b, c, h, w = images.shape
    q = (images.detach() * 255).round().long()                                # (B, 3, H, W)
    q = q.reshape(b, c, h // factor, factor, w // factor, factor).permute(0, 2, 4, 1, 3, 5)
    q = q.reshape(b, h // factor, w // factor, -1)                             # (B, h, w, 3 f f)
    mult = torch.tensor([(1_000_003 ** i) % (1 << 61) for i in range(q.shape[-1])], dtype=torch.long)
    return (q * mult).sum(-1)                                               # wraps: a hash


def patch_means(latents: Tensor, keys: Tensor) -> Tensor:
    """Mean latent of every distinct patch: latents (B, C, h, w), keys (B, h, w) -> (U, C)."""
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    _, inverse = torch.unique(keys.flatten(), return_inverse=True)
    u = int(inverse.max()) + 1
    sums = torch.zeros(u, flat.shape[1], dtype=flat.dtype).index_add_(0, inverse, flat)
    counts = torch.bincount(inverse, minlength=u).to(flat.dtype)
    return sums / counts[:, None]


def modal_ids(keys: Tensor, ids: Tensor, num_codes: int) -> tuple[Tensor, Tensor, float]:
    """The most frequent id of every distinct patch key.

    keys, ids: same shape (patch keys from `patch_keys`, VQ ids in [0, num_codes)).
    Returns (sorted distinct keys (U,), their modal ids (U,), purity): purity is the share
    of tokens whose id already is their patch's modal id."""
    unique, inverse = torch.unique(keys.flatten(), return_inverse=True)      # sorted
    counts = torch.bincount(inverse * num_codes + ids.flatten(),
                            minlength=unique.numel() * num_codes).view(-1, num_codes)
    purity = float(counts.max(1).values.sum() / counts.sum())
    return unique, counts.argmax(1), purity


@torch.no_grad()
def modal_id_table(vq: VQModel, images: Sequence[Tensor], factor: int) -> tuple[Tensor, Tensor, float]:
    """`modal_ids` of the VQ's own ids over `images` (each (B, 3, H, W) in [0, 1])."""
    keys, ids = [], []
    for x in images:
        _, _, (_, _, idx) = vq.quantize(vq.encode(x).latents)
        keys.append(patch_keys(x, factor).flatten())
        ids.append(idx.flatten())
    return modal_ids(torch.cat(keys), torch.cat(ids), vq.config.num_vq_embeddings)


def lookup_modal(keys: Tensor, table_keys: Tensor, table_ids: Tensor) -> Tensor:
    """Modal id of each key (any shape); -100 for keys not in the table."""
    pos = torch.searchsorted(table_keys, keys.flatten()).clamp(max=table_keys.numel() - 1)
    found = table_keys[pos] == keys.flatten()
    return torch.where(found, table_ids[pos], torch.full_like(pos, -100)).view(keys.shape)


def code_logits(latents: Tensor, codebook: Tensor, margin: float = 4.0) -> Tensor:
    """(B, C, h, w) latents, (K, C) codebook -> (B*h*w, K) logits: minus squared distances,
    scaled so that a latent on a code beats the code's nearest neighbour (median over
    codes) by `margin` nats."""
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    d = torch.cdist(flat, codebook).pow(2)
    with torch.no_grad():
        between = torch.cdist(codebook, codebook).pow(2)
        between.fill_diagonal_(float("inf"))
        nearest = between.min(1).values.median().clamp(min=1e-12)
    return -d * (margin / nearest)


def _kmeans_pp_init(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centre drawn with probability ~ squared distance, so rare
    patches (a small shape's colour) get codes too."""
    centres = [x[int(torch.randint(0, x.shape[0], (1,), generator=generator))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        i = int(torch.multinomial(d2 + 1e-12, 1, generator=generator))
        centres.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return torch.stack(centres)


def _kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator) -> Tensor:
    """(N, C) points -> (k, C) centres (k-means++ seeding, empty clusters re-drawn)."""
    centres = _kmeans_pp_init(x, k, generator)
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            pick = torch.randint(0, x.shape[0], (int(empty.sum()),), generator=generator)
            centres[empty] = x[pick]
    return centres


def train_vq(sample_batch: Callable[[int, torch.Generator], Tensor], config: VQConfig,
             train: VQTrainConfig, seed: int = 0,
             vq: Optional[VQModel] = None, codes: Optional["PixelCodes"] = None) -> VQModel:
    """Train a VQModel; `sample_batch(batch_size, generator)` returns (B, 3, H, W) in [0, 1].

    codes: the fixed patch -> id table (`pixel_codes`), required by and only by
    `codebook_from="pixels"`."""
    if train.codebook_from not in ("latents", "patches", "pixels"):
        raise ValueError(f"codebook_from must be 'latents', 'patches' or 'pixels', got {train.codebook_from!r}")
    if (train.codebook_from == "pixels") != (codes is not None):
        raise ValueError("codebook_from='pixels' needs the patch codes (pixel_codes), and only it takes them")
    if codes is not None:
        if train.ae_steps or train.locality_steps:
            raise ValueError("codebook_from='pixels' fixes the ids before training: set ae_steps and "
                             "locality_steps to 0")
        return train_vq_on_codes(sample_batch, codes, config, train, seed, vq)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vq = vq if vq is not None else config.build()
    vq.train()
    opt = torch.optim.AdamW(vq.parameters(), lr=train.lr, betas=(0.9, 0.99), weight_decay=0.0)
    total = train.ae_steps + train.steps
    t0 = time.time()

    def set_lr(step: int) -> None:
        lr = train.lr * min(1.0, (step + 1) / 25) * (0.1 + 0.9 * (1 - step / max(1, total)))
        for g in opt.param_groups:
            g["lr"] = lr

    # 1. Auto-encoder warm-up (no quantiser).
    for step in range(train.ae_steps):
        set_lr(step)
        x = sample_batch(train.batch_size, gen)
        rec = vq.decoder(vq.post_quant_conv(vq.encode(x).latents), None)
        loss = pixel_loss(rec, x, train.pixel_loss, train.detail_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vq.parameters(), 1.0)
        opt.step()
        if step % train.log_every == 0:
            rec_ = {"phase": "ae", "step": step, "loss": float(loss.detach()),
                    "seconds": round(time.time() - t0, 1)}
            train.history.append(rec_)
            logger.info("vq %s", rec_)

    by_patch = train.codebook_from == "patches"
    factor = 2 ** (len(vq.config.block_out_channels) - 1)

    # 2. Codebook = k-means of the warmed-up latents (or of the distinct patches' means).
    if train.ae_steps > 0:
        with torch.no_grad():
            images = [sample_batch(train.batch_size, gen) for _ in range(train.kmeans_batches)]
            lat = torch.cat([vq.encode(x).latents for x in images])
            if by_patch:
                flat = patch_means(lat, torch.cat([patch_keys(x, factor) for x in images]))
            else:
                flat = lat.permute(0, 2, 3, 1).reshape(-1, lat.shape[1])
            k = vq.config.num_vq_embeddings
            if flat.shape[0] < k:
                flat = flat.repeat((k + flat.shape[0] - 1) // flat.shape[0], 1)
            vq.quantize.embedding.weight.copy_(_kmeans(flat, k, train.kmeans_iters, gen))
        logger.info("vq codebook initialised by k-means on %d latents", flat.shape[0])

    # 3. Quantised training with dead-code restarts.
    usage = torch.zeros(vq.config.num_vq_embeddings, dtype=torch.long)
    for i in range(train.steps):
        step = train.ae_steps + i
        set_lr(step)
        x = sample_batch(train.batch_size, gen)
        rec, commit, ids = vq_reconstruct(vq, x)
        mse = F.mse_loss(rec, x)
        loss = pixel_loss(rec, x, train.pixel_loss, train.detail_weight) + commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vq.parameters(), 1.0)
        opt.step()
        usage += torch.bincount(ids.flatten(), minlength=usage.numel())
        restarted = 0
        if train.restart_every and (i + 1) % train.restart_every == 0 and i < 0.8 * train.steps:
            with torch.no_grad():
                latents = vq.encode(x).latents
            restarted = _restart_dead_codes(vq, usage, latents, gen,
                                            patch_keys(x, factor) if by_patch else None)
            usage.zero_()
        if i % train.log_every == 0 or i == train.steps - 1:
            with torch.no_grad():
                l1 = float((rec.clamp(0, 1) - x).abs().mean())
            rec_ = {"phase": "vq", "step": step, "mse": float(mse.detach()), "commit": float(commit.detach()),
                    "l1": l1, "codes_used": int((torch.bincount(ids.flatten()) > 0).sum()),
                    "restarted": restarted, "seconds": round(time.time() - t0, 1)}
            train.history.append(rec_)
            logger.info("vq %s", rec_)

    # 4. Id locality: the encoder's group norms see the whole image, so one patch gets
    #    many ids across scenes; pull each patch to its modal id, re-fit the decoder.
    if train.locality_steps > 0:
        train_id_locality(vq, sample_batch, train, gen, t0)
    vq.eval()
    return vq


def train_id_locality(vq: VQModel, sample_batch: Callable[[int, torch.Generator], Tensor],
                      train: VQTrainConfig, gen: torch.Generator, t0: Optional[float] = None) -> float:
    """Phase 4 of `train_vq` (VQTrainConfig.locality_steps steps), codebook frozen: the
    encoder learns to give each distinct patch of the sampled images its modal id, the
    decoder is re-fitted to the ids it then gives. Returns the modal-id purity before."""
    t0 = time.time() if t0 is None else t0
    factor = 2 ** (len(vq.config.block_out_channels) - 1)
    vq.eval()
    images = [sample_batch(train.batch_size, gen) for _ in range(train.locality_batches)]
    table_keys, table_ids, purity = modal_id_table(vq, images, factor)
    logger.info("vq locality: %d distinct patches, modal-id purity %.3f", table_keys.numel(), purity)
    train.history.append({"phase": "locality", "step": 0, "patches": int(table_keys.numel()),
                          "purity": purity})
    vq.quantize.embedding.weight.requires_grad_(False)
    encoder = list(vq.encoder.parameters()) + list(vq.quant_conv.parameters())
    decoder = list(vq.decoder.parameters()) + list(vq.post_quant_conv.parameters())
    opt = torch.optim.AdamW(encoder + decoder, lr=train.locality_lr, betas=(0.9, 0.99), weight_decay=0.0)
    vq.train()
    for i in range(train.locality_steps):
        lr = train.locality_lr * min(1.0, (i + 1) / 25) * (1 - i / train.locality_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        x = sample_batch(train.batch_size, gen)
        latents = vq.encode(x).latents
        target = lookup_modal(patch_keys(x, factor), table_keys, table_ids).flatten()
        ce = F.cross_entropy(code_logits(latents, vq.quantize.embedding.weight), target,
                             ignore_index=-100)
        with torch.no_grad():
            quant, _, (_, _, ids) = vq.quantize(latents.detach())
        rec = vq.decoder(vq.post_quant_conv(quant), None)
        pix = pixel_loss(rec, x, train.pixel_loss, train.detail_weight)
        opt.zero_grad(set_to_none=True)
        (ce + pix).backward()
        torch.nn.utils.clip_grad_norm_(encoder + decoder, 1.0)
        opt.step()
        if i % train.log_every == 0 or i == train.locality_steps - 1:
            valid = target >= 0
            agree = float((ids.flatten()[valid] == target[valid]).float().mean()) if valid.any() else 0.0
            rec_ = {"phase": "locality", "step": i, "ce": float(ce.detach()), "pixel": float(pix.detach()),
                    "modal_agreement": agree, "seconds": round(time.time() - t0, 1)}
            train.history.append(rec_)
            logger.info("vq %s", rec_)
    vq.quantize.embedding.weight.requires_grad_(True)
    vq.eval()
    return purity


# ----------------------------------------------------------------------------- fixed pixel codes

@dataclass
class PixelCodes:
    """A tokenisation fixed before training: the code id of every distinct f x f patch.

    keys: (U,) sorted patch keys (`patch_keys`); ids: (U,) their code ids; centres: (K, 3 f f)
    the mean pixels of each code (what its patches look like); factor: f."""

    keys: Tensor
    ids: Tensor
    centres: Tensor
    factor: int

    def lookup(self, images: Tensor, chunk: int = 2048) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, H/f, W/f) code ids; -100 for patches never seen."""
        return torch.cat([lookup_modal(patch_keys(images[i:i + chunk], self.factor), self.keys, self.ids)
                          for i in range(0, images.shape[0], chunk)])


def patch_pixels(images: Tensor, factor: int) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> (B * H/f * W/f, 3 f f) uint8 pixels of every token's patch,
    in the order of `patch_keys(images, factor).flatten()`."""
    b, c, h, w = images.shape
    q = (images.detach() * 255).round().to(torch.uint8)
    q = q.reshape(b, c, h // factor, factor, w // factor, factor).permute(0, 2, 4, 1, 3, 5)
    return q.reshape(-1, c * factor * factor)


def pixel_codes(images: Sequence[Tensor], factor: int, num_codes: int, seed: int = 0,
                weight_power: float = 0.5, iters: int = 25) -> tuple[PixelCodes, dict]:
    """Cluster the distinct f x f pixel patches of `images` (each (B, 3, H, W) in [0, 1]) into
    `num_codes` codes: weighted k-means++ then Lloyd iterations in float64, a patch seen n
    times weighing n ** weight_power. With no more distinct patches than codes, each patch
    is a code of its own. Returns the codes and stats (distinct patches, the mean absolute
    pixel error of a patch against its code's centre, over distinct patches and per token)."""
    keys, pixels = [], []
    for batch in images:
        for x in batch.split(2048):
            keys.append(patch_keys(x, factor).flatten())
            pixels.append(patch_pixels(x, factor))
    unique, first, counts = _distinct(torch.cat(keys))
    points = torch.cat(pixels)[first].double() / 255                        # (U, 3 f f)
    weights = counts.double() ** weight_power
    gen = torch.Generator().manual_seed(seed)
    if unique.numel() <= num_codes:
        ids = torch.arange(unique.numel())
        centres = torch.cat([points, points[:1].expand(num_codes - unique.numel(), -1)])
    else:
        ids, centres = _weighted_kmeans(points, weights, num_codes, iters, gen)
    err = (points - centres[ids]).abs().mean(1)
    stats = {"phase": "codes", "patches": int(unique.numel()), "codes_used": int(ids.unique().numel()),
             "centre_l1_distinct": float(err.mean()),
             "centre_l1_tokens": float((err * counts).sum() / counts.sum())}
    logger.info("vq pixel codes %s", stats)
    return PixelCodes(unique, ids, centres.float(), factor), stats


def _distinct(keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """keys (N,) -> (sorted distinct keys (U,), index of one occurrence of each (U,), counts (U,))."""
    unique, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    first = torch.empty_like(unique).scatter_(0, inverse, torch.arange(keys.numel()))
    return unique, first, counts


def _weighted_kmeans(x: Tensor, w: Tensor, k: int, iters: int, gen: torch.Generator
                     ) -> tuple[Tensor, Tensor]:
    """(N, D) points with (N,) weights -> (assignment (N,), centres (k, D)); k-means++
    seeding draws each next centre with probability ~ weight x squared distance."""
    centres = [x[int(torch.multinomial(w, 1, generator=gen))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        i = int(torch.multinomial(w * d2 + 1e-300, 1, generator=gen))
        centres.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        mass = torch.zeros(k, dtype=x.dtype).index_add_(0, assign, w)
        sums = torch.zeros_like(c).index_add_(0, assign, x * w[:, None])
        c = torch.where(mass[:, None] > 0, sums / mass.clamp(min=1e-300)[:, None], c)
    return torch.cdist(x, c).argmin(1), c


def code_vectors(centres: Tensor, dim: int, kind: str, gen: torch.Generator) -> Tensor:
    """(K, 3 f f) code centres -> (K, dim) codebook vectors of unit variance per dimension:
    "random" N(0, 1) draws, or "centres", the centres' top `dim` principal components,
    whitened, plus as much N(0, 1) noise, over sqrt 2."""
    noise = torch.randn(centres.shape[0], dim, generator=gen)
    if kind == "random":
        return noise
    if kind != "centres":
        raise ValueError(f"code_vectors must be 'random' or 'centres', got {kind!r}")
    x = centres.double() - centres.double().mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    z = x @ v[:dim].T
    z = F.pad(z, (0, dim - z.shape[1]))                  # fewer pixels than dims: zero the rest
    z = z / z.std(0).clamp(min=1e-12)
    return ((z.float() + noise) / math.sqrt(2)).contiguous()


def _warmup_cosine(base: float, step: int, total: int) -> float:
    """Learning rate of the pixel-code phases: 25 warm-up steps, then cosine from base to 5 %."""
    return base * min(1.0, (step + 1) / 25) * (0.05 + 0.475 * (1 + math.cos(math.pi * step / total)))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def train_vq_on_codes(sample_batch: Callable[[int, torch.Generator], Tensor], codes: PixelCodes,
                      config: VQConfig, train: VQTrainConfig, seed: int = 0,
                      vq: Optional[VQModel] = None) -> VQModel:
    """Fit a VQModel to fixed patch codes, `train.steps` steps: the codebook is a fixed random
    set of vectors; the encoder learns each patch's code (cross-entropy over the codebook,
    `code_logits`) and the decoder to draw the images from their code grids (the pixel loss
    on the true codes, so the two halves train side by side). Every patch of the sampled
    images must be in `codes`."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vq = vq if vq is not None else config.build()
    if 2 ** (len(vq.config.block_out_channels) - 1) != codes.factor:
        raise ValueError(f"the codes are of {codes.factor}-pixel patches, the VQ's tokens are not")
    codebook = vq.quantize.embedding.weight
    with torch.no_grad():
        codebook.copy_(code_vectors(codes.centres, codebook.shape[1], train.code_vectors, gen))
    codebook.requires_grad_(False)
    params = [p for p in vq.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train.lr, betas=(0.9, 0.99), weight_decay=0.0)
    t0 = time.time()
    vq.train()
    for step in range(train.steps):
        _set_lr(opt, _warmup_cosine(train.lr, step, train.steps))
        x = sample_batch(train.batch_size, gen)
        target = codes.lookup(x)                                              # (B, h, w)
        if bool((target < 0).any()):
            raise ValueError("a sampled image has a patch the codes were not built from")
        logits = code_logits(vq.encode(x).latents, codebook)
        ce = F.cross_entropy(logits, target.flatten())
        rec = vq.decoder(vq.post_quant_conv(codebook[target].permute(0, 3, 1, 2)), None)
        pix = pixel_loss(rec, x, train.pixel_loss, train.detail_weight)
        opt.zero_grad(set_to_none=True)
        (ce + pix).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % train.log_every == 0 or step == train.steps - 1:
            with torch.no_grad():
                agree = float((logits.argmax(1) == target.flatten()).float().mean())
                l1 = float((rec.clamp(0, 1) - x).abs().mean())
            rec_ = {"phase": "fit", "step": step, "ce": float(ce.detach()), "pixel": float(pix.detach()),
                    "code_agreement": agree, "l1": l1, "seconds": round(time.time() - t0, 1)}
            train.history.append(rec_)
            logger.info("vq %s", rec_)
    if train.decoder_steps:
        fit_decoder_to_codes(vq, sample_batch, codes, train, gen, t0)
    codebook.requires_grad_(True)
    vq.eval()
    return vq


def fit_decoder_to_codes(vq: VQModel, sample_batch: Callable[[int, torch.Generator], Tensor],
                         codes: PixelCodes, train: VQTrainConfig, gen: torch.Generator,
                         t0: Optional[float] = None) -> None:
    """`train.decoder_steps` steps of the decoder alone (learning rate from train.decoder_lr
    down to 5 %): it learns to draw the sampled images from their true code grids."""
    t0 = time.time() if t0 is None else t0
    codebook = vq.quantize.embedding.weight.detach()
    params = list(vq.post_quant_conv.parameters()) + list(vq.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=train.decoder_lr, betas=(0.9, 0.99), weight_decay=0.0)
    vq.train()
    for step in range(train.decoder_steps):
        _set_lr(opt, _warmup_cosine(train.decoder_lr, step, train.decoder_steps))
        x = sample_batch(train.batch_size, gen)
        target = codes.lookup(x)
        rec = vq.decoder(vq.post_quant_conv(codebook[target].permute(0, 3, 1, 2)), None)
        pix = pixel_loss(rec, x, train.pixel_loss, train.detail_weight)
        opt.zero_grad(set_to_none=True)
        pix.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % train.log_every == 0 or step == train.decoder_steps - 1:
            l1 = float((rec.detach().clamp(0, 1) - x).abs().mean())
            rec_ = {"phase": "decoder", "step": step, "pixel": float(pix.detach()), "l1": l1,
                    "seconds": round(time.time() - t0, 1)}
            train.history.append(rec_)
            logger.info("vq %s", rec_)
    vq.eval()
