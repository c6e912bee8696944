"""`python -m editmgt.bench`: speed and memory of EditMGT edits with random weights.

Builds the architecture with random weights (no download): the released transformer and
VQ-GAN configs (`--preset full`, the default on CUDA) or a reduced stack with the real
token, text and codebook shapes (`--preset cpu`, the default without CUDA, so CI runs the
same code paths). Text encoders are replaced by a stand-in that returns random embeddings
of the real shapes (states (B, 256, 2304), pooled (B, 1024)); `--real-text` builds CLIP
ViT-H/14-text and Gemma2-2B from their configs (random weights) instead.

Modes (`--modes`, comma separated; default all, in this order):

  plain        16-step sampling loop, CFG, gamma, region-hold off (no attention probe)
  region-hold  the same loop with region-hold on: lambda 0.3, hold blocks 28-36 (or the
               same relative depth), attention capture + adaptive smoothing every step
  e2e          `EditMGTPipeline.edit`, image in -> image out: VQ encode, text encoding
               (the text cache is cleared before every run), region-hold sampling, VQ decode
  sweep8       `EditMGTPipeline.sweep` with 8 lambdas (one batch), image in -> 8 images out
  draw         one sampler step on random logits of the preset's token grid and codebook, with
               each token draw in turns: "released" (the released scheduler's draw, the
               default) and "inverse-cdf" (one uniform per position)
  8bit         the region-hold loop with the transformer (and real text encoders) in int8
               (bitsandbytes LLM.int8); quantises the stack in place, so it runs late
  cold-start   the random stack saved as a checkpoint folder in a temp dir, then
               `EditMGTPipeline.from_pretrained` + the first edit (one run; files are in
               the page cache, having just been written)

For each mode: seconds per call (min / median / max over `--runs` after `--warmup`),
peak memory (CUDA: `max_memory_allocated` during the mode, weights included; CPU: growth
of the process's peak RSS during the mode, 0 when it stays under an earlier peak), device
name, torch version and commit. Timings are host clocks around a device synchronise.
`--out FILE.json` gets the same numbers (rewritten after every mode, so a killed run
keeps what it finished). `--profile` adds a torch.profiler summary of one region-hold
loop, with the count of host-sync operators inside the loop.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from editmgt.machine import device_name
from editmgt.models.text_encoders import TextEmbeddings
from editmgt.models.transformer import EditMGTTransformer, TransformerConfig
from editmgt.models.vq import VQTokenizer
from editmgt.pipeline import Canvas, EditMGTPipeline
from editmgt.settings import DRAWS, EditSettings

logger = logging.getLogger(__name__)

MODES = ("plain", "region-hold", "e2e", "sweep8", "draw", "8bit", "cold-start")
INSTRUCTION = "Make the cat wear a red hat"
HOLD_LAMBDA = 0.3
SWEEP_LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
DRAW_MODES = tuple(f"draw-{draw}" for draw in DRAWS)  # what the draw mode reports
SETTINGS = EditSettings()  # the released inference settings: guidance 6, gamma 1.1, 16 steps
GUIDANCE = SETTINGS.guidance
GAMMA = SETTINGS.gamma
TEXT_LEN = 256  # Gemma2 tokens of the released model
TEXT_DIM = 2304  # Gemma2-2B hidden size
POOLED_DIM = 1024  # CLIP ViT-H/14 projection

# The released transformer config (header of shared/spec/state_dict_editmgt.tsv).
FULL_TRANSFORMER = {
    "patch_size": 1, "in_channels": 64, "num_layers": 14, "num_single_layers": 28,
    "attention_head_dim": 128, "num_attention_heads": 8, "pooled_projection_dim": 1024,
    "guidance_embeds": False, "axes_dims_rope": [16, 56, 56], "vocab_size": 8256,
    "codebook_size": 8192, "downsample": True, "upsample": True, "joint_attention_dim": 2304,
    "text_encoder_architecture": "CLIP_Gemma2", "connector_type": "linear",
}
# The released VQModel config (header of shared/spec/vqvae_amused.tsv, "resolved").
FULL_VQ = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 5,
    "up_block_types": ["UpDecoderBlock2D"] * 5, "block_out_channels": [128, 256, 256, 512, 768],
    "layers_per_block": 2, "act_fn": "silu", "latent_channels": 64, "sample_size": 32,
    "num_vq_embeddings": 8192, "norm_num_groups": 32, "vq_embed_dim": None, "scaling_factor": 0.18215,
    "norm_type": "group", "mid_block_add_attention": False, "lookup_from_codebook": True, "force_upcast": True,
}
# Reduced stack for CPU: real text / pooled / vocabulary / codebook shapes, narrow and shallow.
CPU_TRANSFORMER = dict(
    FULL_TRANSFORMER, num_layers=2, num_single_layers=4, attention_head_dim=32, num_attention_heads=4,
    axes_dims_rope=[8, 12, 12],
)
CPU_VQ = dict(FULL_VQ, block_out_channels=[16, 16, 32, 32, 32], layers_per_block=1, norm_num_groups=8)

# CLIP ViT-H/14 text tower and Gemma2-2B, as configs (random weights, nothing downloaded).
CLIP_H_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, projection_dim=1024, num_hidden_layers=24,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
)
GEMMA2_2B = dict(
    vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, max_position_embeddings=8192, sliding_window=4096,
    query_pre_attn_scalar=256, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
)

PRESETS = {
    "full": dict(transformer=FULL_TRANSFORMER, vq=FULL_VQ, size=1024, steps=16, runs=5, warmup=1),
    "cpu": dict(transformer=CPU_TRANSFORMER, vq=CPU_VQ, size=256, steps=16, runs=5, warmup=1),
}
# The released code, measured with random weights on one H200: 1024 px, 16 steps, guidance 6, gamma 1.1.
RELEASED_REFERENCE = {
    "plain_bf16_s": 2.19,
    "plain_bf16_gamma1_s": 1.75,
    "plain_fp32_s": 4.17,
    "region_hold_bf16_s": 11.2,
    "region_hold_fp32_s": 21.4,
    "peak_gib_without_text": 4.65,
    "vq_encode_s": 0.04,
    "vq_decode_s": 0.10,
}
# Operators that make the host wait for the device (or would, on CUDA).
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero",
            "aten::masked_select", "aten::unique", "aten::_unique2", "aten::tolist")
SYNC_RUNTIME = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


# ---------------------------------------------------------------------------- stand-ins
class RandomTextConditioner:
    """Stand-in for `TextConditioner`: random embeddings of the real shapes, a fixed draw per
    prompt (so the negative prompt and the instruction differ, and repeat calls agree)."""

    def __init__(self, device, dtype=torch.float32, text_len: int = TEXT_LEN, text_dim: int = TEXT_DIM,
                 pooled_dim: int = POOLED_DIM) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.text_len, self.text_dim, self.pooled_dim = text_len, text_dim, pooled_dim

    def encode(self, prompts: Sequence[str]) -> TextEmbeddings:
        states, pooled, ids = [], [], []
        for prompt in prompts:
            gen = torch.Generator(device=self.device).manual_seed(zlib.crc32(prompt.encode()))
            states.append(torch.randn(self.text_len, self.text_dim, generator=gen, device=self.device))
            pooled.append(torch.randn(self.pooled_dim, generator=gen, device=self.device))
            ids.append(torch.randint(0, 1000, (self.text_len,), generator=gen, device=self.device))
        return TextEmbeddings(torch.stack(states).to(self.dtype), torch.stack(pooled).to(self.dtype), torch.stack(ids))

    def keyword_rows(self, prompt: str, keywords) -> torch.LongTensor:
        return torch.arange(1, 3)

    def clear_cache(self) -> None:
        pass

    def quantize_8bit(self, threshold: float = 6.0) -> list:
        return []


def build_real_text(device, dtype, tokenizer_dir: Path, layers: Optional[int] = None):
    """`TextConditioner` with CLIP ViT-H/14-text and Gemma2-2B configs, random weights.

    Tokenizers are the small BPE tokenizers of `editmgt.tiny` (ids stay below the real
    vocabularies); `layers` caps the depth of both encoders (None = the real depth).
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, Gemma2Config, Gemma2Model

    from editmgt.models.text_encoders import ClipPooledEncoder, Gemma2HiddenStates, TextConditioner
    from editmgt.tiny import write_clip_tokenizer, write_gemma_tokenizer

    clip_special = write_clip_tokenizer(tokenizer_dir / "tokenizer")
    gemma_special = write_gemma_tokenizer(tokenizer_dir / "llm_encoder")
    clip_cfg = CLIPTextConfig(**dict(CLIP_H_TEXT, **({"num_hidden_layers": layers} if layers else {})),
                              bos_token_id=clip_special["bos"], eos_token_id=clip_special["eos"],
                              pad_token_id=clip_special["eos"])
    gemma_cfg = Gemma2Config(**dict(GEMMA2_2B, **({"num_hidden_layers": layers} if layers else {})),
                             pad_token_id=gemma_special["pad"], bos_token_id=gemma_special["bos"],
                             eos_token_id=gemma_special["eos"])
    gemma_cfg._attn_implementation = "eager"
    with torch.device(device):
        clip_model = CLIPTextModelWithProjection(clip_cfg).to(dtype).eval()
        gemma_model = Gemma2Model(gemma_cfg).to(dtype).eval()
    from transformers import AutoTokenizer, CLIPTokenizer

    clip = ClipPooledEncoder(clip_model, CLIPTokenizer.from_pretrained(tokenizer_dir / "tokenizer"))
    llm = Gemma2HiddenStates(gemma_model, AutoTokenizer.from_pretrained(tokenizer_dir / "llm_encoder"))
    return TextConditioner(clip, llm, cache_size=64)


