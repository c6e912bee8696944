"""The EditMGT training objective (paper Eq. 1) and optimiser, for any EditMGTTransformer.

One step: draw progress u ~ U(0, 1) per sample, mask ratio r = mask_ratio(u, schedule)
(cosine: r = cos(u pi/2), i.e. r has the truncated-arccos density 2/pi (1 - r^2)^-1/2 of
the paper), mask round(r L) random target tokens (at least one), feed the source tokens
as the timestep-0 reference stream, and take the cross-entropy on the masked positions
only. With probability `text_dropout` a sample's text is replaced by a null prompt's
encoding so the model also learns the unconditional branch of classifier-free guidance.

Options, all off by default (plain Eq. 1, as the paper trains the released model), aim
the loss at the tokens an edit changes (`changed`: target id != source id) and, when the
batch says which tokens belong to objects (`EditBatch.object_tokens`), at the objects the
edit must leave alone:
- `edit_share` / `keep_share`: each sample's loss is edit_share * mean CE of its masked
  changed tokens + keep_share * mean CE of its masked unchanged object tokens + the rest
  * mean CE of its other masked tokens (shares renormalised over the groups a sample
  has), so one shape's tokens are not outweighed by the copied rest of the image, and
  getting a shape the edit does not name wrong costs as much as missing the edit;
- `mask_edit_prob`: with this probability per sample every changed token is masked, and
  with `mask_objects` every object token too, so an edit must be read from the
  instruction and not from visible neighbours (at the sampler's first step nothing is
  visible), and a fully masked object is not a sign that it is the one to edit;
- `grounding_weight`: when the batch carries the edit's target region
  (`EditBatch.edit_region`, known for synthetic data and for datasets with edit masks),
  add that weight times the KL divergence from the region to the consolidated text->image
  attention of the hold blocks, so the map region-hold reads points at the edit (the
  paper's model finds it from Meissonic's pre-training; a model trained from scratch in
  minutes does not).

The code touches the model only through its forward signature and `config.mask_token_id`,
so it runs the released 1024 px transformer as well as the tiny shapes one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from editmgt.models.attention import AttentionProbe
from editmgt.sampling.localization import default_hold_blocks, mean_attention
from editmgt.sampling.schedule import mask_ratio

logger = logging.getLogger(__name__)


@dataclass
class ObjectiveConfig:
    """Settings of the masked-token objective."""

    schedule: str = "cosine"          # mask schedule shared with the sampler
    text_dropout: float = 0.1         # probability of the null prompt per sample (CFG)
    sampling_steps: int = 16          # maps progress u to the sampler's step value N-1..0
    label_smoothing: float = 0.0
    edit_share: float = 0.0           # share of each sample's loss on its changed tokens (0 = Eq. 1)
    keep_share: float = 0.0           # share on unchanged tokens of objects (needs object_tokens)
    mask_edit_prob: float = 0.0       # probability per sample that all changed tokens are masked
    mask_objects: bool = False        # ... and all object tokens with them (needs object_tokens)
    grounding_weight: float = 0.0     # weight of the attention-grounding KL (needs edit_region)
    grounding_blocks: tuple[int, ...] = ()   # blocks grounded; () = the pipeline's hold blocks
    grounding_text_grad: bool = True  # False: text rows detached, the term moves image keys only


@dataclass
class OptimConfig:
    """AdamW and clipping; defaults are the paper's (appendix C.1)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    grad_clip: float = 10.0
    warmup_steps: int = 0
    total_steps: int = 0              # > 0: cosine decay to min_lr_ratio * lr after warm-up
    min_lr_ratio: float = 0.1


@dataclass
class EditBatch:
    """A batch of encoded edit pairs.

    target_tokens, source_tokens: (B, H, W) int64 VQ ids.
    text_states: (B, T, joint_attention_dim); pooled_text: (B, pooled_projection_dim).
    micro_conds: (B, 5) width, height, crop top, crop left, aesthetic score.
    object_tokens: optional (B, H, W) bool, True on tokens that show an object in the
    source or the target (known for synthetic data; None for real photographs).
    edit_region: optional (B, H, W) float in [0, 1], the share of each token's pixels in
    the edit's target region; a sample whose region is all zero (no region known, or its
    prompt dropped for CFG) is left out of the grounding term.
    region_rows: optional (B, T) float, the text rows whose words name the edit (1) and the
    others (0); with it the grounding term reads only those rows' attention (a sample
    without such rows is left out), without it the mean over all T rows.
    """

    target_tokens: Tensor
    source_tokens: Tensor
    text_states: Tensor
    pooled_text: Tensor
    micro_conds: Tensor
    object_tokens: Optional[Tensor] = None
    edit_region: Optional[Tensor] = None
    region_rows: Optional[Tensor] = None

    def to(self, device: torch.device | str) -> "EditBatch":
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return EditBatch(**{k: v.to(device) if v is not None else None for k, v in moved.items()})


