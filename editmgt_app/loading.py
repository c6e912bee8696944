"""Adapter from the zoo to the library: load EditMGTPipeline components one by one so the
manager can share them between entries (same source, revision and sub-folder), and build the
pipeline from them with its public constructor. Each component is read by the library's own
loader (`from_pretrained` of the transformer, the VQ model and the text conditioner;
`editmgt.pipeline.read_scheduler_config` for the scheduler's settings)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from editmgt.errors import CheckpointError
from editmgt.pipeline import read_scheduler_config
from editmgt.zoo import Entry, Resolved, builtin_folder
from editmgt_app.manager import ComponentKey

logger = logging.getLogger(__name__)

TEXT_ROLES = ("text_encoder", "tokenizer", "llm_encoder")


def scheduler_settings(root: Path, subfolder: str) -> dict:
    """The pipeline arguments `root/subfolder` sets (mask token id, masking schedule); a
    CheckpointError that names the file by its place in the checkpoint, not by its server
    path, and says how to fix it."""
    try:
        return read_scheduler_config(root / subfolder)
    except CheckpointError as err:
        message = str(err).replace(str(root / subfolder), subfolder)
        raise CheckpointError(f"the checkpoint's {message}: fix it, or restore it from the checkpoint") from None


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
            return scheduler_settings(self._root(key, (key.subfolder,)), key.subfolder)
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

        return EditMGTPipeline(parts["transformer"], parts["vqvae"], parts["text"], **parts["scheduler"],
                               resolution=entry.resolution)
