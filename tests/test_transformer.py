"""EditMGTTransformer: parity with the released code, shapes, probe, bias, dtype, loading.

The parity tests read the released code's outputs (`tests/fixtures/parity`); the behaviour
tests run a tiny random model of the same layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from editmgt.errors import CheckpointError, InputError, UnsafeWeightsError, WeightMismatchError
from editmgt.models.attention import Attention, AttentionProbe, joint_attention, reference_bias
from editmgt.models.embeddings import rope_tables, rotary_positions
from editmgt.models.transformer import EditMGTTransformer, TransformerConfig
from editmgt.verify import local_scores

torch.set_num_threads(1)

# The parity fixture's layout: 2 double + 3 single blocks, 2 heads x 16, 64 codes (mask id 71).
TINY = TransformerConfig(num_layers=2, num_single_layers=3, attention_head_dim=16, num_attention_heads=2,
                         joint_attention_dim=24, pooled_projection_dim=20, axes_dims_rope=(4, 6, 6),
                         vocab_size=72, codebook_size=64, downsample=True, upsample=True,
                         text_encoder_architecture="CLIP_Gemma2", connector_type="linear")
TEXT_LENGTH = 256                    # rows of the text stream, as the released pipeline gives it


@torch.no_grad()
def random_model(config: TransformerConfig = TINY, seed: int = 0) -> EditMGTTransformer:
    """`config` with seeded weights, none zero (as the parity fixture's): gains 1 + 0.1 z,
    biases 0.1 z, matrices z / sqrt(fan-in)."""
    model = EditMGTTransformer(config)
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        z = torch.randn(p.shape, generator=gen)
        if p.ndim == 1:
            p.copy_(1 + 0.1 * z if name.endswith("weight") else 0.1 * z)
        else:
            p.copy_(z / math.sqrt(p[0].numel()))
    return model.eval()


def random_inputs(batch: int = 2, grid: tuple[int, int] = (8, 8), seed: int = 1) -> dict[str, torch.Tensor]:
    """Inputs named as the parity fixture's: a partly masked canvas, its reference, text."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, TINY.codebook_size, (batch, *grid), generator=gen)
    masked = torch.rand(tokens.shape, generator=gen) < 0.35
    return {
        "hidden_states": torch.where(masked, TINY.mask_token_id, tokens),
        "reference_image_hidden_states": torch.randint(0, TINY.codebook_size, (batch, *grid), generator=gen),
        "encoder_hidden_states": torch.randn(batch, TEXT_LENGTH, TINY.joint_attention_dim, generator=gen),
        "pooled_projections": torch.randn(batch, TINY.pooled_projection_dim, generator=gen),
        "micro_conds": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 6.0]]).expand(batch, 5),
        "timestep": torch.full((batch,), 5),
    }


