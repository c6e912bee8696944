"""MaskGIT step: determinism, per-sample RNG, region-hold, user masks, schedule counts."""

import pytest
import torch

from editmgt.errors import InputError
from editmgt.sampling.sampler import MaskGITSampler, StepOutput
from editmgt.sampling.schedule import remask_count, temperatures

MASK, V, L, N = 71, 64, 64, 8


def _logits(step, batch, seed=123):
    """Fixed logits per step, independent of the sampler's RNG."""
    g = torch.Generator().manual_seed(seed + step)
    return 3 * torch.randn(batch, L, V, generator=g)


def _run(seeds, tokens=None, hold_lambda=None, source=None, scores=None, start_ratio=None,
         steps=N, logits_seed=123):
    """Whole decode; returns the final canvas and every StepOutput."""
    batch = len(seeds)
    sampler = MaskGITSampler(MASK)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    canvas = torch.full((batch, L), MASK) if tokens is None else tokens.clone()
    temps = temperatures(steps)
    trace = []
    for i in range(steps):
        out = sampler.step(_logits(i, batch, logits_seed), canvas, i, steps, temps[i], gens,
                           start_ratio=start_ratio, hold_scores=scores,
                           hold_lambda=hold_lambda, source_tokens=source)
        trace.append(out)
        canvas = out.tokens
    return canvas, trace


def test_same_seeds_identical_and_different_seeds_differ():
    a, _ = _run([1, 2])
    b, _ = _run([1, 2])
    c, _ = _run([3, 4])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batch_equals_one_by_one():
    g = torch.Generator().manual_seed(9)
    source = torch.randint(0, V, (3, L), generator=g)
    scores = torch.rand(3, L, generator=g)
    lam = torch.tensor([0.0, 0.4, 0.8])
    batch, _ = _run([5, 6, 7], hold_lambda=lam, source=source, scores=scores)
    for i, seed in enumerate([5, 6, 7]):
        # the logits of sample i in the batch are row i of the batched draw
        sampler = MaskGITSampler(MASK)
        gen = [torch.Generator().manual_seed(seed)]
        canvas = torch.full((1, L), MASK)
        for step in range(N):
            logits = _logits(step, 3)[i:i + 1]
            canvas = sampler.step(logits, canvas, step, N, temperatures(N)[step], gen,
                                  hold_scores=scores[i:i + 1], hold_lambda=lam[i:i + 1],
                                  source_tokens=source[i:i + 1]).tokens
        assert torch.equal(canvas[0], batch[i])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lambda_one_returns_source_and_zero_holds_nothing(seed):
    g = torch.Generator().manual_seed(100 + seed)
    source = torch.randint(0, V, (2, L), generator=g)
    scores = torch.rand(2, L, generator=g)
    scores[:, :4] = 1.0                                    # exact 1 must be held too
    final, trace = _run([seed, seed + 10], hold_lambda=torch.tensor([1.0, 0.0]),
                        source=source, scores=scores)
    assert torch.equal(final[0], source[0])
    assert all(out.held[0].equal(out.unknown[0]) for out in trace)
    assert not any(out.held[1].any() for out in trace)
    free, _ = _run([seed, seed + 10])
    assert torch.equal(final[1], free[1])                  # lambda 0 == no hold at all


def test_hold_only_below_lambda():
    g = torch.Generator().manual_seed(4)
    source = torch.randint(0, V, (1, L), generator=g)
    scores = torch.rand(1, L, generator=g)
    _, trace = _run([3], hold_lambda=torch.tensor([0.5]), source=source, scores=scores)
    for out in trace:
        assert torch.equal(out.held, out.unknown & (scores < 0.5))
        assert torch.equal(out.predicted[out.held], source[out.held])


def test_partial_start_keeps_outside_of_mask():
    g = torch.Generator().manual_seed(5)
    source = torch.randint(0, V, (2, L), generator=g)
    user_mask = torch.zeros(2, L, dtype=torch.bool)
    user_mask[0, 10:30] = True
    user_mask[1, 40:44] = True
    start = torch.where(user_mask, torch.full_like(source, MASK), source)
    ratio = user_mask.float().mean(-1)
    final, trace = _run([1, 2], tokens=start, start_ratio=ratio)
    assert torch.equal(final[~user_mask], source[~user_mask])
    assert not (final == MASK).any()
    for out in trace:
        assert not out.remasked[~user_mask].any()
        assert torch.equal(out.tokens[~user_mask], source[~user_mask])


