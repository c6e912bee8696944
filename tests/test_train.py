"""The training objective (Eq. 1), optimiser settings and the VQ trainer, on tiny models."""

import dataclasses
import math

import pytest
import torch

from editmgt.models.attention import AttentionProbe
from editmgt.models.transformer import EditMGTTransformer, TransformerConfig
from editmgt.train.objective import (
    EditBatch,
    ObjectiveConfig,
    OptimConfig,
    apply_text_dropout,
    draw_edit_mask,
    draw_mask,
    edit_loss,
    grounding_loss,
    lr_at,
    make_optimizer,
    parameter_groups,
    progress_to_timestep,
    token_weights,
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


def test_plain_weights_are_the_masked_token_mean():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 4, 4, generator=g) < 0.5
    changed = torch.rand(3, 4, 4, generator=g) < 0.3
    w = token_weights(mask, changed, 0.0)
    assert torch.allclose(w, mask.float() / mask.sum())
    # the loss of edit_loss with the defaults is F.cross_entropy over the masked tokens
    logits, target = torch.randn(3, 7, 4, 4, generator=g), torch.randint(0, 7, (3, 4, 4), generator=g)
    labels = torch.where(mask, target, torch.full_like(target, -100))
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    assert torch.allclose((ce * w).sum(), torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100))


def test_edit_share_splits_each_sample_between_copied_and_changed_tokens():
    mask = torch.zeros(2, 2, 3, dtype=torch.bool)
    changed = torch.zeros(2, 2, 3, dtype=torch.bool)
    mask[0, 0, :3] = True                      # sample 0: 2 copied + 1 changed token masked
    changed[0, 0, 2] = True
    changed[0, 1, :] = True                    # changed but not masked: no weight
    mask[1] = True                             # sample 1: 6 copied tokens, no edit
    w = token_weights(mask, changed, 0.5)
    assert torch.allclose(w[0, 0], torch.tensor([0.125, 0.125, 0.25]))
    assert torch.all(w[0, 1] == 0)
    assert torch.allclose(w[1], torch.full((2, 3), 0.5 / 6))
    assert abs(float(w.sum()) - 1.0) < 1e-6
    # a sample whose masked tokens all changed gives them its whole weight
    w_all = token_weights(torch.ones(1, 2, 2, dtype=torch.bool), torch.ones(1, 2, 2, dtype=torch.bool), 0.5)
    assert torch.allclose(w_all, torch.full((1, 2, 2), 0.25))


def test_keep_share_weighs_the_objects_an_edit_leaves_alone():
    mask = torch.ones(2, 2, 4, dtype=torch.bool)
    changed = torch.zeros(2, 2, 4, dtype=torch.bool)
    objects = torch.zeros(2, 2, 4, dtype=torch.bool)
    changed[:, 0, 0] = True                    # both samples: 1 changed token ...
    objects[:, 0, :2] = True                   # ... inside an object, and 1 unchanged object token
    objects[0, 1, :] = True                    # sample 0 has 4 more object tokens, kept
    w = token_weights(mask, changed, 0.4, objects, keep_share=0.3)
    assert abs(float(w[0, 0, 0]) - 0.4 / 2) < 1e-6                       # edit share
    assert torch.allclose(w[0][objects[0] & ~changed[0]], torch.full((5,), 0.3 / 2 / 5))
    assert torch.allclose(w[0, 0, 2:], torch.full((2,), 0.3 / 2 / 2))    # the rest: background
    assert abs(float(w[1, 0, 1]) - 0.3 / 2) < 1e-6                      # one kept token, whole share
    assert abs(float(w.sum()) - 1.0) < 1e-6
    # without object tokens, or with keep_share 0, it is the two-group edit weighting
    assert torch.allclose(token_weights(mask, changed, 0.4, None, 0.3), token_weights(mask, changed, 0.4))
    assert torch.allclose(token_weights(mask, changed, 0.4, objects, 0.0), token_weights(mask, changed, 0.4))
    # a sample without masked object tokens gives their share to the groups it has
    w_bg = token_weights(mask[:1], torch.zeros_like(changed[:1]), 0.4, torch.zeros_like(objects[:1]), 0.3)
    assert torch.allclose(w_bg, torch.full((1, 2, 4), 1 / 8))


