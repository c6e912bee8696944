"""The training objective (Eq. 1), optimiser settings and the VQ trainer, on tiny models."""

import math

import numpy as np
import pytest
import torch

from editmgt.models.transformer import EditMGTTransformer, TransformerConfig
from editmgt.train.objective import (
    EditBatch,
    ObjectiveConfig,
    OptimConfig,
    apply_text_dropout,
    draw_mask,
    edit_loss,
    lr_at,
    make_optimizer,
    progress_to_timestep,
    train_step,
)
from editmgt.train.vq_train import VQConfig, VQTrainConfig, decode_ids, encode_ids, train_vq


def tiny_model(codebook: int = 16) -> EditMGTTransformer:
    cfg = TransformerConfig(num_layers=1, num_single_layers=1, attention_head_dim=16,
                            num_attention_heads=2, joint_attention_dim=8, pooled_projection_dim=8,
                            axes_dims_rope=(4, 6, 6), vocab_size=codebook + 1, codebook_size=codebook,
                            downsample=True, upsample=True, connector_type="linear")
    torch.manual_seed(0)
    return EditMGTTransformer(cfg)


def tiny_batch(b: int = 8, codebook: int = 16, seed: int = 0) -> EditBatch:
    g = torch.Generator().manual_seed(seed)
    source = torch.randint(0, codebook, (b, 4, 4), generator=g)
    target = source.clone()
    target[:, :2, :2] = (source[:, :2, :2] + 1) % codebook           # an "edit" in one corner
    return EditBatch(target, source, torch.randn(b, 5, 8, generator=g), torch.randn(b, 8, generator=g),
                     torch.tensor([[16.0, 16.0, 0.0, 0.0, 6.0]]).expand(b, 5))


def test_mask_follows_the_schedule():
    g = torch.Generator().manual_seed(0)
    mask, progress = draw_mask((4000, 4, 4), "cosine", g)
    count = mask.flatten(1).sum(1)
    expected = (torch.cos(progress * math.pi / 2) * 16).round().clamp(min=1)
    assert torch.equal(count, expected.long())
    # cos(u pi/2) with u ~ U(0, 1): the truncated-arccos density, mean 2/pi.
    assert abs(float(torch.cos(progress * math.pi / 2).mean()) - 2 / math.pi) < 0.02
    assert progress_to_timestep(torch.tensor([0.0, 0.5, 0.999]), 16).tolist() == [15, 7, 0]


def test_text_dropout_replaces_whole_samples():
    batch = tiny_batch()
    null_s, null_p = torch.zeros(2, 5, 8), torch.zeros(2, 8)
    out = apply_text_dropout(batch, null_s, null_p, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(out.text_states, torch.zeros_like(batch.text_states))
    same = apply_text_dropout(batch, null_s, null_p, 0.0, None)
    assert same is batch


def test_optimizer_uses_paper_settings():
    model = tiny_model()
    opt = make_optimizer(model, OptimConfig())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-2 and no_decay["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    assert opt.defaults["lr"] == 1e-4 and OptimConfig().grad_clip == 10.0
    cfg = OptimConfig(lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == 0.1 and lr_at(10, cfg) == 1.0 and abs(lr_at(110, cfg) - 0.1) < 1e-9


def test_loss_is_masked_cross_entropy():
    model = tiny_model()
    out = edit_loss(model, tiny_batch(), ObjectiveConfig(), torch.Generator().manual_seed(0))
    assert out.loss.ndim == 0 and 0 < out.masked_fraction <= 1
    assert abs(float(out.loss.detach()) - math.log(16)) < 1.5          # untrained: near uniform


def test_a_few_steps_lower_the_loss():
    torch.set_num_threads(1)
    model = tiny_model()
    optim = OptimConfig(lr=3e-3)
    opt = make_optimizer(model, optim)
    objective = ObjectiveConfig(text_dropout=0.1)
    batch = tiny_batch()
    null = (torch.zeros(1, 5, 8), torch.zeros(1, 8))
    eval_gen = lambda: torch.Generator().manual_seed(123)          # same masks before and after
    with torch.no_grad():
        before = float(edit_loss(model, batch, objective, eval_gen()).loss)
    gen = torch.Generator().manual_seed(0)
    for step in range(30):
        stats = train_step(model, opt, batch, objective, optim, step, gen, null)
        assert math.isfinite(stats["loss"]) and stats["grad_norm"] >= 0
    with torch.no_grad():
        after = float(edit_loss(model, batch, objective, eval_gen()).loss)
    assert after < 0.7 * before, (before, after)


def test_vq_trainer_learns_and_round_trips():
    torch.set_num_threads(1)
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.9]])

    def sample(b, g):
        idx = torch.randint(0, 3, (b, 2, 2), generator=g)
        img = colours[idx].permute(0, 3, 1, 2)                        # (B, 3, 2, 2)
        return torch.nn.functional.interpolate(img, scale_factor=8, mode="nearest")

    cfg = VQConfig(block_out_channels=(8, 8), latent_channels=4, num_vq_embeddings=16,
                   norm_num_groups=4)
    train = VQTrainConfig(ae_steps=40, steps=40, batch_size=8, lr=5e-3, kmeans_batches=2,
                          log_every=10, restart_every=10, pixel_loss="mse", detail_weight=2.0)
    vq = train_vq(sample, cfg, train, seed=0)
    first, last = train.history[0]["loss"], train.history[-1]["mse"]
    assert last < 0.5 * first
    x = sample(4, torch.Generator().manual_seed(1))
    ids = encode_ids(vq, x)
    assert ids.shape == (4, 8, 8) and ids.max() < 16
    assert decode_ids(vq, ids).shape == x.shape


def test_agreement_mask_marks_unchanged_patches():
    from editmgt.train.shapes import agreement_mask

    source = np.zeros((2, 8, 8, 3), np.uint8)
    target = source.copy()
    target[0, 5, 1, 2] = 255                                  # one pixel of patch (1, 0)
    mask = agreement_mask(source, target, factor=4)
    assert mask.shape == (2, 2, 2)
    assert mask[0].tolist() == [[True, True], [False, True]]
    assert bool(mask[1].all())


def test_modal_codes_give_each_patch_its_most_frequent_id():
    from editmgt.train.shapes import modal_codes

    # Three 4 x 8 images, two patches each: a black patch and a white one.
    black, white = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    images = np.stack([np.concatenate([black, white], axis=1)] * 3)        # (3, 4, 8, 3)
    # The VQ gave black ids 7, 7, 2 and white ids 5, 9, 9: context-dependent ids.
    ids = torch.tensor([[[7, 5]], [[7, 9]], [[2, 9]]])
    other = np.stack([np.concatenate([white, white], axis=1)])             # (1, 4, 8, 3)
    other_ids = torch.tensor([[[9, 1]]])
    (modal, modal_other), purity = modal_codes([images, other], [ids, other_ids], factor=4)
    assert modal.tolist() == [[[7, 9]], [[7, 9]], [[7, 9]]]
    assert modal_other.tolist() == [[[9, 9]]]
    assert modal.dtype == ids.dtype
    # 5 of the 8 ids already were their patch's modal id.
    assert purity == pytest.approx(5 / 8)


def test_shapes_recipe_rejects_unknown_targets():
    from editmgt.train.shapes import ShapesRecipe

    assert ShapesRecipe(targets="canonical").targets == "canonical"
    with pytest.raises(ValueError, match="unknown targets 'nonsense'"):
        ShapesRecipe(targets="nonsense")