@dataclass
class LossOutput:
    """Loss and diagnostics of one batch."""

    loss: Tensor                      # scalar, mean CE over masked tokens
    accuracy: float                   # top-1 accuracy on masked tokens
    masked_fraction: float            # mean fraction of tokens masked
    copy_accuracy: float              # accuracy on masked tokens equal to the source token
    edit_accuracy: float              # accuracy on masked tokens that differ from the source
    keep_accuracy: float              # accuracy on masked unchanged object tokens (nan: none)
    grounding: float = float("nan")   # grounding KL before its weight (nan: not computed)


def draw_mask(shape: tuple[int, ...], schedule: str, generator: Optional[torch.Generator],
              device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Random token mask for a (B, H, W) grid.

    Returns (mask (B, H, W) bool, progress (B,) float): round(r L) positions per sample
    are masked, at least one, where r = mask_ratio(progress, schedule).
    """
    b = shape[0]
    length = int(math.prod(shape[1:]))
    progress = torch.rand(b, generator=generator, device=device)
    ratio = mask_ratio(progress, schedule).clamp(0.0, 1.0)
    count = (ratio * length).round().clamp(min=1).long()                      # (B,)
    scores = torch.rand(b, length, generator=generator, device=device)
    ranks = scores.argsort(dim=1).argsort(dim=1)                              # (B, L)
    mask = ranks < count[:, None]
    return mask.view(shape), progress


def progress_to_timestep(progress: Tensor, sampling_steps: int) -> Tensor:
    """Sampler step value (N-1 ... 0) whose masked fraction matches `progress` (B,)."""
    step = (progress * sampling_steps).floor().clamp(0, sampling_steps - 1)
    return (sampling_steps - 1 - step).long()


def apply_text_dropout(batch: EditBatch, null_states: Tensor, null_pooled: Tensor, p: float,
                       generator: Optional[torch.Generator]) -> EditBatch:
    """Replace each sample's text by a null prompt with probability p.

    null_states: (K, T, D) and null_pooled: (K, P) encodings of K null prompts ("" and,
    optionally, the negative prompt used at inference); one is drawn per dropped sample.
    """
    if p <= 0:
        return batch
    b = batch.text_states.shape[0]
    device = batch.text_states.device
    drop = torch.rand(b, generator=generator, device=device) < p                  # (B,)
    which = torch.randint(0, null_states.shape[0], (b,), generator=generator, device=device)
    states = torch.where(drop[:, None, None], null_states[which].to(batch.text_states),
                         batch.text_states)
    pooled = torch.where(drop[:, None], null_pooled[which].to(batch.pooled_text),
                         batch.pooled_text)
    region = batch.edit_region
    if region is not None:                    # a null prompt names no region
        region = region * (~drop).to(region.dtype)[:, None, None]
    return dataclasses.replace(batch, text_states=states, pooled_text=pooled, edit_region=region)


def draw_edit_mask(changed: Tensor, config: ObjectiveConfig, generator: Optional[torch.Generator],
                   objects: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """`draw_mask` on the grid of `changed` (B, H, W) bool, then, with probability
    `config.mask_edit_prob` per sample, every changed token masked as well, and every
    object token (`objects`, (B, H, W) bool) when `config.mask_objects` (the progress, and
    so the model timestep, stays the drawn one: a small edit barely moves the masked
    fraction). Returns (mask (B, H, W) bool, progress (B,))."""
    mask, progress = draw_mask(tuple(changed.shape), config.schedule, generator, changed.device)
    if config.mask_edit_prob > 0:
        hidden = changed | objects if config.mask_objects and objects is not None else changed
        whole = torch.rand(changed.shape[0], generator=generator, device=changed.device)
        mask = mask | (hidden & (whole < config.mask_edit_prob)[:, None, None])
    return mask, progress


def token_weights(mask: Tensor, changed: Tensor, edit_share: float,
                  objects: Optional[Tensor] = None, keep_share: float = 0.0) -> Tensor:
    """Loss weight of every token, (B, H, W) float summing to 1.

    mask, changed, objects: (B, H, W) bool. With both shares 0: Eq. 1's mean over all
    masked tokens of the batch. Otherwise each sample weighs 1 / B, split edit_share over
    its masked changed tokens, keep_share over its masked unchanged object tokens (only
    when `objects` is given) and the rest over its other masked tokens; the shares of the
    groups a sample has no masked token in go to the others in proportion.
    """
    mask_f = mask.float()
    if objects is None:
        keep_share = 0.0                       # no object tokens: the two-group weighting
    if edit_share <= 0 and keep_share <= 0:
        return mask_f / mask_f.sum().clamp(min=1)
    edit = mask_f * changed.float()
    keep = (mask_f - edit) * objects.float() if keep_share > 0 else torch.zeros_like(mask_f)
    copy = mask_f - edit - keep
    groups = torch.stack([copy, keep, edit], 1)                                 # (B, 3, H, W)
    counts = groups.sum((2, 3))                                                 # (B, 3)
    shares = torch.tensor([1 - edit_share - keep_share, keep_share, edit_share],
                          device=mask.device).clamp(min=0) * (counts > 0)
    shares = shares / shares.sum(1, keepdim=True).clamp(min=1e-12)
    weights = (groups * (shares / counts.clamp(min=1))[:, :, None, None]).sum(1)
    return weights / mask.shape[0]


def grounding_loss(text_to_image: dict[int, Tensor], region: Tensor, factor: int,
                   rows: Optional[Tensor] = None) -> Tensor:
    """Mean KL(region || attention) over the samples that have a region.

    text_to_image: block -> (B, heads[, R], N) text->image probabilities on the transformer
    grid; region: (B, H, W) float on the token grid, H / factor x W / factor = N. Both are
    made distributions over the N image tokens (the attention averaged over blocks, heads
    and rows, as `consolidate` does). rows: optional (B, T) weights of the text rows (the
    maps then (B, heads, T, N)): the attention is their weighted mean, and a sample whose
    weights are all zero is left out. Returns a scalar (0 when no sample has a region).
    """
    if rows is None:
        attention = mean_attention(text_to_image)                              # (B, N)
        named = torch.ones(region.shape[0], device=region.device)
    else:
        share = rows.float() / rows.float().sum(1, keepdim=True).clamp(min=1e-12)   # (B, T)
        attention = torch.stack([torch.einsum("bhtn,bt->bn", text_to_image[k].float(), share)
                                 / text_to_image[k].shape[1] for k in sorted(text_to_image)]
                                ).mean(0)                                       # (B, N)
        named = (rows.sum(1) > 0).float()
    target = region.float()[:, None]
    if factor > 1:
        target = F.avg_pool2d(target, factor)
    target = target.flatten(1)                                                 # (B, N)
    if target.shape != attention.shape:
        raise ValueError(f"region pools to {tuple(target.shape)}, attention is {tuple(attention.shape)}")
    mass = target.sum(1, keepdim=True)                                         # (B, 1)
    has = (mass[:, 0] > 0).float() * named                                    # no host sync
    q = target / mass.clamp(min=1e-12)
    p = attention / attention.sum(1, keepdim=True).clamp(min=1e-12)
    kl = (q * (q.clamp(min=1e-12).log() - p.clamp(min=1e-12).log())).sum(1)    # (B,), 0 without region
    return (kl * has).sum() / has.sum().clamp(min=1)


def edit_loss(model: nn.Module, batch: EditBatch, config: ObjectiveConfig,
              generator: Optional[torch.Generator] = None) -> LossOutput:
    """Eq. 1: cross-entropy of the masked target tokens given source tokens and text
    (with the optional edit weighting and edit masking of `ObjectiveConfig`)."""
    mask_id = int(model.config.mask_token_id)
    target = batch.target_tokens                                              # (B, H, W)
    changed = target != batch.source_tokens
    mask, progress = draw_edit_mask(changed, config, generator, batch.object_tokens)
    inputs = torch.where(mask, torch.full_like(target, mask_id), target)
    timestep = progress_to_timestep(progress, config.sampling_steps).to(target.device)
    grounded = config.grounding_weight > 0 and batch.edit_region is not None
    probe = None
    if grounded:
        blocks = config.grounding_blocks or default_hold_blocks(model.config.num_blocks)
        probe = AttentionProbe(tuple(blocks), keep_rows=batch.region_rows is not None,
                               detach_text=not config.grounding_text_grad)
    out = model(tokens=inputs, text_states=batch.text_states, pooled_text=batch.pooled_text,
                micro_conds=batch.micro_conds, timestep=timestep,
                reference_tokens=batch.source_tokens, probe=probe)
    logits = out.logits.float()                                               # (B, V, H, W)
    ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=config.label_smoothing)
    weights = token_weights(mask, changed, config.edit_share, batch.object_tokens,
                            config.keep_share)
    loss = (ce * weights).sum()
    grounding = float("nan")
    if grounded:
        kl = grounding_loss(out.text_to_image, batch.edit_region, model.config.downsample_factor,
                            batch.region_rows)
        loss = loss + config.grounding_weight * kl
        grounding = float(kl.detach())
    with torch.no_grad():
        pred = logits.argmax(1)
        hit = (pred == target) & mask
        n_m = mask.sum().clamp(min=1)
        n_copy = (mask & ~changed).sum().clamp(min=1)
        n_edit = (mask & changed).sum().clamp(min=1)
        acc = float(hit.sum() / n_m)
        copy_acc = float((hit & ~changed).sum() / n_copy)
        edit_acc = float((hit & changed).sum() / n_edit)
        keep = mask & ~changed & batch.object_tokens if batch.object_tokens is not None else None
        keep_acc = float((hit & keep).sum() / keep.sum()) if keep is not None and keep.any() \
            else float("nan")
    return LossOutput(loss, acc, float(mask.float().mean()), copy_acc, edit_acc, keep_acc,
                      grounding)


def parameter_groups(model: nn.Module, weight_decay: float,
                     lr_scales: Optional[dict[nn.Module, float]] = None) -> list[dict]:
    """Weight decay on matrices and embeddings (dim >= 2), none on biases and norms.

    lr_scales: submodules of `model` whose parameters learn at `scale` times the rate
    (a group's "lr_scale", read by `train_step`). The parameters keep their order: the
    groups with weight decay come first, so with no scales the groups are the plain two."""
    scale_of = {id(p): scale for module, scale in (lr_scales or {}).items() for p in module.parameters()}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        groups.setdefault((p.dim() >= 2, scale_of.get(id(p), 1.0)), []).append(p)
    ordered = sorted(groups, key=lambda key: not key[0])          # stable: decay first
    return [{"params": groups[key], "weight_decay": weight_decay if key[0] else 0.0, "lr_scale": key[1]}
            for key in ordered]


def make_optimizer(model: nn.Module, config: OptimConfig,
                   lr_scales: Optional[dict[nn.Module, float]] = None) -> torch.optim.AdamW:
    """AdamW with the paper's betas, eps and weight decay (matrices only); `lr_scales` as in
    `parameter_groups`."""
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay, lr_scales), lr=config.lr,
                             betas=config.betas, eps=config.eps)


def lr_at(step: int, config: OptimConfig) -> float:
    """Learning rate at `step`: linear warm-up, then constant or cosine decay."""
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.total_steps <= 0:
        return config.lr
    span = max(1, config.total_steps - config.warmup_steps)
    t = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: EditBatch,
               objective: ObjectiveConfig, optim: OptimConfig, step: int,
               generator: Optional[torch.Generator] = None,
               null_text: Optional[tuple[Tensor, Tensor]] = None) -> dict[str, float]:
    """One optimiser step (text dropout, Eq. 1 loss, clipping, AdamW). Returns scalars.

    Every parameter the optimiser holds is clipped together, so text towers trained
    with the model (their states carried in `batch`) are clipped with it."""
    model.train()
    if null_text is not None:
        batch = apply_text_dropout(batch, null_text[0], null_text[1], objective.text_dropout,
                                   generator)
    lr = lr_at(step, optim)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    out = edit_loss(model, batch, objective, generator)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
    optimizer.step()
    return {"loss": float(out.loss.detach()), "acc": out.accuracy, "copy_acc": out.copy_accuracy,
            "edit_acc": out.edit_accuracy, "keep_acc": out.keep_accuracy,
            "grounding": out.grounding,
            "masked": out.masked_fraction,
            "grad_norm": float(grad_norm), "lr": lr}


def count_parameters(modules: Iterable[nn.Module]) -> int:
    """Total number of parameters of some modules."""
    return sum(p.numel() for m in modules for p in m.parameters())
