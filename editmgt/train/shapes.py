"""Train the tiny shapes EditMGT from scratch, offline, in the released checkpoint layout.

    python -m editmgt.train.shapes --out DIR [--seed 0] [--threads N]

Steps: (1) random tiny CLIP and Gemma2 text towers with real BPE tokenizers learned from
the shapes vocabulary; (2) edit triples from `editmgt.data.shapes`; (3) a small `VQModel`
fitted to fixed pixel codes (`vq_train.py`: the distinct 4 x 4 patches clustered into the
codes first, so equal patches get equal ids on every machine; the editor trains on those
ids); (4) the transformer, started with copy heads
(`init.py`) and a short copy warm-up, trained with the paper's objective (`objective.py`,
with its edit weighting, edit masking and the grounding of the locating words' attention
on) together with the text towers' layers, on instructions partly perturbed by phrasing
noise.
DIR then holds editmgt/, text_encoder/, tokenizer/, llm_encoder/, vqvae/, scheduler/,
editmgt_pipeline.json and train_log.json, loadable with `EditMGTPipeline.from_pretrained(DIR)`.
Everything is seeded; losses go to the log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from editmgt.data import shapes as data
from editmgt.machine import describe_cpu
from editmgt.train.objective import (
    EditBatch,
    ObjectiveConfig,
    OptimConfig,
    count_parameters,
    make_optimizer,
    train_step,
)
from editmgt.train.init import init_copy_heads
from editmgt.train.vq_train import (PixelCodes, VQConfig, VQTrainConfig, lookup_modal, modal_ids,
                                    patch_keys, pixel_codes, train_vq)

logger = logging.getLogger(__name__)

NEGATIVE_PROMPT = (
    "worst quality, low quality, low res, blurry, distortion, watermark, logo, signature, "
    "text, jpeg artifacts, signature, sketch, duplicate, ugly, identifying mark"
)  # the pipeline's default negative prompt: trained as a null prompt too
TARGETS = ("vq", "snap", "canonical")   # ShapesRecipe.targets choices
GROUNDING_ROWS = ("all", *data.KEYWORD_SETS)   # ShapesRecipe.grounding_rows choices
TEXT_LENGTH = 32             # Gemma2 rows: the tokenizer's model_max_length caps the stream
VQ_CODEBOOKS = ("pixels", "learnt")   # vq_schedule choices


def vq_schedule(codebook: str) -> VQTrainConfig:
    """The VQ stage of the recipe: "pixels" (the default since 2026-12-04: ids fixed from the
    pixel patches, then the encoder and decoder fitted to them) or "learnt" (the checkpoints
    before: auto-encoder warm-up, k-means of the distinct patches' latents, quantised steps,
    id-locality steps)."""
    common = dict(batch_size=16, lr=4e-3, pixel_loss="l1+mse", detail_weight=10.0)
    if codebook == "pixels":
        return VQTrainConfig(ae_steps=0, steps=600, codebook_from="pixels", code_weight_power=0.5,
                             code_vectors="centres", decoder_steps=800, decoder_lr=2e-3, **common)
    if codebook == "learnt":
        return VQTrainConfig(ae_steps=300, steps=900, kmeans_batches=64, codebook_from="patches",
                             locality_steps=1000, locality_lr=2e-3, **common)
    raise ValueError(f"unknown VQ codebook {codebook!r}: use {', '.join(VQ_CODEBOOKS)}")


@dataclass
class ShapesRecipe:
    """Every knob of the shipped tiny-shapes model (defaults reproduce it)."""

    seed: int = 0
    image_size: int = data.IMAGE_SIZE
    n_train: int = 16000                  # training triples (cached as tokens)
    # chance that a training scene's shapes share colours or kinds, so that finding the shape
    # takes both words (data.make_triple); 0 is the eval's stream (docs/SHAPES.md, "Scenes
    # whose shapes share a colour or a kind")
    shared_names: float = 0.0
    # text towers (random; their layers train with the editor when train_text)
    text_dim: int = 32                    # Gemma2 hidden = joint_attention_dim
    pooled_dim: int = 32                  # CLIP projection = pooled_projection_dim
    clip_hidden: int = 32
    text_layers: int = 3
    text_init_range: float = 0.1          # std of the random towers' weights
    # train the towers' layers with the editor (token embeddings stay frozen random, so a
    # word training never shows looks like the pseudo-words of the phrasing noise)
    train_text: bool = True
    # the towers' layers learn at this times the editor's rate: at half it, every draw reads in
    # time (docs/SHAPES.md, "The text towers' learning rate")
    text_lr_scale: float = 0.5
    phrasing_noise: float = 0.5           # share of training instructions perturbed
    # words the phrasing noise leaves alone besides data.MEANING_WORDS: the style edit's words
    # for the picture ("make the image grayscale"), which say what the edit covers as
    # "background" does for a background change (docs/SHAPES.md, "Reading the new colour")
    phrasing_keeps: tuple[str, ...] = ("image", "picture")
    # chance that a perturbed instruction also gets one word of the training phrasings
    # inserted (data.insertable_words: "color", "remove", "background", ...), so that a known
    # word out of its place does not decide the edit; 0 (the shipped recipe) draws nothing
    phrasing_insert_known: float = 0.0
    # VQ
    vq: VQConfig = field(default_factory=VQConfig)
    # the ids are clusters of the distinct pixel patches, fixed before the VQ trains, so they
    # are the same on every machine (docs/SHAPES.md, "Pixel codes")
    vq_train: VQTrainConfig = field(default_factory=lambda: vq_schedule("pixels"))
    vq_dense_images: int = 8000           # dense scenes mixed into the VQ's training images
    # target ids: "vq" (the VQ's codes of the target image), "snap" (source id where the
    # patch is unchanged), "canonical" (snap, and each changed patch's pixels -> their modal id)
    targets: str = "snap"
    # transformer
    num_layers: int = 2
    num_single_layers: int = 4
    heads: int = 4
    head_dim: int = 32
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    downsample: bool = True               # 2x2 VQ tokens per transformer token, as released
    copy_heads: int = 1                   # heads per double block started as copy heads (train/init.py)
    copy_warmup_steps: int = 200          # first steps: reproduce random token grids (copy_batch)
    kind_repeats: dict = field(default_factory=dict)   # edit kind -> times per epoch (default 1)
    # reading steps: every reading_every-th edit step (0: none) among edit steps
    # [reading_from, reading_until) trains on edits of reading_kinds alone, every changed token
    # masked and the loss on those tokens only, so the instruction is the only source of the
    # answer (docs/SHAPES.md, "Reading the new colour"); reading_until None: to the end. The
    # default is a block of 600 such steps on the edits that name what to draw (a colour or
    # a kind) once the model can draw, while the learning rate is still high, and early
    # enough to leave most of the run (1 950 of 3 000 edit steps) to the mix after it:
    # without it those words never reach the predictions
    reading_kinds: tuple[str, ...] = ("colour", "add", "replace")
    reading_every: int = 1
    reading_from: int = 450
    reading_until: Optional[int] = 1050
    # a block that has not learnt to read by reading_until may run on, a window of log_every
    # reading steps at a time, while the last window's accuracy on the changed tokens is under
    # reading_target, to edit step reading_until_latest at most (ReadingSpan); the run's length
    # is unchanged, the extra reading steps replace mixed ones. None: the span ends at
    # reading_until. A draw that reads by reading_until trains exactly as without it
    reading_target: Optional[float] = None
    reading_until_latest: Optional[int] = None
    # text rows the grounding term reads (when objective.grounding_weight > 0): "all";
    # "naming", the rows of the words that name the edit (colours, shapes, places, backgrounds);
    # or "locating", those less the new colour or kind (`locating_words`): the words that find
    # the edit, so the words that say what to draw stay free
    grounding_rows: str = "locating"
    # optimisation
    steps: int = 2800                     # edit steps, after the copy warm-up
    batch_size: int = 32
    # mask_objects: the edit-masked samples hide every shape with the edit, so a fully hidden
    # shape is no sign that it is the one to change; with the peak rate 6e-4 it keeps the
    # untouched shapes and reads "the color of" (docs/SHAPES.md, Training, "The second gate
    # for every shape hidden"). keep_share (the untouched shapes weighed like the edit) was
    # tried and not adopted: "Tried and not adopted"
    objective: ObjectiveConfig = field(default_factory=lambda: ObjectiveConfig(
        text_dropout=0.1, edit_share=0.5, mask_edit_prob=0.5, grounding_weight=0.2,
        mask_objects=True))
    # total_steps 0: the cosine decay spans the whole run (copy warm-up + edit steps)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=6e-4, warmup_steps=100, total_steps=0, min_lr_ratio=0.1))
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.targets not in TARGETS:
            raise ValueError(f"unknown targets {self.targets!r}: use {', '.join(TARGETS)}")
        if self.grounding_rows not in GROUNDING_ROWS:
            raise ValueError(f"unknown grounding_rows {self.grounding_rows!r}: use {', '.join(GROUNDING_ROWS)}")
        unknown = [k for k in self.reading_kinds if k not in data.EDIT_KINDS]
        if unknown:
            raise ValueError(f"unknown reading_kinds {unknown}: use {', '.join(data.EDIT_KINDS)}")
        bad = {k: n for k, n in self.kind_repeats.items() if k not in data.EDIT_KINDS or n < 1}
        if bad:
            raise ValueError(f"bad kind_repeats {bad}: kinds of {', '.join(data.EDIT_KINDS)}, counts >= 1")
        template_words = {w for per_kind in data.TEMPLATES.values() for t in per_kind["train"] for w in t.split()}
        foreign = [w for w in self.phrasing_keeps if w not in template_words]
        if foreign:
            raise ValueError(f"phrasing_keeps {foreign} are not words of a training template")
        if not 0.0 <= self.phrasing_insert_known <= 1.0:
            raise ValueError(f"phrasing_insert_known is a chance: between 0 and 1, got {self.phrasing_insert_known}")
        if not 0.0 <= self.shared_names <= 1.0:
            raise ValueError(f"shared_names is a chance: between 0 and 1, got {self.shared_names}")
        if self.reading_every < 0:
            raise ValueError("reading_every must be 0 (no reading steps) or positive")
        if self.reading_every == 1 and self.reading_from <= 0 and self._reading_until() >= self.steps:
            raise ValueError("reading_every 1 over every edit step leaves no step for the other edits: "
                             "bound it with reading_from / reading_until")
        if not self.text_lr_scale > 0.0:
            raise ValueError(f"text_lr_scale must be positive (train_text False freezes the towers), "
                             f"got {self.text_lr_scale}")
        if self.reading_target is not None and not 0.0 < self.reading_target <= 1.0:
            raise ValueError(f"reading_target is an accuracy: above 0 and at most 1, got {self.reading_target}")
        if (self.reading_target is None) != (self.reading_until_latest is None):
            raise ValueError("reading_target and reading_until_latest go together: "
                             "the block runs on while under the target, to the latest step")
        if self.reading_until_latest is not None:
            if self.reading_until is None or self.reading_every == 0:
                raise ValueError("reading_until_latest extends a bounded span of reading steps: "
                                 "set reading_every and reading_until")
            if not self.reading_until <= self.reading_until_latest < self.steps:
                raise ValueError(f"reading_until_latest must lie between reading_until ({self.reading_until}) "
                                 f"and the last edit step ({self.steps - 1}), got {self.reading_until_latest}")

    def is_reading_step(self, step: int, until: Optional[int] = None) -> bool:
        """Whether transformer step `step` (0-based, copy warm-up included) is a reading step;
        `until`: the edit step where the span ends, if not `reading_until` (`ReadingSpan`)."""
        until = self._reading_until() if until is None else until
        edit_step = step - self.copy_warmup_steps - self.reading_from
        return (self.reading_every > 0 and 0 <= edit_step < until - self.reading_from
                and edit_step % self.reading_every == self.reading_every - 1)

    def _reading_until(self) -> int:
        """The edit step where the reading steps' span ends (at most the last)."""
        return self.steps if self.reading_until is None else min(self.reading_until, self.steps)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["vq_train"].pop("history", None)
        return d


