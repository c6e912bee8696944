"""The tiny-shapes recipe: its knobs and command line, the text towers it trains, the triples
as tokens, and what each training step draws (on small inputs, without a full run)."""

import dataclasses

import numpy as np
import pytest
import torch

from editmgt.train.objective import EditBatch, ObjectiveConfig, OptimConfig, make_optimizer, train_step
from tests.test_train import tiny_batch, tiny_model


def test_named_regions_drop_the_null_prompts():
    from editmgt.research.shapes.sampling import named_regions
    from editmgt.research.shapes.tokens import token_shares

    pixels = np.zeros((2, 8, 8), bool)
    pixels[:, :4, :2] = True                                   # the left half of token (0, 0)
    shares = token_shares(pixels, factor=4)                    # (2, 2, 2)
    assert torch.equal(shares[0], torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    kept = named_regions(shares, ["remove the star", ""], ["", "worst quality"])
    assert torch.equal(kept[0], shares[0]) and not kept[1].any()


def test_naming_rows_mark_the_words_that_name_the_edit():
    from pathlib import Path

    from editmgt.models.text_encoders import TextConditioner
    from editmgt.research.shapes.data import locating_words, naming_words
    from editmgt.research.shapes.recipe import ShapesRecipe
    from editmgt.research.shapes.sampling import naming_rows

    root = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-shapes"
    text = TextConditioner.from_pretrained(root, cache_size=0)
    prompts = ["make the red circle blue", "", "zorp remove the star", "make the background striped"]
    rows = naming_rows(text, prompts)
    assert rows.shape == (4, text.text_length)
    ids = text.llm.tokenizer(prompts[0], padding="max_length", max_length=text.text_length)["input_ids"]
    words = {text.llm.tokenizer.decode([ids[int(i)]]).strip() for i in rows[0].nonzero()[:, 0]}
    assert words == {"red", "circle", "blue"}                  # left padding: the last rows
    assert rows.sum(1).tolist() == [3.0, 0.0, 1.0, 2.0]        # null prompt: no rows
    with pytest.raises(ValueError, match="grounding_rows"):
        ShapesRecipe(grounding_rows="verbs")
    # the locating words leave out what to draw: the new colour of a colour change, the new
    # kind of a replacement; everything else is as named
    located = naming_rows(text, prompts, locating_words)
    assert located.sum(1).tolist() == [2.0, 0.0, 1.0, 2.0]
    assert torch.equal(located[1:], rows[1:]) and (located[0] <= rows[0]).all()
    assert locating_words("swap the purple star for a triangle") == ["purple", "star"]
    assert locating_words("add a purple circle at the bottom right") == naming_words(
        "add a purple circle at the bottom right")


def test_shapes_command_line_overrides_the_recipe():
    from editmgt.research.shapes.recipe import ShapesRecipe
    from editmgt.research.shapes.train import build_parser, recipe_from_args

    parse = build_parser().parse_args
    default = recipe_from_args(parse(["--out", "x"]))
    assert default.to_dict() == ShapesRecipe().to_dict()
    changed = recipe_from_args(parse(["--out", "x", "--grounding-rows", "naming",
                                      "--grounding-weight", "0", "--steps", "7", "--lr", "0.002"]))
    assert (changed.grounding_rows, changed.objective.grounding_weight, changed.steps) == ("naming", 0.0, 7)
    assert changed.optim.lr == 0.002
    assert dataclasses.replace(changed.optim, lr=default.optim.lr) == default.optim   # only the peak
    assert (default.objective.mask_objects, default.optim.lr) == (True, 6e-4)
    alone = recipe_from_args(parse(["--out", "x", "--no-mask-objects"]))
    assert alone.objective == dataclasses.replace(default.objective, mask_objects=False)
    assert recipe_from_args(parse(["--out", "x", "--mask-objects"])).objective.mask_objects is True
    assert recipe_from_args(parse(["--out", "x", "--shared-names", "0.5"])).shared_names == 0.5
    assert default.shared_names == 0.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        recipe_from_args(parse(["--out", "x", "--shared-names", "1.5"]))
    block = recipe_from_args(parse(["--out", "x", "--reading-every", "2", "--reading-from", "500",
                                    "--reading-until", "1200", "--reading-kinds", "colour", "add"]))
    assert (block.reading_every, block.reading_from, block.reading_until) == (2, 500, 1200)
    assert block.reading_kinds == ("colour", "add")
    with pytest.raises(SystemExit):
        parse(["--out", "x", "--reading-kinds", "recolour"])
    assert (default.reading_target, default.reading_until_latest) == (None, None)
    assert default.text_lr_scale == 0.5
    assert recipe_from_args(parse(["--out", "x", "--text-lr-scale", "0.3"])).text_lr_scale == 0.3
    with pytest.raises(ValueError, match="text_lr_scale"):
        recipe_from_args(parse(["--out", "x", "--text-lr-scale", "0"]))
    longer = recipe_from_args(parse(["--out", "x", "--reading-target", "0.8", "--reading-until-latest", "1650"]))
    assert (longer.reading_target, longer.reading_until_latest, longer.reading_until) == (0.8, 1650, 1050)
    with pytest.raises(ValueError, match="go together"):
        recipe_from_args(parse(["--out", "x", "--reading-target", "0.8"]))
    weighted = recipe_from_args(parse(["--out", "x", "--kind-repeats", "style=2", "background=3"]))
    assert weighted.kind_repeats == {"style": 2, "background": 3} and default.kind_repeats == {}
    for bad, says in (("style", "KIND=N"), ("style=two", "KIND=N"), ("grey=2", "grey"), ("style=0", "style")):
        with pytest.raises(ValueError, match=says):
            recipe_from_args(parse(["--out", "x", "--kind-repeats", bad]))
    with pytest.raises(ValueError, match="kind_repeats"):
        ShapesRecipe(kind_repeats={"move": 0})
    wide = recipe_from_args(parse(["--out", "x", "--vq-codes", "2560"]))
    assert wide.vq == dataclasses.replace(default.vq, num_vq_embeddings=2560)
    with pytest.raises(ValueError, match="--vq-codes"):
        recipe_from_args(parse(["--out", "x", "--vq-codes", "1"]))
    assert ShapesRecipe().grounding_rows == "locating"
    assert ShapesRecipe().objective.grounding_weight > 0       # the override did not leak into the defaults
    assert ShapesRecipe().vq.num_vq_embeddings == 512
    assert recipe_from_args(parse(["--out", "x", "--insert-known", "0.5"])).phrasing_insert_known == 0.5
    assert default.phrasing_insert_known == 0.0
    with pytest.raises(ValueError, match="phrasing_insert_known"):
        recipe_from_args(parse(["--out", "x", "--insert-known", "2"]))
    with pytest.raises(SystemExit):
        parse(["--out", "x", "--grounding-rows", "verbs"])


def test_agreement_mask_marks_unchanged_patches():
    from editmgt.research.shapes.tokens import agreement_mask

    source = np.zeros((2, 8, 8, 3), np.uint8)
    target = source.copy()
    target[0, 5, 1, 2] = 255                                  # one pixel of patch (1, 0)
    mask = agreement_mask(source, target, factor=4)
    assert mask.shape == (2, 2, 2)
    assert mask[0].tolist() == [[True, True], [False, True]]
    assert bool(mask[1].all())


def test_object_tokens_cover_the_shapes_and_nothing_else():
    from editmgt.research.shapes import data
    from editmgt.research.shapes.tokens import tokens_touching

    pixels = data.shape_mask("square", 4)[None]                # cell 4: the centre
    tokens = tokens_touching(pixels, factor=4)[0]              # (16, 16)
    x0, y0, x1, y1 = data.cell_box(4)
    inset = (x1 - x0) // 8                                     # the square's inset in its box
    first, last = (x0 + inset) // 4, (x1 - 1 - inset) // 4
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[first:last + 1, first:last + 1] = True
    assert torch.equal(tokens, expected)


def test_modal_codes_give_each_patch_its_most_frequent_id():
    from editmgt.research.shapes.tokens import modal_codes

    # Three 4 x 8 images, two patches each: a black patch and a white one.
    black, white = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    images = np.stack([np.concatenate([black, white], axis=1)] * 3)        # (3, 4, 8, 3)
    # The VQ gave black ids 7, 7, 2 and white ids 5, 9, 9: context-dependent ids.
    ids = torch.tensor([[[7, 5]], [[7, 9]], [[2, 9]]])
    other = np.stack([np.concatenate([white, white], axis=1)])             # (1, 4, 8, 3)
    other_ids = torch.tensor([[[9, 1]]])
    (modal, modal_other), purity = modal_codes([images, other], [ids, other_ids], factor=4)
    assert modal.tolist() == [[[7, 9]], [[7, 9]], [[7, 9]]]
    assert modal_other.tolist() == [[[9, 9]]]
    assert modal.dtype == ids.dtype
    # 5 of the 8 ids already were their patch's modal id.
    assert purity == pytest.approx(5 / 8)


def test_shapes_recipe_rejects_unknown_targets():
    from editmgt.research.shapes.recipe import ShapesRecipe

    assert ShapesRecipe(targets="canonical").targets == "canonical"
    with pytest.raises(ValueError, match="unknown targets 'nonsense'"):
        ShapesRecipe(targets="nonsense")


def test_text_towers_train_with_the_editor_and_round_trip(tmp_path):
    """Joint training moves the towers' layers, never their token embeddings, and the saved
    towers load in the released layout and give the trained states."""
    from editmgt.models.text_encoders import TextConditioner
    from editmgt.research.shapes.recipe import ShapesRecipe
    from editmgt.research.shapes.text_towers import save_text_towers, text_trainables, write_text_towers

    torch.set_num_threads(1)
    recipe = ShapesRecipe(text_dim=8, pooled_dim=8, clip_hidden=8, text_layers=2)
    write_text_towers(tmp_path, recipe, num_merges=300)
    text = TextConditioner.from_pretrained(tmp_path, cache_size=0)
    params = text_trainables(text)
    embeddings = [m.get_input_embeddings().weight for m in (text.clip.model, text.llm.model)]
    assert all(not e.requires_grad for e in embeddings)
    frozen_before = [e.detach().clone() for e in embeddings]
    model = tiny_model()
    opt = make_optimizer(torch.nn.ModuleList([model, text]), OptimConfig(lr=3e-3))
    assert sum(len(g["params"]) for g in opt.param_groups) == (
        len(list(model.parameters())) + len(params))
    layer = text.llm.model.layers[0].self_attn.q_proj.weight
    layer_before = layer.detach().clone()
    prompts = ["make the red circle blue", "remove the green star"] * 4
    base = tiny_batch()
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        emb = text(prompts)
        assert emb.states.requires_grad
        batch = EditBatch(base.target_tokens, base.source_tokens, emb.states, emb.pooled,
                          base.micro_conds)
        train_step(model, opt, batch, ObjectiveConfig(text_dropout=0.0), OptimConfig(lr=3e-3), step, gen)
    assert not torch.equal(layer, layer_before)
    assert all(torch.equal(e, b) for e, b in zip(embeddings, frozen_before))
    save_text_towers(text.eval(), tmp_path)
    reloaded = TextConditioner.from_pretrained(tmp_path, cache_size=0)
    want, got = text.encode(prompts[:2]), reloaded.encode(prompts[:2])
    assert torch.allclose(want.states, got.states, atol=1e-5)
    assert torch.allclose(want.pooled, got.pooled, atol=1e-5)


def test_prompt_sampler_noise_and_dropout():
    from editmgt.research.shapes import data
    from editmgt.research.shapes.sampling import PromptSampler

    instructions = ["make the red circle blue", "remove the green star"]
    index = torch.tensor([0, 1] * 200)
    plain = PromptSampler(instructions, 0.0, 0.0, [""], seed=0)(index)
    assert plain == [instructions[i] for i in index.tolist()]
    dropped = PromptSampler(instructions, 0.0, 1.0, ["", "neg"], seed=0)(index)
    assert set(dropped) == {"", "neg"}
    noisy = PromptSampler(instructions, 1.0, 0.0, [""], seed=0)(index)
    assert PromptSampler(instructions, 1.0, 0.0, [""], seed=0)(index) == noisy      # seeded
    changed = [p for p, i in zip(noisy, index.tolist()) if p != instructions[i]]
    assert 0.3 < len(changed) / len(noisy) < 0.95
    for p, i in zip(noisy, index.tolist()):                 # meaning words always survive
        for w in ("red", "circle", "blue") if i == 0 else ("green", "star"):
            assert w in p.split()
    known = PromptSampler(instructions, 1.0, 0.0, [""], seed=0, insert_known=1.0)(index)
    # a word of another phrasing in nearly every prompt (it may be one the instruction has)
    assert sum(any(w in data.insertable_words() and w not in instructions[i].split() for w in k.split())
               for k, i in zip(known, index.tolist())) > 0.8 * len(known)
    verbs = PromptSampler(instructions, 1.0, 0.0, [""], seed=0, keep=("make", "remove"))(index)
    assert all(p.split()[0] in ("make", "remove") or p.split()[1] in ("make", "remove") for p in verbs)


def test_recipe_phrasing_keeps_only_training_words():
    from editmgt.research.shapes.recipe import ShapesRecipe
    from editmgt.research.shapes.train import build_parser, recipe_from_args

    assert ShapesRecipe(phrasing_keeps=("image", "picture")).phrasing_keeps == ("image", "picture")
    with pytest.raises(ValueError, match="training template"):
        ShapesRecipe(phrasing_keeps=("slide",))              # an evaluation phrasing's verb
    args = build_parser().parse_args(["--out", "x", "--phrasing-keeps", "image", "it"])
    assert recipe_from_args(args).phrasing_keeps == ("image", "it")


def test_copy_batch_draws_every_code_evenly():
    from editmgt.research.shapes.sampling import copy_batch

    codes = torch.tensor([3, 8, 11, 40])
    source, target = copy_batch(codes, 64, (8, 8), torch.Generator().manual_seed(0))
    assert source.shape == (64, 8, 8) and torch.equal(source, target)
    values, counts = torch.unique(source, return_counts=True)
    assert values.tolist() == [3, 8, 11, 40]
    assert counts.min() > 0.2 * source.numel() and counts.max() < 0.3 * source.numel()


def test_reading_steps_come_every_nth_edit_step_and_draw_the_reading_kinds():
    from editmgt.research.shapes.recipe import ShapesRecipe
    from editmgt.research.shapes.sampling import EpochSampler

    recipe = ShapesRecipe(copy_warmup_steps=3, reading_every=4, reading_from=0, reading_until=None, steps=12)
    reading = [s for s in range(recipe.copy_warmup_steps + recipe.steps) if recipe.is_reading_step(s)]
    assert reading == [6, 10, 14]                      # edit steps 3, 7, 11; never in the copy warm-up
    assert not any(ShapesRecipe(reading_every=0).is_reading_step(s) for s in range(3000))
    default = ShapesRecipe()                           # the shipped recipe: a block of 600
    reading = [s for s in range(default.copy_warmup_steps + default.steps) if default.is_reading_step(s)]
    assert reading == list(range(default.copy_warmup_steps + 450, default.copy_warmup_steps + 1050))
    assert default.reading_kinds == ("colour", "add", "replace")
    block = ShapesRecipe(copy_warmup_steps=3, reading_every=1, reading_from=4, reading_until=7, steps=12)
    assert [s for s in range(15) if block.is_reading_step(s)] == [7, 8, 9]     # edit steps 4, 5, 6
    with pytest.raises(ValueError, match="reading_every"):
        ShapesRecipe(reading_every=1, reading_from=0, reading_until=None)   # nothing else learnt
    with pytest.raises(ValueError, match="reading_every"):
        ShapesRecipe(reading_every=-2)
    with pytest.raises(ValueError, match="reading_kinds"):
        ShapesRecipe(reading_kinds=("recolour",))

    # A span that may run on is checked where it would end; it needs a target and a latest step.
    with pytest.raises(ValueError, match="accuracy"):
        ShapesRecipe(reading_target=1.5, reading_until_latest=1200)
    with pytest.raises(ValueError, match="go together"):
        ShapesRecipe(reading_until_latest=1200)
    with pytest.raises(ValueError, match="between reading_until"):
        ShapesRecipe(reading_target=0.8, reading_until_latest=900)          # before reading_until
    with pytest.raises(ValueError, match="between reading_until"):
        ShapesRecipe(reading_target=0.8, reading_until_latest=2800)         # past the last edit step
    with pytest.raises(ValueError, match="bounded span"):
        ShapesRecipe(reading_every=0, reading_target=0.8, reading_until_latest=1200)

    # The sampler deals every index of its pool once per pass, in a seeded order.
    pool = [2, 5, 7, 11, 13, 17]
    draws = EpochSampler(pool, torch.Generator().manual_seed(0))
    first = torch.cat([draws.draw(3), draws.draw(3)])
    assert sorted(first.tolist()) == pool
    assert sorted(torch.cat([draws.draw(3), draws.draw(3)]).tolist()) == pool
    again = EpochSampler(pool, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([again.draw(3), again.draw(3)]), first)
    with pytest.raises(ValueError, match="no training triples"):
        EpochSampler([], torch.Generator())


def _reading_steps(recipe, accuracy) -> tuple[list[int], int]:
    """The steps a ReadingSpan makes reading steps, each reading step scoring accuracy(step);
    and where the span ended."""
    from editmgt.research.shapes.sampling import ReadingSpan

    span, reading = ReadingSpan(recipe), []
    for step in range(recipe.copy_warmup_steps + recipe.steps):
        if span.is_reading(step):
            reading.append(step)
            span.record(accuracy(step))
    return reading, span.until


def test_the_reading_block_runs_on_while_its_accuracy_is_under_the_target():
    from editmgt.research.shapes.recipe import ShapesRecipe

    # copy warm-up 2 steps; the block is edit steps 2-5 (steps 4-7), windows of 4 reading steps
    recipe = ShapesRecipe(copy_warmup_steps=2, steps=30, log_every=4, reading_every=1, reading_from=2,
                          reading_until=6, reading_target=0.5, reading_until_latest=14)
    # a block that reads by its end is the block without the target
    reading, until = _reading_steps(recipe, lambda step: 0.9)
    assert reading == [4, 5, 6, 7] and until == 6
    # one that never reads runs on, a window at a time, to the latest step and no further
    reading, until = _reading_steps(recipe, lambda step: 0.1)
    assert reading == list(range(4, 16)) and until == 14
    # one that reads during its first extra window stops at the window's end: the mean of the
    # last 4 reading steps (0.1, 0.1, 0.9, 0.9) reaches the target
    reading, until = _reading_steps(recipe, lambda step: 0.1 if step < 10 else 0.9)
    assert reading == list(range(4, 12)) and until == 10
    # without a target the span is the recipe's own, step for step (the shipped recipe)
    default = ShapesRecipe()
    reading, until = _reading_steps(default, lambda step: 0.0)
    assert reading == [s for s in range(default.copy_warmup_steps + default.steps) if default.is_reading_step(s)]
    assert until == default.reading_until == 1050


def test_vq_codebook_flag_picks_the_vq_stage():
    """--vq-codebook: pixel codes by default; "learnt" clusters the codebook from the distinct
    patches' latents and then trains the ids' locality."""
    from editmgt.research.shapes.recipe import ShapesRecipe, vq_schedule
    from editmgt.research.shapes.train import build_parser, recipe_from_args

    parse = lambda argv: recipe_from_args(build_parser().parse_args(["--out", "x", *argv]))  # noqa: E731
    default = parse([]).vq_train
    assert (default.codebook_from, default.ae_steps, default.locality_steps) == ("pixels", 0, 0)
    assert default.decoder_steps > 0 and default.code_vectors == "centres"
    assert ShapesRecipe().vq_train == default
    learnt = parse(["--vq-codebook", "learnt"]).vq_train
    assert (learnt.codebook_from, learnt.ae_steps, learnt.steps, learnt.locality_steps) == ("patches", 300, 900, 1000)
    with pytest.raises(SystemExit):
        parse(["--vq-codebook", "random"])
    with pytest.raises(ValueError, match="unknown VQ codebook"):
        vq_schedule("random")


def test_the_library_does_not_import_the_research_package():
    """The research code builds on the library, never the other way round; the batch benchmark,
    a tool that makes a synthetic manifest with the shapes data generator, is the one import
    from it."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    allowed = {"editmgt/batch/bench.py": {"editmgt.research.shapes.data"}}
    files = [p for p in (*root.glob("editmgt/**/*.py"), *root.glob("editmgt_app/**/*.py"), root / "app.py")
             if "research" not in p.relative_to(root).parts]
    found = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("editmgt.research"):
                    found.setdefault(str(path.relative_to(root)), set()).add(name)
    assert len(files) > 20
    assert found == allowed


def test_the_model_card_names_what_exists():
    """docs/SHAPES.md: every command it gives parses, every flag it names is one of those
    commands', every file or folder it names exists, and every knob it names is a field."""
    import re
    import shlex
    from pathlib import Path

    from editmgt.research.shapes import eval as shapes_eval
    from editmgt.research.shapes import probes, recipe, train
    from editmgt.train.objective import ObjectiveConfig

    root = Path(__file__).resolve().parents[1]
    card = (root / "docs" / "SHAPES.md").read_text()
    parsers = {"train": train.build_parser(), "eval": shapes_eval.build_parser(), "probes": probes.build_parser()}
    commands = re.findall(r"python -m editmgt\.research\.shapes\.(\w+) ([^#`\n]*)", card)
    assert len(commands) >= 7
    for module, args in commands:
        parsers[module].parse_args(shlex.split(args))               # exits on an unknown flag or value
    flags = {f for p in parsers.values() for a in p._actions for f in a.option_strings}
    named = set(re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", card, flags=re.S)))   # inline code
    assert {n.split()[0] for n in named if n.startswith("--")} <= flags
    folders = (root, root / "checkpoints" / "tiny-shapes", root / "editmgt" / "research" / "shapes")
    files = [n for n in named if re.fullmatch(r"[\w./-]+\.(py|json|yaml)|[\w./-]+/", n)]
    assert len(files) >= 10
    for name in files:
        assert any((folder / name).exists() for folder in folders), name
    fields = {f.name for cls in (recipe.ShapesRecipe, ObjectiveConfig) for f in dataclasses.fields(cls)}
    knobs = [n for n in named if re.fullmatch(r"[a-z]+(_[a-z]+)+", n)]
    assert knobs and set(knobs) <= fields, set(knobs) - fields
    assert hasattr(ObjectiveConfig, "edit_share") and "recipe.ShapesRecipe" in named
