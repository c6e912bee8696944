"""What the demo's buttons and API endpoints do, without any Gradio layout: check inputs,
fill in the model's defaults, run the pipeline (on the GPU where there is one), and turn
the results into images and JSON. Errors users can fix are `InputError`s, model problems
are `ModelUnavailable` / `ModelLoadError`, running out of memory is `OutOfMemory`."""

from __future__ import annotations

import logging
import random
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from editmgt.research.shapes.data import KEYWORD_SETS
from editmgt.errors import InputError
from editmgt.sampling.sampler import MIN_SAMPLE_TEMPERATURE
from editmgt.sampling.smoothing import METHODS as SMOOTHING_METHODS
from editmgt_app import plots
from editmgt_app.gpu import edit_duration, gpu
from editmgt_app.inputs import (MAX_PIXELS, MAX_SEED, check_instruction, check_number, check_work, load_upload,
                                parse_keywords, parse_lambdas)
from editmgt_app.manager import ModelManager, ModelUnavailable, free_memory

logger = logging.getLogger(__name__)

DEFAULT_SWEEP = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MAX_STEPS = 100
SMOOTHING_CHOICES = tuple(SMOOTHING_METHODS)  # the library's list, one place
HEATMAP_MIN_SIDE = 192  # tiny inputs (e.g. 64 px shapes scenes) are enlarged for the heat-map panel

Progress = Optional[Callable[[int, int], None]]  # (step done, steps)


class OutOfMemory(RuntimeError):
    """The device ran out of memory; what could be freed was freed."""


@dataclass
class EditOutput:
    source: Image.Image  # the converted input (RGB)
    edited: Image.Image
    heatmap: Image.Image
    info: dict
    rows: list[dict] = field(default_factory=list)  # sweep rows (may be empty)
    sweep_images: list[tuple[Image.Image, str]] = field(default_factory=list)
    curve: Optional[Image.Image] = None


def _duration(fn, steps: int, batch: int, resolution: int) -> float:
    return edit_duration(steps, batch, resolution)


@gpu(duration=_duration)
def _on_gpu(fn: Callable[[], Any], steps: int, batch: int, resolution: int) -> Any:
    """Run `fn` with a GPU attached (ZeroGPU); a plain call elsewhere."""
    return fn()


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


