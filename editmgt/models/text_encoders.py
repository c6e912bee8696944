"""Text conditioning: one class per encoder, combined by composition.

Facts from the released code (spec sections 2 and 5):
- CLIP (`text_encoder/`, `tokenizer/`): ids padded / truncated to 77, no attention mask;
  the pooled, projected `text_embeds` is the pooled vector of the transformer.
- Gemma2 (`llm_encoder/`, a causal LM and its tokenizer): ids padded / truncated to 256 with the
  tokenizer's own settings (BOS added, Gemma pads on the left), no attention mask, hidden states
  of the second-to-last layer are the text stream; eager attention (Gemma2's logit soft-capping).
- CLIP only (Meissonic): the text stream is CLIP's second-to-last hidden states (77 rows).
- Keyword rows are text-stream rows, found with the text-stream tokenizer (the released code
  used the CLIP tokenizer here, which indexes the wrong rows).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from editmgt.errors import InputError
from editmgt.hub import check_model_folder

logger = logging.getLogger(__name__)

GEMMA2_MAX_LENGTH = 256  # text-stream length the released model was trained with
PENULTIMATE = -2  # hidden_states index of the second-to-last layer


@dataclass
class TextEmbeddings:
    """What the transformer needs from the text encoders."""

    states: torch.Tensor  # (B, T, D) text stream (Gemma2 or CLIP penultimate hidden states)
    pooled: torch.Tensor  # (B, P) CLIP pooled, projected embedding
    token_ids: torch.LongTensor  # (B, T) text-stream token ids (row i of states <-> id i)

    def __len__(self) -> int:
        return self.states.shape[0]

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "TextEmbeddings":
        """Move (and cast the float parts)."""
        return TextEmbeddings(
            self.states.to(device=device, dtype=dtype),
            self.pooled.to(device=device, dtype=dtype),
            self.token_ids.to(device=device),
        )

    def select(self, index: Union[Sequence[int], torch.Tensor]) -> "TextEmbeddings":
        """Rows `index` of the batch."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.states.device)
        return TextEmbeddings(self.states[index], self.pooled[index], self.token_ids[index.to(self.token_ids.device)])


# ---------------------------------------------------------------------- keyword rows
def _keyword_spans(prompt: str, keyword: str) -> list[tuple[int, int]]:
    """Character spans of `keyword` in `prompt`: whole words, case-insensitive; plain substring
    matches only when there is no whole-word match (e.g. 'cat' in 'cats')."""
    keyword = keyword.strip()
    if not keyword:
        raise InputError("the keyword is empty")
    escaped = re.escape(keyword)
    spans = [m.span() for m in re.finditer(rf"(?<!\w){escaped}(?!\w)", prompt, flags=re.IGNORECASE)]
    if not spans:
        spans = [m.span() for m in re.finditer(escaped, prompt, flags=re.IGNORECASE)]
    if not spans:
        raise InputError(f"the keyword {keyword!r} does not occur in the instruction {prompt!r}")
    return spans


Keywords = Union[str, Sequence[str]]


