"""EditMGTPipeline: image in, instruction in, edited image and its localisation map out.

The pipeline only wires the parts together; every policy lives elsewhere:
the network in `models/`, the MaskGIT step and region-hold in `sampling/sampler.py`, the
attention consolidation in `sampling/localization.py`, image checks in `images.py`.
`edit()` reads top to bottom as the numbered steps of one edit.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from editmgt.errors import InputError
from editmgt.hub import DEFAULT_SUBFOLDERS, resolve_checkpoint
from editmgt.images import changed_alpha, fit_size, keep_unchanged, load_image, load_mask, to_tensor
from editmgt.models.text_encoders import Keywords, TextConditioner, TextEmbeddings
from editmgt.models.transformer import AttentionProbe, EditMGTTransformer
from editmgt.models.vq import VQTokenizer
from editmgt.sampling.localization import consolidate, default_hold_blocks
from editmgt.sampling.sampler import MIN_SAMPLE_TEMPERATURE, MaskGITSampler
from editmgt.sampling.schedule import temperatures as temperature_table
from editmgt.sampling.schedule import timesteps as timestep_table
from editmgt.sampling.smoothing import METHODS as SMOOTHING_METHODS

logger = logging.getLogger(__name__)

DEFAULT_NEGATIVE_PROMPT = (
    "worst quality, low quality, low res, blurry, distortion, watermark, logo, signature, "
    "text, jpeg artifacts, signature, sketch, duplicate, ugly, identifying mark"
)
MAX_INSTRUCTION_CHARS = 1000
MAX_STEPS = 256
PIPELINE_CONFIG_FILE = "editmgt_pipeline.json"  # optional, non-standard: {"resolution": 512}

SeedLike = Optional[int]
ImageLike = Union[str, Path, bytes, Image.Image, np.ndarray]


@dataclass
class StepTrace:
    """What one sampling step did, handed to `callback` (tensors stay on the model's device)."""

    step: int  # 0-based step index
    num_steps: int
    tokens: torch.LongTensor  # (B, H, W) canvas after the step (mask ids where re-masked)
    predicted: torch.LongTensor  # (B, H, W) full prediction after region-hold
    held: torch.BoolTensor  # (B, H, W) tokens set back to the source this step
    scores: Optional[torch.Tensor]  # (B, H, W) localisation scores on the VQ grid, or None


@dataclass
class EditResult:
    """Everything one edit produced. Tensors are on the CPU."""

    image: Image.Image  # edited image at the input's size
    source_tokens: torch.LongTensor  # (H, W) VQ ids of the source (empty for text-to-image)
    edited_tokens: torch.LongTensor  # (H, W)
    attention_grid: Optional[torch.Tensor]  # (h, w) consolidated map, transformer grid, [0, 1]
    attention_map: Optional[torch.Tensor]  # (height, width) map up-sampled to the image size
    held_mask: Optional[torch.BoolTensor]  # (H, W) tokens whose final score < lambda
    l1_to_source: float  # mean |edit - source| in [0, 1] pixels at model resolution
    l1_to_reconstruction: float  # mean |edit - VQ round trip of the source|
    changed_fraction: float  # fraction of tokens that differ from the source's tokens
    seed: int
    keep_unchanged_pixels: bool  # the source's own pixels kept wherever no token changed
    hold_lambda: float
    steps: int
    size: tuple[int, int]  # (width, height) the model ran at
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-friendly numbers (no images or tensors)."""
        return {
            "l1_to_source": self.l1_to_source,
            "l1_to_reconstruction": self.l1_to_reconstruction,
            "changed_fraction": self.changed_fraction,
            "seed": self.seed,
            "lambda": self.hold_lambda,
            "keep_unchanged_pixels": self.keep_unchanged_pixels,
            "steps": self.steps,
            "size": list(self.size),
            "timings": self.timings,
            "seconds": self.timings.get("total", 0.0),
        }


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise InputError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise InputError(f"{name} must be in [{low}, {high}], got {value}")


def _new_seed() -> int:
    return random.SystemRandom().randrange(2**31)


class EditMGTPipeline:
    """Text-guided image editing (and text-to-image) with a masked generative transformer."""

    def __init__(
        self,
        transformer: EditMGTTransformer,
        vq: VQTokenizer,
        text: TextConditioner,
        mask_token_id: Optional[int] = None,
        masking_schedule: str = "cosine",
        resolution: int = 1024,
    ) -> None:
        self.transformer = transformer.eval()
        self.vq = vq
        self.text = text
        self.mask_token_id = transformer.config.mask_token_id if mask_token_id is None else mask_token_id
        self.sampler = MaskGITSampler(self.mask_token_id, schedule=masking_schedule)
        self.resolution = resolution

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        repo_or_dir: Union[str, Path],
        revision: Optional[str] = None,
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
        transformer_subfolder: Optional[str] = None,
        load_8bit: bool = False,
        resolution: Optional[int] = None,
        local_files_only: Optional[bool] = None,
        cache_dir: Optional[Union[str, Path]] = None,
    ) -> "EditMGTPipeline":
        """Load from a local folder or a Hub repo (pinned `revision`), safetensors only.

        The transformer is read from `editmgt/` (the released edit model) or, when absent,
        `transformer/` (Meissonic layout); `transformer_subfolder` overrides the choice.
        """
        subfolders = None  # every known component folder
        if transformer_subfolder:  # this transformer folder and the shared components, nothing else
            shared = tuple(name for name in DEFAULT_SUBFOLDERS if name not in ("editmgt", "transformer"))
            subfolders = (transformer_subfolder, *shared)
        root = resolve_checkpoint(
            repo_or_dir,
            revision=revision,
            subfolders=subfolders,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
        )
        if transformer_subfolder is None:
            transformer_subfolder = "editmgt" if (root / "editmgt").is_dir() else "transformer"
        transformer = EditMGTTransformer.from_pretrained(root / transformer_subfolder, dtype=dtype, device=device)
        vq = VQTokenizer.from_pretrained(root / "vqvae", device=device)
        text = TextConditioner.from_pretrained(root, device=device, dtype=dtype)
        if load_8bit:
            from editmgt.models.quantize import quantize_8bit

            report = quantize_8bit(transformer)
            text.quantize_8bit()
            logger.info("8-bit transformer: %s", report)
        scheduler_cfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text()) if (
            root / "scheduler" / "scheduler_config.json"
        ).is_file() else {}
        extra_cfg_path = root / PIPELINE_CONFIG_FILE
        extra = json.loads(extra_cfg_path.read_text()) if extra_cfg_path.is_file() else {}
        return cls(
            transformer,
            vq,
            text,
            mask_token_id=scheduler_cfg.get("mask_token_id"),
            masking_schedule=scheduler_cfg.get("masking_schedule", "cosine"),
            resolution=resolution or int(extra.get("resolution", 1024)),
        )

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def patch(self) -> int:
        """Pixels per transformer token side: VQ down-scale x transformer down-sample."""
        return self.vq.scale_factor * self.transformer.config.downsample_factor

    @property
    def num_blocks(self) -> int:
        return self.transformer.config.num_blocks

    def default_hold_blocks(self) -> tuple[int, ...]:
        """Blocks 28-36 of the released 42-block model, or the same relative depth otherwise."""
        return default_hold_blocks(self.num_blocks)

    # ------------------------------------------------------------------ helpers
    def model_size(self, image_size: tuple[int, int], size: Optional[Union[int, tuple[int, int]]] = None) -> tuple[int, int]:
        """(width, height) the model runs at, multiples of the patch, the image's aspect kept:
        about `size`^2 pixels (default `resolution`^2), or exactly `(width, height)` rounded."""
        run_size = fit_size(image_size, self.resolution if size is None else size, self.patch)
        if isinstance(size, tuple) and tuple(size) != run_size:
            logger.info("size %s is not a multiple of the patch %d; using %s", size, self.patch, run_size)
        return run_size

    def _to_tensor(self, image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
        """PIL RGB -> (1, 3, H, W) float in [0, 1] at `size` on the model's device."""
        if image.size != size:
            image = image.resize(size, Image.BICUBIC)
        return to_tensor(image).to(self.device)

    def _micro_conds(self, size: tuple[int, int], batch: int) -> torch.Tensor:
        """(B, 5): width, height, crop top, crop left, aesthetic score 6."""
        w, h = size
        return torch.tensor([[w, h, 0, 0, 6]], dtype=torch.float32, device=self.device).expand(batch, -1)

    def _encode_text(self, prompt: str, negative_prompt: str, guidance: float, repeat: int) -> TextEmbeddings:
        """Stack [negative x repeat; prompt x repeat] when guidance is on, else [prompt x repeat]."""
        prompts = ([negative_prompt] * repeat if guidance > 1.0 else []) + [prompt] * repeat
        return self.text.encode(prompts)

    def _check_common(self, instruction: str, steps: int, guidance: float) -> str:
        if not isinstance(instruction, str) or not instruction.strip():
            raise InputError("the instruction is empty: say what to change, e.g. 'make the cat black'")
        if len(instruction) > MAX_INSTRUCTION_CHARS:
            raise InputError(
                f"the instruction has {len(instruction)} characters; the limit is {MAX_INSTRUCTION_CHARS}"
            )
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
            raise InputError(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
        _check_range("guidance", guidance, 0.0, 50.0)
        return instruction.strip()

    def _hold_blocks(self, hold_blocks: Optional[Sequence[int]]) -> tuple[int, ...]:
        if hold_blocks is None:
            return self.default_hold_blocks()
        blocks = tuple(int(b) for b in hold_blocks)
        if not blocks or any(not 0 <= b < self.num_blocks for b in blocks):
            raise InputError(f"hold blocks must be non-empty and within [0, {self.num_blocks - 1}], got {list(blocks)}")
        return blocks

    def _decode(self, tokens: torch.LongTensor) -> torch.Tensor:
        """(B, H, W) ids -> (B, 3, H*s, W*s) in [0, 1]."""
        return self.vq.decode(tokens)

    @staticmethod
    def _to_pil(image: torch.Tensor, size: tuple[int, int]) -> Image.Image:
        """(3, H, W) in [0, 1] -> PIL resized to `size` (width, height)."""
        array = (image.clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255.0).round().astype(np.uint8)
        pil = Image.fromarray(array)
        return pil if pil.size == size else pil.resize(size, Image.BICUBIC)

    # ------------------------------------------------------------------ editing
    @torch.inference_mode()
    def edit(
        self,
        image: ImageLike,
        instruction: str,
        *,
        steps: int = 16,
        guidance: float = 6.0,
        gamma: float = 1.1,
        hold_lambda: float = 0.0,
        hold_blocks: Optional[Sequence[int]] = None,
        keyword: Optional[Keywords] = None,
        smoothing: str = "adaptive",
        smoothing_strength: float = 1.0,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        seed: SeedLike = None,
        mask: Optional[ImageLike] = None,
        size: Optional[Union[int, tuple[int, int]]] = None,
        callback: Optional[Callable[[StepTrace], None]] = None,
        sample_temperature: float = 1.0,
        keep_unchanged_pixels: bool = False,
    ) -> EditResult:
        """Edit `image` as `instruction` says. `hold_lambda` > 0 turns region-hold on; the
        localisation map reads the text rows of `keyword` (a word of the instruction, or
        several: the paper's row set M) or, by default, all rows. `sample_temperature` < 1
        draws each step's tokens more greedily (1: the released sampler).
        `keep_unchanged_pixels` returns the source's own pixels (at its full size) wherever the
        edit kept the source's tokens, instead of their VQ round trip (not in the paper)."""
        return self.sweep(
            image,
            instruction,
            [hold_lambda],
            steps=steps,
            guidance=guidance,
            gamma=gamma,
            hold_blocks=hold_blocks,
            keyword=keyword,
            smoothing=smoothing,
            smoothing_strength=smoothing_strength,
            negative_prompt=negative_prompt,
            seed=seed,
            mask=mask,
            size=size,
            callback=callback,
            sample_temperature=sample_temperature,
            keep_unchanged_pixels=keep_unchanged_pixels,
        )[0]

    @torch.inference_mode()
    def sweep(
        self,
        image: ImageLike,
        instruction: str,
        lambdas: Sequence[float],
        *,
        steps: int = 16,
        guidance: float = 6.0,
        gamma: float = 1.1,
        hold_blocks: Optional[Sequence[int]] = None,
        keyword: Optional[Keywords] = None,
        smoothing: str = "adaptive",
        smoothing_strength: float = 1.0,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        seed: SeedLike = None,
        mask: Optional[ImageLike] = None,
        size: Optional[Union[int, tuple[int, int]]] = None,
        callback: Optional[Callable[[StepTrace], None]] = None,
        sample_temperature: float = 1.0,
        keep_unchanged_pixels: bool = False,
    ) -> list[EditResult]:
        """Run one edit per lambda as one batch; every lambda uses the same seed, so each
        result equals `edit(..., hold_lambda=lam, seed=seed)`."""
        t_start = time.perf_counter()
        timings: dict[str, float] = {}

        # 1. Check inputs.
        instruction = self._check_common(instruction, steps, guidance)
        lambdas = [float(lam) for lam in lambdas] if lambdas is not None else []
        if not lambdas:
            raise InputError("give at least one lambda")
        for lam in lambdas:
            _check_range("lambda", lam, 0.0, 1.0)
        _check_range("gamma", gamma, 0.0, 10.0)
        _check_range("smoothing strength", smoothing_strength, 0.0, 10.0)
        _check_range("sample temperature", sample_temperature, MIN_SAMPLE_TEMPERATURE, 10.0)
        if smoothing not in SMOOTHING_METHODS:
            raise InputError(f"unknown smoothing {smoothing!r}; choose one of {sorted(SMOOTHING_METHODS)}")
        blocks = self._hold_blocks(hold_blocks)
        seed = _new_seed() if seed is None else int(seed)
        source = load_image(image)
        run_size = self.model_size(source.size, size)
        batch = len(lambdas)

        # 2. Tokenise the source image (and the user's mask, if any).
        t0 = time.perf_counter()
        pixels = self._to_tensor(source, run_size)  # (1, 3, H, W)
        source_tokens = self.vq.encode(pixels)  # (1, h, w)
        grid = tuple(source_tokens.shape[-2:])
        start = source_tokens.new_full(source_tokens.shape, self.mask_token_id)
        start_ratio = torch.ones(1, device=self.device)
        if mask is not None:
            region = load_mask(mask, source.size, grid=grid).to(self.device)  # (h, w) bool
            if not region.any():
                raise InputError("the mask is empty: paint the region to edit, or pass no mask")
            start = torch.where(region[None], start, source_tokens)
            start_ratio = region.float().mean().reshape(1)
        timings["vq_encode"] = time.perf_counter() - t0

        # 3. Encode the instruction (negative prompt first when guidance is on).
        t0 = time.perf_counter()
        text = self._encode_text(instruction, negative_prompt, guidance, batch)
        rows = self.text.keyword_rows(instruction, keyword) if keyword else None
        timings["text"] = time.perf_counter() - t0

        # 4. Sample.
        t0 = time.perf_counter()
        lam = torch.tensor(lambdas, device=self.device)
        tokens, final_scores = self._sample(
            start.expand(batch, -1, -1),
            source_tokens.expand(batch, -1, -1),
            start_ratio.expand(batch),
            text,
            run_size,
            steps=steps,
            guidance=guidance,
            gamma=gamma,
            seed=seed,
            probe=AttentionProbe(blocks=blocks, rows=rows),
            smoothing=smoothing,
            smoothing_strength=smoothing_strength,
            hold_lambda=lam,
            callback=callback,
            sample_temperature=sample_temperature,
        )
        timings["sampling"] = time.perf_counter() - t0

        # 5. Decode (keeping the source's pixels where no token changed, if asked) and measure.
        t0 = time.perf_counter()
        decoded = self._decode(tokens)  # (B, 3, H, W)
        reconstruction = self._decode(source_tokens)  # (1, 3, H, W)
        changed_tokens = tokens != source_tokens  # (B, h, w)
        edited, alphas = decoded, None
        if keep_unchanged_pixels:
            alphas = [changed_alpha(c, self.vq.scale_factor).to(pixels) for c in changed_tokens]  # (H, W) each
            alpha = torch.stack(alphas)[:, None]
            edited = alpha * decoded + (1 - alpha) * pixels
        timings["vq_decode"] = time.perf_counter() - t0
        l1_source = (edited - pixels).abs().flatten(1).mean(1).tolist()
        l1_recon = (edited - reconstruction).abs().flatten(1).mean(1).tolist()
        changed = changed_tokens.flatten(1).float().mean(1).tolist()
        timings["total"] = time.perf_counter() - t_start

        results = []
        for i, lam_i in enumerate(lambdas):
            grid_map = final_scores.grid[i].float().cpu() if final_scores is not None else None
            attention_map = None
            if grid_map is not None:
                attention_map = torch.nn.functional.interpolate(
                    grid_map[None, None], size=(source.size[1], source.size[0]), mode="bilinear", align_corners=False
                )[0, 0].clamp(0, 1)
            held = None
            if final_scores is not None:
                scores_i = final_scores.scores[i].reshape(grid)
                held = (scores_i < lam_i) if lam_i < 1.0 else torch.ones_like(scores_i, dtype=torch.bool)
                held = held.cpu()
            image = self._to_pil(decoded[i], source.size)
            if alphas is not None:  # blend at the source's own size, so its full detail is kept
                image = keep_unchanged(image, source, alphas[i].cpu())
            results.append(
                EditResult(
                    image=image,
                    source_tokens=source_tokens[0].cpu(),
                    edited_tokens=tokens[i].cpu(),
                    attention_grid=grid_map,
                    attention_map=attention_map,
                    held_mask=held,
                    l1_to_source=float(l1_source[i]),
                    l1_to_reconstruction=float(l1_recon[i]),
                    changed_fraction=float(changed[i]),
                    seed=seed,
                    keep_unchanged_pixels=bool(keep_unchanged_pixels),
                    hold_lambda=lam_i,
                    steps=steps,
                    size=run_size,
                    timings=dict(timings),
                )
            )
        return results

    @torch.inference_mode()
    def generate(
        self,
        prompt: str,
        *,
        steps: int = 16,
        guidance: float = 6.0,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        seed: SeedLike = None,
        size: Optional[Union[int, tuple[int, int]]] = None,
        callback: Optional[Callable[[StepTrace], None]] = None,
    ) -> EditResult:
        """Text-to-image: the same sampler with no source image (stage-1 / Meissonic models)."""
        t_start = time.perf_counter()
        prompt = self._check_common(prompt, steps, guidance)
        seed = _new_seed() if seed is None else int(seed)
        run_size = self.model_size((self.resolution, self.resolution), size)
        grid = (run_size[1] // self.vq.scale_factor, run_size[0] // self.vq.scale_factor)
        start = torch.full((1, *grid), self.mask_token_id, dtype=torch.long, device=self.device)
        text = self._encode_text(prompt, negative_prompt, guidance, 1)
        t0 = time.perf_counter()
        tokens, _ = self._sample(
            start,
            None,
            torch.ones(1, device=self.device),
            text,
            run_size,
            steps=steps,
            guidance=guidance,
            gamma=1.0,
            seed=seed,
            probe=None,
            smoothing="none",
            smoothing_strength=0.0,
            hold_lambda=None,
            callback=callback,
        )
        sampling = time.perf_counter() - t0
        image = self._decode(tokens)[0]
        empty = torch.empty(0, dtype=torch.long)
        return EditResult(
            image=self._to_pil(image, run_size),
            source_tokens=empty,
            edited_tokens=tokens[0].cpu(),
            attention_grid=None,
            attention_map=None,
            held_mask=None,
            l1_to_source=float("nan"),
            l1_to_reconstruction=float("nan"),
            changed_fraction=float("nan"),
            seed=seed,
            keep_unchanged_pixels=False,
            hold_lambda=0.0,
            steps=steps,
            size=run_size,
            timings={"sampling": sampling, "total": time.perf_counter() - t_start},
        )

    # ------------------------------------------------------------------ the loop
    def _sample(
        self,
        start: torch.LongTensor,
        source_tokens: Optional[torch.LongTensor],
        start_ratio: torch.Tensor,
        text: TextEmbeddings,
        size: tuple[int, int],
        *,
        steps: int,
        guidance: float,
        gamma: float,
        seed: int,
        probe: Optional[AttentionProbe],
        smoothing: str,
        smoothing_strength: float,
        hold_lambda: Optional[torch.Tensor],
        callback: Optional[Callable[[StepTrace], None]],
        sample_temperature: float = 1.0,
    ):
        """MaskGIT loop. start/source_tokens (B, h, w); returns final tokens (B, h, w), the last
        step's LocalizationMap (or None)."""
        batch, height, width = start.shape
        use_cfg = guidance > 1.0
        branches = 2 if use_cfg else 1
        generators = [torch.Generator(device=self.device).manual_seed(seed) for _ in range(batch)]
        micro_conds = self._micro_conds(size, branches * batch)
        reference = torch.cat([source_tokens] * branches) if source_tokens is not None else None
        model_grid = (height // self.transformer.config.downsample_factor, width // self.transformer.config.downsample_factor)
        dtype = next(self.transformer.parameters()).dtype
        text_states = text.states.to(self.device, dtype)
        pooled = text.pooled.to(self.device, dtype)
        ts = timestep_table(steps, device=self.device)
        temps = temperature_table(steps, device=self.device)
        use_hold = probe is not None and reference is not None

        tokens = start.reshape(batch, -1).clone()
        source_flat = source_tokens.reshape(batch, -1) if source_tokens is not None else None
        localization = None
        for i in range(steps):
            model_input = torch.cat([tokens] * branches).reshape(branches * batch, height, width)
            out = self.transformer(
                model_input,
                text_states,
                pooled,
                micro_conds,
                ts[i].expand(branches * batch),
                reference_tokens=reference,
                gamma=gamma,
                probe=probe if use_hold else None,
            )
            logits = out.logits.float()
            if use_cfg:
                uncond, cond = logits.chunk(2)
                logits = uncond + guidance * (cond - uncond)
            logits = logits.flatten(2).transpose(1, 2)  # (B, L, V)

            scores = None
            if use_hold:
                cond_half = {k: v[-batch:] for k, v in out.text_to_image.items()}
                localization = consolidate(
                    cond_half, model_grid, (height, width), smoothing=smoothing, strength=smoothing_strength
                )
                scores = localization.scores
            step = self.sampler.step(
                logits,
                tokens,
                i,
                steps,
                temps[i],
                generators,
                start_ratio=start_ratio,
                hold_scores=scores,
                hold_lambda=hold_lambda if scores is not None else None,
                source_tokens=source_flat,
                sample_temperature=sample_temperature,
            )
            tokens = step.tokens
            if callback is not None:
                callback(
                    StepTrace(
                        step=i,
                        num_steps=steps,
                        tokens=tokens.reshape(batch, height, width),
                        predicted=step.predicted.reshape(batch, height, width),
                        held=step.held.reshape(batch, height, width),
                        scores=scores.reshape(batch, height, width) if scores is not None else None,
                    )
                )
        return tokens.reshape(batch, height, width), localization