def test_object_masking_hides_every_object_with_the_edit():
    changed = torch.zeros(64, 4, 4, dtype=torch.bool)
    objects = torch.zeros(64, 4, 4, dtype=torch.bool)
    changed[:, 0, 0] = True
    objects[:, 0, :2] = True                   # the edited shape
    objects[:, 3, 3] = True                    # a shape the edit leaves alone
    plain, _ = draw_mask((64, 4, 4), "cosine", torch.Generator().manual_seed(5))
    only_edit, _ = draw_edit_mask(changed, ObjectiveConfig(mask_edit_prob=1.0),
                                  torch.Generator().manual_seed(5), objects)
    assert torch.equal(only_edit, plain | changed)                      # mask_objects off
    both, _ = draw_edit_mask(changed, ObjectiveConfig(mask_edit_prob=1.0, mask_objects=True),
                             torch.Generator().manual_seed(5), objects)
    assert torch.equal(both, plain | changed | objects)
    # the untouched shape is hidden exactly when the edit is: a hidden shape is not a cue
    half, _ = draw_edit_mask(changed, ObjectiveConfig(mask_edit_prob=0.5, mask_objects=True),
                             torch.Generator().manual_seed(5), objects)
    chosen = half[:, 0, 0] & ~plain[:, 0, 0]
    assert bool(half[chosen][:, 3, 3].all()) and int(chosen.sum()) > 0


def test_edit_masking_hides_every_changed_token_of_the_chosen_samples():
    changed = torch.zeros(64, 4, 4, dtype=torch.bool)
    changed[:, 1:3, 1:3] = True
    plain, _ = draw_mask((64, 4, 4), "cosine", torch.Generator().manual_seed(3))
    same, _ = draw_edit_mask(changed, ObjectiveConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(plain, same)                                     # off: Eq. 1's mask
    always, _ = draw_edit_mask(changed, ObjectiveConfig(mask_edit_prob=1.0), torch.Generator().manual_seed(3))
    assert torch.equal(always, plain | changed)
    half, _ = draw_edit_mask(changed, ObjectiveConfig(mask_edit_prob=0.5), torch.Generator().manual_seed(3))
    whole = half[:, 1:3, 1:3].flatten(1).all(1)
    assert torch.all(half | ~plain)                                     # never unmasks
    assert 16 <= int(whole.sum()) <= 56                                 # about half of 64, plus chance


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


def test_grounding_loss_is_the_kl_from_region_to_attention():
    region = torch.zeros(3, 4, 4)                              # token grid; factor 2 -> 2 x 2
    region[0, :2, :2] = 1                                      # one transformer token
    region[1] = 1                                              # all of them
    # sample 2 has no region: left out of the mean
    uniform = {4: torch.full((3, 2, 4), 0.2), 5: torch.full((3, 2, 4), 0.2)}  # 0.2 left for text
    kl = grounding_loss(uniform, region, factor=2)
    assert abs(float(kl) - math.log(4) / 2) < 1e-6             # (log 4 + 0) / 2 samples
    on_region = torch.tensor([[0.8, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2], [0.1, 0.3, 0.3, 0.1]])
    assert float(grounding_loss({4: on_region[:, None]}, region, factor=2)) < 1e-6
    none = grounding_loss(uniform, torch.zeros(3, 4, 4), factor=2)
    assert float(none) == 0.0
    with pytest.raises(ValueError, match="pools to"):
        grounding_loss(uniform, region, factor=1)


def test_grounding_loss_reads_only_the_rows_that_name_the_edit():
    region = torch.zeros(2, 4, 4)
    region[:, :2, :2] = 1                                      # token 0 of the 2 x 2 grid
    # rows: 0 = padding (uniform), 1 = the naming word (on the region), 2 = a verb (elsewhere)
    rows_maps = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.8, 0.0, 0.0, 0.0], [0.0, 0.0, 0.4, 0.4]])
    maps = {4: rows_maps.expand(2, 1, 3, 4).clone()}          # (B, heads, T, N)
    named = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert float(grounding_loss(maps, region, factor=2, rows=named)) < 1e-6
    every = grounding_loss(maps, region, factor=2, rows=torch.ones(2, 3))
    share = ((0.2 + 0.8 + 0.0) / 3) / 0.8                      # token 0's share of the row mean
    assert abs(float(every) + math.log(share)) < 1e-5
    # a sample without naming rows is left out, as one without a region
    named[1] = 0
    maps[4][1, 0, 1] = torch.tensor([0.0, 0.8, 0.0, 0.0])    # would cost log(...) if counted
    assert float(grounding_loss(maps, region, factor=2, rows=named)) < 1e-6
    assert float(grounding_loss(maps, region, factor=2, rows=torch.zeros(2, 3))) == 0.0


