"""One MaskGIT decoding step with region-hold and per-sample randomness.

``MaskGITSampler.step`` is a pure function of its arguments: it samples every position
from the (already guided) logits, keeps known tokens, reverts low-score positions to
the source tokens (region-hold, EditMGT section 3.2), and masks the least confident
of the newly sampled tokens again (all but the last step). Each sample draws its own
noise from its own ``torch.Generator``, so a batch gives the same tokens as its samples
run one by one. Nothing is synced to the host.

Two draws of the same distribution (``draw``):

- ``"released"`` draws what the released scheduler draws for the same generator: its
  ``torch.multinomial`` over the (positions x codebook) probabilities is
  ``argmax(p / E)`` with ``E`` one ``exponential_`` of that shape (torch's own algorithm
  for one sample per row), then, on every step but the last, one uniform row for the
  re-masking's Gumbel noise. With the same generator state it picks the same tokens.
- ``"inverse-cdf"`` draws one uniform row of 2 x positions per step (row 0 picks each token
  from the cumulative probabilities, row 1 feeds the Gumbel noise): the same distribution
  for a fraction of the random numbers, which is several times cheaper on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from editmgt.errors import InputError
from editmgt.sampling.schedule import SCHEDULES, remask_count
from editmgt.settings import DRAWS

_TINY = 1e-20


@dataclass
class StepOutput:
    """What one step produced; every tensor is (B, L) on the logits' device."""

    tokens: Tensor          # int64, next canvas (mask id where re-masked)
    predicted: Tensor       # int64, full prediction after known tokens and hold
    held: Tensor            # bool, positions set to the source token this step
    remasked: Tensor        # bool, positions masked again for the next step
    confidence: Tensor      # float32, log p(predicted token) (no noise)
    sampled: Tensor         # int64, raw draw from the model before keep / hold
    unknown: Tensor         # bool, positions that were masked when the step began
    num_remasked: Tensor    # int64 (B,), re-mask count asked of the schedule


def _gumbel(uniform: Tensor) -> Tensor:
    """Gumbel(0, 1) noise from uniform draws in [0, 1), same shape."""
    return -torch.log((-torch.log(uniform.clamp(_TINY))).clamp(_TINY))


def _per_sample(value: Union[float, Tensor], batch: int, device: torch.device) -> Tensor:
    """Python number, 0-dim or (B,) tensor -> (B, 1) float32 on ``device`` (no host sync)."""
    if isinstance(value, Tensor):
        value = value.to(device=device, dtype=torch.float32)
    else:
        value = torch.full((), float(value), dtype=torch.float32, device=device)
    return value.reshape(-1, 1).expand(batch, 1)