def save_model(model: EditMGTTransformer, folder: Path) -> Path:
    """config.json + diffusion_pytorch_model.safetensors, the released layout."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def parity_model(parity_dir: Path) -> EditMGTTransformer:
    return EditMGTTransformer.from_pretrained(parity_dir / "transformer")


@pytest.fixture(scope="module")
def parity_inputs(parity_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(parity_dir / "inputs.safetensors"))


@pytest.fixture(scope="module")
def outputs(parity_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(parity_dir / "outputs.safetensors"))


@pytest.fixture(scope="module")
def model() -> EditMGTTransformer:
    return random_model()


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return random_inputs()


@pytest.fixture()
def saved(model: EditMGTTransformer, tmp_path: Path) -> Path:
    return save_model(model, tmp_path / "transformer")


def _run(model, inputs, reference=False, gamma=1.0, probe=None, **overrides):
    args = dict(
        tokens=inputs["hidden_states"],
        text_states=inputs["encoder_hidden_states"],
        pooled_text=inputs["pooled_projections"],
        micro_conds=inputs["micro_conds"],
        timestep=inputs["timestep"],
        reference_tokens=inputs["reference_image_hidden_states"] if reference else None,
        gamma=gamma,
        probe=probe,
    )
    args.update(overrides)
    with torch.no_grad():
        return model(**args)


ALL_BLOCKS = AttentionProbe(blocks=(0, 1, 2, 3, 4), keep_rows=True)
SINGLE_BLOCKS = (2, 3, 4)


# ------------------------------------------------------------------------ parity

@pytest.mark.parametrize(
    "prefix,logits_key,reference,gamma",
    [("t2i.", "logits_t2i", False, 1.0), ("edit_gamma1.", "logits_edit_gamma1", True, 1.0),
     ("", "logits_edit_gamma", True, 1.3)],
)
def test_parity_with_released_code(parity_model, parity_inputs, outputs, prefix, logits_key, reference, gamma):
    out = _run(parity_model, parity_inputs, reference=reference, gamma=gamma, probe=ALL_BLOCKS)
    assert out.logits.shape == outputs[logits_key].shape
    assert (out.logits - outputs[logits_key]).abs().max() < 1e-4
    compared = 0
    for block in range(5):
        key = f"{prefix}attn_text_to_image.{block}"
        if key in outputs:
            assert (out.text_to_image[block] - outputs[key]).abs().max() < 1e-5, key
            compared += 1
    assert compared == (3 if prefix == "" else 5)
    raw, rescaled = local_scores(out.text_to_image, SINGLE_BLOCKS)
    assert (raw - outputs[f"{prefix}local_scores_raw"]).abs().max() < 1e-5
    assert (rescaled - outputs[f"{prefix}local_scores_rescaled"]).abs().max() < 1e-5


def test_rope_tables_match_trace(outputs, parity_inputs):
    positions = rotary_positions(256, (4, 4))
    assert torch.equal(positions[256:].long(), parity_inputs["img_ids"])
    cos, sin = rope_tables(positions, (4, 6, 6))
    assert torch.equal(cos, outputs["trace.pos_embed.out0"])
    assert torch.equal(sin, outputs["trace.pos_embed.out1"])


def test_probe_does_not_change_logits(model, inputs):
    plain = _run(model, inputs, reference=True, gamma=1.3)
    probed = _run(model, inputs, reference=True, gamma=1.3, probe=ALL_BLOCKS)
    assert plain.text_to_image == {}
    assert torch.equal(plain.logits, probed.logits)


def test_probe_rows_subset_and_mean(model, inputs):
    rows = torch.tensor([3, 17, 200, 255])
    full = _run(model, inputs, reference=True, gamma=1.3, probe=ALL_BLOCKS).text_to_image
    subset = _run(model, inputs, reference=True, gamma=1.3,
                  probe=AttentionProbe(blocks=(1, 3), rows=rows, keep_rows=True)).text_to_image
    mean = _run(model, inputs, reference=True, gamma=1.3,
                probe=AttentionProbe(blocks=(1, 3), rows=rows)).text_to_image
    assert sorted(subset) == [1, 3]
    for block in (1, 3):
        assert subset[block].shape == (2, 2, 4, 16)
        torch.testing.assert_close(subset[block], full[block][:, :, rows], rtol=0, atol=1e-7)
        torch.testing.assert_close(mean[block], full[block][:, :, rows].mean(2), rtol=0, atol=1e-7)
        # probabilities over [text; image] keys: image part sums to < 1 per row
        assert (full[block].sum(-1) < 1).all()


def test_gamma_semantics(model, inputs):
    t2i = _run(model, inputs).logits
    cut = _run(model, inputs, reference=True, gamma=0.0).logits
    one = _run(model, inputs, reference=True, gamma=1.0).logits
    strong = _run(model, inputs, reference=True, gamma=1.3).logits
    torch.testing.assert_close(cut, t2i, rtol=0, atol=1e-5)  # gamma 0 removes the condition
    assert (one - strong).abs().max() > 1e-3
    with pytest.raises(ValueError):
        reference_bias(4, 2, -1.0, torch.float32)


def test_batch_equals_samples(model, inputs):
    batch = _run(model, inputs, reference=True, gamma=1.3).logits
    for b in range(2):
        single = _run(model, {k: (v[b : b + 1] if v.ndim and v.shape[0] == 2 else v) for k, v in inputs.items()},
                      reference=True, gamma=1.3).logits
        torch.testing.assert_close(single[0], batch[b], rtol=0, atol=1e-5)


# --------------------------------------------------------------- attention parts

def test_reference_bias_layout():
    bias = reference_bias(context_len=3, reference_len=2, gamma=1.3, dtype=torch.float32)
    log_g = torch.log(torch.tensor(1.3)).item()
    expected = torch.zeros(5, 5)
    expected[:3, 3:] = log_g
    expected[3:, :3] = log_g
    assert torch.equal(bias, expected)
    assert reference_bias(3, 2, 1.0, torch.float32) is None
    assert reference_bias(3, 0, 1.3, torch.float32) is None
    assert reference_bias(3, 2, 1.3, torch.bfloat16).dtype == torch.bfloat16


def test_gamma1_fast_path_equals_zero_bias():
    torch.manual_seed(0)
    attn = Attention(dim=32, heads=2, head_dim=16, context=True, pre_only=False)
    text, image, ref = torch.randn(2, 5, 32), torch.randn(2, 6, 32), torch.randn(2, 6, 32)
    positions = rotary_positions(5, (2, 3))
    rope = rope_tables(torch.cat([positions, positions[5:]]), (4, 6, 6))
    with torch.no_grad():
        fast = joint_attention(attn, text, image, ref, rope, bias=None)
        masked = joint_attention(attn, text, image, ref, rope, bias=torch.zeros(17, 17))
    for a, b in zip(fast[:3], masked[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_probe_matches_explicit_softmax():
    torch.manual_seed(1)
    attn = Attention(dim=32, heads=2, head_dim=16, context=False, pre_only=True)
    text, image, ref = torch.randn(1, 4, 32), torch.randn(1, 6, 32), torch.randn(1, 6, 32)
    positions = rotary_positions(4, (2, 3))
    rope = rope_tables(torch.cat([positions, positions[4:]]), (4, 6, 6))
    bias = reference_bias(10, 6, 1.5, torch.float32)
    with torch.no_grad():
        out = joint_attention(attn, text, image, ref, rope, bias, AttentionProbe(blocks=(0,), keep_rows=True))
        q, k, _ = attn.qkv(torch.cat([text, image], 1))
        from editmgt.models.embeddings import apply_rope
        q, k = apply_rope(q, (rope[0][:10], rope[1][:10])), apply_rope(k, (rope[0][:10], rope[1][:10]))
        probs = (q @ k.transpose(-1, -2) / math.sqrt(16)).softmax(-1)[:, :, :4, 4:]
    assert out.text_to_image.shape == (1, 2, 4, 6)
    torch.testing.assert_close(out.text_to_image, probs, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ grids, dtype

@pytest.mark.parametrize("grid", [(32, 32), (48, 32), (16, 40)])
def test_other_grids_run(model, inputs, grid):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (2, *grid), generator=gen)
    ref = torch.randint(0, 64, (2, *grid), generator=gen)
    n = (grid[0] // 2) * (grid[1] // 2)
    out = _run(model, inputs, tokens=tokens, reference_tokens=ref, gamma=1.1,
               probe=AttentionProbe(blocks=(0, 4)))
    assert out.logits.shape == (2, 64, *grid)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
    assert out.text_to_image[0].shape == (2, 2, n) and out.text_to_image[4].shape == (2, 2, n)


def test_rotary_positions_row_major_non_square():
    pos = rotary_positions(2, (3, 4))
    assert pos.shape == (14, 3)
    assert torch.equal(pos[:2], torch.zeros(2, 3, dtype=torch.float64))
    assert pos[2 + 1 * 4 + 3].tolist() == [0.0, 1.0, 3.0]
    assert pos[-1].tolist() == [0.0, 2.0, 3.0]


def test_shorter_text_runs(model, inputs):
    out = _run(model, inputs, text_states=inputs["encoder_hidden_states"][:, :77],
               reference=True, gamma=1.3, probe=AttentionProbe(blocks=(2,), keep_rows=True))
    assert out.text_to_image[2].shape == (2, 2, 77, 16)


def test_bf16_close_to_fp32(saved, model, inputs):
    bf16 = EditMGTTransformer.from_pretrained(saved, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    probe = AttentionProbe(blocks=SINGLE_BLOCKS)
    a = _run(model, inputs, reference=True, gamma=1.3, probe=probe)
    b = _run(bf16, inputs, reference=True, gamma=1.3, probe=probe)
    assert b.logits.dtype == torch.float32 and torch.isfinite(b.logits).all()
    assert (a.logits - b.logits).abs().max() < 0.25
    assert torch.nn.functional.cosine_similarity(a.logits.flatten(), b.logits.flatten(), dim=0) > 0.999
    for block in SINGLE_BLOCKS:
        assert (a.text_to_image[block] - b.text_to_image[block]).abs().max() < 1e-3


def test_input_validation(model, inputs):
    with pytest.raises(InputError):
        _run(model, inputs, tokens=inputs["hidden_states"][:, :7])  # odd grid with down-sampling
    with pytest.raises(InputError):
        _run(model, inputs, reference_tokens=inputs["reference_image_hidden_states"][:, :4])
    with pytest.raises(InputError):
        _run(model, inputs, probe=AttentionProbe(blocks=(5,)))
    with pytest.raises(InputError):
        _run(model, inputs, probe=AttentionProbe(blocks=(2,), rows=torch.tensor([256])))
    with pytest.raises(InputError):
        _run(model, inputs, micro_conds=inputs["micro_conds"][:, :4])


# ---------------------------------------------------------------------- loading

def test_config_round_trip(parity_dir):
    raw = json.loads((parity_dir / "transformer" / "config.json").read_text())
    config = TransformerConfig.from_dict(raw)
    assert config.inner_dim == 32 and config.mask_token_id == 71 and config.num_blocks == 5
    assert config.downsample_factor == 2
    assert TransformerConfig.from_dict(config.to_dict()) == config


def test_missing_files(saved):
    folder = saved
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        EditMGTTransformer.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        EditMGTTransformer.from_pretrained(folder)


def test_pickle_only_is_refused(saved):
    folder = saved
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "diffusion_pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match=r"\.bin"):
        EditMGTTransformer.from_pretrained(folder)


def test_renamed_and_reshaped_keys(saved):
    folder = saved
    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["connector.projector.weights"] = state.pop("connector.projector.weight")
    save_file(state, str(path))
    with pytest.raises(WeightMismatchError, match="connector.projector.weight"):
        EditMGTTransformer.from_pretrained(folder)
    state["connector.projector.weight"] = state.pop("connector.projector.weights")[:, :-1].contiguous()
    save_file(state, str(path))
    with pytest.raises(WeightMismatchError, match="wrong shape"):
        EditMGTTransformer.from_pretrained(folder)


def test_sharded_checkpoint_loads(saved, model):
    folder = saved
    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    path.unlink()
    names = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    loaded = EditMGTTransformer.from_pretrained(folder)
    for (n, p), (m, q) in zip(loaded.state_dict().items(), model.state_dict().items()):
        assert n == m and torch.equal(p, q)
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="00002-of-00002"):
        EditMGTTransformer.from_pretrained(folder)
