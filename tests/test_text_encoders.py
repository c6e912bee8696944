"""Text encoders on the tiny checkpoint: released facts, cache, keyword rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from editmgt.errors import InputError, UnsafeWeightsError
from editmgt.models.text_encoders import (
    GEMMA2_MAX_LENGTH,
    ClipPooledEncoder,
    Gemma2HiddenStates,
    TextConditioner,
    TextEmbeddings,
)

PROMPT = "Make the zebracorn wear a red hat"


@pytest.fixture(scope="module")
def text(tiny_checkpoint: Path) -> TextConditioner:
    return TextConditioner.from_pretrained(tiny_checkpoint)


def test_shapes_and_dtypes(text: TextConditioner) -> None:
    emb = text.encode([PROMPT, "add snow"])
    assert isinstance(emb, TextEmbeddings)
    assert emb.states.shape == (2, GEMMA2_MAX_LENGTH, text.text_dim)
    assert emb.pooled.shape == (2, text.pooled_dim)
    assert emb.token_ids.shape == (2, GEMMA2_MAX_LENGTH) and emb.token_ids.dtype == torch.long
    assert text.text_length == GEMMA2_MAX_LENGTH
    cast = emb.to(dtype=torch.bfloat16)
    assert cast.states.dtype == torch.bfloat16 and cast.token_ids.dtype == torch.long
    assert torch.equal(emb.select([1]).token_ids, emb.token_ids[1:])


def test_gemma_facts_match_the_released_recipe(tiny_checkpoint: Path, text: TextConditioner) -> None:
    """Released: AutoModelForCausalLM, ids padded to 256 (BOS, left padding), no attention mask,
    hidden_states[-2]."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_checkpoint / "llm_encoder"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = tokenizer([PROMPT], truncation=True, padding="max_length", max_length=256, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = lm(input_ids=ids, output_hidden_states=True).hidden_states[-2]
    emb = text.encode([PROMPT])
    assert torch.equal(emb.token_ids, ids)
    assert torch.allclose(emb.states, expected, atol=1e-5)
    n_text = len(tokenizer(PROMPT).input_ids)
    assert (ids[0, : 256 - n_text] == tokenizer.pad_token_id).all()  # left padding
    assert ids[0, 256 - n_text] == tokenizer.bos_token_id
    with torch.no_grad():
        last = lm(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    assert not torch.allclose(emb.states, last, atol=1e-3)


def test_clip_pooled_matches_text_embeds(tiny_checkpoint: Path, text: TextConditioner) -> None:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_checkpoint / "tokenizer")
    model = CLIPTextModelWithProjection.from_pretrained(tiny_checkpoint / "text_encoder").eval()
    ids = tok([PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(input_ids=ids).text_embeds
    assert torch.allclose(text.encode([PROMPT]).pooled, expected, atol=1e-6)
    assert text.clip.max_length == 77


def test_clip_only_uses_clip_penultimate_states(tiny_checkpoint: Path) -> None:
    clip_only = TextConditioner.from_pretrained(tiny_checkpoint, with_llm=False)
    assert clip_only.llm is None
    emb = clip_only.encode([PROMPT])
    out = clip_only.clip([PROMPT])
    assert emb.states.shape == (1, 77, clip_only.clip.hidden_dim)
    assert torch.equal(emb.states, out.hidden) and torch.equal(emb.token_ids, out.token_ids)
    rows = clip_only.keyword_rows(PROMPT, "hat")
    tokens = clip_only.clip.tokenizer.convert_ids_to_tokens(emb.token_ids[0, rows].tolist())
    assert "".join(tokens).replace("</w>", "") == "hat"


def test_batch_equals_single_and_cache(text: TextConditioner, monkeypatch: pytest.MonkeyPatch) -> None:
    text.clear_cache()
    prompts = [PROMPT, "add snow to the mountains", PROMPT]
    batch = text.encode(prompts)
    text.clear_cache()
    singles = [text.encode([p]) for p in prompts]
    for i, single in enumerate(singles):
        assert torch.allclose(batch.states[i], single.states[0], atol=1e-5)
        assert torch.allclose(batch.pooled[i], single.pooled[0], atol=1e-5)
    calls = []
    original = text._encode_uncached
    monkeypatch.setattr(text, "_encode_uncached", lambda ps: calls.append(list(ps)) or original(ps))
    text.encode([PROMPT, "a new prompt", "a new prompt"])
    assert calls == [["a new prompt"]]  # cached prompt skipped, duplicates encoded once


def test_cache_is_lru(tiny_checkpoint: Path, text: TextConditioner) -> None:
    small = TextConditioner(text.clip, text.llm, cache_size=2)
    small.encode(["a"])
    small.encode(["b"])
    small.encode(["a"])  # a is now the most recent
    small.encode(["c"])  # evicts b
    assert list(small._cache) == ["a", "c"]
    assert TextConditioner(text.clip, text.llm, cache_size=0).encode(["a"]).states.shape[0] == 1
    with pytest.raises(InputError):
        small.encode([])


def _spelled(text: TextConditioner, prompt: str, rows: torch.Tensor) -> str:
    ids = text.encode([prompt]).token_ids[0, rows].tolist()
    return text.llm.tokenizer.decode(ids).strip()


def test_keyword_rows_use_the_text_stream_tokenizer(text: TextConditioner) -> None:
    rows = text.keyword_rows(PROMPT, "zebracorn")
    assert len(rows) > 1  # sub-word pieces
    assert rows.tolist() == list(range(rows[0], rows[-1] + 1))
    assert _spelled(text, PROMPT, rows) == "zebracorn"
    ids = text.encode([PROMPT]).token_ids[0]
    assert text.llm.tokenizer.bos_token_id not in ids[rows].tolist()
    assert _spelled(text, PROMPT, text.keyword_rows(PROMPT, "HAT")) == "hat"  # case-insensitive
    # The released code looked the rows up with the CLIP tokenizer: other positions.
    assert text.clip.keyword_rows(PROMPT, "hat").tolist() != text.keyword_rows(PROMPT, "hat").tolist()


def test_keyword_rows_every_occurrence_and_errors(text: TextConditioner) -> None:
    prompt = "make the cat black and the other cat white"
    rows = text.keyword_rows(prompt, "cat")
    assert len(rows) == 2
    assert _spelled(text, prompt, rows[:1]) == "cat"
    with pytest.raises(InputError, match="does not occur"):
        text.keyword_rows(prompt, "dog")
    with pytest.raises(InputError, match="empty"):
        text.keyword_rows(prompt, "  ")
    long_prompt = "the " * 300 + "owl"
    with pytest.raises(InputError, match="beyond the first 256"):
        text.keyword_rows(long_prompt, "owl")


def test_several_keywords_give_the_union_of_their_rows(text: TextConditioner) -> None:
    prompt = "make the red circle blue"
    red, circle = text.keyword_rows(prompt, "red"), text.keyword_rows(prompt, "circle")
    both = text.keyword_rows(prompt, ["circle", "red"])
    assert both.tolist() == sorted(red.tolist() + circle.tolist())
    assert _spelled(text, prompt, both) == "red circle"
    assert text.keyword_rows(prompt, ["red", "red"]).tolist() == red.tolist()
    with pytest.raises(InputError, match="'green' does not occur"):
        text.keyword_rows(prompt, ["red", "green"])
    with pytest.raises(InputError, match="at least one keyword"):
        text.keyword_rows(prompt, [])


def test_pickle_only_llm_encoder_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "llm_encoder"
    shutil.copytree(tiny_checkpoint / "llm_encoder", folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(UnsafeWeightsError, match="pytorch_model.bin"):
        Gemma2HiddenStates.from_pretrained(folder)
    with pytest.raises(UnsafeWeightsError):
        ClipPooledEncoder.from_pretrained(tmp_path, model_subfolder="llm_encoder")


def test_custom_subfolder_names(tiny_checkpoint, tmp_path):
    """A fine-tune laid out with other folder names loads through the same class."""
    import shutil

    from editmgt.models.text_encoders import TextConditioner

    root = tmp_path / "renamed"
    shutil.copytree(tiny_checkpoint / "text_encoder", root / "clip_text")
    shutil.copytree(tiny_checkpoint / "tokenizer", root / "clip_tok")
    shutil.copytree(tiny_checkpoint / "llm_encoder", root / "gemma")
    renamed = TextConditioner.from_pretrained(
        root, text_encoder_subfolder="clip_text", tokenizer_subfolder="clip_tok", llm_subfolder="gemma"
    )
    original = TextConditioner.from_pretrained(tiny_checkpoint)
    a, b = renamed.encode(["make it red"]), original.encode(["make it red"])
    assert torch.equal(a.states, b.states) and torch.equal(a.pooled, b.pooled)
    clip_only = TextConditioner.from_pretrained(root, text_encoder_subfolder="clip_text",
                                                tokenizer_subfolder="clip_tok", llm_subfolder=None)
    assert clip_only.llm is None