def build_stack(preset: dict, device, dtype, real_text: bool = False, text_layers: Optional[int] = None,
                seed: int = 0, workdir: Optional[Path] = None) -> EditMGTPipeline:
    """Random-weight pipeline of the preset's shapes on `device`."""
    from diffusers import VQModel

    torch.manual_seed(seed)
    config = TransformerConfig.from_dict(preset["transformer"])
    with torch.device(device):
        transformer = EditMGTTransformer(config).to(dtype).eval()
        vq_model = VQModel(**preset["vq"]).to(dtype).eval()
    vq = VQTokenizer(vq_model)
    if real_text:
        text = build_real_text(device, dtype, Path(workdir or tempfile.mkdtemp()) / "tok", text_layers)
    else:
        text = RandomTextConditioner(device, dtype, TEXT_LEN, config.joint_attention_dim, config.pooled_projection_dim)
    return EditMGTPipeline(transformer, vq, text, mask_token_id=config.mask_token_id, resolution=preset["size"])


def test_image(size: int, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus noise: not flat, not zeros."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(1, size - 1)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1) + 0.05 * rng.standard_normal((size, size, 3))
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


# ---------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class ModeResult:
    mode: str
    what: str
    seconds: list[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None
    peak_kind: str = ""
    extra: dict = field(default_factory=dict)
    skipped: Optional[str] = None

    def summary(self) -> dict:
        d = {"mode": self.mode, "what": self.what, "runs": len(self.seconds), "seconds": self.seconds,
             "peak_bytes": self.peak_bytes, "peak_kind": self.peak_kind, "extra": self.extra}
        if self.seconds:
            d.update(min_s=min(self.seconds), median_s=statistics.median(self.seconds), max_s=max(self.seconds))
        if self.skipped:
            d["skipped"] = self.skipped
        return d


def measure(mode: str, what: str, fn: Callable[[], object], device: torch.device, runs: int, warmup: int) -> ModeResult:
    """Time `fn` `runs` times after `warmup` calls, synchronising around each call."""
    return measure_interleaved([(mode, what, fn)], device, runs, warmup)[0]


def measure_interleaved(jobs: Sequence[tuple[str, str, Callable[[], object]]], device: torch.device, runs: int,
                        warmup: int) -> list[ModeResult]:
    """Like `measure` for several modes, run in turns (A B A B ...) so that a change in
    machine load hits them alike. Peak memory is then that of all of them together. On
    the CPU the process CPU time of each run is kept too (`extra["cpu_seconds"]`): it is
    far less sensitive than wall time to other processes on a shared machine."""
    results = [ModeResult(mode, what) for mode, what, _ in jobs]
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_peak_bytes()
    for _ in range(warmup):
        for _, _, fn in jobs:
            fn()
    _sync(device)
    for _ in range(runs):
        for result, (_, _, fn) in zip(results, jobs):
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            _sync(device)
            result.seconds.append(time.perf_counter() - t0)
            if device.type != "cuda":
                result.extra.setdefault("cpu_seconds", []).append(time.process_time() - c0)
    for result in results:
        if device.type == "cuda":
            result.peak_kind, result.peak_bytes = "cuda_max_allocated", int(torch.cuda.max_memory_allocated(device))
        else:
            result.peak_kind, result.peak_bytes = "rss_peak_growth", _rss_peak_bytes() - rss_before
        if "cpu_seconds" in result.extra:
            result.extra["cpu_median_s"] = statistics.median(result.extra["cpu_seconds"])
    return results


@dataclass
class LoopInputs:
    """Everything `EditMGTPipeline.sample` needs, prepared once so the loop modes time only the loop."""

    canvas: Canvas
    text: TextEmbeddings
    size: tuple[int, int]
    blocks: tuple[int, ...]


def loop_inputs(pipe: EditMGTPipeline, image: Image.Image, size: int, batch: int = 1) -> LoopInputs:
    with torch.inference_mode():
        source = pipe.tokenize(pipe.preprocess(image, (size, size)))
        canvas = pipe.prepare_canvas(source, batch=batch)
        text = pipe.encode_prompt(INSTRUCTION, SETTINGS.negative_prompt, GUIDANCE, batch)
    return LoopInputs(canvas, text, (size, size), pipe.default_hold_blocks())


def run_loop(pipe: EditMGTPipeline, inputs: LoopInputs, steps: int, lambdas: Optional[Sequence[float]], seed: int = 0):
    """One sampling loop: region-hold off when `lambdas` is None (the attention map is then read
    on the last step only), else one sample per lambda."""
    settings = SETTINGS.replace(steps=steps)
    batch = inputs.canvas.tokens.shape[0]
    generators, _ = pipe.generators(seed, batch)
    hold = torch.tensor(list(lambdas), device=pipe.device) if lambdas is not None else None
    with torch.inference_mode():
        return pipe.sample(inputs.canvas, inputs.text, inputs.size, settings, generators, hold_lambda=hold)


def profile_loop(pipe: EditMGTPipeline, inputs: LoopInputs, steps: int, top: int = 15) -> dict:
    """torch.profiler over one region-hold loop (after one warm-up): top operators by self
    CPU time and the number of host-sync operators (SYNC_OPS, CUDA sync calls) inside it."""
    from torch.profiler import ProfilerActivity, profile

    run_loop(pipe, inputs, steps, [HOLD_LAMBDA])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if pipe.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run_loop(pipe, inputs, steps, [HOLD_LAMBDA])
    events = prof.key_averages()
    counts = {e.key: e.count for e in events if e.key in SYNC_OPS + SYNC_RUNTIME}
    total = sum(e.self_cpu_time_total for e in events) or 1
    table = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "steps": steps,
        "sync_op_counts": counts,
        "sync_ops_total": sum(counts.values()),
        "self_cpu_total_ms": total / 1e3,
        "top": [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                 "share": e.self_cpu_time_total / total} for e in table],
    }