def test_text_dropout_clears_the_dropped_samples_region():
    batch = tiny_batch()
    batch = dataclasses.replace(batch, edit_region=torch.ones(8, 4, 4))
    nulls = (torch.zeros(1, 5, 8), torch.zeros(1, 8))
    g = torch.Generator().manual_seed(3)
    out = apply_text_dropout(batch, *nulls, p=0.5, generator=g)
    dropped = (out.text_states == 0).flatten(1).all(1)
    assert 0 < int(dropped.sum()) < 8
    assert torch.equal(out.edit_region.flatten(1).amax(1) == 0, dropped)


def test_grounding_on_named_rows_trains_those_rows_attention():
    torch.set_num_threads(1)
    model = tiny_model()
    optim = OptimConfig(lr=3e-3)
    opt = make_optimizer(model, optim)
    batch = tiny_batch()
    region = (batch.target_tokens != batch.source_tokens).float()
    rows = torch.zeros(8, 5)
    rows[:, 3] = 1                                             # the text row that names the edit
    batch = dataclasses.replace(batch, edit_region=region, region_rows=rows)
    objective = ObjectiveConfig(text_dropout=0.0, grounding_weight=1.0)

    def named_share() -> float:
        """The corner token's share of the naming row's attention."""
        with torch.no_grad():
            out = model(tokens=batch.target_tokens, text_states=batch.text_states,
                        pooled_text=batch.pooled_text, micro_conds=batch.micro_conds,
                        timestep=torch.zeros(8), reference_tokens=batch.source_tokens,
                        probe=AttentionProbe((1,), keep_rows=True))
        att = out.text_to_image[1].mean(1)[:, 3]               # (B, 4): row 3
        return float((att[:, 0] / att.sum(-1)).mean())

    named_before = named_share()
    gen = torch.Generator().manual_seed(0)
    kls = [train_step(model, opt, batch, objective, optim, step, gen)["grounding"]
           for step in range(40)]
    named_after = named_share()
    assert named_before < 0.4 and named_after > 0.9, (named_before, named_after)
    assert kls[-1] < 0.2 * kls[0]


