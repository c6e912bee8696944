"""EditMGTPipeline: image in, instruction in, edited image and its localisation map out.

The pipeline only wires the parts together; every policy lives elsewhere: the network in
`models/`, the MaskGIT step and region-hold in `sampling/sampler.py`, the attention
consolidation in `sampling/localization.py`, image checks in `images.py`, every setting's
default and limits in `settings.py`. `sweep()` reads top to bottom as the numbered steps of
an edit; the steps are public methods (`encode_prompt`, `preprocess`, `tokenize`,
`prepare_canvas`, `predict`, `sample`, `decode`) so that benchmarks, evaluations and the
parity check run the same code as the product.

Same seed as the released code: with the default settings (`draw="released"`,
`mask_reference="masked"`) and batch size 1 on the CPU, an edit draws the same random numbers
in the same order as the released pipeline given `torch.Generator().manual_seed(seed)`, so it
produces the same tokens (`python -m editmgt.verify pipeline DIR` checks it).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from editmgt.errors import CheckpointError, InputError
from editmgt.hub import DEFAULT_SUBFOLDERS, resolve_checkpoint
from editmgt.images import changed_alpha, fit_size, keep_unchanged, load_image, load_mask, to_tensor
from editmgt.models.quantize import quiet_bitsandbytes_logs
from editmgt.models.text_encoders import TextConditioner, TextEmbeddings
from editmgt.models.transformer import AttentionProbe, EditMGTTransformer, TransformerOutput
from editmgt.models.vq import VQTokenizer
from editmgt.sampling.localization import LocalizationMap, consolidate, default_hold_blocks
from editmgt.sampling.sampler import MaskGITSampler
from editmgt.sampling.schedule import temperatures as temperature_table
from editmgt.sampling.schedule import timesteps as timestep_table
from editmgt.settings import MAX_SEED, EditSettings, check_seed, check_text

logger = logging.getLogger(__name__)

PIPELINE_CONFIG_FILE = "editmgt_pipeline.json"  # optional, non-standard: {"resolution": 512}
AESTHETIC_SCORE = 6  # the micro-condition the released model was sampled with
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the command lines' --dtype

SeedLike = Union[int, torch.Generator, None]
ImageLike = Union[str, Path, bytes, Image.Image, np.ndarray]


@dataclass
class StepTrace:
    """What one sampling step did, handed to `callback`. Tensors stay on the model's device
    and are the loop's own: copy what you keep."""

    step: int  # 0-based step index
    num_steps: int
    tokens: torch.LongTensor  # (B, H, W) canvas after the step (mask ids where re-masked)
    predicted: torch.LongTensor  # (B, H, W) full prediction after region-hold, before re-masking
    held: torch.BoolTensor  # (B, H, W) tokens set back to the source this step
    logits: torch.Tensor  # (B, V, H, W) float32 guided logits the step sampled from
    localization: Optional[LocalizationMap]  # raw (B, N), smoothed grid (B, h, w), scores (B, H*W); or None

    @property
    def scores(self) -> Optional[torch.Tensor]:
        """(B, H, W) localisation scores on the VQ grid, or None."""
        if self.localization is None:
            return None
        return self.localization.scores.reshape(self.tokens.shape)


@dataclass
class Canvas:
    """Where sampling starts. Every tensor is (B, H, W) on the model's device."""

    tokens: torch.LongTensor  # start canvas: the mask id where a token is to be drawn
    reference: Optional[torch.LongTensor]  # the reference stream the transformer sees; None: text-to-image
    source: Optional[torch.LongTensor]  # the source's own tokens: what region-hold reverts to
    start_ratio: torch.Tensor  # (B,) fraction of the canvas masked at the start