# ----------------------------------------------------------------------------- text towers

# The template splits the tokenizers' merges are learnt from. The val phrasings are left out:
# they add no word (data.TEMPLATES), so the tokenizers read them all the same, and leaving
# them out keeps the word counts, and so the merges, the shipped checkpoint was trained with.
TOKENIZER_SPLITS = ("train", "eval")


def instruction_corpus() -> list[str]:
    """Lines the tokenizers learn their merges from: every word and fill, the negative
    prompt and the TOKENIZER_SPLITS phrasings (eval phrasings included: the tokenizer is
    vocabulary, not training)."""
    lines = [" ".join(data.vocabulary()), NEGATIVE_PROMPT]
    for per_kind in data.TEMPLATES.values():
        for split in TOKENIZER_SPLITS:
            lines.extend(t.replace("{", "").replace("}", "") for t in per_kind[split])
    return lines


def _write_clip_tokenizer(folder: Path, corpus: Sequence[str], num_merges: int) -> dict[str, int]:
    from tokenizers import pre_tokenizers

    from editmgt.tiny import _clip_words, learn_bpe_merges

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)
    merges = learn_bpe_merges(_clip_words(corpus), num_merges)
    tokens = alphabet + [ch + "</w>" for ch in alphabet] + ["".join(m) for m in merges]
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1) + "\n",
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
              "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1) + "\n")
    return {"bos": vocab["<|startoftext|>"], "eos": vocab["<|endoftext|>"], "vocab_size": len(vocab)}