def test_grounding_moves_the_hold_blocks_attention_onto_the_region():
    torch.set_num_threads(1)
    model = tiny_model()
    optim = OptimConfig(lr=3e-3)
    opt = make_optimizer(model, optim)
    batch = tiny_batch()
    region = (batch.target_tokens != batch.source_tokens).float()   # the edited corner
    region[0] = 0                                              # e.g. a dropped prompt
    batch = dataclasses.replace(batch, edit_region=region)
    objective = ObjectiveConfig(text_dropout=0.0, grounding_weight=1.0)
    blocks = (1,)                                              # default_hold_blocks(2)

    def share_on_region() -> float:
        with torch.no_grad():
            out = model(tokens=batch.target_tokens, text_states=batch.text_states,
                        pooled_text=batch.pooled_text, micro_conds=batch.micro_conds,
                        timestep=torch.zeros(8), reference_tokens=batch.source_tokens,
                        probe=AttentionProbe(blocks))
        attention = out.text_to_image[1].mean(1)[1:]          # (B - 1, 4): the 2 x 2 grid
        return float((attention[:, 0] / attention.sum(1)).mean())   # corner = token 0

    before = share_on_region()
    gen = torch.Generator().manual_seed(0)
    kls = [train_step(model, opt, batch, objective, optim, step, gen)["grounding"]
           for step in range(40)]
    after = share_on_region()
    assert 0.15 < before < 0.4 and after > 0.8, (before, after)
    assert kls[-1] < 0.2 * kls[0]
    plain = train_step(model, opt, dataclasses.replace(batch, edit_region=None), objective,
                       optim, 40, gen)
    assert math.isnan(plain["grounding"])                       # no region: no term


def test_detached_text_keeps_the_grounding_out_of_the_text_stream():
    model = tiny_model()
    batch = tiny_batch()
    region = (batch.target_tokens != batch.source_tokens).float()

    def text_gradient(detach: bool) -> float:
        states = batch.text_states.clone().requires_grad_(True)
        out = model(tokens=batch.target_tokens, text_states=states, pooled_text=batch.pooled_text,
                    micro_conds=batch.micro_conds, timestep=torch.zeros(8),
                    reference_tokens=batch.source_tokens,
                    probe=AttentionProbe((0,), detach_text=detach))        # the double block
        grounding_loss(out.text_to_image, region, factor=2).backward()
        return float(states.grad.abs().sum())

    assert text_gradient(detach=False) > 1e-3 and text_gradient(detach=True) < 1e-6
    assert ObjectiveConfig().grounding_text_grad


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


def _blocks_sampler(colours: torch.Tensor):
    """16 x 16 images of 2 x 2 blocks of random palette colours (each block 8 x 8 pixels)."""
    def sample(b, g):
        idx = torch.randint(0, colours.shape[0], (b, 2, 2), generator=g)
        img = colours[idx].permute(0, 3, 1, 2)                        # (B, 3, 2, 2)
        return torch.nn.functional.interpolate(img, scale_factor=8, mode="nearest")
    return sample


def test_patch_keys_and_means_group_equal_patches():
    from editmgt.train.vq_train import patch_keys, patch_means

    img = torch.zeros(2, 3, 4, 8)
    img[0, :, :, 4:] = 1.0                                    # image 0: black | white
    img[1, 0, :, :4] = 0.5                                    # image 1: dark red | black
    keys = patch_keys(img, 4)                                 # (2, 1, 2)
    assert keys.shape == (2, 1, 2)
    assert keys[0, 0, 0] == keys[1, 0, 1]                     # black == black
    assert len({int(k) for k in keys.flatten()}) == 3
    latents = torch.arange(4, dtype=torch.float32).view(2, 1, 1, 2)   # (B, C, h, w): 0 1 | 2 3
    means = patch_means(latents, keys)                        # one row per distinct patch
    # white = 1, dark red = 2, black = mean of 0 (image 0) and 3 (image 1)
    assert sorted(means.flatten().tolist()) == [1.0, 1.5, 2.0]


def test_modal_id_table_and_lookup():
    from editmgt.train.vq_train import lookup_modal

    table_keys = torch.tensor([3, 10, 42])
    table_ids = torch.tensor([7, 1, 5])
    keys = torch.tensor([[42, 3], [11, 10]])
    assert lookup_modal(keys, table_keys, table_ids).tolist() == [[5, 7], [-100, 1]]