@dataclass
class EditResult:
    """Everything one edit produced. Tensors are on the CPU."""

    image: Image.Image  # edited image at the input's size
    source_tokens: torch.LongTensor  # (H, W) VQ ids of the source
    edited_tokens: torch.LongTensor  # (H, W)
    attention_grid: Optional[torch.Tensor]  # (h, w) consolidated map, transformer grid, [0, 1]
    attention_map: Optional[torch.Tensor]  # (height, width) map up-sampled to the image size
    held_mask: Optional[torch.BoolTensor]  # (H, W) tokens whose final score < lambda
    l1_to_source: float  # mean |edit - source| in [0, 1] pixels at model resolution
    l1_to_reconstruction: float  # mean |edit - VQ round trip of the source|
    changed_fraction: float  # fraction of tokens that differ from the source's tokens
    seed: int  # the seed drawn from (a generator's initial seed)
    hold_lambda: float
    settings: EditSettings  # every setting the edit ran with (hold_lambda: this result's)
    size: tuple[int, int]  # (width, height) the model ran at
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.settings.steps

    @property
    def keep_unchanged_pixels(self) -> bool:
        return self.settings.keep_unchanged_pixels

    def summary(self) -> dict:
        """JSON-friendly numbers (no images or tensors)."""
        return {
            "l1_to_source": self.l1_to_source,
            "l1_to_reconstruction": self.l1_to_reconstruction,
            "changed_fraction": self.changed_fraction,
            "seed": self.seed,
            "lambda": self.hold_lambda,
            "size": list(self.size),
            "settings": self.settings.as_dict(),
            "timings": self.timings,
            "seconds": self.timings.get("total", 0.0),
        }


@dataclass
class GenerateResult:
    """What text-to-image produced. Tensors are on the CPU."""

    image: Image.Image
    tokens: torch.LongTensor  # (H, W)
    seed: int
    settings: EditSettings
    size: tuple[int, int]  # (width, height)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.settings.steps


