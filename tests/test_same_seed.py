"""Same seed, same edit as the released pipeline, stage by stage.

The released pipeline's own outputs are checked end to end by `python -m editmgt.verify
pipeline` (CI runs it on the public fixture set). These tests cover each stage on its own,
without that set: the mask grid and the VQ tokens on the released inputs (tests/fixtures/
released_inputs), the order and shapes of the random draws against the torch calls the
released scheduler makes, the reference stream of a masked edit, the generators, and the
checker itself on fixture sets written here in the same format.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from editmgt import verify
from editmgt.images import load_mask
from editmgt.models.vq import VQTokenizer
from editmgt.pipeline import EditMGTPipeline
from editmgt.sampling.sampler import MaskGITSampler
from editmgt.sampling.schedule import remask_count, temperatures
from editmgt.settings import EditSettings

RELEASED = Path(__file__).resolve().parent / "fixtures" / "released_inputs"
SIZE = 64


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint) -> EditMGTPipeline:
    return EditMGTPipeline.from_pretrained(tiny_checkpoint)


# ---------------------------------------------------------------------- inputs
def test_mask_grid_is_the_released_grid():
    expected = load_file(str(RELEASED / "expected.safetensors"))["mask.grid"]
    grid = load_mask(RELEASED / "mask.png", (1024, 1024), grid=tuple(expected.shape))
    assert torch.equal(grid, expected) and int(grid.sum()) == 303
    # A box average (the share of each cell marked) gives another grid on these off-grid edges.
    marked = np.asarray(Image.open(RELEASED / "mask.png"), dtype=np.float32) / 255.0
    box = marked.reshape(64, 16, 64, 16).mean(axis=(1, 3)) >= 0.5
    assert not np.array_equal(box, expected.numpy())


def test_vq_tokens_of_the_released_source():
    vq = VQTokenizer.from_pretrained(RELEASED / "vqvae")
    pixels = torch.from_numpy(np.asarray(Image.open(RELEASED / "source.png").convert("RGB"), dtype=np.float32) / 255)
    tokens = vq.encode(pixels.permute(2, 0, 1)[None])
    expected = load_file(str(RELEASED / "expected.safetensors"))["source.tokens"].long()
    assert torch.equal(tokens, expected)  # channels-last convolutions give other codes for 0.5 % of them


# ---------------------------------------------------------------------- random draws
def released_step(logits, tokens, step, steps, temperature, generator, mask_id, start_ratio=1.0):
    """One step of the released scheduler for batch 1, written with the torch calls it makes:
    torch.multinomial over (positions x codebook), then (not on the last step) one uniform
    row (1, L) for the Gumbel noise; known tokens keep p = float32 max."""
    probs = logits.softmax(dim=-1)                                        # (1, L, V)
    sampled = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(tokens.shape)
    unknown = tokens == mask_id
    sampled = torch.where(unknown, sampled, tokens)
    if step == steps - 1:
        return sampled, None
    chosen = probs.gather(-1, sampled[..., None])[..., 0]
    chosen = torch.where(unknown, chosen, torch.finfo(torch.float32).max)
    uniform = torch.zeros(tokens.shape).uniform_(0, 1, generator=generator)
    gumbel = -torch.log((-torch.log(uniform.clamp(1e-20))).clamp(1e-20))
    confidence = torch.log(chosen.clamp(1e-20)) + temperature * gumbel
    count = remask_count(step, steps, tokens.shape[1], unknown.sum(-1), torch.tensor([start_ratio]))
    cut = confidence.sort(dim=-1).values.gather(-1, count[:, None])
    return torch.where(confidence < cut, torch.full_like(sampled, mask_id), sampled), confidence < cut


@pytest.mark.parametrize("seed", [0, 7])
def test_released_draw_takes_what_the_released_scheduler_takes(seed):
    mask_id, length, codes, steps = 71, 96, 64, 6
    sampler, temps = MaskGITSampler(mask_id), temperatures(steps)
    ours = torch.Generator().manual_seed(seed)
    theirs = torch.Generator().manual_seed(seed)
    a = b = torch.full((1, length), mask_id)
    for step in range(steps):
        logits = 3 * torch.randn(1, length, codes, generator=torch.Generator().manual_seed(100 + step))
        out = sampler.step(logits, a, step, steps, temps[step], [ours])
        b, remasked = released_step(logits, b, step, steps, float(temps[step]), theirs, mask_id)
        assert torch.equal(out.tokens, b), step
        assert torch.equal(ours.get_state(), theirs.get_state()), step   # same draws, same order, same shapes
        if remasked is not None:
            assert torch.equal(out.remasked, remasked)
        a = out.tokens
    assert not (a == mask_id).any()


def test_the_two_draws_differ_and_sample_the_same_distribution():
    logits = torch.zeros(1, 4000, 3)
    logits[..., 1] = 1.0                                    # p(1) = e / (e + 2)
    canvas = torch.full((1, 4000), 71)
    share = {}
    for draw in ("released", "inverse-cdf"):
        out = MaskGITSampler(71).step(logits, canvas, 15, 16, 0.0, [torch.Generator().manual_seed(0)], draw=draw)
        share[draw] = (out.tokens == 1).float().mean().item()
        assert abs(share[draw] - 0.576) < 0.03
    assert share["released"] != share["inverse-cdf"]


def test_a_generator_is_a_seed(pipe):
    photo = Image.fromarray((np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8))
    by_seed = pipe.edit(photo, "make it blue", seed=5, steps=4, size=SIZE)
    generator = torch.Generator().manual_seed(5)
    by_generator = pipe.edit(photo, "make it blue", seed=generator, steps=4, size=SIZE)
    assert torch.equal(by_seed.edited_tokens, by_generator.edited_tokens) and by_generator.seed == 5
    assert not torch.equal(generator.get_state(), torch.Generator().manual_seed(5).get_state())  # it was drawn from
    sweep = pipe.sweep(photo, "make it blue", [0.0, 0.5], seed=torch.Generator().manual_seed(5), steps=4, size=SIZE)
    assert torch.equal(sweep[0].edited_tokens, by_seed.edited_tokens)
    assert torch.equal(sweep[1].edited_tokens, pipe.edit(photo, "make it blue", seed=5, steps=4, size=SIZE,
                                                          hold_lambda=0.5).edited_tokens)


# ---------------------------------------------------------------------- masked edits
def _mask(size=(SIZE, SIZE)) -> Image.Image:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[10:40, 20:50] = 255
    return Image.fromarray(mask, "L")


def test_masked_edit_writes_the_mask_id_into_the_reference_stream(pipe, monkeypatch):
    photo = Image.fromarray((np.random.default_rng(1).random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    seen = []
    forward = pipe.transformer.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["reference_tokens"].clone())
        return forward(*args, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", spy)
    grid = load_mask(_mask(), (SIZE, SIZE), grid=(SIZE // pipe.vq.scale_factor,) * 2)
    results = {}
    for mode in ("masked", "source"):
        seen.clear()
        results[mode] = pipe.edit(photo, "paint a sun", seed=3, steps=4, size=SIZE, mask=_mask(), mask_reference=mode)
        source = results[mode].source_tokens
        assert len(seen) == 4 and all(ref.shape[0] == 2 for ref in seen)        # both CFG halves, every step
        for ref in seen:
            expected = torch.where(grid, pipe.mask_token_id, source) if mode == "masked" else source
            assert torch.equal(ref[0], expected) and torch.equal(ref[1], expected)
        outside = ~grid
        assert torch.equal(results[mode].edited_tokens[outside], source[outside])  # outside the mask kept
    assert not torch.equal(results["masked"].edited_tokens, results["source"].edited_tokens)
    assert EditSettings().mask_reference == "masked"


def test_region_hold_in_a_masked_edit_reverts_to_the_clean_source(pipe):
    photo = Image.fromarray((np.random.default_rng(2).random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    result = pipe.edit(photo, "paint a sun", seed=3, steps=4, size=SIZE, mask=_mask(), hold_lambda=1.0)
    assert torch.equal(result.edited_tokens, result.source_tokens)           # never the mask id


# ---------------------------------------------------------------------- the checker
def _write_set(pipe: EditMGTPipeline, checkpoint: Path, root: Path, steps: int, size: tuple[int, int]) -> Path:
    """A pipeline fixture set in the released format, recorded with this pipeline."""
    shutil.copytree(checkpoint, root / "checkpoint")
    (root / "inputs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(root / "inputs" / "source.png")
    _mask(size).save(root / "inputs" / "mask.png")
    source = pipe.tokenize(pipe.preprocess(Image.open(root / "inputs" / "source.png"), size))
    grid = tuple(source.shape[-2:])
    save_file({"source.tokens": source, "mask.grid": load_mask(_mask(size), size, grid=grid).float()},
              str(root / "inputs" / "source.safetensors"))
    cases = {
        "edit": dict(method="edit", instruction="make the cat red", seed=11, gamma=1.1, guidance=4.0),
        "edit_hold": dict(method="edit", instruction="turn the ball green", seed=12, gamma=1.3, guidance=3.0,
                          hold_lambda=0.4, hold_blocks=[1, 2]),
        "edit_mask": dict(method="edit", instruction="a flower", seed=13, gamma=1.0, guidance=2.0,
                          mask="inputs/mask.png", negative_prompt=""),
        "t2i": dict(method="generate", prompt="a red bicycle", seed=14, guidance=5.0),
    }
    for name, call in cases.items():
        call = dict(call, steps=steps, image="inputs/source.png") if call["method"] == "edit" else dict(call, steps=steps)
        settings = EditSettings(steps=steps, guidance=call["guidance"], gamma=call.get("gamma", 1.0),
                                hold_lambda=call.get("hold_lambda", 0.0),
                                hold_blocks=tuple(call["hold_blocks"]) if "hold_blocks" in call else None,
                                negative_prompt=call.get("negative_prompt", EditSettings().negative_prompt))
        trace = []
        generator = torch.Generator().manual_seed(call["seed"])
        if call["method"] == "edit":
            result = pipe.edit(root / call["image"], call["instruction"], settings, seed=generator, size=size,
                               mask=root / call["mask"] if "mask" in call else None, callback=trace.append)
            final = result.edited_tokens
        else:
            result = pipe.generate(call["prompt"], settings, seed=generator, size=size, callback=trace.append)
            final = result.tokens
        text = pipe.encode_prompt(call.get("instruction", call.get("prompt")), settings.negative_prompt, settings.guidance)
        tensors = {
            "steps.tokens_out": torch.stack([t.tokens[0] for t in trace]).short(),
            "steps.pred": torch.stack([t.predicted[0] for t in trace]).short(),
            "steps.guided_logits_sub": torch.cat([t.logits[:, :, 1::2, 1::2] for t in trace]),
            "output.tokens": final[None],
            "text.encoder_hidden_states": text.states,
            "text.pooled_projections": text.pooled,
            "text.prompt_ids_clip": pipe.text.clip.tokenize([call.get("instruction", call.get("prompt"))]),
        }
        if "hold_lambda" in call:
            tensors["hold.held"] = torch.stack([t.held[0] for t in trace])
            tensors["hold.local_raw"] = torch.stack([t.localization.raw[0] for t in trace])
            tensors["hold.local_smoothed"] = torch.stack([t.localization.grid[0].flatten() for t in trace])
        (root / "cases" / name).mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(root / "cases" / name / "tensors.safetensors"))
        result.image.save(root / "cases" / name / "output.png")
        (root / "cases" / name / "case.json").write_text(json.dumps({
            "call": {"width": size[0], "height": size[1]},
            "equivalent_editmgt_call": call,
        }))
    return root


@pytest.fixture(scope="module")
def fixture_set(pipe, tiny_checkpoint, tmp_path_factory) -> Path:
    return _write_set(pipe, tiny_checkpoint, tmp_path_factory.mktemp("set"), steps=5, size=(SIZE, 48))


def test_checker_passes_a_set_in_the_format_and_compares_every_stage(fixture_set, capsys):
    assert verify.main(["pipeline", str(fixture_set)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("inputs: source.tokens", "inputs: mask.grid", "edit/text.encoder_hidden_states",
                 "edit/steps.guided_logits_sub", "edit_hold/hold.held", "edit_hold/hold.local_smoothed",
                 "edit_mask/steps.tokens_out", "t2i/output.tokens", "t2i/output.png"):
        assert any(line.startswith(name) and line.endswith(" ok") for line in lines), name
    assert lines[-1].endswith("0 failed, 0 skipped")


def test_checker_fails_another_seed_and_a_changed_grid(pipe, fixture_set, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(fixture_set, broken)
    case = json.loads((broken / "cases" / "edit" / "case.json").read_text())
    case["equivalent_editmgt_call"]["seed"] += 1
    (broken / "cases" / "edit" / "case.json").write_text(json.dumps(case))
    tensors = load_file(str(broken / "cases" / "t2i" / "tensors.safetensors"))
    step2 = tensors["steps.tokens_out"][2].flatten()           # a view: two drawn tokens of step 2 change
    changed = (step2 != pipe.mask_token_id).nonzero()[:2, 0]
    step2[changed] = (step2[changed] + 1) % pipe.vq.codebook_size
    save_file(tensors, str(broken / "cases" / "t2i" / "tensors.safetensors"))
    assert verify.main(["pipeline", str(broken)]) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if line.endswith("FAIL")]
    assert any(line.startswith("edit/steps.tokens_out") for line in failed)
    assert any(line.startswith("edit/output.png") for line in failed)
    assert any(line.startswith("t2i/steps.tokens_out (worst: step 2)") for line in failed)
    assert not any(line.startswith(("edit_hold/", "edit_mask/", "inputs:")) for line in failed)