# ---------------------------------------------------------------------------- cold start
def save_stack(pipe: EditMGTPipeline, root: Path, preset: dict, real_text: bool, text_layers: Optional[int],
               dtype: torch.dtype) -> Path:
    """Write the pipeline's random transformer and VQ, plus random text encoders (the real
    configs with --real-text, else 2-layer encoders of the real widths) and tokenizers, in the
    released repo layout."""
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, Gemma2Config, Gemma2Model

    from editmgt.tiny import write_clip_tokenizer, write_gemma_tokenizer

    (root / "editmgt").mkdir(parents=True)
    (root / "editmgt" / "config.json").write_text(json.dumps(pipe.transformer.config.to_dict(), indent=2))
    state = {k: v.detach().contiguous() for k, v in pipe.transformer.state_dict().items()}
    save_file(state, str(root / "editmgt" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    pipe.vq.model.save_pretrained(root / "vqvae", safe_serialization=True)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"mask_token_id": pipe.mask_token_id, "masking_schedule": "cosine"}))
    if real_text:  # save the pipeline's own encoders (already the real configs)
        for model, tokenizer, model_dir, tok_dir in (
            (pipe.text.clip.model, pipe.text.clip.tokenizer, "text_encoder", "tokenizer"),
            (pipe.text.llm.model, pipe.text.llm.tokenizer, "llm_encoder", "llm_encoder"),
        ):
            model.save_pretrained(root / model_dir, safe_serialization=True)
            tokenizer.save_pretrained(root / tok_dir)
        (root / "editmgt_pipeline.json").write_text(json.dumps({"resolution": preset["size"]}))
        return root
    clip_special = write_clip_tokenizer(root / "tokenizer")
    gemma_special = write_gemma_tokenizer(root / "llm_encoder")
    clip_over, gemma_over = {}, {}
    # stand-in text: 2-layer encoders of the real widths with the tokenizers' vocabularies
    clip_over = {"num_hidden_layers": 2, "vocab_size": clip_special["vocab_size"]}
    gemma_over = {"num_hidden_layers": 2, "vocab_size": gemma_special["vocab_size"]}
    clip_cfg = CLIPTextConfig(**dict(CLIP_H_TEXT, **clip_over), bos_token_id=clip_special["bos"],
                              eos_token_id=clip_special["eos"], pad_token_id=clip_special["eos"])
    gemma_cfg = Gemma2Config(**dict(GEMMA2_2B, **gemma_over), pad_token_id=gemma_special["pad"],
                             bos_token_id=gemma_special["bos"], eos_token_id=gemma_special["eos"])
    device = pipe.device
    with torch.device(device):
        CLIPTextModelWithProjection(clip_cfg).to(dtype).save_pretrained(root / "text_encoder", safe_serialization=True)
        Gemma2Model(gemma_cfg).to(dtype).save_pretrained(root / "llm_encoder", safe_serialization=True)
    (root / "editmgt_pipeline.json").write_text(json.dumps({"resolution": preset["size"]}))
    return root


