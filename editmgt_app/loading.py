"""Adapter from the zoo to the library: load EditMGTPipeline components one by one so the
manager can share them between entries (same source, revision and sub-folder)."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Optional

import torch

from editmgt.errors import CheckpointError
from editmgt_app.manager import ComponentKey
from editmgt_app.zoo import Entry, Resolved

logger = logging.getLogger(__name__)

TEXT_ROLES = ("text_encoder", "tokenizer", "llm_encoder")


def cache_dir() -> Path:
    """Where built-in models are written: $EDITMGT_CACHE or ~/.cache/editmgt."""
    return Path(os.environ.get("EDITMGT_CACHE", Path.home() / ".cache" / "editmgt")).expanduser()


_build_lock = threading.Lock()


def builtin_folder(name: str) -> Path:
    """The folder of a built-in model, built on first use (later calls reuse the build)."""
    if name != "tiny":
        raise ValueError(f"unknown built-in model {name!r}")
    from editmgt.tiny import make_tiny_checkpoint

    with _build_lock:
        return make_tiny_checkpoint(cache_dir() / "tiny-seed0", seed=0)


def read_scheduler_config(path: Path, where: str) -> dict:
    """The checkpoint's scheduler settings (mask token id, masking schedule): {} when the
    file is absent; a CheckpointError naming the file (`where` + its name, not the server
    path) and what is wrong when it is not a JSON object."""
    if not path.is_file():
        return {}
    name = f"{where}{path.name}"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"the checkpoint's {name} is not UTF-8 text: restore it from the checkpoint") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"the checkpoint's {name} is not valid JSON ({err.msg} at line {err.lineno}, "
                              f"column {err.colno}): fix it, or restore it from the checkpoint") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"the checkpoint's {name} must hold a JSON object ({{\"mask_token_id\": ..., "
                              f"\"masking_schedule\": ...}}), got a {type(config).__name__}")
    return config


class PipelineLoader:
    """Loads transformer / VQ model / text conditioner separately and assembles a pipeline."""

    def __init__(self, local_files_only: Optional[bool] = None) -> None:
        self.local_files_only = local_files_only
        self._saved: dict[ComponentKey, int] = {}

    def plan(self, entry: Entry, resolved: Resolved, *, load_8bit: bool, device: str,
             dtype: torch.dtype) -> dict[str, ComponentKey]:
        comps = entry.components
        location = resolved.location if resolved.kind != "builtin" else f"builtin:{resolved.location}"
        text_sub = "+".join(str(comps[r]) for r in TEXT_ROLES)
        dt = str(dtype).replace("torch.", "")

        def key(role: str, sub: str, quantised: bool) -> ComponentKey:
            return ComponentKey(role, location, resolved.revision, sub, quantised, device, dt)

        return {
            "transformer": key("transformer", comps["transformer"], load_8bit),
            "vqvae": key("vqvae", comps["vqvae"], False),
            "text": key("text", text_sub, load_8bit),
            "scheduler": key("scheduler", comps["scheduler"], False),
        }

    def _root(self, key: ComponentKey, subfolders: tuple[str, ...]) -> Path:
        if key.location.startswith("builtin:"):
            return builtin_folder(key.location.split(":", 1)[1])
        from editmgt.hub import resolve_checkpoint

        return Path(resolve_checkpoint(key.location, revision=key.revision, subfolders=subfolders,
                                       local_files_only=self.local_files_only))

    def load(self, key: ComponentKey, entry: Entry) -> Any:
        dtype = getattr(torch, key.dtype)
        if key.role == "transformer":
            from editmgt.models.transformer import EditMGTTransformer

            root = self._root(key, (key.subfolder,))
            module = EditMGTTransformer.from_pretrained(root / key.subfolder, dtype=dtype, device=key.device)
            if key.load_8bit:
                module = self._quantise(key, module)
            return module
        if key.role == "vqvae":
            from editmgt.models.vq import VQTokenizer

            root = self._root(key, (key.subfolder,))
            return VQTokenizer.from_pretrained(root / key.subfolder, device=key.device)
        if key.role == "text":
            from editmgt.models.text_encoders import TextConditioner

            subs = tuple(s for s in key.subfolder.split("+") if s != "None")
            root = self._root(key, subs)
            clip_sub, tokenizer_sub, llm_sub = (None if s == "None" else s for s in key.subfolder.split("+"))
            text = TextConditioner.from_pretrained(
                root, device=key.device, dtype=dtype, text_encoder_subfolder=clip_sub,
                tokenizer_subfolder=tokenizer_sub, llm_subfolder=llm_sub,
            )
            if key.load_8bit:
                reports = text.quantize_8bit()
                self._saved[key] = sum(r.bytes_before - r.bytes_after for r in reports)
            return text
        if key.role == "scheduler":
            root = self._root(key, (key.subfolder,))
            return read_scheduler_config(root / key.subfolder / "scheduler_config.json", f"{key.subfolder}/")
        raise ValueError(f"unknown component role {key.role!r}")

    def _quantise(self, key: ComponentKey, module: torch.nn.Module) -> torch.nn.Module:
        from editmgt.models.quantize import quantize_8bit

        report = quantize_8bit(module)
        self._saved[key] = report.bytes_before - report.bytes_after
        return module

    def saved_bytes(self, key: ComponentKey) -> int:
        return self._saved.get(key, 0)

    def assemble(self, entry: Entry, parts: dict[str, Any]) -> Any:
        from editmgt.pipeline import EditMGTPipeline

        scheduler = parts["scheduler"]
        return EditMGTPipeline(
            parts["transformer"],
            parts["vqvae"],
            parts["text"],
            mask_token_id=scheduler.get("mask_token_id"),
            masking_schedule=scheduler.get("masking_schedule", "cosine"),
            resolution=entry.defaults.resolution,  # the zoo's recommended working size
        )