class EditService:
    def __init__(self, manager: ModelManager, *, max_pixels: int = MAX_PIXELS,
                 sweep_grid: Sequence[float] = DEFAULT_SWEEP) -> None:
        self.manager = manager
        self.max_pixels = max_pixels
        self.sweep_grid = tuple(sweep_grid)

    # ------------------------------------------------------------------ helpers
    def entry(self, model: Any):
        if not isinstance(model, str) or model not in self.manager.zoo:
            raise ModelUnavailable(f"unknown model {model!r}; choose one of: {', '.join(self.manager.zoo.ids)}")
        return self.manager.zoo[model]

    def _settings(self, entry, steps, guidance, gamma, hold_lambda, smoothing, smoothing_strength, seed,
                  sample_temperature=None, keep_unchanged_pixels=None) -> dict:
        d = entry.defaults
        smoothing = d.smoothing if smoothing in (None, "") else smoothing
        keep = d.keep_unchanged_pixels if keep_unchanged_pixels is None else keep_unchanged_pixels
        if not isinstance(keep, bool):
            raise InputError(f"keep_unchanged_pixels must be true or false, got {keep!r}")
        if smoothing not in SMOOTHING_CHOICES:
            raise InputError(f"smoothing must be one of {list(SMOOTHING_CHOICES)}, got {smoothing!r}")
        return dict(
            steps=check_number("steps", d.steps if steps is None else steps, 1, MAX_STEPS, integer=True),
            guidance=check_number("guidance", d.guidance if guidance is None else guidance, 0.0, 20.0),
            gamma=check_number("gamma", d.gamma if gamma is None else gamma, 0.0, 5.0),
            hold_lambda=check_number("lambda", d.hold_lambda if hold_lambda is None else hold_lambda, 0.0, 1.0),
            smoothing=smoothing,
            smoothing_strength=check_number(
                "smoothing strength", d.smoothing_strength if smoothing_strength is None else smoothing_strength,
                0.0, 5.0),
            sample_temperature=check_number(
                "sample temperature", d.sample_temperature if sample_temperature is None else sample_temperature,
                MIN_SAMPLE_TEMPERATURE, 5.0),
            keep_unchanged_pixels=keep,
            seed=random.SystemRandom().randrange(MAX_SEED) if seed is None or seed == -1
            else check_number("seed", seed, 0, MAX_SEED, integer=True),
        )

    @staticmethod
    def _hold_blocks(entry, pipe, first, last) -> Optional[tuple[int, ...]]:
        if first is None and last is None:
            if entry.defaults.hold_blocks is None:
                return None
            first, last = entry.defaults.hold_blocks
        n = pipe.num_blocks
        first = check_number("hold blocks (first)", first if first is not None else last, 0, n - 1, integer=True)
        last = check_number("hold blocks (last)", last if last is not None else first, 0, n - 1, integer=True)
        if first > last:
            raise InputError(f"hold blocks: first ({first}) must not exceed last ({last})")
        return tuple(range(first, last + 1))

    def _run(self, model_key: tuple[str, bool], fn: Callable[[], Any], steps: int, batch: int,
             resolution: int) -> Any:
        """Run pipeline work; on out-of-memory free other models and caches, then report."""
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            return _on_gpu(fn, steps, batch, resolution)
        except Exception as err:  # noqa: BLE001 - only OOM is handled here
            if not _is_oom(err):
                raise
            freed = self.manager.evict_all(except_key=model_key)
            free_memory()
            raise OutOfMemory(
                f"out of memory while running {batch} sample(s) of {steps} steps at {resolution}px; freed "
                f"{freed / 2**20:.0f} MB of other models and the cache. Try fewer steps, fewer sweep "
                "lambdas, a smaller image or the 8-bit toggle") from None

    def _sweep(self, pipe, model_key, upload, instruction, lambdas, settings, mask, hold_blocks, keyword,
               negative_prompt, progress: Progress, resolution: int) -> list:
        """One batch for all lambdas; if it does not fit, halves until it does."""
        kwargs = dict(steps=settings["steps"], guidance=settings["guidance"], gamma=settings["gamma"],
                      hold_blocks=(hold_blocks[0], hold_blocks[-1]) if hold_blocks else None, keywords=keyword,
                      smoothing=settings["smoothing"],
                      smoothing_strength=settings["smoothing_strength"], seed=settings["seed"], mask=mask,
                      sample_temperature=settings["sample_temperature"],
                      keep_unchanged_pixels=settings["keep_unchanged_pixels"])
        if negative_prompt:
            kwargs["negative_prompt"] = negative_prompt
        def callback(trace):
            if progress:
                progress(trace.step + 1, trace.num_steps)

        chunks = [list(lambdas)]
        results: list = []
        while chunks:
            chunk = chunks.pop(0)
            try:
                results += self._run(model_key, lambda: pipe.sweep(upload.image, instruction, chunk,
                                                                   callback=callback, **kwargs),
                                     settings["steps"], len(chunk), resolution)
            except OutOfMemory:
                if len(chunk) == 1:
                    raise
                logger.warning("sweep of %d did not fit; splitting", len(chunk))
                half = len(chunk) // 2
                chunks[:0] = [chunk[:half], chunk[half:]]
        return results

    def _info(self, entry, result, settings, seconds: float, notes: list[str], load_8bit: bool) -> dict:
        tokens_total = int(result.edited_tokens.numel())
        if torch.cuda.is_available() and str(self.manager.device).startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() / 2**20
            peak_label = "GPU peak allocated"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            peak_label = "process peak RSS"
        return {
            "model": entry.id,
            "l1_to_source": round(float(result.l1_to_source), 6),
            "l1_to_reconstruction": round(float(result.l1_to_reconstruction), 6),
            "changed_fraction": round(float(result.changed_fraction), 6),
            "tokens_changed": int(round(result.changed_fraction * tokens_total)),
            "tokens_total": tokens_total,
            "seed": int(result.seed),
            "lambda": float(result.hold_lambda),
            "steps": int(result.steps),
            "guidance": settings["guidance"],
            "gamma": settings["gamma"],
            "smoothing": settings["smoothing"],
            "sample_temperature": settings["sample_temperature"],
            "keep_unchanged_pixels": settings["keep_unchanged_pixels"],
            "seconds": round(seconds, 3),
            "steps_per_second": round(result.steps / seconds, 2) if seconds > 0 else None,
            "peak_memory_mb": round(peak, 1),
            "peak_memory_kind": peak_label,
            "model_size": list(result.size),
            "device": self.manager.device,
            "dtype": str(self.manager.dtype).replace("torch.", ""),
            "load_8bit": bool(load_8bit),
            "notes": notes,
        }

    @staticmethod
    def vq_round_trip_l1(pipe, source: Image.Image, result) -> Optional[float]:
        """Mean |VQ reconstruction - source| at the model's size: the curve's floor."""
        try:
            tokens = result.source_tokens.to(pipe.device)[None]
            with torch.inference_mode():
                recon = pipe.vq.decode(tokens)[0].float().clamp(0, 1).cpu()  # (3, H, W)
            ref = source.resize((recon.shape[2], recon.shape[1]), Image.BICUBIC)
            ref = torch.from_numpy(np.asarray(ref, dtype=np.float32) / 255.0).permute(2, 0, 1)
            return float((recon - ref).abs().mean())
        except Exception:  # noqa: BLE001 - the baseline is decoration; never fail an edit for it
            logger.exception("VQ round-trip baseline failed")
            return None

    # ------------------------------------------------------------------ actions
    def edit(self, image: Any, instruction: Any, model: Any, *, steps=None, guidance=None, gamma=None,
             hold_lambda=None, hold_first=None, hold_last=None, keyword=None, smoothing=None,
             smoothing_strength=None, negative_prompt=None, seed=None, mask: Any = None,
             mask_fn: Optional[Callable[[tuple[int, int]], Optional[Image.Image]]] = None,
             load_8bit: bool = False, sweep: Optional[Sequence[float]] = None,
             sample_temperature=None, keep_unchanged_pixels=None, progress: Progress = None) -> EditOutput:
        """Edit `image`; with `sweep` (a lambda grid) also run the grid in the same batch and
        draw the L1-vs-lambda curve. `mask_fn(image_size)` builds the mask once the image is read."""
        entry = self.entry(model)
        upload = load_upload(image, max_pixels=self.max_pixels)
        instruction = check_instruction(instruction)
        settings = self._settings(entry, steps, guidance, gamma, hold_lambda, smoothing, smoothing_strength, seed,
                                  sample_temperature, keep_unchanged_pixels)
        keyword = parse_keywords(keyword)
        if keyword is None and entry.defaults.keywords:              # the model's own keyword set
            keyword = KEYWORD_SETS[entry.defaults.keywords](instruction) or None
        if mask_fn is not None:
            mask = mask_fn(upload.image.size)
        if entry.task != "edit" and not (entry.masked_edit and mask is not None):
            raise InputError(f"model {entry.id!r} is a text-to-image model: use Generate"
                             + (", or paint a mask for a masked edit" if entry.masked_edit else ""))
        pipe = self.manager.get(entry.id, load_8bit)
        hold_blocks = self._hold_blocks(entry, pipe, hold_first, hold_last)
        lam = settings["hold_lambda"]
        lambdas = [lam] + [x for x in (sweep or ()) if abs(x - lam) > 1e-9]
        check_work(pipe.model_size(upload.image.size), settings["steps"], len(lambdas))
        t0 = time.perf_counter()
        results = self._sweep(pipe, (entry.id, bool(load_8bit)), upload, instruction, lambdas, settings, mask,
                              hold_blocks, keyword, negative_prompt, progress, entry.defaults.resolution)
        seconds = time.perf_counter() - t0
        result = results[0]
        held = result.held_mask.numpy() if result.held_mask is not None else None
        scores = result.attention_map.float().numpy() if result.attention_map is not None else None
        heat = plots.heatmap_overlay(upload.image, scores, held, min_side=HEATMAP_MIN_SIDE) if scores is not None else upload.image
        info = self._info(entry, result, settings, seconds, upload.notes, load_8bit)
        used = hold_blocks or tuple(pipe.default_hold_blocks())
        info["hold_blocks"] = [used[0], used[-1]]
        info["keywords"] = keyword                                    # None: every text row
        out = EditOutput(upload.image, result.image, heat, info)
        if sweep:
            by_lambda = sorted(results, key=lambda r: r.hold_lambda)
            out.rows = [self.row(r) for r in by_lambda]
            out.sweep_images = [(plots.bounded(r.image), f"lambda {r.hold_lambda:g}") for r in by_lambda]
            baseline = self.vq_round_trip_l1(pipe, upload.image, result)
            info["vq_round_trip_l1"] = None if baseline is None else round(baseline, 6)
            out.curve = plots.lambda_curve([r.hold_lambda for r in by_lambda], [r.l1_to_source for r in by_lambda],
                                           current=lam, baseline=baseline,
                                           l1_to_reconstruction=[r.l1_to_reconstruction for r in by_lambda])
        return out

    @staticmethod
    def row(result) -> dict:
        return {"lambda": float(result.hold_lambda), "l1_to_source": round(float(result.l1_to_source), 6),
                "l1_to_reconstruction": round(float(result.l1_to_reconstruction), 6),
                "changed_fraction": round(float(result.changed_fraction), 6), "seed": int(result.seed)}

    def sweep(self, image: Any, instruction: Any, model: Any, lambdas: Any, **kwargs) -> EditOutput:
        """All of `lambdas` (as one batch where memory allows) with one seed."""
        grid = parse_lambdas(lambdas if lambdas is not None else list(self.sweep_grid))
        return self.edit(image, instruction, model, hold_lambda=grid[0], sweep=grid, **kwargs)

    def generate(self, prompt: Any, model: Any, *, steps=None, guidance=None, seed=None, load_8bit: bool = False,
                 progress: Progress = None) -> tuple[Image.Image, dict]:
        entry = self.entry(model)
        prompt = check_instruction(prompt, what="prompt")
        settings = self._settings(entry, steps, guidance, None, None, None, None, seed)
        pipe = self.manager.get(entry.id, load_8bit)

        def callback(trace):
            if progress:
                progress(trace.step + 1, trace.num_steps)

        t0 = time.perf_counter()
        result = self._run((entry.id, bool(load_8bit)),
                           lambda: pipe.generate(prompt, steps=settings["steps"], guidance=settings["guidance"],
                                                 seed=settings["seed"], callback=callback),
                           settings["steps"], 1, entry.defaults.resolution)
        seconds = time.perf_counter() - t0
        info = {"model": entry.id, "seed": int(result.seed), "steps": int(result.steps),
                "guidance": settings["guidance"], "seconds": round(seconds, 3),
                "steps_per_second": round(result.steps / seconds, 2) if seconds > 0 else None,
                "size": list(result.size), "device": self.manager.device}
        return result.image, info

    def models(self) -> list[dict]:
        return [s.as_dict() for s in self.manager.status()]
