"""The shapes editor's files in the released checkpoint layout: editmgt/ (config.json and
safetensors), scheduler/ and editmgt_pipeline.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from editmgt.research.shapes.recipe import ShapesRecipe


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
    """scheduler/scheduler_config.json (cosine masking) and editmgt_pipeline.json (the resolution)."""
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "Scheduler", "_diffusers_version": "0.32.1",
         "mask_token_id": mask_token_id, "masking_schedule": "cosine"}, indent=2) + "\n")
    (root / "editmgt_pipeline.json").write_text(json.dumps({"resolution": image_size}) + "\n")