def _write_gemma_tokenizer(folder: Path, corpus: Sequence[str], num_merges: int) -> dict[str, int]:
    from transformers import GemmaTokenizer

    from editmgt.tiny import learn_bpe_merges

    words: Counter = Counter()
    for line in corpus:
        for i, word in enumerate(line.split(" ")):
            words[tuple(("▁" if i else "") + word)] += 1
            words[tuple("▁" + word)] += 1          # every word also as a non-first word
    merges = learn_bpe_merges(words, num_merges)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    chars = sorted({ch for w in words for ch in w})
    tokens = list(dict.fromkeys(specials + byte_tokens + chars + ["".join(m) for m in merges]))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[tuple(m) for m in merges],
                               model_max_length=TEXT_LENGTH)
    tokenizer.padding_side = "left"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return {"pad": vocab["<pad>"], "eos": vocab["<eos>"], "bos": vocab["<bos>"],
            "vocab_size": len(vocab)}


def write_text_towers(root: Path, recipe: ShapesRecipe, num_merges: int = 2000) -> None:
    """text_encoder/ + tokenizer/ (CLIP) and llm_encoder/ (Gemma2), random (trained later
    with the editor when recipe.train_text)."""
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, Gemma2Config,
                              Gemma2ForCausalLM)

    corpus = instruction_corpus()
    clip_special = _write_clip_tokenizer(root / "tokenizer", corpus, num_merges)
    clip_cfg = CLIPTextConfig(
        vocab_size=clip_special["vocab_size"], hidden_size=recipe.clip_hidden,
        intermediate_size=2 * recipe.clip_hidden, projection_dim=recipe.pooled_dim,
        num_hidden_layers=recipe.text_layers, num_attention_heads=2, max_position_embeddings=77,
        hidden_act="gelu", bos_token_id=clip_special["bos"], eos_token_id=clip_special["eos"],
        pad_token_id=clip_special["eos"], initializer_range=recipe.text_init_range,
        initializer_factor=1.0)
    torch.manual_seed(recipe.seed + 10)
    CLIPTextModelWithProjection(clip_cfg).eval().save_pretrained(root / "text_encoder",
                                                                 safe_serialization=True)
    gemma_special = _write_gemma_tokenizer(root / "llm_encoder", corpus, num_merges)
    gemma_cfg = Gemma2Config(
        vocab_size=gemma_special["vocab_size"], hidden_size=recipe.text_dim,
        intermediate_size=2 * recipe.text_dim, num_hidden_layers=recipe.text_layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=recipe.text_dim // 2,
        max_position_embeddings=512, sliding_window=TEXT_LENGTH,
        query_pre_attn_scalar=recipe.text_dim // 2, pad_token_id=gemma_special["pad"],
        bos_token_id=gemma_special["bos"], eos_token_id=gemma_special["eos"],
        tie_word_embeddings=True, initializer_range=recipe.text_init_range)
    torch.manual_seed(recipe.seed + 20)
    Gemma2ForCausalLM(gemma_cfg).eval().save_pretrained(root / "llm_encoder",
                                                        safe_serialization=True)


# ----------------------------------------------------------------------------- checkpoint

def transformer_config(recipe: ShapesRecipe, codebook: int, text_dim: int,
                       pooled_dim: int) -> dict:
    """diffusers-style config.json of the shapes transformer (released keys)."""
    return {
        "_class_name": "Transformer2DModel", "_diffusers_version": "0.32.1",
        "patch_size": 1, "in_channels": 64,
        "num_layers": recipe.num_layers, "num_single_layers": recipe.num_single_layers,
        "attention_head_dim": recipe.head_dim, "num_attention_heads": recipe.heads,
        "joint_attention_dim": text_dim, "pooled_projection_dim": pooled_dim,
        "guidance_embeds": False, "axes_dims_rope": list(recipe.axes_dims_rope),
        "vocab_size": codebook + 1, "codebook_size": codebook,
        "downsample": recipe.downsample, "upsample": recipe.downsample,
        "text_encoder_architecture": "CLIP_Gemma2", "connector_type": "linear",
    }