def test_remask_counts_follow_schedule_and_run_finishes():
    final, trace = _run([11, 12], steps=N)
    for i, out in enumerate(trace):
        assert isinstance(out, StepOutput)
        expected = remask_count(i, N, L, out.unknown.sum(-1))
        assert torch.equal(out.num_remasked, expected)
        assert torch.equal(out.remasked.sum(-1), expected)
        assert torch.equal((out.tokens == MASK).sum(-1), expected)
        assert not (out.remasked & ~out.unknown).any()     # known tokens never re-masked
    assert not trace[-1].remasked.any()
    assert not (final == MASK).any()
    assert ((final >= 0) & (final < V)).all()


def test_fully_masked_counts_match_released_table_for_16_steps():
    _, trace = _run([0], steps=16)
    observed = [int(out.remasked.sum()) for out in trace]
    table = [63, 62, 61, 59, 56, 53, 49, 45, 40, 35, 30, 24, 18, 12, 6, 0]
    assert observed == table


@pytest.mark.parametrize("draw", ["released", "inverse-cdf"])
def test_sampling_follows_probabilities(draw):
    logits = torch.full((1, 4000, 3), -1e4)
    logits[..., 1] = 0.0
    logits[..., 2] = 0.0                                   # tokens 1 and 2 at 1/2 each
    out = MaskGITSampler(MASK).step(logits, torch.full((1, 4000), MASK), 15, 16, 0.0,
                                    [torch.Generator().manual_seed(0)], draw=draw)
    picked = out.tokens
    assert set(picked.unique().tolist()) == {1, 2}
    assert abs((picked == 1).float().mean().item() - 0.5) < 0.05


def test_sample_temperature_sharpens_the_draw_and_one_is_the_released_draw():
    logits = torch.zeros(1, 4000, 3)
    logits[..., 1] = 1.0                                   # p(1) = e / (e + 2) = 0.58 at t = 1
    canvas = torch.full((1, 4000), MASK)

    def share_of_one(t):
        out = MaskGITSampler(MASK).step(logits, canvas, 15, 16, 0.0, [torch.Generator().manual_seed(0)],
                                        sample_temperature=t)
        return (out.tokens == 1).float().mean().item()

    assert abs(share_of_one(1.0) - 0.576) < 0.03
    assert abs(share_of_one(0.5) - 0.787) < 0.03           # e^2 / (e^2 + 2)
    assert share_of_one(0.05) > 0.999
    default = MaskGITSampler(MASK).step(_logits(0, 2), torch.full((2, L), MASK), 0, N, 2.0,
                                        [torch.Generator().manual_seed(i) for i in range(2)])
    explicit = MaskGITSampler(MASK).step(_logits(0, 2), torch.full((2, L), MASK), 0, N, 2.0,
                                         [torch.Generator().manual_seed(i) for i in range(2)],
                                         sample_temperature=1.0)
    assert torch.equal(default.tokens, explicit.tokens)
    with pytest.raises(InputError, match="sample_temperature"):
        MaskGITSampler(MASK).step(logits, canvas, 15, 16, 0.0, [torch.Generator()], sample_temperature=0.0)


def test_bf16_logits_and_device():
    logits = _logits(0, 2).to(torch.bfloat16)
    out = MaskGITSampler(MASK).step(logits, torch.full((2, L), MASK), 0, N, 2.0,
                                    [torch.Generator().manual_seed(i) for i in range(2)])
    assert out.tokens.dtype == torch.int64 and out.confidence.dtype == torch.float32
    assert out.tokens.device == logits.device


def test_bad_inputs():
    sampler = MaskGITSampler(MASK)
    tokens = torch.full((2, L), MASK)
    with pytest.raises(InputError):
        sampler.step(_logits(0, 2), tokens, 0, N, 1.0, [torch.Generator()])
    with pytest.raises(InputError):
        sampler.step(_logits(0, 2), tokens, 0, N, 1.0, [torch.Generator()] * 2,
                     hold_lambda=torch.ones(2))
    with pytest.raises(InputError):
        MaskGITSampler(MASK, schedule="square")
    with pytest.raises(InputError, match="draw"):
        sampler.step(_logits(0, 2), tokens, 0, N, 1.0, [torch.Generator()] * 2, draw="gumbel")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("draw", ["released", "inverse-cdf"])
def test_cuda_step_has_no_host_sync(draw):
    device = torch.device("cuda")
    gens = [torch.Generator(device=device).manual_seed(i) for i in range(2)]
    logits = _logits(0, 2).to(device)
    tokens = torch.full((2, L), MASK, device=device)
    scores = torch.rand(2, L, device=device)
    lam = torch.tensor([0.3, 1.0], device=device)
    temps = temperatures(N, device=device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = MaskGITSampler(MASK).step(logits, tokens, 0, N, temps[0], gens,
                                        hold_scores=scores, hold_lambda=lam,
                                        source_tokens=tokens.clone().fill_(3), draw=draw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.tokens.device.type == "cuda"