def keyword_rows(tokenizer, prompt: str, keywords: Keywords, max_length: int) -> torch.LongTensor:
    """(R,) sorted positions, in the padded sequence the encoder sees, of the tokens that spell
    any of `keywords` (one word or phrase, or several: the paper's row set M of Eq. 3; every
    occurrence). Special tokens (BOS, EOS, padding) are never returned; a sub-word piece
    counts when its characters overlap a keyword. InputError when a keyword is missing."""
    keywords = [keywords] if isinstance(keywords, str) else list(keywords)
    if not keywords:
        raise InputError("give at least one keyword")
    spans = {keyword: _keyword_spans(prompt, keyword) for keyword in keywords}
    encoding = tokenizer(
        prompt,
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    rows: set[int] = set()
    for keyword, keyword_spans in spans.items():
        found = [
            i
            for i, ((start, end), special) in enumerate(
                zip(encoding["offset_mapping"], encoding["special_tokens_mask"])
            )
            if not special and end > start and any(start < k_end and end > k_start for k_start, k_end in keyword_spans)
        ]
        if not found:
            raise InputError(
                f"the keyword {keyword!r} lies beyond the first {max_length} text tokens of the instruction"
            )
        rows.update(found)
    return torch.tensor(sorted(rows), dtype=torch.long)


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


# ---------------------------------------------------------------------- CLIP
@dataclass
class ClipOutput:
    pooled: torch.Tensor  # (B, P) projected pooled embedding (`text_embeds`)
    hidden: torch.Tensor  # (B, L, D) second-to-last layer hidden states, L = 77
    token_ids: torch.LongTensor  # (B, L)


class ClipPooledEncoder(nn.Module):
    """CLIPTextModelWithProjection + CLIPTokenizer: prompts -> pooled (and penultimate) states."""

    def __init__(self, model: nn.Module, tokenizer, max_length: Optional[int] = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length or model.config.max_position_embeddings)  # 77

    @classmethod
    def from_pretrained(
        cls,
        root: Union[str, Path],
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
        model_subfolder: str = "text_encoder",
        tokenizer_subfolder: str = "tokenizer",
    ) -> "ClipPooledEncoder":
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        root = Path(root)
        folder = check_model_folder(root / model_subfolder)
        model = CLIPTextModelWithProjection.from_pretrained(
            folder, use_safetensors=True, local_files_only=True, dtype=dtype
        )
        tokenizer = CLIPTokenizer.from_pretrained(root / tokenizer_subfolder, local_files_only=True)
        return cls(model.to(device=device, dtype=dtype), tokenizer)

    @property
    def pooled_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def hidden_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, prompts: Sequence[str]) -> torch.LongTensor:
        """(B, 77) ids: max-length padding, truncation (released settings)."""
        return self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).input_ids

    def forward(self, prompts: Sequence[str]) -> ClipOutput:
        device, _ = _device_dtype(self.model)
        ids = self.tokenize(prompts).to(device)
        out = self.model(input_ids=ids, output_hidden_states=True, return_dict=True)
        return ClipOutput(pooled=out.text_embeds, hidden=out.hidden_states[PENULTIMATE], token_ids=ids)

    def keyword_rows(self, prompt: str, keywords: Keywords) -> torch.LongTensor:
        return keyword_rows(self.tokenizer, prompt, keywords, self.max_length)


# ---------------------------------------------------------------------- Gemma2
@dataclass
class Gemma2Output:
    states: torch.Tensor  # (B, T, H) hidden states of layer `hidden_layer`, T = max_length
    token_ids: torch.LongTensor  # (B, T)


class Gemma2HiddenStates(nn.Module):
    """Gemma2 decoder + its tokenizer: prompts -> (B, 256, hidden) penultimate-layer states."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        max_length: int = GEMMA2_MAX_LENGTH,
        hidden_layer: int = PENULTIMATE,
        use_attention_mask: bool = False,
    ) -> None:
        """use_attention_mask=False as released: padding tokens are attended to."""
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.hidden_layer = int(hidden_layer)
        self.use_attention_mask = bool(use_attention_mask)

    @classmethod
    def from_pretrained(
        cls,
        folder: Union[str, Path],
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = GEMMA2_MAX_LENGTH,
    ) -> "Gemma2HiddenStates":
        """Load the decoder (no LM head) and tokenizer of an `llm_encoder/` folder."""
        from transformers import AutoTokenizer, Gemma2Model

        folder = check_model_folder(folder)
        model = Gemma2Model.from_pretrained(
            folder, use_safetensors=True, local_files_only=True, dtype=dtype, attn_implementation="eager"
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        # A tokenizer whose model_max_length is below 256 caps the stream (the tiny shapes
        # model is trained with 32 rows); Gemma2-2B-IT's (8192) leaves the released 256.
        max_length = min(int(max_length), int(getattr(tokenizer, "model_max_length", max_length)))
        return cls(model.to(device=device, dtype=dtype), tokenizer, max_length=max_length)

    @property
    def hidden_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask, (B, max_length) each, with the tokenizer's padding side."""
        return self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def forward(self, prompts: Sequence[str]) -> Gemma2Output:
        device, _ = _device_dtype(self.model)
        batch = self.tokenize(prompts)
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device) if self.use_attention_mask else None
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, return_dict=True)
        return Gemma2Output(states=out.hidden_states[self.hidden_layer], token_ids=ids)

    def keyword_rows(self, prompt: str, keywords: Keywords) -> torch.LongTensor:
        return keyword_rows(self.tokenizer, prompt, keywords, self.max_length)