def save_transformer(model: torch.nn.Module, config: dict, folder: Path) -> None:
    """config.json + diffusion_pytorch_model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


def write_scheduler_and_pipeline(root: Path, mask_token_id: int, image_size: int) -> None:
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "Scheduler", "_diffusers_version": "0.32.1",
         "mask_token_id": mask_token_id, "masking_schedule": "cosine"}, indent=2) + "\n")
    (root / "editmgt_pipeline.json").write_text(json.dumps({"resolution": image_size}) + "\n")


# ----------------------------------------------------------------------------- data

def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


@dataclass
class EncodedTriples:
    """The training set as tokens: ids (N, h, w) and the instruction of each triple."""

    source: torch.Tensor
    target: torch.Tensor
    instructions: list[str]
    kinds: list[str]
    objects: torch.Tensor                 # (N, h, w) bool: tokens showing a shape in source or target
    regions: torch.Tensor                 # (N, h, w) float: share of each token's pixels in the target region


class PromptSampler:
    """The text side of a training batch: each triple's instruction, perturbed with
    probability `noise` (`data.perturb_phrasing`), or one of the null prompts with
    probability `dropout` (for classifier-free guidance). Seeded."""

    def __init__(self, instructions: Sequence[str], noise: float, dropout: float,
                 null_prompts: Sequence[str], seed: int, keep: Sequence[str] = (),
                 insert_known: float = 0.0) -> None:
        self.instructions = list(instructions)
        self.noise, self.dropout = float(noise), float(dropout)
        self.null_prompts = list(null_prompts)
        self.keep = frozenset(keep)                  # words the noise leaves alone (with MEANING_WORDS)
        self.insert_known = float(insert_known)      # chance of a known word inserted too
        self.rng = np.random.default_rng(seed)

    def __call__(self, index: torch.Tensor) -> list[str]:
        prompts = []
        for i in index.tolist():
            prompt = self.instructions[i]
            if self.rng.random() < self.noise:
                prompt = data.perturb_phrasing(prompt, self.rng, keep=self.keep, insert_known=self.insert_known)
            if self.rng.random() < self.dropout:
                prompt = self.null_prompts[int(self.rng.integers(len(self.null_prompts)))]
            prompts.append(prompt)
        return prompts


class EpochSampler:
    """Batches of indices drawn without replacement from `pool`, reshuffled (seeded by
    `generator`) whenever fewer than a batch remain."""

    def __init__(self, pool: Sequence[int], generator: torch.Generator) -> None:
        if not len(pool):
            raise ValueError("no training triples to draw from")
        self.pool = torch.as_tensor(list(pool), dtype=torch.long)
        self.generator = generator
        self.order = self.pool[torch.randperm(self.pool.numel(), generator=generator)]
        self.cursor = 0

    def draw(self, batch_size: int) -> torch.Tensor:
        if self.cursor + batch_size > self.order.numel():
            self.order = self.pool[torch.randperm(self.pool.numel(), generator=self.generator)]
            self.cursor = 0
        index = self.order[self.cursor:self.cursor + batch_size]
        self.cursor += batch_size
        return index


class ReadingSpan:
    """Which transformer steps are reading steps, the span's end moved on while the reading
    steps have not learnt: when the step after the span comes and the accuracy of the last
    `recipe.log_every` reading steps on the changed tokens is under `recipe.reading_target`,
    the span grows by `recipe.log_every` edit steps, up to `recipe.reading_until_latest`."""

    def __init__(self, recipe: ShapesRecipe) -> None:
        self.recipe = recipe
        self.until = recipe._reading_until()                 # edit step where the span ends now
        self.recent: deque[float] = deque(maxlen=recipe.log_every)

    def is_reading(self, step: int) -> bool:
        """Whether transformer step `step` (0-based) is a reading step; call once per step, in order."""
        r = self.recipe
        if (r.reading_target is not None and step == r.copy_warmup_steps + self.until
                and self.until < r.reading_until_latest and self.recent):
            accuracy = self.accuracy()
            if accuracy < r.reading_target:
                self.until = min(self.until + r.log_every, r.reading_until_latest)
                logger.info("reading steps' accuracy %.3f is under %.2f: the block runs on to edit step %d",
                            accuracy, r.reading_target, self.until)
        return r.is_reading_step(step, until=self.until)

    def record(self, edit_acc: float) -> None:
        """A reading step's accuracy on the changed tokens."""
        self.recent.append(float(edit_acc))

    def accuracy(self) -> Optional[float]:
        """Mean accuracy of the last window of reading steps (None before any)."""
        return sum(self.recent) / len(self.recent) if self.recent else None