# ---------------------------------------------------------------------------- the run
def _git_commit() -> str:
    if os.environ.get("EDITMGT_COMMIT"):
        return os.environ["EDITMGT_COMMIT"]
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _fmt_bytes(n: Optional[int], kind: str) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" + (" (RSS growth)" if kind == "rss_peak_growth" else "")


def format_table(report: dict) -> str:
    lines = [
        f"device: {report['device']}   torch {report['torch']}   commit {report['commit']}",
        f"preset {report['preset']}, {report['dtype']}, {report['size']} px, {report['steps']} steps, "
        f"guidance {GUIDANCE}, gamma {GAMMA}, runs {report['runs']} after {report['warmup']} warm-up"
        + (", compiled" if report["compile"] else "") + (", real text encoders" if report["real_text"] else ""),
        f"{'mode':<16} {'min s':>9} {'median s':>9} {'max s':>9} {'runs':>5}  {'peak memory':<22} what",
    ]
    for m in report["modes"]:
        if m.get("skipped"):
            lines.append(f"{m['mode']:<16} {'skipped':>9} {'':>9} {'':>9} {0:>5}  {'':<22} {m['skipped']}")
            continue
        cpu = m.get("extra", {}).get("cpu_median_s")
        lines.append(
            f"{m['mode']:<16} {m['min_s']:>9.4f} {m['median_s']:>9.4f} {m['max_s']:>9.4f} {m['runs']:>5}  "
            f"{_fmt_bytes(m['peak_bytes'], m['peak_kind']):<22} {m['what']}"
            + (f" [CPU time median {cpu:.4f} s]" if cpu is not None else "")
        )
    for key, value in report.get("derived", {}).items():
        lines.append(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    return "\n".join(lines)


def derived(modes: dict[str, dict], comparable: bool = False, steps: int = 16) -> dict:
    """Ratios between modes; against the released code's H200 numbers only when `comparable`
    (CUDA, full preset, 1024 px, 16 steps)."""
    out = {}
    med = {k: v["median_s"] for k, v in modes.items() if "median_s" in v}
    if "plain" in med and "region-hold" in med:
        out["region_hold_overhead_pct"] = 100.0 * (med["region-hold"] / med["plain"] - 1.0)
        cpu = [modes[m].get("extra", {}).get("cpu_median_s") for m in ("plain", "region-hold")]
        if all(cpu):
            out["region_hold_overhead_cpu_time_pct"] = 100.0 * (cpu[1] / cpu[0] - 1.0)
    if "sweep8" in med and "e2e" in med:
        out["sweep8_over_one_edit"] = med["sweep8"] / med["e2e"]
    if "draw-released" in med and "draw-inverse-cdf" in med:
        out["draw_released_over_inverse_cdf"] = med["draw-released"] / med["draw-inverse-cdf"]
        if "plain" in med:
            out["draw_released_extra_share_of_plain_loop_pct"] = (
                100.0 * steps * (med["draw-released"] - med["draw-inverse-cdf"]) / med["plain"])
    if comparable and "region-hold" in med:
        out["released_region_hold_bf16_over_ours"] = RELEASED_REFERENCE["region_hold_bf16_s"] / med["region-hold"]
    if comparable and "plain" in med:
        out["released_plain_bf16_over_ours"] = RELEASED_REFERENCE["plain_bf16_s"] / med["plain"]
    return out


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = dict(PRESETS[args.preset])
    size = args.size or preset["size"]
    steps = args.steps or preset["steps"]
    runs = args.runs if args.runs is not None else preset["runs"]
    warmup = args.warmup if args.warmup is not None else preset["warmup"]
    dtype = getattr(torch, args.dtype)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else list(MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown modes {unknown}; choose from {MODES}")
    modes = [m for m in MODES if m in modes]  # fixed order: 8bit quantises in place, cold-start drops the stack
    preset["size"] = size
    t_begin = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="editmgt-bench-"))
    report = {
        "device": device_name(device), "torch": torch.__version__, "commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "preset": args.preset,
        "dtype": args.dtype, "size": size, "steps": steps, "runs": runs, "warmup": warmup,
        "compile": args.compile, "real_text": args.real_text, "guidance": GUIDANCE, "gamma": GAMMA,
        "hold_lambda": HOLD_LAMBDA, "released_reference_h200": RELEASED_REFERENCE, "modes": [],
    }

    def write_out() -> None:
        comparable = device.type == "cuda" and args.preset == "full" and size == 1024 and steps == 16
        report["derived"] = derived({m["mode"]: m for m in report["modes"]}, comparable, steps)
        report["wall_s"] = time.perf_counter() - t_begin
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2))

    try:
        t0 = time.perf_counter()
        pipe = build_stack(preset, device, dtype, args.real_text, args.text_layers, workdir=workdir)
        if args.compile:
            pipe.transformer.compile()
        report["build_s"] = time.perf_counter() - t0
        report["hold_blocks"] = list(pipe.default_hold_blocks())
        report["transformer_params"] = sum(p.numel() for p in pipe.transformer.parameters())
        image = test_image(size)
        one = loop_inputs(pipe, image, size, 1)
        checkpoint = None
        if "cold-start" in modes:  # saved now, before the 8bit mode quantises the stack in place
            t0 = time.perf_counter()
            checkpoint = save_stack(pipe, workdir / "checkpoint", preset, args.real_text, args.text_layers, dtype)
            report["save_checkpoint_s"] = time.perf_counter() - t0
        logger.info("built in %.1f s; hold blocks %s", report["build_s"], report["hold_blocks"])
        if args.profile:  # before the modes: 8bit quantises the stack, cold-start drops it
            report["profile"] = profile_loop(pipe, one, steps)

        for mode in modes:
            elapsed = time.perf_counter() - t_begin
            if args.budget_s and elapsed > args.budget_s:
                report["modes"].append(ModeResult(mode, "", skipped=f"time budget {args.budget_s} s spent").summary())
                write_out()
                continue
            logger.info("mode %s (%.0f s elapsed)", mode, elapsed)
            if mode in ("plain", "region-hold"):
                if mode == "region-hold" and "plain" in modes:
                    continue  # measured in turns with plain
                jobs = [("plain", "sampling loop, region-hold off", lambda: run_loop(pipe, one, steps, None)),
                        ("region-hold", f"sampling loop, lambda {HOLD_LAMBDA}, blocks {one.blocks[0]}-"
                         f"{one.blocks[-1]}, adaptive smoothing",
                         lambda: run_loop(pipe, one, steps, [HOLD_LAMBDA]))]
                jobs = [j for j in jobs if j[0] in modes]
                for res in measure_interleaved(jobs, device, runs, warmup):
                    report["modes"].append(res.summary())
                write_out()
                continue
            elif mode in ("e2e", "sweep8"):
                lambdas = [HOLD_LAMBDA] if mode == "e2e" else list(SWEEP_LAMBDAS)
                last = {}

                def call(lambdas=lambdas, last=last):
                    pipe.text.clear_cache()
                    results = pipe.sweep(image, INSTRUCTION, lambdas, steps=steps, guidance=GUIDANCE, gamma=GAMMA,
                                         seed=0, size=size)
                    last["timings"] = results[0].timings

                what = ("edit(): image in -> image out, text + VQ included" if mode == "e2e"
                        else "sweep(): 8 lambdas as one batch, image in -> 8 images out")
                res = measure(mode, what, call, device, runs, warmup)
                res.extra["pipeline_timings_last_run_unsynced"] = last.get("timings", {})
            elif mode == "draw":
                for res in measure_draws(pipe, size, steps, device, runs, warmup):
                    report["modes"].append(res.summary())
                write_out()
                continue
            elif mode == "8bit":
                from editmgt.models.quantize import quantize_8bit

                try:
                    report_q = quantize_8bit(pipe.transformer)
                    pipe.text.quantize_8bit()
                except Exception as err:  # bitsandbytes missing / unsupported device
                    res = ModeResult(mode, "", skipped=f"8-bit unavailable: {type(err).__name__}: {err}")
                else:
                    res = measure(mode, "region-hold loop, int8 transformer (bitsandbytes)",
                                  lambda: run_loop(pipe, one, steps, [HOLD_LAMBDA]), device, runs, warmup)
                    res.extra["quantize"] = str(report_q)
            elif mode == "cold-start":
                pipe = None  # drop the warm stack first
                res = cold_start(checkpoint, device, dtype, args, image, size, steps)
            report["modes"].append(res.summary())
            write_out()
            if args.verbose_progress:
                print(format_table(report), flush=True)
            if pipe is None:
                break
        write_out()
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure_draws(pipe: EditMGTPipeline, size: int, steps: int, device: torch.device, runs: int,
                  warmup: int) -> list[ModeResult]:
    """One sampler step (softmax, draw, re-mask) on random logits (1, L, V) of the preset's token
    grid and codebook, once per draw, in turns."""
    side = size // pipe.vq.scale_factor
    length, codes = side * side, pipe.transformer.config.codebook_size
    logits = torch.randn(1, length, codes, generator=torch.Generator().manual_seed(0)).to(device)
    canvas = torch.full((1, length), pipe.mask_token_id, dtype=torch.long, device=device)
    jobs = []
    for draw, name in zip(DRAWS, DRAW_MODES):
        generators = [torch.Generator(device=device).manual_seed(0)]
        jobs.append((name, f"one sampler step, {length} tokens x {codes} codes, draw={draw}",
                     lambda d=draw, g=generators: pipe.sampler.step(logits, canvas, 0, steps, 2.0, g, draw=d)))
    return measure_interleaved(jobs, device, runs, warmup)