def test_codebook_from_patches_and_id_locality():
    """The codebook built from distinct patches, then the locality phase: the same patch
    gets the same id whatever the rest of the image holds."""
    from editmgt.train.vq_train import modal_id_table, train_id_locality

    torch.set_num_threads(1)
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.9], [0.1, 0.8, 0.2]])
    sample = _blocks_sampler(colours)
    cfg = VQConfig(block_out_channels=(8, 8), latent_channels=4, num_vq_embeddings=32,
                   norm_num_groups=4)
    train = VQTrainConfig(ae_steps=40, steps=40, batch_size=8, lr=5e-3, kmeans_batches=4,
                          log_every=10, restart_every=10, pixel_loss="mse",
                          codebook_from="patches")
    vq = train_vq(sample, cfg, train, seed=0)
    probe = [sample(8, torch.Generator().manual_seed(i)) for i in range(4)]
    _, _, before = modal_id_table(vq, probe, factor=2)
    train.locality_steps, train.locality_lr, train.locality_batches = 100, 5e-3, 8
    train_id_locality(vq, sample, train, torch.Generator().manual_seed(1))
    _, _, after = modal_id_table(vq, probe, factor=2)
    assert after > before and after > 0.9, (before, after)
    assert [h["phase"] for h in train.history].count("locality") >= 2


def test_codebook_from_rejects_unknown_values():
    cfg = VQConfig(block_out_channels=(8, 8), latent_channels=4, num_vq_embeddings=8,
                   norm_num_groups=4)
    with pytest.raises(ValueError, match="codebook_from"):
        train_vq(_blocks_sampler(torch.rand(2, 3)), cfg,
                 VQTrainConfig(ae_steps=1, steps=1, batch_size=2, codebook_from="sometimes"))


def test_parameter_groups_scale_a_submodules_rate_and_keep_the_order():
    """A scaled submodule gets groups of its own, after the rest within each weight-decay
    class, so the parameters (and the clipping norm over them) keep their order; train_step
    sets each group's rate to the schedule's times its scale."""
    first, second = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    both = torch.nn.ModuleList([first, second])
    plain = parameter_groups(both, 0.01)
    assert [(g["weight_decay"], g["lr_scale"], len(g["params"])) for g in plain] == [(0.01, 1.0, 2), (0.0, 1.0, 2)]
    scaled = parameter_groups(both, 0.01, {second: 0.25})
    assert [(g["weight_decay"], g["lr_scale"]) for g in scaled] == [(0.01, 1.0), (0.01, 0.25), (0.0, 1.0), (0.0, 0.25)]
    assert scaled[1]["params"] == [second.weight] and scaled[3]["params"] == [second.bias]
    assert [id(p) for g in scaled for p in g["params"]] == [id(p) for g in plain for p in g["params"]]
    assert len(parameter_groups(both, 0.01, {second: 1.0})) == 2          # a scale of 1 is no group

    torch.manual_seed(0)
    model = tiny_model()
    optim = OptimConfig(lr=2e-3)
    opt = make_optimizer(model, optim, {model.transformer_blocks: 0.5})
    train_step(model, opt, tiny_batch(), ObjectiveConfig(text_dropout=0.0), optim, 0, torch.Generator().manual_seed(0))
    assert sorted({g["lr"] for g in opt.param_groups}) == [1e-3, 2e-3]


def _copy_accuracy_after_training(copy_heads: int, steps: int = 120) -> float:
    """Train a tiny transformer to reproduce random token grids from the reference stream
    (nothing but same-position attention can solve it); accuracy on fresh grids."""
    from editmgt.train.init import init_copy_heads

    torch.set_num_threads(1)
    model = tiny_model(codebook=16)
    if copy_heads:
        init_copy_heads(model, heads=copy_heads)
    optim = OptimConfig(lr=3e-3, warmup_steps=10)
    opt = make_optimizer(model, optim)
    g = torch.Generator().manual_seed(0)
    text, pooled = torch.zeros(1, 5, 8), torch.zeros(1, 8)
    micro = torch.tensor([[16.0, 16.0, 0.0, 0.0, 6.0]])

    def batch(b: int) -> EditBatch:
        src = torch.randint(0, 16, (b, 8, 8), generator=g)
        return EditBatch(src, src, text.expand(b, -1, -1), pooled.expand(b, -1), micro.expand(b, -1))

    for step in range(steps):
        train_step(model, opt, batch(16), ObjectiveConfig(text_dropout=0.0), optim, step, g)
    with torch.no_grad():
        return edit_loss(model, batch(64), ObjectiveConfig(), g).accuracy