class MaskGITSampler:
    """MaskGIT step (Chang et al. 2022) as used by Meissonic / EditMGT.

    mask_token_id: id of the mask token in the canvas.
    schedule: mask schedule name from :mod:`editmgt.sampling.schedule`.
    """

    def __init__(self, mask_token_id: int, schedule: str = "cosine") -> None:
        if schedule not in SCHEDULES:
            raise InputError(f"unknown mask schedule {schedule!r}; expected one of {SCHEDULES}")
        self.mask_token_id = int(mask_token_id)
        self.schedule = schedule

    @staticmethod
    def _check_generators(generators: Sequence[torch.Generator], batch: int) -> None:
        if len(generators) != batch:
            raise InputError(f"need one generator per sample: got {len(generators)} for B={batch}")

    def _draw(self, probs: Tensor, generators: Sequence[torch.Generator], draw: str,
              last_step: bool) -> tuple[Tensor, Optional[Tensor]]:
        """Sampled tokens (B, L) from probs (B, L, V) float32, and the (B, L) uniforms of the
        Gumbel noise (None on the last step of the released draw, which draws none)."""
        batch, length, _ = probs.shape
        device = probs.device
        if draw == "inverse-cdf":
            noise = torch.stack([torch.rand((2, length), generator=g, device=g.device).to(device, non_blocking=True)
                                 for g in generators])                       # (B, 2, L)
            cdf = probs.cumsum(dim=-1)
            target = (noise[:, 0] * cdf[..., -1]).unsqueeze(-1)              # (B, L, 1)
            sampled = torch.searchsorted(cdf, target, right=True).squeeze(-1)
            return sampled.clamp(max=probs.shape[-1] - 1), noise[:, 1]
        sampled, uniforms = [], []
        for p, g in zip(probs, generators):                                  # p: (L, V)
            exponential = torch.empty(p.shape, dtype=torch.float32, device=g.device).exponential_(1, generator=g)
            sampled.append((p / exponential.to(device, non_blocking=True)).argmax(dim=-1))
            if not last_step:
                uniforms.append(torch.empty(length, dtype=torch.float32, device=g.device)
                                .uniform_(0, 1, generator=g).to(device, non_blocking=True))
        return torch.stack(sampled), (torch.stack(uniforms) if uniforms else None)

    def step(self, logits: Tensor, tokens: Tensor, step_index: int, num_steps: int,
             temperature: Union[float, Tensor], generators: Sequence[torch.Generator],
             start_ratio: Optional[Tensor] = None, hold_scores: Optional[Tensor] = None,
             hold_lambda: Optional[Tensor] = None,
             source_tokens: Optional[Tensor] = None,
             sample_temperature: float = 1.0, draw: str = "released") -> StepOutput:
        """Advance the canvas by one step.

        logits: (B, L, V) guided logits (any float dtype; softmax runs in float32).
        tokens: (B, L) int64 canvas; mask id marks unknown positions.
        temperature: float or (B,) / 0-dim tensor (on the logits' device), Gumbel noise
            scale for re-masking.
        generators: B generators, one per sample (create them on the logits' device;
            CPU generators work but their draws are copied over every step).
        start_ratio: (B,) masked fraction at the start (None = 1, a full edit).
        hold_scores: (B, L) localisation scores; hold_lambda: (B,) thresholds;
        source_tokens: (B, L) ids taken where a newly sampled position scores below lambda
        (every such position when lambda >= 1, none when lambda <= 0).
        sample_temperature: > 0; tokens are drawn from softmax(logits / t), and their
        confidence read from it too (1, the released sampler's draw; lower is more greedy).
        draw: "released" or "inverse-cdf" (see the module docstring).
        """
        if logits.ndim != 3 or tokens.shape != logits.shape[:2]:
            raise InputError(f"expected logits (B, L, V) and tokens (B, L); got "
                             f"{tuple(logits.shape)} and {tuple(tokens.shape)}")
        if not sample_temperature > 0:
            raise InputError(f"sample_temperature must be > 0, got {sample_temperature!r}")
        if draw not in DRAWS:
            raise InputError(f"unknown draw {draw!r}; expected one of {DRAWS}")
        batch, length, _ = logits.shape
        self._check_generators(generators, batch)
        device = logits.device
        tokens = tokens.to(device)
        unknown = tokens == self.mask_token_id                               # (B, L)

        # 1. Sample every position (the softmax of the logits as given when t = 1, as released).
        logits = logits.float()
        probs = torch.softmax(logits if sample_temperature == 1 else logits / sample_temperature, dim=-1)
        last_step = step_index == num_steps - 1
        sampled, uniforms = self._draw(probs, generators, draw, last_step)    # (B, L), (B, L) or None

        # 2. Keep known tokens.
        predicted = torch.where(unknown, sampled, tokens)

        # 3. Region-hold: newly sampled low-score positions take the source token.
        held = torch.zeros_like(unknown)
        if hold_lambda is not None:
            if hold_scores is None or source_tokens is None:
                raise InputError("hold_lambda needs hold_scores and source_tokens")
            lam = _per_sample(hold_lambda, batch, device)                    # (B, 1)
            scores = hold_scores.to(device=device, dtype=torch.float32)
            region = (scores < lam) | (lam >= 1)
            region = region & (lam > 0)
            held = unknown & region
            predicted = torch.where(held, source_tokens.to(device), predicted)

        confidence = torch.log(
            probs.gather(-1, predicted.clamp(max=probs.shape[-1] - 1).unsqueeze(-1))
            .squeeze(-1).clamp(_TINY))                                       # (B, L)

        # 4. Re-mask the least confident new tokens (not on the last step).
        count = remask_count(step_index, num_steps, length, unknown.sum(dim=-1),
                             start_ratio, self.schedule)                     # (B,)
        if last_step:
            remasked = torch.zeros_like(unknown)
            return StepOutput(predicted, predicted, held, remasked, confidence,
                              sampled, unknown, count)

        temp = _per_sample(temperature, batch, device)                      # (B, 1)
        noisy = confidence + temp * _gumbel(uniforms)
        noisy = torch.where(unknown, noisy, torch.full_like(noisy, float("inf")))
        ordered = noisy.sort(dim=-1).values
        cut_off = ordered.gather(-1, count.clamp(max=length - 1).unsqueeze(-1))   # (B, 1)
        remasked = noisy < cut_off
        next_tokens = torch.where(remasked, torch.full_like(predicted, self.mask_token_id),
                                  predicted)
        return StepOutput(next_tokens, predicted, held, remasked, confidence,
                          sampled, unknown, count)
