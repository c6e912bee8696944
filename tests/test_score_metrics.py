"""The MagicBrush-protocol metrics on hand-checkable cases, with tiny random CLIP and DINO models
built from transformers configs (offline, CPU); the score table against the paper."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editmgt.batch.metrics import (CLIP_PREPROCESS, DINO_PREPROCESS, Preprocess, ProtocolEncoders, ScoreModels,
                                   cosine, l1_distance)
from editmgt.batch.score import BENCHMARKS, METRICS, summarise, to_markdown

# Table 1 of the paper, as its text (shared/seeds/editmgt-paper.txt) gives it, up to the EditMGT row.
PAPER_TABLE_1 = Path(__file__).resolve().parent / "fixtures" / "paper_table1.txt"


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random CLIPModel (224 px input, as the protocol's crop) + a CLIP tokenizer, safetensors."""
    from transformers import CLIPConfig, CLIPModel

    from editmgt.tiny import write_clip_tokenizer

    special = write_clip_tokenizer(folder)
    config = CLIPConfig(
        text_config={"vocab_size": special["vocab_size"], "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": special["bos"], "eos_token_id": special["eos"], "pad_token_id": special["eos"]},
        vision_config={"image_size": 224, "patch_size": 32, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder, safe_serialization=True)
    return folder


def write_tiny_dino(folder: Path, seed: int = 0) -> Path:
    """A random ViTModel (224 px, patch 16) without pooler, as facebook/dino-vits16 is loaded."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=224, patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2)
    torch.manual_seed(seed)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def tiny_scorers(tmp_path_factory) -> ScoreModels:
    root = tmp_path_factory.mktemp("scorers")
    return ScoreModels.choose(str(write_tiny_clip(root / "clip")), None, str(write_tiny_dino(root / "dino")), None)


@pytest.fixture(scope="module")
def encoders(tiny_scorers) -> ProtocolEncoders:
    return ProtocolEncoders(tiny_scorers)


def _noise(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# ---------------------------------------------------------------------- L1
def test_l1_of_identical_images_is_zero():
    image = _noise(1)
    assert l1_distance(image, image.copy()) == 0.0


def test_l1_of_known_pixel_changes_is_exact():
    reference = Image.new("RGB", (4, 4), (0, 0, 0))
    output = reference.copy()
    output.putpixel((1, 2), (255, 0, 0))  # one channel of one pixel: 1 / (4 * 4 * 3)
    assert l1_distance(output, reference) == pytest.approx(1 / 48, abs=1e-15)
    output.putpixel((3, 3), (0, 51, 102))  # + (0.2 + 0.4) / 48
    assert l1_distance(output, reference) == pytest.approx((1 + 0.2 + 0.4) / 48, abs=1e-15)


def test_l1_resizes_the_output_to_the_reference():
    assert l1_distance(Image.new("RGB", (16, 8), (90, 90, 90)), Image.new("RGB", (4, 2), (100, 100, 100))) \
        == pytest.approx(10 / 255, abs=1e-12)


# ---------------------------------------------------------------------- pre-processing
@pytest.mark.parametrize("preprocess", [CLIP_PREPROCESS, DINO_PREPROCESS], ids=["clip", "dino"])
def test_preprocess_of_a_uniform_image_is_its_normalised_colour(preprocess: Preprocess):
    pixels = preprocess(Image.new("RGB", (300, 200), (255, 128, 0)))
    assert pixels.shape == (3, 224, 224)
    expected = [(c / 255 - m) / s for c, m, s in zip((255, 128, 0), preprocess.mean, preprocess.std)]
    assert torch.allclose(pixels.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-6)
    assert float(pixels.std(dim=(1, 2)).max()) < 1e-5


def test_preprocess_resizes_the_shorter_side_then_crops_the_centre():
    """300 x 100 in thirds red | green | blue: the shorter side goes to 256 (768 x 256), the
    centre 224 x 224 crop lies inside the green third."""
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 255, 0), (100, 0, 200, 100))
    image.paste((0, 0, 255), (200, 0, 300, 100))
    pixels = DINO_PREPROCESS(image)
    green = torch.tensor([(0 - m) / s if i != 1 else (1 - m) / s
                          for i, (m, s) in enumerate(zip(DINO_PREPROCESS.mean, DINO_PREPROCESS.std))])
    assert torch.allclose(pixels, green.view(3, 1, 1).expand(3, 224, 224), atol=1e-5)


# ---------------------------------------------------------------------- CLIP and DINO
def test_cosine_of_identical_and_opposite_vectors():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    assert float(cosine(a, a)[0]) == pytest.approx(1.0, abs=1e-15)
    assert float(cosine(a, -2 * a)[0]) == pytest.approx(-1.0, abs=1e-15)
    assert float(cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]))[0]) == 0.0


def test_identical_images_score_l1_zero_and_cosines_one(encoders: ProtocolEncoders):
    image = _noise(2)
    [scores] = encoders.score([image.copy()], image, "a red circle on white")
    assert scores["l1"] == 0.0
    assert scores["clip_i"] == pytest.approx(1.0, abs=1e-6)
    assert scores["dino"] == pytest.approx(1.0, abs=1e-6)
    assert -1.0 <= scores["clip_t"] <= 1.0


def test_each_output_is_scored_against_the_reference(encoders: ProtocolEncoders):
    reference, other = _noise(3), _noise(4, size=(60, 30))
    same, different = encoders.score([reference.copy(), other], reference, None)
    assert same["clip_i"] == pytest.approx(1.0, abs=1e-6) and same["dino"] == pytest.approx(1.0, abs=1e-6)
    assert different["clip_i"] < 0.9999 and different["dino"] < 0.9999
    assert different["l1"] == pytest.approx(l1_distance(other, reference))
    assert same["clip_t"] is None and different["clip_t"] is None  # no caption, no CLIP-T
    image_embedding = encoders.clip_images([other])
    expected = float(cosine(image_embedding, encoders.clip_texts(["a blue square"]))[0])
    [with_caption] = encoders.score([other], reference, "a blue square")
    assert with_caption["clip_t"] == pytest.approx(expected, abs=1e-6)  # float32, batch of 2 vs 1


def test_captions_longer_than_clip_context_are_cut(encoders: ProtocolEncoders):
    embeddings = encoders.clip_texts(["a red circle " * 60, "a red circle"])
    assert embeddings.shape[0] == 2 and torch.isfinite(embeddings).all()


def test_scorers_load_safetensors_only(tmp_path: Path):
    """A CLIP folder with pickle weights only is refused, not read."""
    from transformers import CLIPModel

    folder = write_tiny_clip(tmp_path / "clip")
    state = CLIPModel.from_pretrained(folder, use_safetensors=True).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(OSError):
        ProtocolEncoders(ScoreModels.choose(str(folder), None, str(folder), None))


# ---------------------------------------------------------------------- the table
def test_summary_means_per_lambda_and_difference_to_the_paper():
    rows = [
        {"id": "a", "lambda": 0.0, "l1": 0.10, "clip_i": 0.90, "clip_t": None, "dino": 0.80, "error": None},
        {"id": "b", "lambda": 0.0, "l1": 0.20, "clip_i": 0.70, "clip_t": None, "dino": 0.60, "error": None},
        {"id": "a", "lambda": 0.5, "l1": 0.05, "clip_i": 0.95, "clip_t": None, "dino": 0.90, "error": None},
        {"id": "c", "lambda": 0.0, **dict.fromkeys(METRICS), "error": "OSError: unreadable"},
    ]
    bench = BENCHMARKS["magicbrush"]
    doc = summarise(rows, bench, failed_edits=1)
    assert doc["lambdas"] == [0.0, 0.5]
    assert doc["rows_scored"] == 2 and doc["scoring_errors"] == 1 and doc["failed_edits"] == 1
    l1 = doc["metrics"]["l1"]
    assert l1["run"]["0.0"] == pytest.approx(0.15) and l1["rows"]["0.0"] == 2
    assert l1["difference"]["0.0"] == pytest.approx(0.15 - bench.paper["l1"])
    assert doc["metrics"]["dino"]["run"]["0.5"] == pytest.approx(0.90)
    assert doc["metrics"]["clip_t"]["run"]["0.0"] is None and doc["metrics"]["clip_t"]["rows"]["0.0"] == 0
    markdown = to_markdown(doc)
    assert "| L1 (↓) | 0.058 | 0.150 | +0.092 | 0.050 | -0.008 |" in markdown
    assert "| CLIP-T (CLIP-out) (↑) | 0.301 | n/a | n/a | n/a | n/a |" in markdown


def test_paper_rows_are_table_1s_editmgt_row():
    """BENCHMARKS holds the EditMGT row of Table 1: Emu Edit then MagicBrush, each CLIP-im,
    CLIP-out, L1, DINO (the paper text marks second-best values with <u>...</u>)."""
    lines = PAPER_TABLE_1.read_text().splitlines()
    table_1 = next(i for i, line in enumerate(lines) if line.startswith("Table 1:"))
    line = next(line for line in lines[table_1:] if line.startswith("EDITMGT (Ours)"))
    numbers = [float(x) for x in re.findall(r"\d\.\d+", line)]
    assert numbers == [BENCHMARKS[b].paper[m] for b in ("emu-edit", "magicbrush") for m in METRICS]
