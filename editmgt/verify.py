"""Check this implementation against the released code's recorded outputs.

    python -m editmgt.verify parity DIR      # the transformer alone (fixtures/parity layout)
    python -m editmgt.verify pipeline DIR    # whole calls, text to pixels (fixtures/pipeline layout)
    python -m editmgt.verify manifest TSV    # names and shapes of a released state dict

`parity` and `pipeline` print one line per compared quantity (name, measured value, limit,
ok/FAIL/SKIP) and exit 0 only when nothing fails.

`parity` reads whatever keys the fixture holds:

- `logits_t2i`, `logits_edit_gamma1`, `logits_edit_gamma`           tol 1e-4
- `[t2i.|edit_gamma1.]attn_text_to_image.{block}`                   tol 1e-5
  (text->image probabilities with every text row kept)
- `[t2i.|edit_gamma1.]local_scores_raw|rescaled`                    tol 1e-5
  (mean over blocks, heads and rows of the conditional half; per-row min-max)
- `smooth_out.{input}.{method}.s{strength}.peaks{bool}`             tol 1e-4 (bilateral 2/255)
- `upsample_out` (bicubic up-sample of `upsample_in`)               tol 1e-5
- `scheduler.timesteps`, `scheduler.temperatures`                   exact
`trace.*` tensors are debugging aids and are not compared.

`pipeline` loads `DIR/checkpoint` with `EditMGTPipeline.from_pretrained` and runs every case
(`cases/<name>/case.json`: its `equivalent_editmgt_call`, size from `call`) through the public
pipeline: text ids equal and text states within 1e-5; micro-conditions, timesteps,
temperatures, source tokens, mask grid, start canvas and reference tokens equal; the guided
logits on the recorded inputs of every step within 1e-3 (raw step-0 logits 1e-4); then the
whole call with the case's seed: every step's grids equal in >= 99.9 % of positions,
region-hold's held tokens equal at every step, final tokens >= 99.9 %, the image within 1/255
on >= 99 % of pixels. Any set in this format works (other seeds, sizes, steps, prompts,
gamma and lambda).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors.torch import load_file
from torch import Tensor

from editmgt.images import load_image
from editmgt.models.transformer import (
    AttentionProbe,
    EditMGTTransformer,
    TransformerConfig,
    parameter_manifest,
)
from editmgt.sampling import schedule
from editmgt.sampling.localization import rescale, upsample
from editmgt.sampling.smoothing import smooth_scores
from editmgt.pipeline import Canvas, EditMGTPipeline
from editmgt.settings import EditSettings

logger = logging.getLogger(__name__)

LOGITS_TOL = 1e-4
ATTENTION_TOL = 1e-5
LOCAL_TOL = 1e-5
SMOOTH_TOL = 1e-4
BILATERAL_TOL = 2 / 255
UPSAMPLE_TOL = 1e-5
RESCALE_EPS = 1e-8

# fixture case prefix -> (logits key, uses the reference, uses the case's gamma)
CASES = {
    "t2i.": ("logits_t2i", False, False),
    "edit_gamma1.": ("logits_edit_gamma1", True, False),
    "": ("logits_edit_gamma", True, True),
}
_ATTN_KEY = re.compile(r"^(?P<prefix>(?:t2i\.|edit_gamma1\.)?)attn_text_to_image\.(?P<block>\d+)$")
_LOCAL_KEY = re.compile(r"^(?P<prefix>(?:t2i\.|edit_gamma1\.)?)local_scores_(?P<kind>raw|rescaled)$")
_SMOOTH_KEY = re.compile(
    r"^smooth_out\.(?P<source>[^.]+)\.(?P<method>[a-z]+)\.s(?P<strength>\d+(?:\.\d+)?)\.peaks(?P<peaks>True|False)$"
)


@dataclass
class Comparison:
    name: str
    value: Optional[float]          # the measured value; None when skipped
    limit: float                    # the tolerance (value <= limit), or the floor (value >= limit)
    status: str                     # "ok" | "FAIL" | "SKIP ..."
    at_least: bool = False          # True: an agreement that must reach `limit`

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    def line(self) -> str:
        value = "-" if self.value is None else (f"{self.value:.6f}" if self.at_least else f"{self.value:.3e}")
        limit = f">={self.limit:g}" if self.at_least else f"<={self.limit:.1e}"
        return f"{self.name:<56} {value:>12} {limit:>10} {self.status}"


def compare(name: str, got: Tensor, expected: Tensor, tolerance: float) -> Comparison:
    """Max abs difference (inf on a shape mismatch) against a tolerance."""
    if tuple(got.shape) != tuple(expected.shape):
        logger.warning("%s: shape %s, expected %s", name, tuple(got.shape), tuple(expected.shape))
        return Comparison(name, math.inf, tolerance, "FAIL")
    diff = (got.detach().double().cpu() - expected.double()).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    ok = worst <= tolerance and not math.isnan(worst)
    return Comparison(name, worst, tolerance, "ok" if ok else "FAIL")


def agreement(name: str, got: Tensor, expected: Tensor, floor: float) -> Comparison:
    """Fraction of equal elements (0 on a shape mismatch), which must reach `floor`."""
    got, expected = got.detach().cpu(), expected.detach().cpu()
    if tuple(got.shape) != tuple(expected.shape):
        logger.warning("%s: shape %s, expected %s", name, tuple(got.shape), tuple(expected.shape))
        return Comparison(name, 0.0, floor, "FAIL", at_least=True)
    share = float((got.long() == expected.long()).double().mean()) if got.numel() else 1.0
    return Comparison(name, share, floor, "ok" if share >= floor else "FAIL", at_least=True)


def skipped(name: str, tolerance: float, why: str, at_least: bool = False) -> Comparison:
    return Comparison(name, None, tolerance, f"SKIP ({why})", at_least)


# ------------------------------------------------------------------- transformer


def local_scores(text_to_image: dict[int, Tensor], blocks: Iterable[int]) -> tuple[Tensor, Tensor]:
    """Raw and rescaled localisation scores of the conditional (second) half of the batch.

    text_to_image: block -> (B, heads, R, N). Returns two (B/2, N) tensors.
    """
    maps = torch.stack([text_to_image[b] for b in blocks], dim=1)  # (B, blocks, heads, R, N)
    maps = maps[maps.shape[0] // 2 :]
    raw = maps.mean(dim=(1, 2, 3))
    low, high = raw.amin(-1, keepdim=True), raw.amax(-1, keepdim=True)
    return raw, (raw - low) / (high - low + RESCALE_EPS)


def _transformer_comparisons(folder: Path, outputs: dict[str, Tensor], case: dict) -> list[Comparison]:
    config = TransformerConfig.from_json(folder / "transformer" / "config.json")
    model = EditMGTTransformer.from_pretrained(folder / "transformer", dtype=torch.float32, device="cpu")
    inputs = load_file(str(folder / "inputs.safetensors"))
    scalars = case.get("scalars", {})
    gamma = float(scalars.get("gamma_case3", 1.0))
    local_blocks = scalars.get("local_scores", {}).get("attention_enable_blocks")
    if local_blocks is None:
        local_blocks = list(range(config.num_layers, config.num_blocks))

    results: list[Comparison] = []
    for prefix, (logits_key, with_reference, with_gamma) in CASES.items():
        attn_keys = {int(m["block"]): k for k in outputs if (m := _ATTN_KEY.match(k)) and m["prefix"] == prefix}
        local_keys = {m["kind"]: k for k in outputs if (m := _LOCAL_KEY.match(k)) and m["prefix"] == prefix}
        if logits_key not in outputs and not attn_keys and not local_keys:
            continue
        blocks = sorted(set(attn_keys) | (set(local_blocks) if local_keys else set()))
        probe = AttentionProbe(blocks=tuple(blocks), keep_rows=True) if blocks else None
        with torch.no_grad():
            out = model(
                inputs["hidden_states"],
                inputs["encoder_hidden_states"],
                inputs["pooled_projections"],
                inputs["micro_conds"],
                inputs["timestep"],
                reference_tokens=inputs["reference_image_hidden_states"] if with_reference else None,
                gamma=gamma if with_gamma else 1.0,
                probe=probe,
            )
        if logits_key in outputs:
            results.append(compare(logits_key, out.logits, outputs[logits_key], LOGITS_TOL))
        for block, key in sorted(attn_keys.items()):
            results.append(compare(key, out.text_to_image[block], outputs[key], ATTENTION_TOL))
        if local_keys:
            raw, rescaled = local_scores(out.text_to_image, local_blocks)
            for kind, value in (("raw", raw), ("rescaled", rescaled)):
                if kind in local_keys:
                    results.append(compare(local_keys[kind], value, outputs[local_keys[kind]], LOCAL_TOL))
    return results


# --------------------------------------------------------- scheduler / smoothing


def _scheduler_comparisons(outputs: dict[str, Tensor], case: dict) -> list[Comparison]:
    keys = [k for k in ("scheduler.timesteps", "scheduler.temperatures") if k in outputs]
    if not keys:
        return []
    start, end = case.get("scheduler", {}).get("temperature", (2.0, 0.0))
    results = []
    if "scheduler.timesteps" in outputs:
        expected = outputs["scheduler.timesteps"]
        got = schedule.timesteps(expected.shape[0])
        results.append(_exact("scheduler.timesteps", got, expected))
    if "scheduler.temperatures" in outputs:
        expected = outputs["scheduler.temperatures"]
        got = schedule.temperatures(expected.shape[0], float(start), float(end))
        results.append(_exact("scheduler.temperatures", got, expected))
    return results


def _exact(name: str, got: Tensor, expected: Tensor) -> Comparison:
    result = compare(name, got, expected, 0.0)
    if not result.failed and got.dtype != expected.dtype:
        logger.warning("%s: dtype %s, expected %s", name, got.dtype, expected.dtype)
        result.status = "FAIL"
    return result


def _smoothing_comparisons(folder: Path) -> list[Comparison]:
    path = folder / "smoothing.safetensors"
    if not path.is_file():
        return []
    data = load_file(str(path))
    results: list[Comparison] = []
    for key in sorted(k for k in data if k.startswith("smooth_out.")):
        m = _SMOOTH_KEY.match(key)
        source = f"smooth_in.{m['source']}" if m else None
        if m is None or source not in data:
            results.append(skipped(key, SMOOTH_TOL, "unrecognised key"))
            continue
        tol = BILATERAL_TOL if m["method"] == "bilateral" else SMOOTH_TOL
        got = smooth_scores(data[source], m["method"], float(m["strength"]), m["peaks"] == "True")
        results.append(compare(key, got, data[key], tol))
    if "upsample_out" in data and "upsample_in" in data:
        flat_in, expected = data["upsample_in"], data["upsample_out"]
        side_in, side_out = math.isqrt(flat_in.shape[-1]), math.isqrt(expected.shape[-1])
        grid = flat_in.reshape(flat_in.shape[0], side_in, side_in)
        results.append(compare("upsample_out", upsample(grid, (side_out, side_out)), expected, UPSAMPLE_TOL))
    return results


def parity(folder: Path) -> list[Comparison]:
    """Every comparison the fixture folder supports (see the module docstring)."""
    folder = Path(folder)
    outputs = load_file(str(folder / "outputs.safetensors"))
    case_path = folder / "case.json"
    case = json.loads(case_path.read_text()) if case_path.is_file() else {}
    results = _transformer_comparisons(folder, outputs, case)
    results += _scheduler_comparisons(outputs, case)
    results += _smoothing_comparisons(folder)
    known = {r.name for r in results}
    for key in sorted(outputs):
        if key not in known and not key.startswith("trace."):
            results.append(skipped(key, 0.0, "not compared"))
    return results


# ---------------------------------------------------------------------- pipeline
# Limits of `verify pipeline` (the same-seed agreement a port of the released pipeline must reach).
TEXT_TOL = 1e-5
GUIDED_LOGITS_TOL = 1e-3
RAW_LOGITS_TOL = 1e-3  # diagnostic: which CFG half moved, when the guided logits do
VQ_TOL = 1e-4
HOLD_RAW_TOL = 1e-6
HOLD_SMOOTHED_TOL = 1e-4
TOKEN_AGREEMENT = 0.999
PIXEL_AGREEMENT = 0.99  # share of pixels within 1/255 of the released output


@dataclass
class PipelineCase:
    """One case of a pipeline fixture set: the call as editmgt arguments, and the recording."""

    name: str
    method: str                         # "edit" | "generate"
    text: str                           # instruction or prompt
    seed: int
    size: tuple[int, int]               # (width, height)
    settings: EditSettings
    image: Optional[Path]
    mask: Optional[Path]
    tensors: dict[str, Tensor]
    output_png: Path


def load_pipeline_case(folder: Path, case_dir: Path) -> PipelineCase:
    """Read `cases/<name>/case.json` (its `equivalent_editmgt_call` and `call`) and tensors."""
    case = json.loads((case_dir / "case.json").read_text())
    call = dict(case["equivalent_editmgt_call"])
    released = case.get("call", {})
    method = call.pop("method")
    if released.get("pipeline_attributes", {}).get("local_query_text"):
        raise ValueError("keyword rows differ on purpose (editmgt reads the Gemma2 rows of the keyword)")
    blocks = call.pop("hold_blocks", None)
    if blocks is not None:
        blocks = [int(b) for b in blocks]
        if blocks != list(range(blocks[0], blocks[-1] + 1)):
            raise ValueError(f"hold blocks {blocks} are not a contiguous range")
        blocks = (blocks[0], blocks[-1])
    fields = {k: call[k] for k in ("steps", "guidance", "gamma", "hold_lambda", "smoothing", "smoothing_strength",
                                   "negative_prompt") if k in call}
    if "negative_prompt" in fields and fields["negative_prompt"] is None:
        fields["negative_prompt"] = ""  # the released pipeline encodes the empty prompt for None
    settings = EditSettings(hold_blocks=blocks, **fields)
    width = int(released.get("width", 0)) or None
    height = int(released.get("height", 0)) or None
    tensors = load_file(str(case_dir / "tensors.safetensors"))
    if width is None or height is None:
        raise ValueError(f"{case_dir}/case.json: the call gives no width and height")
    return PipelineCase(
        name=case_dir.name,
        method=method,
        text=call.get("instruction", call.get("prompt")),
        seed=int(call["seed"]),
        size=(width, height),
        settings=settings,
        image=folder / call["image"] if call.get("image") else None,
        mask=folder / call["mask"] if call.get("mask") else None,
        tensors=tensors,
        output_png=case_dir / "output.png",
    )


def _sub_grid(full: Tensor, sub_shape: tuple[int, ...]) -> Tensor:
    """The fixture's sub-grid of (..., H, W): every k-th row and column from k // 2 (k = H / h)."""
    (h, w), (height, width) = sub_shape[-2:], full.shape[-2:]
    ky, kx = height // h, width // w
    return full[..., ky // 2::ky, kx // 2::kx]


def _center(full: Tensor, sub_shape: tuple[int, ...]) -> Tensor:
    """The centre crop of (..., H, W) of the fixture's size."""
    (h, w), (height, width) = sub_shape[-2:], full.shape[-2:]
    top, left = (height - h) // 2, (width - w) // 2
    return full[..., top:top + h, left:left + w]


def _pixels_within(name: str, got, expected_png: Path, step: int = 1) -> Comparison:
    """Share of pixels whose every channel is within `step`/255 of the PNG's."""
    import numpy as np
    from PIL import Image

    expected = np.asarray(Image.open(expected_png).convert("RGB")).astype(np.int16)
    got = np.asarray(got.convert("RGB")).astype(np.int16)
    if got.shape != expected.shape:
        logger.warning("%s: image %s, expected %s", name, got.shape, expected.shape)
        return Comparison(name, 0.0, PIXEL_AGREEMENT, "FAIL", at_least=True)
    share = float((np.abs(got - expected) <= step).all(-1).mean())
    return Comparison(name, share, PIXEL_AGREEMENT, "ok" if share >= PIXEL_AGREEMENT else "FAIL", at_least=True)


def _worst_step(name: str, got: list[Tensor], expected: Tensor, floor: float) -> Comparison:
    """The lowest per-step agreement of a (N, ...) recording, named after its step."""
    if len(got) != expected.shape[0]:
        logger.warning("%s: %d steps, expected %d", name, len(got), expected.shape[0])
        return Comparison(name, 0.0, floor, "FAIL", at_least=True)
    results = [agreement(name, g, e, floor) for g, e in zip(got, expected)]
    worst = min(range(len(results)), key=lambda i: results[i].value)
    results[worst].name = f"{name} (worst: step {worst})"
    return results[worst]


def _text_comparisons(pipe, case: PipelineCase) -> list[Comparison]:
    """Token ids, text stream and pooled vectors of [negative; prompt]."""
    t, out = case.tensors, []
    guided = case.settings.guidance > 1.0
    prompts = {"prompt": case.text, **({"negative": case.settings.negative_prompt} if guided else {})}
    for role, prompt in prompts.items():
        if f"text.{role}_ids_clip" in t:
            out.append(agreement(f"text.{role}_ids_clip", pipe.text.clip.tokenize([prompt]), t[f"text.{role}_ids_clip"], 1.0))
        if f"text.{role}_ids_gemma" in t and pipe.text.llm is not None:
            ids = pipe.text.llm.tokenize([prompt])["input_ids"]
            out.append(agreement(f"text.{role}_ids_gemma", ids, t[f"text.{role}_ids_gemma"], 1.0))
    text = pipe.encode_prompt(case.text, case.settings.negative_prompt, case.settings.guidance)
    if "text.encoder_hidden_states" in t:
        out.append(compare("text.encoder_hidden_states", text.states, t["text.encoder_hidden_states"], TEXT_TOL))
    if "text.pooled_projections" in t:
        out.append(compare("text.pooled_projections", text.pooled, t["text.pooled_projections"], TEXT_TOL))
    return out


def _conditioning(pipe, case: PipelineCase):
    """(canvas, source tokens or None, comparisons) of the case's inputs."""
    t, out = case.tensors, []
    batch = 2 if case.settings.guidance > 1.0 else 1
    if "cond.micro_conds" in t:
        out.append(compare("cond.micro_conds", pipe.micro_conditions(case.size, batch), t["cond.micro_conds"], 0.0))
    steps = case.settings.steps
    if "cond.timesteps" in t:
        out.append(_exact("cond.timesteps", schedule.timesteps(steps), t["cond.timesteps"]))
    if "steps.temperatures" in t:
        out.append(_exact("steps.temperatures", schedule.temperatures(steps), t["steps.temperatures"]))
    if case.method == "generate":
        grid = tuple(t["steps.tokens_out"].shape[-2:])
        start = torch.full((1, *grid), pipe.mask_token_id, dtype=torch.long, device=pipe.device)
        canvas = Canvas(start, None, None, torch.ones(1, device=pipe.device))
    else:
        source = load_image(case.image)
        source_tokens = pipe.tokenize(pipe.preprocess(source, case.size))
        if "source.tokens" in t:
            out.append(agreement("source.tokens", source_tokens, t["source.tokens"], 1.0))
        region = pipe.mask_grid(case.mask, source.size, tuple(source_tokens.shape[-2:])) if case.mask else None
        canvas = pipe.prepare_canvas(source_tokens, region, case.settings.mask_reference)
        if "cond.reference_tokens" in t:
            out.append(agreement("cond.reference_tokens", canvas.reference, t["cond.reference_tokens"], 1.0))
    if "steps.start_tokens" in t:
        out.append(agreement("steps.start_tokens", canvas.tokens, t["steps.start_tokens"], 1.0))
    return canvas, out


def _logits_comparisons(pipe, case: PipelineCase, canvas) -> list[Comparison]:
    """The transformer with guidance at every step, on the recorded step inputs."""
    t, out = case.tensors, []
    settings = case.settings
    text = pipe.encode_prompt(case.text, settings.negative_prompt, settings.guidance)
    batch = 2 if settings.guidance > 1.0 else 1
    micro = pipe.micro_conditions(case.size, batch)
    timesteps = schedule.timesteps(settings.steps, device=pipe.device)
    if "steps.guided_logits_sub" in t:
        inputs = [canvas.tokens] + [row[None].long().to(pipe.device) for row in t["steps.tokens_out"][:-1]]
        worst = None
        for i, tokens in enumerate(inputs):
            logits = pipe.predict(tokens, canvas.reference, text, micro, timesteps[i], guidance=settings.guidance,
                                  gamma=settings.gamma).logits
            expected = t["steps.guided_logits_sub"][i:i + 1]
            result = compare(f"steps.guided_logits_sub (worst: step {i})", _sub_grid(logits, expected.shape),
                             expected, GUIDED_LOGITS_TOL)
            if worst is None or result.value > worst.value:
                worst = result
        out.append(worst)
    if batch == 2:
        for half, key in ((0, "step0.logits_uncond_sub"), (1, "step0.logits_cond_sub")):
            if key in t:
                logits = pipe.predict(canvas.tokens, canvas.reference, text.select([half]), micro[half:half + 1],
                                      timesteps[0], guidance=1.0, gamma=settings.gamma).logits
                out.append(compare(key, _sub_grid(logits, t[key].shape), t[key], RAW_LOGITS_TOL))
    return out


def _same_seed_comparisons(pipe, case: PipelineCase) -> list[Comparison]:
    """The whole call with the case's seed: every step's grids, held tokens, maps and the image."""
    t, trace = case.tensors, []

    def record(step) -> None:
        loc = step.localization
        trace.append({"tokens_out": step.tokens[0].cpu(), "pred": step.predicted[0].cpu(), "held": step.held[0].cpu(),
                      "raw": loc.raw[0].cpu() if loc is not None else None,
                      "smoothed": loc.grid[0].flatten().cpu() if loc is not None else None})

    generator = torch.Generator(device=pipe.device).manual_seed(case.seed)
    if case.method == "generate":
        result = pipe.generate(case.text, case.settings, seed=generator, size=case.size, callback=record)
        final = result.tokens
    else:
        result = pipe.edit(case.image, case.text, case.settings, seed=generator, mask=case.mask, size=case.size,
                           callback=record)
        final = result.edited_tokens
    out = [_worst_step(f"steps.{key}", [s[key] for s in trace], t[f"steps.{key}"], TOKEN_AGREEMENT)
           for key in ("pred", "tokens_out") if f"steps.{key}" in t]
    if "hold.held" in t:
        out.append(_worst_step("hold.held", [s["held"] for s in trace], t["hold.held"], 1.0))
        if "hold.local_raw" in t and trace[0]["raw"] is not None:
            out.append(compare("hold.local_raw", torch.stack([s["raw"] for s in trace]), t["hold.local_raw"],
                               HOLD_RAW_TOL))
        if "hold.local_raw" in t and "hold.local_smoothed" in t:
            # Smoothing on the recorded raw map: the rescale magnifies the transformer's rounding
            # about 1000-fold and the peak rule is discontinuous, so a run's own raw map is not
            # the fair input (its held tokens are compared above).
            factor = pipe.transformer.config.downsample_factor
            h, w = (n // factor for n in t["steps.tokens_out"].shape[-2:])
            smoothed = smooth_scores(rescale(t["hold.local_raw"]).reshape(-1, h, w), case.settings.smoothing,
                                     case.settings.smoothing_strength)
            out.append(compare("hold.local_smoothed (from the recorded raw map)", smoothed.flatten(1),
                               t["hold.local_smoothed"], HOLD_SMOOTHED_TOL))
    if "output.tokens" in t:
        out.append(agreement("output.tokens", final, t["output.tokens"][0], TOKEN_AGREEMENT))
    if "output.decoded_center" in t and "output.tokens" in t:
        decoded = pipe.decode(t["output.tokens"].long().to(pipe.device))[0]
        out.append(compare("output.decoded_center (recorded tokens)", _center(decoded, t["output.decoded_center"].shape),
                           t["output.decoded_center"], VQ_TOL))
    out.append(_pixels_within("output.png (within 1/255)", result.image, case.output_png))
    return out


def _inputs_comparisons(pipe, folder: Path, cases: list[PipelineCase]) -> list[Comparison]:
    """The source's VQ tokens, latents and round trip, and the user mask's token grid."""
    path = folder / "inputs" / "source.safetensors"
    edits = [c for c in cases if c.method == "edit"]
    if not path.is_file() or not edits:
        return []
    t, out = load_file(str(path)), []
    case = next((c for c in edits if c.mask is not None), edits[0])
    source = load_image(case.image)
    pixels = pipe.preprocess(source, case.size)
    tokens = pipe.tokenize(pixels)
    if "source.tokens" in t:
        out.append(agreement("inputs: source.tokens", tokens, t["source.tokens"], 1.0))
    if "source.latents_center" in t:
        latents = pipe.vq.model.encode(pixels.to(pipe.vq.dtype)).latents[0]
        out.append(compare("inputs: source.latents_center", _center(latents, t["source.latents_center"].shape),
                           t["source.latents_center"], VQ_TOL))
    if "source.recon_center" in t:
        recon = pipe.decode(t["source.tokens"].long().to(pipe.device) if "source.tokens" in t else tokens)[0]
        out.append(compare("inputs: source.recon_center", _center(recon, t["source.recon_center"].shape),
                           t["source.recon_center"], VQ_TOL))
        png = folder / "inputs" / "source_recon.png"
        if png.is_file():
            out.append(_pixels_within("inputs: source_recon.png (within 1/255)",
                                      pipe.to_pil(recon, source.size), png))
    if "mask.grid" in t and case.mask is not None:
        grid = pipe.mask_grid(case.mask, source.size, tuple(t["mask.grid"].shape))
        out.append(agreement("inputs: mask.grid", grid, t["mask.grid"].bool(), 1.0))
    return out


def pipeline(folder: Path, device: str = "cpu", cases: Optional[Iterable[str]] = None) -> list[Comparison]:
    """Every comparison a pipeline fixture set supports: `checkpoint/`, `inputs/`, and
    `cases/<name>/{case.json, tensors.safetensors, output.png}` (see its README)."""
    folder = Path(folder)
    pipe = EditMGTPipeline.from_pretrained(folder / "checkpoint", device=device)
    wanted = set(cases) if cases else None
    loaded, results = [], []
    for case_dir in sorted(p for p in (folder / "cases").iterdir() if (p / "case.json").is_file()):
        if wanted is not None and case_dir.name not in wanted:
            continue
        try:
            loaded.append(load_pipeline_case(folder, case_dir))
        except ValueError as why:
            results.append(skipped(f"{case_dir.name}/*", 0.0, str(why)))
    results += _inputs_comparisons(pipe, folder, loaded)
    for case in loaded:
        canvas, conditioning = _conditioning(pipe, case)
        checks = _text_comparisons(pipe, case) + conditioning + _logits_comparisons(pipe, case, canvas)
        checks += _same_seed_comparisons(pipe, case)
        for check in checks:
            check.name = f"{case.name}/{check.name}"
        results += checks
    return results


# ---------------------------------------------------------------------- manifest


def read_manifest(tsv: Path) -> tuple[TransformerConfig, list[tuple[str, tuple[int, ...]]]]:
    """Config (from the `# built with ... config={...}` header) and (name, shape) rows."""
    config: Optional[TransformerConfig] = None
    rows: list[tuple[str, tuple[int, ...]]] = []
    for line in Path(tsv).read_text().splitlines():
        if line.startswith("#"):
            m = re.search(r"config=(\{.*\})\s*$", line)
            if line.startswith("# built with") and m:
                config = TransformerConfig.from_dict(json.loads(m.group(1)))
            continue
        if not line.strip():
            continue
        name, shape = line.split("\t")[:2]
        rows.append((name, tuple(int(s) for s in shape.split("x")) if shape else ()))
    if config is None:
        raise ValueError(f"{tsv}: no '# built with ... config={{...}}' header line")
    return config, rows


def manifest_differences(tsv: Path, limit: int = 20) -> list[str]:
    """Differences between the TSV and the model built from its config; [] = exact match."""
    config, expected = read_manifest(tsv)
    built = parameter_manifest(config)
    want, have = dict(expected), dict(built)
    diffs = [f"missing in model: {n} {want[n]}" for n in want if n not in have]
    diffs += [f"not in manifest: {n} {have[n]}" for n in have if n not in want]
    diffs += [f"shape {n}: model {have[n]}, manifest {want[n]}" for n in want if n in have and have[n] != want[n]]
    if not diffs and [n for n, _ in built] != [n for n, _ in expected]:
        diffs.append("same names and shapes, different order")
    if len(expected) != len(want):
        diffs.append(f"manifest lists {len(expected) - len(want)} duplicate names")
    return diffs[:limit] + ([f"... {len(diffs) - limit} more"] if len(diffs) > limit else [])


# --------------------------------------------------------------------------- CLI


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editmgt.verify", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("parity", help="compare the transformer against a parity fixture folder").add_argument(
        "dir", type=Path)
    pipe_parser = sub.add_parser("pipeline", help="run a pipeline fixture set's cases through the public pipeline")
    pipe_parser.add_argument("dir", type=Path)
    pipe_parser.add_argument("--device", default="cpu", help="cpu (the fixtures' device), cuda, cuda:1 ...")
    pipe_parser.add_argument("--case", action="append", default=None, help="only this case (repeatable)")
    sub.add_parser("manifest", help="compare parameter names/shapes with a TSV").add_argument("tsv", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.command in ("parity", "pipeline"):
        torch.set_grad_enabled(False)
        results = parity(args.dir) if args.command == "parity" else pipeline(args.dir, args.device, args.case)
        for r in results:
            sys.stdout.write(r.line() + "\n")
        failed = sum(r.failed for r in results)
        passed = sum(r.status == "ok" for r in results)
        sys.stdout.write(f"{passed} ok, {failed} failed, {len(results) - passed - failed} skipped\n")
        return 1 if failed or not passed else 0

    diffs = manifest_differences(args.tsv)
    for d in diffs:
        sys.stdout.write(d + "\n")
    sys.stdout.write(f"{args.tsv}: {'exact match' if not diffs else 'MISMATCH'}\n")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