def copy_batch(codes: torch.Tensor, batch_size: int, grid: tuple[int, int],
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(source, target) of a pure copy task: grids of codes drawn uniformly from `codes`,
    target = source. Nothing but attention to the same position in the reference stream
    predicts them, and every code is seen equally often, so the embedding -> attention ->
    head path learns to reproduce any code (real scenes show most codes a few times only,
    under a flood of background tokens)."""
    pick = torch.randint(0, codes.numel(), (batch_size, *grid), generator=generator)
    source = codes[pick]
    return source, source.clone()


def text_trainables(text) -> list[torch.nn.Parameter]:
    """Unfreeze a TextConditioner's towers except their token embeddings; returns the
    parameters to train."""
    frozen = {id(m.get_input_embeddings().weight) for m in (text.clip.model, text.llm.model)}
    params = []
    for tower in (text.clip.model, text.llm.model):
        for p in tower.parameters():
            p.requires_grad_(id(p) not in frozen)
            if p.requires_grad:
                params.append(p)
    return params


def save_text_towers(text, root: Path) -> None:
    """Write trained towers back in the released layout (llm_encoder/ as a causal LM)."""
    from transformers import Gemma2ForCausalLM

    text.clip.model.save_pretrained(root / "text_encoder", safe_serialization=True)
    lm = Gemma2ForCausalLM(text.llm.model.config)
    lm.model.load_state_dict(text.llm.model.state_dict())
    lm.tie_weights()
    lm.eval().save_pretrained(root / "llm_encoder", safe_serialization=True)


def token_shares(mask: np.ndarray, factor: int) -> torch.Tensor:
    """(N, H, W) bool pixels -> (N, H/factor, W/factor) float, the share of each token's
    factor x factor patch that is True."""
    n, h, w = mask.shape
    return torch.from_numpy(mask.reshape(n, h // factor, factor, w // factor, factor)
                            .mean(axis=(2, 4), dtype=np.float32))


def named_regions(regions: torch.Tensor, texts: Sequence[str], null_prompts: Sequence[str]
                  ) -> torch.Tensor:
    """regions (B, h, w) with the samples whose prompt was dropped to a null prompt zeroed:
    a null prompt names no region, so the grounding term leaves them out."""
    named = torch.tensor([t not in null_prompts for t in texts], dtype=regions.dtype)
    return regions * named[:, None, None]


def naming_rows(text, texts: Sequence[str],
                words_of: Optional[Callable[[str], list[str]]] = None) -> torch.Tensor:
    """(B, T) float: 1 on the text-stream rows of each instruction's words that name the
    edit (`words_of`, default `naming_words`), 0 elsewhere; all zero for a null prompt."""
    words_of = words_of or data.naming_words
    rows = torch.zeros(len(texts), text.text_length)
    for i, prompt in enumerate(texts):
        words = words_of(prompt)
        if words:
            rows[i, text.keyword_rows(prompt, words)] = 1.0
    return rows


def tokens_touching(mask: np.ndarray, factor: int) -> torch.Tensor:
    """(N, H, W) bool pixels -> (N, H/factor, W/factor) bool, True where the token's
    factor x factor patch holds any True pixel."""
    return token_shares(mask, factor) > 0


def agreement_mask(sources: np.ndarray, targets: np.ndarray, factor: int) -> torch.Tensor:
    """Token positions whose pixels are identical in source and target.

    sources, targets: (N, H, W, 3) uint8 -> (N, H/factor, W/factor) bool, True where the
    factor x factor patch under the token is unchanged."""
    return ~tokens_touching((sources != targets).any(-1), factor)


def modal_codes(images: Sequence[np.ndarray], ids: Sequence[torch.Tensor], factor: int
                ) -> tuple[list[torch.Tensor], float]:
    """Replace every token by the id the VQ most often gives its exact pixels.

    images[k]: (N_k, H, W, 3) uint8 and ids[k]: (N_k, H/factor, W/factor) their VQ ids. The
    encoder's receptive field and group norms make ids depend on the whole image, so equal
    patches carry many ids; the modal id over all the images is a function of the patch
    alone. Returns the modal ids in the shapes of `ids`, and the purity: the share of tokens
    whose id already was their patch's modal id.
    """
    keys = [patch_keys(to_tensor(img), factor) for img in images]
    num_codes = int(max(int(t.max()) for t in ids)) + 1
    table_keys, table_ids, purity = modal_ids(torch.cat([k.flatten() for k in keys]),
                                              torch.cat([t.flatten() for t in ids]), num_codes)
    out = [lookup_modal(k, table_keys, table_ids).to(t.dtype) for k, t in zip(keys, ids)]
    return out, purity


def vq_check_rate(recon: torch.Tensor, triples: Sequence[data.EditTriple]) -> float:
    """Share of `triples` whose VQ-reconstructed target (`recon`, one per triple) passes the
    eval's pixel check: the ceiling the VQ puts on edit success."""
    from editmgt.eval.shapes import check_edit

    images = (recon.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return float(np.mean([check_edit(image, t) for image, t in zip(images, triples, strict=True)]))


# ----------------------------------------------------------------------------- main recipe

def _mean_of_numbers(values: Sequence[float]) -> Optional[float]:
    """Mean of the values that are not nan, rounded for the log; None if there are none."""
    kept = [v for v in values if not np.isnan(v)]
    return round(float(np.mean(kept)), 6) if kept else None


def _shown(value: Optional[float]) -> str:
    """A logged mean for the log line: 4 decimals, or '-' where the window had none."""
    return "-" if value is None else f"{value:.4f}"


def train_shapes(out_dir: Union[str, Path], recipe: Optional[ShapesRecipe] = None,
                 pretrained_vq: Optional[Union[str, Path]] = None) -> dict:
    """Run the whole recipe into `out_dir`; returns the training log (also train_log.json).

    pretrained_vq: a `vqvae/` folder to reuse instead of training the VQ (experiments only).
    With pixel codes (the default) the editor trains on the codes, not on what the reused
    encoder gives, so a VQ of the same recipe and seed repeats the whole run's transformer;
    a VQ fitted to other codes is reported (`encoder_code_agreement`). With a learnt
    codebook the reused encoder tokenises a few near-tie patches differently, and the
    transformer differs from the whole run's.
    """
    from editmgt.models.text_encoders import TextConditioner
    from editmgt.models.transformer import EditMGTTransformer, TransformerConfig
    from editmgt.models.vq import VQTokenizer

    recipe = recipe or ShapesRecipe()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log: dict = {"recipe": recipe.to_dict(), "timings": {}, "transformer": [], "vq": []}
    t_all = time.time()
    torch.manual_seed(recipe.seed)

    # 1. Text towers and tokenizers.
    t0 = time.time()
    write_text_towers(out, recipe)
    text = TextConditioner.from_pretrained(out, cache_size=0)
    log["timings"]["text_towers_s"] = round(time.time() - t0, 1)

    # 2. Triples.
    t0 = time.time()
    triples = list(data.iter_triples(recipe.seed, recipe.n_train, "train",
                                     shared_names=recipe.shared_names))
    sources = np.stack([tr.source for tr in triples])
    targets = np.stack([tr.target for tr in triples])
    instructions = [tr.instruction for tr in triples]
    kinds = [tr.kind for tr in triples]
    object_pixels = np.stack([data.shapes_union(tr.source_scene, recipe.image_size)
                              | data.shapes_union(tr.target_scene, recipe.image_size)
                              for tr in triples])
    region_pixels = np.stack([tr.mask for tr in triples])
    checked = triples[:280]               # the VQ's reconstructions are checked on these
    del triples
    log["timings"]["data_s"] = round(time.time() - t0, 1)
    logger.info("%d training triples in %.1fs", len(instructions), time.time() - t0)

    # 3. VQ on training images plus dense scenes (every colour and kind well covered).
    t0 = time.time()
    dense = np.stack([data.make_vq_image(recipe.seed, i, recipe.image_size)
                      for i in range(recipe.vq_dense_images)])
    in_pool = len(dense)                  # triples whose source and target the pool holds
    pool = to_tensor(np.concatenate([sources[:in_pool], targets[:in_pool], dense]))
    del dense

    def sample_batch(b: int, gen: torch.Generator) -> torch.Tensor:
        return pool[torch.randint(0, pool.shape[0], (b,), generator=gen)]

    codes: Optional[PixelCodes] = None
    if recipe.vq_train.codebook_from == "pixels":
        # the ids are fixed from the pixels first: every patch of the triples gets one
        rest = slice(in_pool, None)
        codes, log["vq_codes"] = pixel_codes(
            [pool, to_tensor(sources[rest]), to_tensor(targets[rest])], recipe.vq.factor,
            recipe.vq.num_vq_embeddings, seed=recipe.seed + 30, weight_power=recipe.vq_train.code_weight_power)
    if pretrained_vq is not None:
        from diffusers import VQModel

        vq_model = VQModel.from_pretrained(pretrained_vq, use_safetensors=True).eval()
    else:
        vq_model = train_vq(sample_batch, recipe.vq, recipe.vq_train, seed=recipe.seed + 30, codes=codes)
    vq_model.save_pretrained(out / "vqvae", safe_serialization=True)
    log["vq"] = recipe.vq_train.history if pretrained_vq is None else []
    log["timings"]["vq_s"] = round(time.time() - t0, 1)
    vq = VQTokenizer(vq_model)

    # 4. Tokens and text table.
    t0 = time.time()
    if codes is not None:
        # the editor trains on the codes the VQ was fitted to; its encoder gives them back
        src_ids, tgt_ids = codes.lookup(to_tensor(sources)), codes.lookup(to_tensor(targets))
        probe = to_tensor(np.concatenate([sources[:256], targets[:256]]))
        log["encoder_code_agreement"] = float((vq.encode(probe, batch_size=256) == codes.lookup(probe))
                                              .float().mean())
        if log["encoder_code_agreement"] < 0.99:
            logger.warning("the VQ's encoder gives the recipe's patch codes for only %.1f%% of the tokens "
                           "(a VQ fitted to other codes, or too few VQ steps): the editor will see other "
                           "ids than it was trained on", 100 * log["encoder_code_agreement"])
    else:
        src_ids = vq.encode(to_tensor(sources), batch_size=256)
        tgt_ids = vq.encode(to_tensor(targets), batch_size=256)
    factor = recipe.image_size // src_ids.shape[-1]                        # pixels per token side
    unchanged = agreement_mask(sources, targets, factor)
    log["token_agreement_unchanged"] = float((src_ids == tgt_ids)[unchanged].float().mean())
    if recipe.targets == "canonical":
        # Equal pixels should be equal tokens wherever the editor has to draw them: changed
        # patches get the id their pixels most often have in the whole set.
        (_, tgt_ids), log["patch_id_purity"] = modal_codes([sources, targets], [src_ids, tgt_ids],
                                                           factor)
    if recipe.targets in ("snap", "canonical"):
        # Unchanged pixels are copied: a code flip there is tokenizer noise, and training on
        # it teaches the editor to redraw what it should copy.
        tgt_ids = torch.where(unchanged, src_ids, tgt_ids)
    recon = vq.decode(tgt_ids[:len(checked)], batch_size=len(checked))
    log["vq_roundtrip_l1"] = float((recon - to_tensor(targets[:len(checked)])).abs().mean())
    log["vq_target_check_rate"] = vq_check_rate(recon, checked)
    del pool
    enc = EncodedTriples(src_ids, tgt_ids, instructions, kinds, tokens_touching(object_pixels, factor),
                         token_shares(region_pixels, factor))
    del object_pixels, region_pixels
    log["timings"]["encode_s"] = round(time.time() - t0, 1)
    log["unique_instructions"] = len(set(instructions))
    logger.info("tokens %s, %d unique instructions, VQ round-trip L1 %.4f, reconstructed "
                "targets passing the pixel check %.3f, unchanged patches with equal ids %.3f",
                tuple(src_ids.shape), log["unique_instructions"], log["vq_roundtrip_l1"],
                log["vq_target_check_rate"], log["token_agreement_unchanged"])

    # 5. Transformer (and the text towers' layers when recipe.train_text).
    t0 = time.time()
    cfg_dict = transformer_config(recipe, vq.codebook_size, text.text_dim, text.pooled_dim)
    torch.manual_seed(recipe.seed + 40)
    model = EditMGTTransformer(TransformerConfig.from_dict(cfg_dict))
    if recipe.copy_heads:
        init_copy_heads(model, heads=recipe.copy_heads)
    text_params = text_trainables(text) if recipe.train_text else []
    logger.info("transformer: %d parameters; text towers: %d trained", count_parameters([model]),
                sum(p.numel() for p in text_params))
    trained = torch.nn.ModuleList([model, text]) if recipe.train_text else model
    optimizer = make_optimizer(trained, recipe.optim, {text: recipe.text_lr_scale} if recipe.train_text else None)
    gen = torch.Generator().manual_seed(recipe.seed + 50)
    null_prompts = ["", NEGATIVE_PROMPT]
    prompts = PromptSampler(instructions, recipe.phrasing_noise, recipe.objective.text_dropout,
                            null_prompts, seed=recipe.seed + 60, keep=recipe.phrasing_keeps,
                            insert_known=recipe.phrasing_insert_known)
    micro = torch.tensor([[recipe.image_size, recipe.image_size, 0, 0, 6]], dtype=torch.float32)
    mixed = EpochSampler([i for i, k in enumerate(kinds) for _ in range(recipe.kind_repeats.get(k, 1))], gen)
    reading = (EpochSampler([i for i, k in enumerate(kinds) if k in recipe.reading_kinds], gen)
               if recipe.reading_every else None)
    reading_objective = dataclasses.replace(recipe.objective, edit_share=1.0, mask_edit_prob=1.0)
    window: list[dict] = []
    reading_window: list[dict] = []
    used_codes = torch.unique(torch.cat([src_ids.flatten(), tgt_ids.flatten()]))
    total = recipe.copy_warmup_steps + recipe.steps
    optim = dataclasses.replace(recipe.optim, total_steps=recipe.optim.total_steps or total)
    text.train(recipe.train_text)
    span = ReadingSpan(recipe)
    for step in range(total):
        is_reading = span.is_reading(step)
        if step < recipe.copy_warmup_steps:
            source, target = copy_batch(used_codes, recipe.batch_size, tuple(src_ids.shape[1:]), gen)
            texts, objects, regions, rows = [""] * recipe.batch_size, None, None, None
        else:
            index = (reading if is_reading else mixed).draw(recipe.batch_size)
            source, target, objects = enc.source[index], enc.target[index], enc.objects[index]
            texts = prompts(index)
            regions = named_regions(enc.regions[index], texts, null_prompts)
            grounded_rows = recipe.objective.grounding_weight > 0 and recipe.grounding_rows in data.KEYWORD_SETS
            rows = naming_rows(text, texts, data.KEYWORD_SETS[recipe.grounding_rows]) if grounded_rows else None
        with torch.set_grad_enabled(recipe.train_text):
            emb = text(texts)
        batch = EditBatch(target, source, emb.states, emb.pooled,
                          micro.expand(source.shape[0], -1), objects, regions, rows)
        stats = train_step(model, optimizer, batch, reading_objective if is_reading else recipe.objective,
                           optim, step, gen)
        (reading_window if is_reading else window).append(stats)
        if is_reading:
            span.record(stats["edit_acc"])
        if (step + 1) % recipe.log_every == 0 or step == total - 1:
            mean = {k: _mean_of_numbers([w[k] for w in window]) for k in (window or reading_window)[0]}
            # reading steps: their loss (changed tokens only) and accuracy on the changed tokens
            mean["reading_loss"] = _mean_of_numbers([w["loss"] for w in reading_window])
            mean["reading_edit_acc"] = _mean_of_numbers([w["edit_acc"] for w in reading_window])
            mean.update(step=step + 1, seconds=round(time.time() - t0, 1))
            log["transformer"].append(mean)
            # a window may hold reading steps only (a block of them): its other means are None
            logger.info("step %d/%d loss %s acc %s copy %s edit %s keep %s grounding %s reading edit %s "
                        "lr %.2e (%.0fs)", step + 1, total, *(_shown(mean[k]) for k in (
                            "loss", "acc", "copy_acc", "edit_acc", "keep_acc", "grounding", "reading_edit_acc")),
                        stats["lr"], mean["seconds"])
            window, reading_window = [], []
    text.eval()
    model.eval()
    log["timings"]["transformer_s"] = round(time.time() - t0, 1)
    log["reading_until"] = span.until          # where the reading steps' span ended (edit step)
    log["transformer_parameters"] = count_parameters([model])

    # 6. Checkpoint.
    save_transformer(model, cfg_dict, out / "editmgt")
    if recipe.train_text:
        save_text_towers(text, out)
    write_scheduler_and_pipeline(out, cfg_dict["vocab_size"] - 1, recipe.image_size)
    log["timings"]["total_s"] = round(time.time() - t_all, 1)
    log["machine"] = describe_cpu()        # weights are identical run after run on one kind of CPU only
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    logger.info("checkpoint in %s: %.2f MB, %.1f min in all", out, size / 1e6,
                log["timings"]["total_s"] / 60)
    return log


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m editmgt.train.shapes",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--steps", type=int, default=None, help="transformer steps (override)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate of the editor and the text towers' layers (override)")
    parser.add_argument("--text-lr-scale", type=float, default=ShapesRecipe.text_lr_scale, metavar="S",
                        help="the text towers' layers learn at S times the editor's learning rate")
    parser.add_argument("--targets", choices=TARGETS, default=ShapesRecipe.targets,
                        help="target ids: the VQ's (vq), source ids where the pixels are unchanged "
                             "(snap), or snap plus each changed patch's modal id (canonical); "
                             "docs/SHAPES.md, 'Tokenizer noise'")
    parser.add_argument("--grounding-weight", type=float, default=None,
                        help="weight of the attention-grounding KL on the --grounding-rows (override; "
                             "0 turns it off: an earlier model's recipe)")
    parser.add_argument("--mask-objects", action=argparse.BooleanOptionalAction, default=None,
                        help="in the edit-masked samples, hide every shape with the edit (override; "
                             "--no-mask-objects hides the edit alone, as the recipes before 2026-12-05, evening did)")
    parser.add_argument("--shared-names", type=float, default=ShapesRecipe.shared_names,
                        help="chance that a training scene's shapes share colours or kinds, so that "
                             "an instruction needs both words to find its shape (0: the recipe)")
    parser.add_argument("--grounding-rows", choices=GROUNDING_ROWS, default=ShapesRecipe.grounding_rows,
                        help="text rows the grounding term pulls onto the edit region: every row (all), "
                             "the words naming the edit (naming), or those less the new colour or "
                             "kind (locating, the default)")
    parser.add_argument("--reading-every", type=int, default=ShapesRecipe.reading_every,
                        help="every n-th edit step (between --reading-from and --reading-until) is a "
                             "reading step: edits of the --reading-kinds alone, the edit masked, the "
                             "loss on it only; 0: none")
    parser.add_argument("--reading-kinds", nargs="+", choices=data.EDIT_KINDS, default=list(ShapesRecipe.reading_kinds),
                        help="edit kinds the reading steps train on")
    parser.add_argument("--reading-from", type=int, default=ShapesRecipe.reading_from,
                        help="first edit step of the reading steps' span")
    parser.add_argument("--reading-until", type=int, default=ShapesRecipe.reading_until,
                        help="edit step where the reading steps' span ends")
    parser.add_argument("--reading-target", type=float, default=ShapesRecipe.reading_target, metavar="ACC",
                        help="run the reading block on past --reading-until while its last window's "
                             "accuracy on the changed tokens is under ACC (with --reading-until-latest)")
    parser.add_argument("--reading-until-latest", type=int, default=ShapesRecipe.reading_until_latest,
                        metavar="STEP", help="the latest edit step the reading block may run on to")
    parser.add_argument("--kind-repeats", nargs="+", default=[], metavar="KIND=N",
                        help="edit kinds drawn N times per epoch of the mix instead of once "
                             "(e.g. style=2 background=2)")
    parser.add_argument("--phrasing-keeps", nargs="*", default=list(ShapesRecipe.phrasing_keeps),
                        metavar="WORD", help="words the phrasing noise leaves alone besides the "
                                             "meaning words (none: pass the flag alone)")
    parser.add_argument("--insert-known", type=float, default=ShapesRecipe.phrasing_insert_known, metavar="P",
                        help="chance that a perturbed instruction also gets a word of the training "
                             "phrasings inserted (default: 0, none)")
    parser.add_argument("--vq-codebook", choices=VQ_CODEBOOKS, default="pixels",
                        help="the VQ stage: ids fixed from the pixel patches (pixels, the default) or the "
                             "learnt codebook of the checkpoints before 2026-12-04 night (learnt)")
    parser.add_argument("--vq-codes", type=int, default=None,
                        help="the VQ's codebook size, and so the editor's output width (override; "
                             f"the recipe's {VQConfig.num_vq_embeddings}; with --vq-codebook pixels, at least "
                             "the training images' distinct patches gives every patch a code of its own)")
    parser.add_argument("--reuse-vq", type=Path, default=None,
                        help="vqvae/ folder written by an earlier run of this recipe (same seed): "
                             "skips fitting the VQ (about 6 minutes)")
    return parser


def recipe_from_args(args: argparse.Namespace) -> ShapesRecipe:
    """The recipe's defaults with the command line's overrides."""
    steps = ShapesRecipe.steps if args.steps is None else args.steps
    return ShapesRecipe(seed=args.seed, shared_names=args.shared_names, targets=args.targets,
                        grounding_rows=args.grounding_rows,
                        steps=steps, reading_kinds=tuple(args.reading_kinds), reading_every=args.reading_every,
                        reading_from=args.reading_from, reading_until=args.reading_until,
                        reading_target=args.reading_target, reading_until_latest=args.reading_until_latest,
                        kind_repeats=_kind_repeats(args.kind_repeats), phrasing_keeps=tuple(args.phrasing_keeps),
                        phrasing_insert_known=args.insert_known, text_lr_scale=args.text_lr_scale,
                        vq=_vq_with(args), vq_train=vq_schedule(args.vq_codebook), objective=_objective_with(args),
                        optim=_optim_with(args))


def _kind_repeats(pairs: Sequence[str]) -> dict[str, int]:
    """["style=2", ...] -> {"style": 2} (the recipe checks the kinds and counts)."""
    repeats = {}
    for pair in pairs:
        kind, sep, count = pair.partition("=")
        if not sep or not count.isdigit():
            raise ValueError(f"--kind-repeats {pair!r}: use KIND=N, e.g. style=2")
        repeats[kind] = int(count)
    return repeats


def _vq_with(args: argparse.Namespace) -> VQConfig:
    vq = ShapesRecipe().vq
    if args.vq_codes is None:
        return vq
    if args.vq_codes < 2:
        raise ValueError(f"--vq-codes must be at least 2, got {args.vq_codes}")
    return dataclasses.replace(vq, num_vq_embeddings=args.vq_codes)


def _optim_with(args: argparse.Namespace) -> OptimConfig:
    optim = ShapesRecipe().optim
    return optim if args.lr is None else dataclasses.replace(optim, lr=args.lr)


def _objective_with(args: argparse.Namespace) -> ObjectiveConfig:
    objective = ShapesRecipe().objective
    if args.grounding_weight is not None:
        objective = dataclasses.replace(objective, grounding_weight=args.grounding_weight)
    if args.mask_objects is not None:
        objective = dataclasses.replace(objective, mask_objects=args.mask_objects)
    return objective


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    train_shapes(args.out, recipe_from_args(args), pretrained_vq=args.reuse_vq)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