def cold_start(root: Path, device, dtype, args, image, size, steps) -> ModeResult:
    """Time from_pretrained of the saved stack + the first edit (one run); the caller has
    dropped its own pipeline."""
    on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_peak_bytes()
    _sync(device)
    t0 = time.perf_counter()
    loaded = EditMGTPipeline.from_pretrained(root, device=device, dtype=dtype)
    _sync(device)
    t_load = time.perf_counter() - t0
    loaded.edit(image, INSTRUCTION, steps=steps, guidance=GUIDANCE, gamma=GAMMA, hold_lambda=HOLD_LAMBDA,
                seed=0, size=size)
    _sync(device)
    total = time.perf_counter() - t0
    res = ModeResult("cold-start", "from_pretrained (page-cached files) + first edit; 1 run",
                     seconds=[total], peak_kind="cuda_max_allocated" if device.type == "cuda" else "rss_peak_growth")
    res.peak_bytes = (int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda"
                      else _rss_peak_bytes() - rss_before)
    res.extra.update(load_s=t_load, first_edit_s=total - t_load, checkpoint_bytes=on_disk,
                     text_encoders="real configs" if args.real_text else "2-layer encoders of the real widths, small vocabularies")
    return res


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m editmgt.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--preset", default=None, choices=tuple(PRESETS), help="default full on CUDA, cpu otherwise")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (preset: 1024 full, 256 cpu)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 16)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per mode (default 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1)")
    parser.add_argument("--modes", default=None, help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    parser.add_argument("--real-text", action="store_true",
                        help="CLIP ViT-H/14-text + Gemma2-2B configs with random weights instead of the stand-in")
    parser.add_argument("--text-layers", type=int, default=None, help="cap the real text encoders' depth")
    parser.add_argument("--budget-s", type=float, default=None, help="skip the remaining modes after this many seconds")
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler summary of one region-hold loop")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 on the CPU, for steadier numbers on a shared machine)")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument("--verbose-progress", action="store_true", help="print the table after every mode")
    args = parser.parse_args(argv)
    on_cuda = torch.device(args.device).type == "cuda"
    args.preset = args.preset or ("full" if on_cuda else "cpu")
    args.dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    if args.threads is None and not on_cuda:
        args.threads = 1
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be >= 1 (>= 5 for reported numbers)")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    report = run(args)
    print(format_table(report))
    if args.profile and "profile" in report:
        prof = report["profile"]
        print(f"profile of one region-hold loop ({prof['steps']} steps): host-sync operators "
              f"{prof['sync_ops_total']} {prof['sync_op_counts']}; self CPU {prof['self_cpu_total_ms']:.1f} ms")
        for row in prof["top"]:
            print(f"  {row['op']:<45} {row['calls']:>6} calls {row['self_cpu_ms']:>10.2f} ms {100 * row['share']:>5.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