def test_copy_heads_make_copying_learnable():
    from editmgt.train.init import positional_dims

    assert positional_dims((8, 12, 12), pairs=2) == [8, 9, 10, 11, 20, 21, 22, 23]
    with pytest.raises(ValueError, match="rotation pairs"):
        positional_dims((4, 2, 2), pairs=2)
    plain, primed = _copy_accuracy_after_training(0), _copy_accuracy_after_training(1)
    assert plain < 0.3 and primed > 0.9, (plain, primed)


def _one_patch_images(values: list[float], counts: list[int]) -> torch.Tensor:
    """Images of a single 2 x 2 patch (one token at factor 2), `counts[i]` of grey level values[i]."""
    return torch.cat([torch.full((n, 3, 2, 2), v) for v, n in zip(values, counts)])


def test_pixel_codes_give_each_distinct_patch_its_own_code_when_there_is_room():
    from editmgt.train.vq_train import pixel_codes

    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.9], [0.1, 0.8, 0.2]])
    images = _blocks_sampler(colours)(32, torch.Generator().manual_seed(0))   # (32, 3, 16, 16)
    codes, stats = pixel_codes([images], factor=2, num_codes=8)
    assert stats["patches"] == 4 and stats["codes_used"] == 4
    assert stats["centre_l1_tokens"] == stats["centre_l1_distinct"] == 0.0
    ids = codes.lookup(images)                                               # (32, 8, 8)
    assert ids.shape == (32, 8, 8)
    # one id per colour, a different one for each colour, whatever the rest of the image
    for c in range(4):
        where = (images.permute(0, 2, 3, 1)[:, ::2, ::2] - colours[c]).abs().sum(-1) < 1e-6
        assert ids[where].unique().numel() == 1
    assert ids.unique().numel() == 4
    # a patch the codes were not built from has no id
    assert (codes.lookup(torch.zeros(1, 3, 2, 2)) == -100).all()


def test_pixel_codes_weigh_frequent_patches_by_the_weight_power():
    """Three grey patches, two codes: the dark pair shares a code. Weighed by count (power 1)
    its centre sits on the frequent black patch, so most tokens decode exactly; unweighted
    (power 0) it sits half-way and every black token is off."""
    from editmgt.train.vq_train import pixel_codes

    images = _one_patch_images([0.0, 0.2, 1.0], [1000, 1, 1])
    by_count, stats_1 = pixel_codes([images], factor=2, num_codes=2, weight_power=1.0)
    alike, stats_0 = pixel_codes([images], factor=2, num_codes=2, weight_power=0.0)
    black, grey, white = (codes_ids := by_count.lookup(images).flatten())[0], codes_ids[1000], codes_ids[1001]
    assert black == grey != white
    assert by_count.centres[black].max() < 0.001
    assert abs(float(alike.centres[alike.lookup(images).flatten()[0]].mean()) - 0.1) < 0.002
    assert stats_1["centre_l1_tokens"] < 0.001 < 0.09 < stats_0["centre_l1_tokens"]