def _device(device: Union[str, torch.device]) -> torch.device:
    """A torch.device that exists here, else a one-line InputError."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError(f"device {device!r} is not a torch device ({error}); use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {str(device)!r} was asked for, but this torch ({torch.__version__}) sees no "
                             "CUDA GPU; use device='cpu'")
        if device.index is not None and device.index >= count:
            raise InputError(f"device {str(device)!r} was asked for, but only {count} CUDA GPU(s) exist")
    return device


def micro_conditions(size: tuple[int, int], batch: int, device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """(B, 5) float32: width, height, crop top, crop left and aesthetic score, the
    micro-conditions the released model was trained and sampled with (no crop, score 6)."""
    width, height = size
    row = torch.tensor([[width, height, 0, 0, AESTHETIC_SCORE]], dtype=torch.float32, device=device)
    return row.expand(batch, -1)


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or {} when the file does not exist; CheckpointError naming
    the file when it cannot be read."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def read_scheduler_config(folder: Path) -> dict:
    """The pipeline arguments a `scheduler/` folder sets (`mask_token_id`, `masking_schedule`);
    {} when it has no `scheduler_config.json`."""
    config = read_json(Path(folder) / "scheduler_config.json")
    return {key: config[key] for key in ("mask_token_id", "masking_schedule") if key in config}


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
        device = _device(device)
        quiet_bitsandbytes_logs()  # before diffusers imports bitsandbytes: its notices once, not per call
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
        scheduler = read_scheduler_config(root / "scheduler")
        extra = read_json(root / PIPELINE_CONFIG_FILE)
        transformer = EditMGTTransformer.from_pretrained(root / transformer_subfolder, dtype=dtype, device=device)
        vq = VQTokenizer.from_pretrained(root / "vqvae", device=device)
        text = TextConditioner.from_pretrained(root, device=device, dtype=dtype)
        if load_8bit:
            from editmgt.models.quantize import quantize_8bit

            report = quantize_8bit(transformer)
            text.quantize_8bit()
            logger.info("8-bit transformer: %s", report)
        return cls(transformer, vq, text, resolution=resolution or int(extra.get("resolution", 1024)), **scheduler)

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

    def hold_blocks(self, settings: EditSettings) -> tuple[int, ...]:
        """The blocks whose attention localises the edit: the settings' range or the default."""
        if settings.hold_blocks is None:
            return self.default_hold_blocks()
        first, last = settings.hold_blocks
        if last >= self.num_blocks:
            raise InputError(f"hold_blocks must lie within [0, {self.num_blocks - 1}] for this model, "
                             f"got [{first}, {last}]")
        return tuple(range(first, last + 1))

    # ------------------------------------------------------------------ the steps of an edit
    def model_size(self, image_size: tuple[int, int], size: Optional[Union[int, tuple[int, int]]] = None) -> tuple[int, int]:
        """(width, height) the model runs at, multiples of the patch, the image's aspect kept:
        about `size`^2 pixels (default `resolution`^2), or exactly `(width, height)` rounded."""
        run_size = fit_size(image_size, self.resolution if size is None else size, self.patch)
        if isinstance(size, tuple) and tuple(size) != run_size:
            logger.info("size %s is not a multiple of the patch %d; using %s", size, self.patch, run_size)
        return run_size

    def preprocess(self, image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
        """PIL RGB -> (1, 3, H, W) float in [0, 1] at `size` (width, height) on the model's device
        (bicubic resize when the size differs; no normalisation, as the VQ model expects)."""
        if image.size != size:
            image = image.resize(size, Image.BICUBIC)
        return to_tensor(image).to(self.device)

    def tokenize(self, pixels: torch.Tensor) -> torch.LongTensor:
        """(B, 3, H, W) in [0, 1] -> (B, H/s, W/s) VQ token ids."""
        return self.vq.encode(pixels)

    def mask_grid(self, mask: ImageLike, image_size: tuple[int, int], grid: tuple[int, int]) -> torch.BoolTensor:
        """A user mask of the image's size -> (h, w) bool on the token grid (True = edit), as the
        released mask processor makes it; InputError when nothing is marked."""
        region = load_mask(mask, image_size, grid=grid).to(self.device)
        if not region.any():
            raise InputError("the mask is empty: paint the region to edit, or pass no mask")
        return region

    def prepare_canvas(self, source_tokens: torch.LongTensor, region: Optional[torch.BoolTensor] = None,
                       mask_reference: str = "masked", batch: int = 1) -> Canvas:
        """Start canvas and reference stream of an edit. source_tokens (1, H, W); region (H, W)
        bool, the user's mask on the token grid, or None (the whole picture is drawn anew).

        With a region, the canvas keeps the source outside it and the schedule starts at the
        masked fraction; `mask_reference="masked"` also writes the mask id into the reference
        stream inside the region (the released code does, and its MagicBrush numbers were made
        so), "source" conditions on the clean source."""
        source = source_tokens.expand(batch, -1, -1)
        if region is None:
            start = torch.full_like(source, self.mask_token_id)
            return Canvas(start, source, source, torch.ones(batch, device=source.device))
        masked = torch.where(region, torch.full_like(source, self.mask_token_id), source)
        reference = masked if mask_reference == "masked" else source
        ratio = region.float().mean().reshape(1).expand(batch)
        return Canvas(masked, reference, source, ratio)

    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: float, repeat: int = 1) -> TextEmbeddings:
        """Text embeddings of [negative x repeat; prompt x repeat] when guidance is on (> 1),
        else [prompt x repeat]. Each prompt is encoded on its own (fixed padding, no mask)."""
        prompts = ([negative_prompt] * repeat if guidance > 1.0 else []) + [prompt] * repeat
        return self.text.encode(prompts)

    def micro_conditions(self, size: tuple[int, int], batch: int) -> torch.Tensor:
        """(B, 5) on the model's device: see `micro_conditions`."""
        return micro_conditions(size, batch, self.device)

    def predict(self, tokens: torch.LongTensor, reference: Optional[torch.LongTensor], text: TextEmbeddings,
                micro_conds: torch.Tensor, timestep: torch.Tensor, *, guidance: float, gamma: float,
                probe: Optional[AttentionProbe] = None) -> TransformerOutput:
        """One transformer call with classifier-free guidance. tokens / reference (B, H, W);
        text, micro_conds: the CFG batch ([negative; prompt] when guidance > 1); timestep
        0-dim. Returns the guided float32 logits (B, V, H, W) and the conditional half's
        text->image attention of the probed blocks."""
        branches = 2 if guidance > 1.0 else 1
        batch = tokens.shape[0]
        dtype = next(self.transformer.parameters()).dtype
        out = self.transformer(
            torch.cat([tokens] * branches),
            text.states.to(self.device, dtype),
            text.pooled.to(self.device, dtype),
            micro_conds,
            timestep.expand(branches * batch),
            reference_tokens=torch.cat([reference] * branches) if reference is not None else None,
            gamma=gamma,
            probe=probe,
        )
        logits = out.logits.float()
        if branches == 2:
            uncond, cond = logits.chunk(2)
            logits = uncond + guidance * (cond - uncond)
        return TransformerOutput(logits, {block: maps[-batch:] for block, maps in out.text_to_image.items()})

    def sample(self, canvas: Canvas, text: TextEmbeddings, size: tuple[int, int], settings: EditSettings,
               generators: Sequence[torch.Generator], *, hold_lambda: Optional[torch.Tensor] = None,
               keyword_rows: Optional[torch.LongTensor] = None,
               callback: Optional[Callable[[StepTrace], None]] = None) -> tuple[torch.LongTensor, Optional[LocalizationMap]]:
        """The MaskGIT loop: `settings.steps` steps from `canvas`, one generator per sample.

        With `hold_lambda` (B,) region-hold reads the localisation map at every step; without,
        an edit (a canvas with a reference) reads it on the last step only, for the attention
        map it returns. Returns the final tokens (B, H, W) and the last step's LocalizationMap
        (None for text-to-image)."""
        tokens = canvas.tokens.reshape(canvas.tokens.shape[0], -1).clone()  # (B, L)
        batch, (height, width) = tokens.shape[0], canvas.tokens.shape[-2:]
        factor = self.transformer.config.downsample_factor
        probe = AttentionProbe(self.hold_blocks(settings), rows=keyword_rows) if canvas.reference is not None else None
        if hold_lambda is not None and probe is None:
            raise InputError("region-hold needs a source image: the canvas has no reference tokens")
        micro_conds = self.micro_conditions(size, batch * (2 if settings.guidance > 1.0 else 1))
        timesteps = timestep_table(settings.steps, device=self.device)
        temperatures = temperature_table(settings.steps, device=self.device)
        source = canvas.source.reshape(batch, -1) if canvas.source is not None else None
        localization = None
        for i in range(settings.steps):
            probe_now = probe if hold_lambda is not None or i == settings.steps - 1 else None
            out = self.predict(tokens.reshape(batch, height, width), canvas.reference, text, micro_conds,
                               timesteps[i], guidance=settings.guidance, gamma=settings.gamma, probe=probe_now)
            if probe_now is not None:
                localization = consolidate(out.text_to_image, (height // factor, width // factor), (height, width),
                                           smoothing=settings.smoothing, strength=settings.smoothing_strength)
            step = self.sampler.step(
                out.logits.flatten(2).transpose(1, 2),  # (B, L, V)
                tokens,
                i,
                settings.steps,
                temperatures[i],
                generators,
                start_ratio=canvas.start_ratio,
                hold_scores=localization.scores if hold_lambda is not None else None,
                hold_lambda=hold_lambda,
                source_tokens=source,
                sample_temperature=settings.sample_temperature,
                draw=settings.draw,
            )
            tokens = step.tokens
            if callback is not None:
                callback(StepTrace(i, settings.steps, tokens.reshape(batch, height, width),
                                   step.predicted.reshape(batch, height, width), step.held.reshape(batch, height, width),
                                   out.logits, localization))
        return tokens.reshape(batch, height, width), localization

    def decode(self, tokens: torch.LongTensor) -> torch.Tensor:
        """(B, H, W) ids -> (B, 3, H*s, W*s) in [0, 1]."""
        return self.vq.decode(tokens)

    @staticmethod
    def to_pil(image: torch.Tensor, size: tuple[int, int]) -> Image.Image:
        """(3, H, W) in [0, 1] -> 8-bit PIL (round(255 x)), resized to `size` (width, height)."""
        array = (image.clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255.0).round().astype(np.uint8)
        pil = Image.fromarray(array)
        return pil if pil.size == size else pil.resize(size, Image.BICUBIC)

    def generators(self, seed: SeedLike, batch: int) -> tuple[list[torch.Generator], int]:
        """One generator per sample, all in the same state, and the seed they came from.

        seed: an int, None (a fresh random seed) or a torch.Generator. Batch 1 draws from the
        generator itself (it advances, as in the released code); a batch draws from copies of
        its state, so that each sample equals the one-by-one edit."""
        if isinstance(seed, torch.Generator):
            if batch == 1:
                return [seed], seed.initial_seed()
            copies = []
            for _ in range(batch):
                copy = torch.Generator(device=seed.device)
                copy.set_state(seed.get_state())
                copies.append(copy)
            return copies, seed.initial_seed()
        seed = random.SystemRandom().randrange(MAX_SEED) if seed is None else check_seed(seed)
        return [torch.Generator(device=self.device).manual_seed(seed) for _ in range(batch)], seed

    # ------------------------------------------------------------------ editing
    @torch.inference_mode()
    def edit(self, image: ImageLike, instruction: str, settings: Optional[EditSettings] = None, *,
             seed: SeedLike = None, mask: Optional[ImageLike] = None,
             size: Optional[Union[int, tuple[int, int]]] = None,
             callback: Optional[Callable[[StepTrace], None]] = None, **overrides: Any) -> EditResult:
        """Edit `image` as `instruction` says.

        settings: an EditSettings (default: EditSettings()); keyword arguments named as its
        fields override it (e.g. `hold_lambda=0.3`). seed: int, torch.Generator or None (a
        fresh seed, returned in the result). mask: white / opaque = the region to edit, of the
        image's size. size: model size (default the model's resolution, aspect kept)."""
        settings = (settings or EditSettings()).replace(**overrides)
        return self.sweep(image, instruction, [settings.hold_lambda], settings, seed=seed, mask=mask, size=size,
                          callback=callback)[0]

    @torch.inference_mode()
    def sweep(self, image: ImageLike, instruction: str, lambdas: Sequence[float],
              settings: Optional[EditSettings] = None, *, seed: SeedLike = None, mask: Optional[ImageLike] = None,
              size: Optional[Union[int, tuple[int, int]]] = None,
              callback: Optional[Callable[[StepTrace], None]] = None, **overrides: Any) -> list[EditResult]:
        """One edit per lambda, run as one batch with the same seed: result i equals
        `edit(..., hold_lambda=lambdas[i], seed=seed)`. `settings.hold_lambda` is not used."""
        t_start = time.perf_counter()
        timings: dict[str, float] = {}

        # 1. Check inputs.
        settings = (settings or EditSettings()).replace(**overrides)
        instruction = check_text(instruction)
        lambdas = list(lambdas) if lambdas is not None else []
        if not lambdas:
            raise InputError("give at least one lambda")
        per_lambda = [settings.replace(hold_lambda=lam) for lam in lambdas]  # checks each lambda
        lambdas = [s.hold_lambda for s in per_lambda]
        batch = len(lambdas)
        generators, seed_used = self.generators(seed, batch)
        source = load_image(image)
        run_size = self.model_size(source.size, size)

        # 2. Tokenise the source image (and the user's mask, if any).
        t0 = time.perf_counter()
        pixels = self.preprocess(source, run_size)  # (1, 3, H, W)
        source_tokens = self.tokenize(pixels)  # (1, h, w)
        grid = tuple(source_tokens.shape[-2:])
        region = self.mask_grid(mask, source.size, grid) if mask is not None else None
        canvas = self.prepare_canvas(source_tokens, region, settings.mask_reference, batch)
        timings["vq_encode"] = time.perf_counter() - t0

        # 3. Encode the instruction (negative prompt first when guidance is on).
        t0 = time.perf_counter()
        text = self.encode_prompt(instruction, settings.negative_prompt, settings.guidance, batch)
        rows = self.text.keyword_rows(instruction, settings.keywords) if settings.keywords else None
        timings["text"] = time.perf_counter() - t0

        # 4. Sample.
        t0 = time.perf_counter()
        hold_lambda = (torch.tensor(lambdas, dtype=torch.float32, device=self.device)
                       if any(s.hold_lambda > 0 for s in per_lambda) else None)  # None: region-hold off
        tokens, localization = self.sample(canvas, text, run_size, settings, generators, hold_lambda=hold_lambda,
                                           keyword_rows=rows, callback=callback)
        timings["sampling"] = time.perf_counter() - t0

        # 5. Decode (keeping the source's pixels where no token changed, if asked) and measure.
        t0 = time.perf_counter()
        decoded = self.decode(tokens)  # (B, 3, H, W)
        reconstruction = self.decode(source_tokens)  # (1, 3, H, W)
        changed_tokens = tokens != source_tokens  # (B, h, w)
        edited, alphas = decoded, None
        if settings.keep_unchanged_pixels:
            alphas = [changed_alpha(c, self.vq.scale_factor).to(pixels) for c in changed_tokens]  # (H, W) each
            alpha = torch.stack(alphas)[:, None]
            edited = alpha * decoded + (1 - alpha) * pixels
        timings["vq_decode"] = time.perf_counter() - t0
        l1_source = (edited - pixels).abs().flatten(1).mean(1).tolist()
        l1_recon = (edited - reconstruction).abs().flatten(1).mean(1).tolist()
        changed = changed_tokens.flatten(1).float().mean(1).tolist()
        timings["total"] = time.perf_counter() - t_start

        # 6. One result per lambda.
        results = []
        for i, settings_i in enumerate(per_lambda):
            grid_map = attention_map = held = None
            if localization is not None:
                grid_map = localization.grid[i].float().cpu()
                attention_map = torch.nn.functional.interpolate(
                    grid_map[None, None], size=(source.size[1], source.size[0]), mode="bilinear", align_corners=False
                )[0, 0].clamp(0, 1)
                scores = localization.scores[i].reshape(grid).cpu()
                held = scores < settings_i.hold_lambda if settings_i.hold_lambda < 1.0 else torch.ones_like(
                    scores, dtype=torch.bool)
            image_i = self.to_pil(decoded[i], source.size)
            if alphas is not None:  # blend at the source's own size, so its full detail is kept
                image_i = keep_unchanged(image_i, source, alphas[i].cpu())
            results.append(
                EditResult(
                    image=image_i,
                    source_tokens=source_tokens[0].cpu(),
                    edited_tokens=tokens[i].cpu(),
                    attention_grid=grid_map,
                    attention_map=attention_map,
                    held_mask=held,
                    l1_to_source=float(l1_source[i]),
                    l1_to_reconstruction=float(l1_recon[i]),
                    changed_fraction=float(changed[i]),
                    seed=seed_used,
                    hold_lambda=settings_i.hold_lambda,
                    settings=settings_i,
                    size=run_size,
                    timings=dict(timings),
                )
            )
        return results

    @torch.inference_mode()
    def generate(self, prompt: str, settings: Optional[EditSettings] = None, *, seed: SeedLike = None,
                 size: Optional[Union[int, tuple[int, int]]] = None,
                 callback: Optional[Callable[[StepTrace], None]] = None, **overrides: Any) -> GenerateResult:
        """Text-to-image: the same sampler from an all-masked canvas with no source image
        (stage-1 / Meissonic models). Uses steps, guidance, negative prompt and the draw of
        `settings`; the edit-only settings are ignored."""
        t_start = time.perf_counter()
        settings = (settings or EditSettings()).replace(**overrides)
        prompt = check_text(prompt, "prompt")
        generators, seed_used = self.generators(seed, 1)
        run_size = self.model_size((self.resolution, self.resolution), size)
        grid = (run_size[1] // self.vq.scale_factor, run_size[0] // self.vq.scale_factor)
        start = torch.full((1, *grid), self.mask_token_id, dtype=torch.long, device=self.device)
        canvas = Canvas(start, None, None, torch.ones(1, device=self.device))
        text = self.encode_prompt(prompt, settings.negative_prompt, settings.guidance)
        t0 = time.perf_counter()
        tokens, _ = self.sample(canvas, text, run_size, settings, generators, callback=callback)
        sampling = time.perf_counter() - t0
        image = self.to_pil(self.decode(tokens)[0], run_size)
        return GenerateResult(image=image, tokens=tokens[0].cpu(), seed=seed_used, settings=settings, size=run_size,
                              timings={"sampling": sampling, "total": time.perf_counter() - t_start})