# ---------------------------------------------------------------------- combined
class TextConditioner(nn.Module):
    """CLIP pooled vector + text stream (Gemma2 when given, else CLIP's penultimate states),
    with an LRU cache of encoded prompts (`cache_size` entries, 0 = off)."""

    def __init__(self, clip: ClipPooledEncoder, llm: Optional[Gemma2HiddenStates] = None, cache_size: int = 64) -> None:
        super().__init__()
        self.clip = clip
        self.llm = llm
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()

    @classmethod
    def from_pretrained(
        cls,
        root: Union[str, Path],
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
        with_llm: Optional[bool] = None,
        cache_size: int = 64,
        text_encoder_subfolder: str = "text_encoder",
        tokenizer_subfolder: str = "tokenizer",
        llm_subfolder: Optional[str] = "llm_encoder",
    ) -> "TextConditioner":
        """Load `text_encoder/` + `tokenizer/` and, if present (or `with_llm`), `llm_encoder/`.

        The sub-folder names can be changed for checkpoints laid out differently;
        `llm_subfolder=None` means CLIP-only conditioning (Meissonic)."""
        root = Path(root)
        clip = ClipPooledEncoder.from_pretrained(
            root, device=device, dtype=dtype, model_subfolder=text_encoder_subfolder, tokenizer_subfolder=tokenizer_subfolder
        )
        if with_llm is None:
            with_llm = llm_subfolder is not None and (root / llm_subfolder).is_dir()
        llm = Gemma2HiddenStates.from_pretrained(root / llm_subfolder, device=device, dtype=dtype) if with_llm else None
        logger.info("text conditioning: CLIP pooled + %s stream", "Gemma2" if llm is not None else "CLIP")
        return cls(clip, llm, cache_size=cache_size)

    @property
    def text_length(self) -> int:
        """T: rows of the text stream."""
        return self.llm.max_length if self.llm is not None else self.clip.max_length

    @property
    def text_dim(self) -> int:
        """D: width of the text stream."""
        return self.llm.hidden_dim if self.llm is not None else self.clip.hidden_dim

    @property
    def pooled_dim(self) -> int:
        return self.clip.pooled_dim

    def clear_cache(self) -> None:
        self._cache.clear()

    def forward(self, prompts: Sequence[str]) -> TextEmbeddings:
        """Differentiable, uncached encoding (for training the towers); `encode` is the
        inference path."""
        return self._encode_uncached([str(p) for p in prompts])

    def _encode_uncached(self, prompts: list[str]) -> TextEmbeddings:
        clip = self.clip(prompts)
        if self.llm is None:
            return TextEmbeddings(clip.hidden, clip.pooled, clip.token_ids)
        llm = self.llm(prompts)
        return TextEmbeddings(llm.states, clip.pooled, llm.token_ids)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEmbeddings:
        """prompts (B) -> TextEmbeddings(states (B, T, D), pooled (B, P), token_ids (B, T)).

        Each prompt is padded to a fixed length and no attention mask is used, so a prompt
        encodes the same alone or in a batch; unseen prompts are encoded in one batch.
        """
        prompts = [str(p) for p in prompts]
        if not prompts:
            raise InputError("no prompt to encode")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        fresh = {}
        if missing:
            new = self._encode_uncached(missing)
            for i, prompt in enumerate(missing):
                fresh[prompt] = (new.states[i], new.pooled[i], new.token_ids[i])
        rows = []
        for prompt in prompts:
            if prompt in fresh:
                rows.append(fresh[prompt])
            else:
                self._cache.move_to_end(prompt)
                rows.append(self._cache[prompt])
        if self.cache_size > 0:
            for prompt, row in fresh.items():
                self._cache[prompt] = row
                self._cache.move_to_end(prompt)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        device = next(self.clip.parameters()).device
        return TextEmbeddings(
            torch.stack([r[0] for r in rows]).to(device),
            torch.stack([r[1] for r in rows]).to(device),
            torch.stack([r[2] for r in rows]).to(device),
        )

    def keyword_rows(self, prompt: str, keywords: Keywords) -> torch.LongTensor:
        """(R,) text-stream rows of `prompt` that spell any of `keywords` (a word, or several);
        InputError if one is absent."""
        stream = self.llm if self.llm is not None else self.clip
        return stream.keyword_rows(prompt, keywords)

    def quantize_8bit(self, threshold: float = 6.0) -> list:
        """Swap the encoders' linear layers to int8 (bitsandbytes); clears the cache."""
        from editmgt.models.quantize import quantize_8bit

        self.clear_cache()
        reports = [quantize_8bit(self.clip.model, threshold=threshold)]
        if self.llm is not None:
            reports.append(quantize_8bit(self.llm.model, threshold=threshold))
        return reports

    def _apply(self, fn, *args, **kwargs):
        self.clear_cache()  # .to() / .half(): cached tensors would keep the old device / dtype
        return super()._apply(fn, *args, **kwargs)
