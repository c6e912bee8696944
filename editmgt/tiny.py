"""A tiny, seeded EditMGT checkpoint in the released repo layout, built offline in seconds.

    python -m editmgt.tiny OUT_DIR [--seed S]

Writes `editmgt/` (transformer), `text_encoder/` + `tokenizer/` (CLIP), `llm_encoder/`
(Gemma2 + tokenizer), `vqvae/` (VQModel) and `scheduler/`, about 1 MB in all, loadable by the
same code paths as the real checkpoint. Tokenizers are real BPE tokenizers whose merges are
learned here (deterministically) from a bundled list of edit instructions. The same seed gives
byte-identical files. A 64 x 64 image gives an 8 x 8 VQ token grid (4 x 4 transformer grid).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch

logger = logging.getLogger(__name__)

TINY_IMAGE_SIZE = 64  # pixels; -> 8 x 8 VQ tokens
TINY_CODEBOOK = 64
TINY_VOCAB = 72  # codebook + 8 extra ids; mask id = 71
TINY_TEXT_DIM = 24  # Gemma2 hidden = transformer joint_attention_dim
TINY_POOLED_DIM = 20  # CLIP projection = transformer pooled_projection_dim
_MARKER = ".tiny-checkpoint.json"
_FORMAT = 1  # bump when the layout or configs change (invalidates cached builds)

# Words the tiny tokenizers learn their merges from (edit instructions and the negative prompt).
CORPUS: tuple[str, ...] = (
    "Make the cat wear a red hat",
    "Turn the sky into a sunset with orange clouds",
    "Replace the dog with an owl sitting on the branch",
    "Make it into Ghibli style",
    "Add snow to the mountains and the trees",
    "Remove the car from the street",
    "Change the color of the house to blue",
    "Put a pair of sunglasses on the man",
    "Make the woman smile",
    "Turn the photo into a watercolor painting",
    "Add a rainbow over the lake",
    "Replace the apples with oranges in the bowl",
    "Make the cat black and the dog white",
    "Change the season to autumn with yellow leaves",
    "Give the owl a small golden crown",
    "Remove the people in the background",
    "Make the room brighter at night",
    "Add a boat on the river near the bridge",
    "worst quality, low quality, low res, blurry, distortion, watermark, logo, signature",
    "text, jpeg artifacts, signature, sketch, duplicate, ugly, identifying mark",
    "a photo of an astronaut riding a horse on mars",
    "the quick brown fox jumps over the lazy dog",
)
NUM_MERGES = 160


# ---------------------------------------------------------------------- tokenizers
def learn_bpe_merges(words: Counter, num_merges: int) -> list[tuple[str, str]]:
    """Deterministic BPE: repeatedly merge the most frequent adjacent pair (ties broken by the
    pair's text). `words` maps a tuple of symbols to its count."""
    vocab = {tuple(w): c for w, c in words.items()}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for symbols, count in vocab.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = {}
        for symbols, count in vocab.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        vocab = merged
    return merges


def _clip_words(corpus: Iterable[str]) -> Counter:
    """CLIP pre-tokenisation (lower case, letters / digits / punctuation runs, byte-level
    characters), last symbol of each word marked with '</w>'."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    words: Counter = Counter()
    for line in corpus:
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)):
            symbols = list(word)
            symbols[-1] = symbols[-1] + "</w>"
            words[tuple(symbols)] += 1
    return words


def write_clip_tokenizer(
    folder: Path, corpus: Sequence[str] = CORPUS, num_merges: int = NUM_MERGES
) -> dict[str, int]:
    """vocab.json + merges.txt in CLIP's format (256 byte symbols, the same with '</w>', the
    merges learnt from `corpus`, then <|startoftext|> and <|endoftext|> last). Returns the
    special token ids."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda ch: (ord(ch)))
    merges = learn_bpe_merges(_clip_words(corpus), num_merges)
    tokens = alphabet + [ch + "</w>" for ch in alphabet] + ["".join(m) for m in merges]
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    special = {"bos": vocab["<|startoftext|>"], "eos": vocab["<|endoftext|>"], "vocab_size": len(vocab)}
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1) + "\n")
    special_map = {k: tokenizer_config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=1) + "\n")
    return special


