"""The shapes model's text side: BPE tokenizers learnt from the shapes vocabulary, random tiny
CLIP and Gemma2 towers in the released layout, and the training of the towers' layers.

`write_text_towers` writes text_encoder/ + tokenizer/ (CLIP) and llm_encoder/ (Gemma2);
`text_trainables` unfreezes the layers the recipe trains with the editor; `save_text_towers`
writes the trained towers back in the same layout.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from editmgt.research.shapes import data
from editmgt.research.shapes.recipe import ShapesRecipe
from editmgt.settings import DEFAULT_NEGATIVE_PROMPT

TEXT_LENGTH = 32             # Gemma2 rows: the tokenizer's model_max_length caps the stream
# The template splits the tokenizers' merges are learnt from. The val phrasings are left out:
# they add no word (data.TEMPLATES), so the tokenizers read them all the same, and leaving
# them out keeps the word counts, and so the merges, the shipped checkpoint was trained with.
TOKENIZER_SPLITS = ("train", "eval")


def instruction_corpus() -> list[str]:
    """Lines the tokenizers learn their merges from: every word and fill, the pipeline's
    default negative prompt (trained as a null prompt too) and the TOKENIZER_SPLITS phrasings
    (eval phrasings included: the tokenizer is vocabulary, not training)."""
    lines = [" ".join(data.vocabulary()), DEFAULT_NEGATIVE_PROMPT]
    for per_kind in data.TEMPLATES.values():
        for split in TOKENIZER_SPLITS:
            lines.extend(t.replace("{", "").replace("}", "") for t in per_kind[split])
    return lines


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

    from editmgt.tiny import write_clip_tokenizer

    corpus = instruction_corpus()
    clip_special = write_clip_tokenizer(root / "tokenizer", corpus, num_merges)
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
