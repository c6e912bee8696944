"""End-to-end properties of EditMGTPipeline on the tiny random checkpoint."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from editmgt import EditMGTError, InputError
from editmgt.pipeline import EditMGTPipeline, StepTrace

SIZE = 64  # model size in pixels for the tiny checkpoint
FAST = dict(steps=6, size=SIZE)


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint) -> EditMGTPipeline:
    return EditMGTPipeline.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A deterministic non-square RGB test picture: gradient + a red disk."""
    h, w = 48, 80
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x / w, y / h, 0.5 + 0 * x], axis=-1)
    disk = (x - 50) ** 2 + (y - 20) ** 2 < 12**2
    rgb[disk] = (0.9, 0.1, 0.1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def tokens_of(result) -> torch.Tensor:
    return result.edited_tokens


def test_same_seed_same_output(pipe, photo):
    a = pipe.edit(photo, "make the disk blue", seed=7, hold_lambda=0.3, **FAST)
    b = pipe.edit(photo, "make the disk blue", seed=7, hold_lambda=0.3, **FAST)
    c = pipe.edit(photo, "make the disk blue", seed=8, hold_lambda=0.3, **FAST)
    assert torch.equal(tokens_of(a), tokens_of(b))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not torch.equal(tokens_of(a), tokens_of(c)), "a different seed should change a random model's output"
    assert a.seed == 7 and a.image.size == photo.size


def test_sample_temperature_changes_the_draw_and_one_is_the_default(pipe, photo):
    default = pipe.edit(photo, "make the disk blue", seed=7, **FAST)
    one = pipe.edit(photo, "make the disk blue", seed=7, sample_temperature=1.0, **FAST)
    greedy = pipe.edit(photo, "make the disk blue", seed=7, sample_temperature=0.05, **FAST)
    assert torch.equal(tokens_of(default), tokens_of(one))
    assert not torch.equal(tokens_of(default), tokens_of(greedy))


def test_seed_is_returned_when_randomised(pipe, photo):
    r = pipe.edit(photo, "make it brighter", seed=None, **FAST)
    again = pipe.edit(photo, "make it brighter", seed=r.seed, **FAST)
    assert torch.equal(tokens_of(r), tokens_of(again))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lambda_one_returns_the_vq_reconstruction(pipe, photo, seed):
    r = pipe.edit(photo, "turn it into a painting", seed=seed, hold_lambda=1.0, **FAST)
    assert torch.equal(r.edited_tokens, r.source_tokens)
    assert r.changed_fraction == 0.0
    assert r.l1_to_reconstruction == pytest.approx(0.0, abs=1e-6)
    assert r.held_mask.all()


def test_region_hold_reverts_low_score_tokens_each_step(pipe, photo):
    traces: list[StepTrace] = []
    lam = 0.5
    r = pipe.edit(photo, "add a hat", seed=3, hold_lambda=lam, callback=traces.append, **FAST)
    source = r.source_tokens.to(traces[0].predicted.device)
    mask_id = pipe.mask_token_id
    canvas = torch.full_like(source, mask_id)
    held_any = 0
    for t in traces:
        # bicubic up-sampling of the [0, 1] grid map may overshoot a little (as in the released code)
        assert t.scores is not None and t.scores.min() > -0.25 and t.scores.max() < 1.25
        unknown = canvas == mask_id
        expected = unknown & (t.scores[0] < lam)
        assert torch.equal(t.held[0], expected), f"step {t.step}: held != unknown & score < lambda"
        assert torch.equal(t.predicted[0][expected], source[expected])
        held_any += int(expected.sum())
        canvas = t.tokens[0]
    assert held_any > 0
    assert len(traces) == FAST["steps"] and not (canvas == mask_id).any()
    assert torch.equal(canvas.cpu(), r.edited_tokens)


def test_lambda_reduces_change(pipe, photo):
    results = pipe.sweep(photo, "make the disk green", [0.0, 0.6, 1.0], seed=11, **FAST)
    changed = [r.changed_fraction for r in results]
    assert changed[0] > changed[1] > changed[2] == 0.0


def test_sweep_equals_one_by_one(pipe, photo):
    lambdas = [0.0, 0.25, 0.5, 0.9]
    batch = pipe.sweep(photo, "remove the disk", lambdas, seed=5, **FAST)
    for lam, batched in zip(lambdas, batch):
        single = pipe.edit(photo, "remove the disk", seed=5, hold_lambda=lam, **FAST)
        assert torch.equal(batched.edited_tokens, single.edited_tokens), f"lambda {lam}"
        assert batched.l1_to_source == pytest.approx(single.l1_to_source, abs=1e-6)


def test_user_mask_keeps_tokens_outside(pipe, photo):
    mask = np.zeros((photo.size[1], photo.size[0]), dtype=np.uint8)
    mask[:, : photo.size[0] // 2] = 255  # edit the left half only
    r = pipe.edit(photo, "make the left side blue", seed=2, mask=Image.fromarray(mask), **FAST)
    grid_w = r.source_tokens.shape[1]
    outside = torch.zeros_like(r.source_tokens, dtype=torch.bool)
    outside[:, grid_w // 2 + 1 :] = True  # columns clearly right of the painted half
    assert torch.equal(r.edited_tokens[outside], r.source_tokens[outside])
    assert not torch.equal(r.edited_tokens, r.source_tokens)


def test_keep_unchanged_pixels_returns_the_source_where_no_token_changed(pipe, photo):
    """Lambda 1 changes no token: with the option the edit is the photo itself, bit for bit,
    at its own size (80 x 48, not the model's 64 x 48); without it, the VQ round trip."""
    args = dict(FAST, seed=0, hold_lambda=1.0, size=(64, 48))
    kept = pipe.edit(photo, "turn it into a painting", keep_unchanged_pixels=True, **args)
    plain = pipe.edit(photo, "turn it into a painting", **args)
    assert kept.size != photo.size and kept.image.size == photo.size
    assert np.array_equal(np.asarray(kept.image), np.asarray(photo))
    assert kept.l1_to_source == 0.0 and kept.summary()["settings"]["keep_unchanged_pixels"] is True
    assert plain.l1_to_source > 0.01 and not np.array_equal(np.asarray(plain.image), np.asarray(photo))


def test_keep_unchanged_pixels_keeps_the_edit_where_tokens_changed(pipe, photo):
    """A masked edit of the left half: the right quarter (no token changed, two tokens from
    the mask) is the photo's own pixels; the changed tokens keep the decoded edit; the
    tokens are the same as without the option."""
    mask = np.zeros((photo.size[1], photo.size[0]), dtype=np.uint8)
    mask[:, : photo.size[0] // 2] = 255
    args = dict(FAST, seed=2, mask=Image.fromarray(mask), size=(64, 48))
    kept = pipe.edit(photo, "make the left side blue", keep_unchanged_pixels=True, **args)
    plain = pipe.edit(photo, "make the left side blue", **args)
    assert torch.equal(kept.edited_tokens, plain.edited_tokens)
    right = photo.size[0] * 3 // 4
    assert np.array_equal(np.asarray(kept.image)[:, right:], np.asarray(photo)[:, right:])
    assert not np.array_equal(np.asarray(plain.image)[:, right:], np.asarray(photo)[:, right:])
    # deep inside the changed tokens (a token from any unchanged one) the pixels are the decoded edit
    changed = (kept.edited_tokens != kept.source_tokens).float()[None, None]
    core = (-torch.nn.functional.max_pool2d(-changed, 3, stride=1, padding=1))[0, 0].bool()
    assert core.any()
    core_px = torch.nn.functional.interpolate(core.float()[None, None], size=photo.size[::-1])[0, 0].bool().numpy()
    core_px &= np.pad(np.ones((photo.size[1] - 4, photo.size[0] - 4), bool), 2)    # resampling at the borders
    diff = np.abs(np.asarray(kept.image, np.int16) - np.asarray(plain.image, np.int16))[core_px]
    assert diff.max() <= 1
    assert kept.l1_to_source < plain.l1_to_source


def test_result_fields(pipe, photo):
    r = pipe.edit(photo, "make the disk blue", seed=1, hold_lambda=0.3, **FAST)
    h, w = r.source_tokens.shape
    assert r.edited_tokens.shape == (h, w) and r.held_mask.shape == (h, w)
    assert r.attention_map.shape == (photo.size[1], photo.size[0])
    assert 0.0 <= float(r.attention_grid.min()) and float(r.attention_grid.max()) <= 1.0
    assert 0.0 < r.l1_to_source < 1.0 and 0.0 <= r.changed_fraction <= 1.0
    assert r.size[0] % pipe.patch == 0 and r.size[1] % pipe.patch == 0
    summary = r.summary()
    json.dumps(summary)
    assert {"l1_to_source", "seconds", "seed", "changed_fraction"} <= set(summary)
    assert {"vq_encode", "text", "sampling", "vq_decode", "total"} <= set(r.timings)


def test_generate_text_to_image(pipe):
    r = pipe.generate("a red circle on a blue background", steps=4, size=SIZE, seed=0)
    assert r.image.size == (SIZE, SIZE)
    assert r.tokens.shape == (SIZE // pipe.vq.scale_factor,) * 2
    assert (r.tokens != pipe.mask_token_id).all()


def test_bf16_pipeline_runs(tiny_checkpoint, photo):
    pipe16 = EditMGTPipeline.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    r = pipe16.edit(photo, "make the disk blue", seed=1, hold_lambda=0.3, **FAST)
    assert r.image.size == photo.size and r.attention_grid is not None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(instruction=""), "instruction is empty"),
        (dict(instruction="x" * 5000), "limit is"),
        (dict(hold_lambda=1.5), "lambda"),
        (dict(hold_lambda=-0.1), "lambda"),
        (dict(gamma=-1.0), "gamma"),
        (dict(steps=0), "steps"),
        (dict(hold_blocks=(0, 999)), "hold_blocks"),
        (dict(smoothing="blur-it"), "smoothing"),
        (dict(sample_temperature=0.0), "sample_temperature"),
    ],
)
def test_bad_arguments_raise_input_error(pipe, photo, kwargs, message):
    args = dict(instruction="make it blue")
    args.update(kwargs)
    instruction = args.pop("instruction")
    with pytest.raises(InputError, match=message):
        pipe.edit(photo, instruction, **{**FAST, **args})


def test_bad_images_and_masks(pipe, photo):
    with pytest.raises(InputError):
        pipe.edit(b"this is not an image", "make it blue", **FAST)
    small_mask = Image.new("L", (10, 10), 255)
    with pytest.raises(InputError, match="mask"):
        pipe.edit(photo, "make it blue", mask=small_mask, **FAST)
    # Modes are converted, not refused.
    buf = io.BytesIO()
    photo.convert("L").save(buf, format="PNG")
    r = pipe.edit(buf.getvalue(), "make it blue", seed=0, **FAST)
    assert r.image.mode == "RGB"


def test_input_error_is_catchable_as_editmgt_error():
    assert issubclass(InputError, EditMGTError) and issubclass(InputError, ValueError)


def test_cli_edit_json(tiny_checkpoint, photo, tmp_path):
    src = tmp_path / "in.png"
    photo.save(src)
    out = tmp_path / "out.png"
    cmd = [
        sys.executable, "-m", "editmgt", "edit", "--model", str(tiny_checkpoint), "--image", str(src),
        "--instruction", "make the disk blue", "--out", str(out), "--hold-lambda", "0.3", "--steps", "4",
        "--seed", "3", "--size", str(SIZE), "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["seed"] == 3 and summary["lambda"] == 0.3 and summary["settings"]["keep_unchanged_pixels"] is False
    assert Image.open(out).size == photo.size
    kept = tmp_path / "kept.png"                       # lambda 1 changes no token: the photo itself
    proc = subprocess.run(cmd[:cmd.index("--out") + 1] + [str(kept), "--hold-lambda", "1", "--keep-unchanged-pixels"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.asarray(Image.open(kept).convert("RGB")), np.asarray(photo))
    bad = subprocess.run(cmd[:-1] + ["--hold-lambda", "2"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "lambda" in bad.stderr


# --------------------------------------------------------------------------- checkpoints
def test_from_pretrained_offline_hub_cache_pinned_revision(tiny_checkpoint, offline_cache, photo):
    """The real Hub code path, resolved from a local HF cache with HF_HUB_OFFLINE=1."""
    from tests.conftest import REPO, REVISION

    hub_pipe = EditMGTPipeline.from_pretrained(REPO, revision=REVISION, transformer_subfolder="editmgt")
    local_pipe = EditMGTPipeline.from_pretrained(tiny_checkpoint)
    a = hub_pipe.edit(photo, "make the disk blue", seed=4, **FAST)
    b = local_pipe.edit(photo, "make the disk blue", seed=4, **FAST)
    assert torch.equal(a.edited_tokens, b.edited_tokens)
    with pytest.raises(EditMGTError, match="revision|cache"):
        EditMGTPipeline.from_pretrained(REPO, revision="f" * 40)


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst, symlinks=False)
    return dst


def test_partial_checkpoint_names_the_missing_file(tiny_checkpoint, tmp_path):
    from editmgt import CheckpointError

    broken = _copy(tiny_checkpoint, tmp_path / "partial")
    (broken / "vqvae" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        EditMGTPipeline.from_pretrained(broken)


def test_pickle_only_weights_are_refused(tiny_checkpoint, tmp_path):
    from editmgt import UnsafeWeightsError

    broken = _copy(tiny_checkpoint, tmp_path / "pickled")
    weights = broken / "editmgt" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(UnsafeWeightsError, match="safetensors"):
        EditMGTPipeline.from_pretrained(broken)


def test_weight_mismatch_lists_names(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    from editmgt import WeightMismatchError

    broken = _copy(tiny_checkpoint, tmp_path / "renamed")
    path = broken / "editmgt" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["embed.renamed.weight"] = state.pop("embed.conv.weight")
    save_file(state, path)
    with pytest.raises(WeightMismatchError, match="embed"):
        EditMGTPipeline.from_pretrained(broken)
