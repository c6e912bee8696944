"""The MagicBrush evaluation's metrics: L1, CLIP-I, CLIP-T and DINO, with its models and
pre-processing (OSU-NLP-Group/MagicBrush, evaluation/image_eval.py; docs/BATCH.md cites it).

    L1       mean |output - reference| over every pixel and channel, both in [0, 1]; the output
             is first resized (bicubic) to the reference's size
    CLIP-I   cosine of the CLIP ViT-B/32 image embeddings of output and reference
    CLIP-T   cosine of the output's CLIP image embedding and the caption's CLIP text embedding
             (the paper's CLIP-out)
    DINO     cosine of the DINO ViT-S/16 CLS outputs of output and reference

The reference is the ground-truth edit (MagicBrush) or the source image (Emu Edit); `score.py`
chooses. Weights load with transformers, safetensors only, at pinned revisions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

# clip.load("ViT-B/32") of the MagicBrush evaluation = OpenAI's CLIP ViT-B/32 = this repo; the
# pinned commit is the one that adds model.safetensors.
CLIP_MODEL = "openai/clip-vit-base-patch32"
CLIP_REVISION = "b527df4b30e5cc18bde1cc712833a741d2d8c362"
# torch.hub 'facebookresearch/dino:main', 'dino_vits16' = this repo; main holds only pickle
# weights, so the pin is the Hub's safetensors conversion of them (refs/pr/1).
DINO_MODEL = "facebook/dino-vits16"
DINO_REVISION = "a7a4d161f5c0bd70478c05ca5777ec7cd8848021"
CLIP_TEXT_TOKENS = 77  # CLIP's context length; longer captions are truncated


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side (bicubic), centre-crop a square, scale to [0, 1], normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL -> (3, crop, crop) float32."""
        image = image.convert("RGB")
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != image.size:
            image = image.resize(size, Image.BICUBIC)
        width, height = image.size
        top, left = int(round((height - self.crop) / 2.0)), int(round((width - self.crop) / 2.0))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std


# The transforms of the MagicBrush evaluation: clip.load's own, and its DINO transform.
CLIP_PREPROCESS = Preprocess(224, 224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
DINO_PREPROCESS = Preprocess(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def to_unit(image: Image.Image) -> np.ndarray:
    """PIL -> (H, W, 3) float64 in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def l1_distance(output: Image.Image, reference: Image.Image) -> float:
    """Mean absolute difference in [0, 1], the output resized (bicubic) to the reference's size."""
    output = output.convert("RGB")
    if output.size != reference.size:
        output = output.resize(reference.size, Image.BICUBIC)
    return float(np.abs(to_unit(output) - to_unit(reference)).mean())


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of (B, D) and (B, D) (or (1, D), broadcast) in float64 -> (B,)."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


@dataclass(frozen=True)
class ScoreModels:
    """Where the CLIP and DINO weights load from (a folder, or a Hub repo at a revision)."""

    clip: str = CLIP_MODEL
    clip_revision: Optional[str] = CLIP_REVISION
    dino: str = DINO_MODEL
    dino_revision: Optional[str] = DINO_REVISION

    @classmethod
    def choose(cls, clip: str = CLIP_MODEL, clip_revision: Optional[str] = None, dino: str = DINO_MODEL,
               dino_revision: Optional[str] = None) -> "ScoreModels":
        """The default repos keep their pins unless a revision is given; other sources take theirs."""
        if clip == CLIP_MODEL and clip_revision is None:
            clip_revision = CLIP_REVISION
        if dino == DINO_MODEL and dino_revision is None:
            dino_revision = DINO_REVISION
        return cls(clip, clip_revision, dino, dino_revision)

    def describe(self) -> dict:
        return {"clip": self.clip, "clip_revision": self.clip_revision, "dino": self.dino,
                "dino_revision": self.dino_revision}


class ProtocolEncoders:
    """The loaded CLIP and DINO models: images and captions -> embeddings."""

    def __init__(self, models: ScoreModels, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPTokenizer, ViTModel

        self.device = torch.device(device)
        local_clip, local_dino = Path(models.clip).is_dir(), Path(models.dino).is_dir()
        self.clip = CLIPModel.from_pretrained(models.clip, revision=None if local_clip else models.clip_revision,
                                              use_safetensors=True).eval().to(self.device)
        self.tokenizer = CLIPTokenizer.from_pretrained(models.clip,
                                                       revision=None if local_clip else models.clip_revision)
        self.dino = ViTModel.from_pretrained(models.dino, revision=None if local_dino else models.dino_revision,
                                             use_safetensors=True, add_pooling_layer=False).eval().to(self.device)

    @torch.inference_mode()
    def clip_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, D) CLIP image embeddings (after the projection, as `encode_image`)."""
        pixels = torch.stack([CLIP_PREPROCESS(image) for image in images]).to(self.device)
        return self.clip.get_image_features(pixel_values=pixels).pooler_output.float().cpu()

    @torch.inference_mode()
    def clip_texts(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, D) CLIP text embeddings (as `encode_text`), captions padded or cut to 77 tokens."""
        tokens = self.tokenizer(list(captions), padding="max_length", max_length=CLIP_TEXT_TOKENS, truncation=True,
                                return_tensors="pt").to(self.device)
        return self.clip.get_text_features(input_ids=tokens.input_ids).pooler_output.float().cpu()

    @torch.inference_mode()
    def dino_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, D) DINO CLS outputs (after the final norm, as the torch.hub model returns)."""
        pixels = torch.stack([DINO_PREPROCESS(image) for image in images]).to(self.device)
        return self.dino(pixel_values=pixels).last_hidden_state[:, 0].float().cpu()

    def score(self, outputs: Sequence[Image.Image], reference: Image.Image,
              caption: Optional[str]) -> list[dict[str, Optional[float]]]:
        """Every output against one reference (and caption) -> [{l1, clip_i, clip_t, dino}] per output."""
        clip_out = self.clip_images([*outputs, reference])
        dino_out = self.dino_images([*outputs, reference])
        clip_i = cosine(clip_out[:-1], clip_out[-1:])
        dino = cosine(dino_out[:-1], dino_out[-1:])
        clip_t = cosine(clip_out[:-1], self.clip_texts([caption])) if caption else None
        return [{"l1": l1_distance(output, reference), "clip_i": float(clip_i[i]), "dino": float(dino[i]),
                 "clip_t": None if clip_t is None else float(clip_t[i])} for i, output in enumerate(outputs)]