def _fitted_to_codes(**train_kw):
    """A tiny VQ fitted to the pixel codes of 2 x 2-block images of four colours:
    (sampler, codes, VQConfig, VQTrainConfig, vq)."""
    from editmgt.train.vq_train import pixel_codes

    torch.set_num_threads(1)
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.9], [0.1, 0.8, 0.2]])
    sample = _blocks_sampler(colours)
    codes, _ = pixel_codes([sample(64, torch.Generator().manual_seed(0))], factor=2, num_codes=16)
    cfg = VQConfig(block_out_channels=(8, 8), latent_channels=4, num_vq_embeddings=16, norm_num_groups=4)
    train = VQTrainConfig(ae_steps=0, batch_size=8, lr=5e-3, pixel_loss="mse", codebook_from="pixels", **train_kw)
    return sample, codes, cfg, train, train_vq(sample, cfg, train, seed=0, codes=codes)


def test_vq_fitted_to_pixel_codes_gives_them_back():
    """codebook_from="pixels": the encoder learns the fixed codes (the same patch, the same id,
    on images it never saw) and the decoder draws them back."""
    sample, codes, cfg, train, vq = _fitted_to_codes(steps=120, log_every=20)
    fits = [h for h in train.history if h["phase"] == "fit"]
    assert fits[-1]["ce"] < 0.2 * fits[0]["ce"] and fits[-1]["code_agreement"] > 0.99
    x = sample(16, torch.Generator().manual_seed(7))
    ids = encode_ids(vq, x)
    assert float((ids == codes.lookup(x)).float().mean()) > 0.99
    assert float((decode_ids(vq, ids) - x).abs().mean()) < 0.3 * fits[0]["l1"]
    with pytest.raises(ValueError, match="needs the patch codes"):
        train_vq(sample, cfg, VQTrainConfig(ae_steps=0, steps=1, codebook_from="pixels"))
    with pytest.raises(ValueError, match="ae_steps"):
        train_vq(sample, cfg, VQTrainConfig(ae_steps=5, steps=1, codebook_from="pixels"), codes=codes)
    with pytest.raises(ValueError, match="only it takes them"):
        train_vq(sample, cfg, VQTrainConfig(ae_steps=1, steps=1, codebook_from="patches"), codes=codes)


def test_code_vectors_from_centres_keep_what_the_codes_look_like():
    """code_vectors="centres": unit variance per dimension, and the codes of two near-equal
    patches are closer than those of patches far apart (random draws know nothing of that)."""
    from editmgt.train.vq_train import code_vectors

    gen = torch.Generator().manual_seed(0)
    centres = torch.rand(64, 12, generator=gen)
    centres[1] = centres[0] + 0.01                                       # a near twin of code 0
    vectors = code_vectors(centres, 4, "centres", torch.Generator().manual_seed(1))
    assert vectors.shape == (64, 4) and vectors.dtype == torch.float32
    assert torch.allclose(vectors.std(0), torch.ones(4), atol=0.35)
    far = (vectors[0] - vectors[2:]).norm(dim=1)
    assert (vectors[0] - vectors[1]).norm() < far.median()
    assert torch.equal(code_vectors(centres, 4, "random", torch.Generator().manual_seed(1)),
                       torch.randn(64, 4, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="code_vectors"):
        code_vectors(centres, 4, "pca", gen)


def test_decoder_steps_train_the_decoder_alone():
    """After the joint steps, decoder_steps fit the decoder to the true code grids: its pixel
    loss falls while the encoder (and so every id) stays as it was."""
    from editmgt.train.vq_train import fit_decoder_to_codes

    sample, codes, _, train, vq = _fitted_to_codes(steps=30, log_every=10, code_vectors="centres")
    encoder = {k: v.clone() for k, v in vq.encoder.state_dict().items()}
    train.decoder_steps, train.decoder_lr = 80, 5e-3
    fit_decoder_to_codes(vq, sample, codes, train, torch.Generator().manual_seed(1))
    steps = [h for h in train.history if h["phase"] == "decoder"]
    assert steps[0]["step"] == 0 and steps[-1]["step"] == 79
    assert steps[-1]["pixel"] < 0.5 * steps[0]["pixel"]
    assert all(torch.equal(v, vq.encoder.state_dict()[k]) for k, v in encoder.items())


