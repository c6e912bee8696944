"""What the demo's buttons and API endpoints do, without any Gradio layout: check inputs,
take the model's recommended settings with the caller's overrides (one `EditSettings`), run
the pipeline (on the GPU where there is one), and turn the results into images and JSON.
Errors users can fix are `InputError`s, model problems are `ModelUnavailable` /
`ModelLoadError`, running out of memory is `OutOfMemory`."""

from __future__ import annotations

import logging
import random
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from editmgt.errors import InputError
from editmgt.keywords import missing_keywords
from editmgt.settings import MAX_SEED, EditSettings, check_seed, check_text
from editmgt.zoo import Entry
from editmgt_app import plots
from editmgt_app.gpu import edit_duration, gpu
from editmgt_app.inputs import MAX_PIXELS, check_work, load_upload, parse_lambdas
from editmgt_app.manager import ModelManager, ModelUnavailable, free_memory

logger = logging.getLogger(__name__)

DEFAULT_SWEEP = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
GENERATE_SETTINGS = ("steps", "guidance", "negative_prompt", "sample_temperature", "draw")  # what generate() uses
HEATMAP_MIN_SIDE = 192  # tiny inputs (e.g. 64 px shapes scenes) are enlarged for the heat-map panel

Progress = Optional[Callable[[int, int, str], None]]  # (done, total, what): loading the model, then sampling
Settings = Union[EditSettings, Mapping[str, Any], None]  # an EditSettings, or overrides of the model's
Mask = Union[Any, Callable[[tuple[int, int]], Any], None]  # an image, or a function of the image's size


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
    def entry(self, model: Any) -> Entry:
        if not isinstance(model, str) or model not in self.manager.zoo:
            raise ModelUnavailable(f"unknown model {model!r}; choose one of: {', '.join(self.manager.zoo.ids)}")
        return self.manager.zoo[model]

    @staticmethod
    def settings_for(entry: Entry, settings: Settings) -> EditSettings:
        """`settings` itself, or the model's recommended settings with the given overrides
        (None and blank values keep the recommendation)."""
        if isinstance(settings, EditSettings):
            return settings
        if settings is not None and not isinstance(settings, Mapping):
            raise InputError(f"settings must be EditSettings or a mapping of setting names to values, "
                             f"got {type(settings).__name__}")
        return entry.settings.merged(settings or {})

    @staticmethod
    def seed(seed: Any) -> int:
        """The seed to use: `seed` checked, or a new random one for None and -1."""
        if seed is None or seed == -1:
            return random.SystemRandom().randrange(MAX_SEED)
        return check_seed(seed)

    @staticmethod
    def region_words(entry: Entry, instruction: str, settings: EditSettings, notes: list[str]) -> EditSettings:
        """The keywords region-hold reads: the given ones that occur in the instruction, else the
        model's keyword rule (every word without one). A given keyword the instruction does not
        say is left out with a note, never an error: it may be left over from an earlier edit."""
        if settings.keywords:
            missing = missing_keywords(instruction, settings.keywords)
            if not missing:
                return settings
            kept = tuple(k for k in settings.keywords if k not in missing) or entry.keywords_for(instruction)
            read = ", ".join(f"'{k}'" for k in kept) if kept else "every word"
            notes.append(f"keywords: {', '.join(repr(k) for k in missing)} not in the instruction, so left out; "
                         f"region-hold read {read} (the Keywords box under Advanced)")
            return settings.replace(keywords=kept)
        return settings.replace(keywords=entry.keywords_for(instruction))

    @staticmethod
    def fit_notes(entry: Entry, image: Image.Image) -> list[str]:
        """What to say when the picture is not one the model knows."""
        if entry.inputs == "shapes" and image.size != (entry.resolution, entry.resolution):
            return [f"{entry.id} knows only {entry.resolution} x {entry.resolution} synthetic shapes scenes (the "
                    f"shapes examples), not {image.width} x {image.height} photos: expect blocky noise; "
                    "pick a photo model for photos"]
        return []

    def _model(self, entry: Entry, load_8bit: bool, progress: Progress) -> Any:
        return self.manager.get(entry.id, load_8bit, progress=progress)

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

    def _sweep(self, pipe, model_key, image: Image.Image, instruction: str, lambdas: list[float],
               settings: EditSettings, seed: int, mask: Any, progress: Progress, resolution: int) -> list:
        """One batch for all lambdas; if it does not fit, halves until it does."""
        def callback(trace):
            if progress:
                progress(trace.step + 1, trace.num_steps, "sampling")

        chunks = [list(lambdas)]
        results: list = []
        while chunks:
            chunk = chunks.pop(0)
            try:
                results += self._run(model_key, lambda: pipe.sweep(image, instruction, chunk, settings, seed=seed,
                                                                   mask=mask, callback=callback),
                                     settings.steps, len(chunk), resolution)
            except OutOfMemory:
                if len(chunk) == 1:
                    raise
                logger.warning("sweep of %d did not fit; splitting", len(chunk))
                half = len(chunk) // 2
                chunks[:0] = [chunk[:half], chunk[half:]]
        return results

    def _info(self, entry: Entry, result, seconds: float, notes: list[str], load_8bit: bool,
              masked: bool) -> dict:
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
            "mask": masked,
            "keywords": list(result.settings.keywords) if result.settings.keywords else None,  # None: every word
            "seconds": round(seconds, 3),
            "steps_per_second": round(result.steps / seconds, 2) if seconds > 0 else None,
            "peak_memory_mb": round(peak, 1),
            "peak_memory_kind": peak_label,
            "model_size": list(result.size),
            "device": self.manager.device,
            "dtype": str(self.manager.dtype).replace("torch.", ""),
            "load_8bit": bool(load_8bit),
            "settings": result.settings.as_dict(),
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
    def edit(self, image: Any, instruction: Any, model: Any, settings: Settings = None, *, seed: Any = None,
             mask: Mask = None, load_8bit: bool = False, sweep: Optional[Sequence[float]] = None,
             progress: Progress = None) -> EditOutput:
        """Edit `image` as `instruction` says with `model`.

        settings: an EditSettings, or overrides of the model's recommended settings by field
        name (None / blank = the recommendation). seed: None or -1 = a new random seed. mask:
        an image of the photo's size (white = edit), or a function of the photo's size that
        returns one or None. sweep: a lambda grid, run in the same batch as the edit, with the
        L1-vs-lambda curve. progress hears of the model's loading, then of each sampling step."""
        entry = self.entry(model)
        upload = load_upload(image, max_pixels=self.max_pixels)
        instruction = check_text(instruction)
        settings = self.settings_for(entry, settings)
        seed = self.seed(seed)
        if callable(mask):
            mask = mask(upload.image.size)
        if entry.task != "edit" and not (entry.masked_edit and mask is not None):
            raise InputError(f"model {entry.id!r} is a text-to-image model: use Generate"
                             + (", or paint a mask for a masked edit" if entry.masked_edit else ""))
        notes = list(upload.notes) + self.fit_notes(entry, upload.image)
        settings = self.region_words(entry, instruction, settings, notes)
        if mask is not None:
            notes.append("mask: only the painted region was edited")
        lam = settings.hold_lambda
        lambdas = [lam] + [x for x in (sweep or ()) if abs(x - lam) > 1e-9]
        pipe = self._model(entry, load_8bit, progress)
        check_work(pipe.model_size(upload.image.size), settings.steps, len(lambdas))
        t0 = time.perf_counter()
        results = self._sweep(pipe, (entry.id, bool(load_8bit)), upload.image, instruction, lambdas, settings, seed,
                              mask, progress, entry.resolution)
        seconds = time.perf_counter() - t0
        result = results[0]
        held = result.held_mask.numpy() if result.held_mask is not None else None
        scores = result.attention_map.float().numpy() if result.attention_map is not None else None
        heat = (plots.heatmap_overlay(upload.image, scores, held, min_side=HEATMAP_MIN_SIDE)
                if scores is not None else upload.image)
        info = self._info(entry, result, seconds, notes, load_8bit, mask is not None)
        used = pipe.hold_blocks(settings)
        info["hold_blocks"] = [used[0], used[-1]]
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

    def sweep(self, image: Any, instruction: Any, model: Any, lambdas: Any, settings: Settings = None,
              **kwargs: Any) -> EditOutput:
        """All of `lambdas` (as one batch where memory allows) with one seed; `kwargs` as `edit`'s."""
        grid = parse_lambdas(lambdas if lambdas is not None else list(self.sweep_grid))
        entry = self.entry(model)
        return self.edit(image, instruction, model, self.settings_for(entry, settings).replace(hold_lambda=grid[0]),
                         sweep=grid, **kwargs)

    def generate(self, prompt: Any, model: Any, settings: Settings = None, *, seed: Any = None,
                 load_8bit: bool = False, progress: Progress = None) -> tuple[Image.Image, dict]:
        """Text-to-image with `model` (settings as in `edit`; the edit-only ones are not used)."""
        entry = self.entry(model)
        prompt = check_text(prompt, "prompt")
        settings = self.settings_for(entry, settings)
        seed = self.seed(seed)
        pipe = self._model(entry, load_8bit, progress)

        def callback(trace):
            if progress:
                progress(trace.step + 1, trace.num_steps, "sampling")

        t0 = time.perf_counter()
        result = self._run((entry.id, bool(load_8bit)),
                           lambda: pipe.generate(prompt, settings, seed=seed, callback=callback),
                           settings.steps, 1, entry.resolution)
        seconds = time.perf_counter() - t0
        info = {"model": entry.id, "seed": int(result.seed), "steps": int(result.steps),
                "guidance": result.settings.guidance, "seconds": round(seconds, 3),
                "steps_per_second": round(result.steps / seconds, 2) if seconds > 0 else None,
                "size": list(result.size), "device": self.manager.device}
        return result.image, info

    def models(self) -> list[dict]:
        return [s.as_dict() for s in self.manager.status()]