def write_gemma_tokenizer(folder: Path) -> dict[str, int]:
    """A Gemma-style BPE tokenizer (spaces -> '▁', byte fallback, BOS added, left padding)
    saved by transformers (tokenizer.json + tokenizer_config.json). Returns the special ids."""
    from transformers import GemmaTokenizer

    words: Counter = Counter()
    for line in CORPUS:
        for i, word in enumerate(line.split(" ")):
            words[tuple(("▁" if i else "") + word)] += 1
    merges = learn_bpe_merges(words, NUM_MERGES)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    chars = sorted({ch for w in words for ch in w} | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789▁"))
    tokens = list(dict.fromkeys(specials + byte_tokens + chars + ["".join(m) for m in merges]))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = GemmaTokenizer(
        vocab=vocab, merges=[tuple(m) for m in merges], add_bos_token=True, padding_side="left", model_max_length=8192
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return {"pad": vocab["<pad>"], "eos": vocab["<eos>"], "bos": vocab["<bos>"], "vocab_size": len(vocab)}


# ---------------------------------------------------------------------- models
def tiny_transformer_config() -> dict:
    """diffusers config.json of the tiny transformer (keys as in the released `editmgt/`)."""
    return {
        "_class_name": "Transformer2DModel",
        "_diffusers_version": "0.32.1",
        "patch_size": 1,
        "in_channels": 64,
        "num_layers": 2,
        "num_single_layers": 3,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": TINY_TEXT_DIM,
        "pooled_projection_dim": TINY_POOLED_DIM,
        "guidance_embeds": False,
        "axes_dims_rope": [4, 6, 6],
        "vocab_size": TINY_VOCAB,
        "codebook_size": TINY_CODEBOOK,
        "downsample": True,
        "upsample": True,
        "text_encoder_architecture": "CLIP_Gemma2",
        "connector_type": "linear",
    }


def tiny_vqvae_config() -> dict:
    """VQModel config: 4 blocks -> scale factor 8 (64 px -> 8 x 8 tokens), codebook 64."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [16, 16, 32, 32],
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": 8,
        "sample_size": TINY_IMAGE_SIZE,
        "num_vq_embeddings": TINY_CODEBOOK,
        "norm_num_groups": 8,
        "vq_embed_dim": None,
        "scaling_factor": 0.18215,
        "norm_type": "group",
        "mid_block_add_attention": False,
        "lookup_from_codebook": True,
        "force_upcast": True,
    }


@torch.no_grad()
def _reinit(module: torch.nn.Module, seed: int) -> None:
    """Every parameter from one seeded generator, none zero (default inits zero the AdaLN
    layers, which would make a tiny model ignore its conditioning): matrices z / sqrt(fan_in),
    1-D weights (norms) 1 + 0.1 z, biases 0.1 z."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        z = torch.randn(param.shape, generator=gen, dtype=torch.float32)
        if param.ndim >= 2:
            value = z / math.sqrt(max(1, param[0].numel()))
        elif name.endswith("bias"):
            value = 0.1 * z
        else:
            value = 1.0 + 0.1 * z
        param.copy_(value.to(param.dtype))


def write_transformer(folder: Path, seed: int) -> None:
    from safetensors.torch import save_file

    from editmgt.models.transformer import EditMGTTransformer, TransformerConfig

    config = tiny_transformer_config()
    torch.manual_seed(seed)
    model = EditMGTTransformer(TransformerConfig.from_dict(config))
    _reinit(model, seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


def write_clip(root: Path, seed: int) -> None:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    special = write_clip_tokenizer(root / "tokenizer")
    config = CLIPTextConfig(
        vocab_size=special["vocab_size"],
        hidden_size=32,
        intermediate_size=64,
        projection_dim=TINY_POOLED_DIM,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="gelu",
        bos_token_id=special["bos"],
        eos_token_id=special["eos"],
        pad_token_id=special["eos"],
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config).eval()
    model.save_pretrained(root / "text_encoder", safe_serialization=True)


def write_gemma(root: Path, seed: int) -> None:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    folder = root / "llm_encoder"
    special = write_gemma_tokenizer(folder)
    config = Gemma2Config(
        vocab_size=special["vocab_size"],
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=12,
        max_position_embeddings=512,
        sliding_window=64,
        query_pre_attn_scalar=12,
        pad_token_id=special["pad"],
        bos_token_id=special["bos"],
        eos_token_id=special["eos"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)


def write_vqvae(folder: Path, seed: int) -> None:
    from diffusers import VQModel

    torch.manual_seed(seed)
    model = VQModel(**{k: v for k, v in tiny_vqvae_config().items()})
    # Codebook = latents of seeded random blobs, so that images use many different codes.
    gen = torch.Generator().manual_seed(seed + 1)
    blobs = torch.rand(16, 3, 4, 4, generator=gen)
    images = torch.nn.functional.interpolate(blobs, size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), mode="bilinear")
    with torch.no_grad():
        latents = model.encode(images).latents.permute(0, 2, 3, 1).reshape(-1, model.config.latent_channels)
        pick = torch.randperm(latents.shape[0], generator=gen)[: TINY_CODEBOOK]
        model.quantize.embedding.weight.copy_(latents[pick])
    model.save_pretrained(folder, safe_serialization=True)


def write_scheduler(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "_class_name": "Scheduler",
        "_diffusers_version": "0.32.1",
        "mask_token_id": TINY_VOCAB - 1,
        "masking_schedule": "cosine",
    }
    (folder / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_tiny_checkpoint(out_dir: Union[str, Path], seed: int = 0) -> Path:
    """Build the tiny checkpoint into `out_dir` (its sub-folders are replaced)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        staging = Path(tmp)
        write_transformer(staging / "editmgt", seed)
        write_clip(staging, seed + 10)
        write_gemma(staging, seed + 20)
        write_vqvae(staging / "vqvae", seed + 30)
        write_scheduler(staging / "scheduler")
        for child in sorted(staging.iterdir()):
            target = out / child.name
            if target.exists():
                shutil.rmtree(target)
            child.rename(target)
    (out / _MARKER).write_text(json.dumps({"seed": seed, "format": _FORMAT}) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    logger.info("tiny checkpoint (seed %d) in %s: %.2f MB", seed, out, total / 1e6)
    return out


def make_tiny_checkpoint(out_dir: Union[str, Path], seed: int = 0) -> Path:
    """Like `write_tiny_checkpoint`, but reuse `out_dir` when it already holds this build."""
    out = Path(out_dir)
    marker = out / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == {"seed": seed, "format": _FORMAT}:
                return out
        except ValueError:
            pass
    return write_tiny_checkpoint(out, seed)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editmgt.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the checkpoint into")
    parser.add_argument("--seed", type=int, default=0, help="seed of every weight (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_tiny_checkpoint(args.out_dir, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
