"""The internal probes of editmgt.research.shapes.probes measure what they say, on the tiny model."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from editmgt.research.shapes import data
from editmgt.research.shapes.probes import (FATES, READ_WORDS, first_step_accuracy, greyed, keeping_through_sampling,
                                  new_word_reading, parse_phrasing, phrasing_success, sampled_edit,
                                  shape_fate, swap_read_word, text_stream_similarity, untouched_fates)
from editmgt.research.shapes.checks import check_edit, untouched_shapes
from editmgt.models.transformer import TransformerOutput
from editmgt.pipeline import EditMGTPipeline

SCENE = data.Scene("white", (data.Shape("circle", "red", 4), data.Shape("square", "blue", 0)))


@pytest.fixture()
def pipe(tiny_checkpoint) -> EditMGTPipeline:
    return EditMGTPipeline.from_pretrained(tiny_checkpoint)


def _silence_blocks(model) -> None:
    """Zero every adaLN modulation: all gates 0, so each block leaves the text stream as it is."""
    with torch.no_grad():
        for block in list(model.transformer_blocks) + list(model.single_transformer_blocks):
            for name in ("norm1", "norm1_context", "norm"):
                if hasattr(block, name):
                    getattr(block, name).linear.weight.zero_()
                    getattr(block, name).linear.bias.zero_()


def test_text_stream_similarity_follows_the_word_rows(pipe):
    model = pipe.transformer
    _silence_blocks(model)
    rows = text_stream_similarity(pipe, "remove the red circle", data.render(SCENE))
    assert [r["after"] for r in rows] == ["input"] + [f"block {k}" for k in range(model.config.num_blocks)]
    start = rows[0]["word_cosine"]
    assert start < 0.95                                   # distinct words, distinct rows
    assert all(abs(r["word_cosine"] - start) < 1e-4 for r in rows)   # identity blocks keep them

    # A text feed-forward that adds one large vector to every row collapses the stream.
    block = model.transformer_blocks[0]
    dim = model.config.inner_dim
    with torch.no_grad():
        block.norm1_context.linear.bias[5 * dim:] = 1.0   # gate of the feed-forward = 1
        block.ff_context.net[2].bias.copy_(torch.randn(dim, generator=torch.Generator().manual_seed(0)) * 1e4)
    rows = text_stream_similarity(pipe, "remove the red circle", data.render(SCENE))
    assert abs(rows[0]["word_cosine"] - start) < 1e-4
    assert all(r["word_cosine"] > 0.999 for r in rows[1:])
    assert rows[1]["norm"] > 100 * rows[0]["norm"]


class _Copier(torch.nn.Module):
    """Predicts the source token everywhere (a model that never edits); `scale` sets how sure
    it is (the logit of the source token, the others 0), or with `shift` it names the next
    code instead (a model that always redraws)."""

    def __init__(self, model, scale: float = 1.0, shift: int = 0) -> None:
        super().__init__()
        self.config, self.dtype = model.config, model.dtype
        self.scale, self.shift = scale, shift
        self.anchor = torch.nn.Parameter(torch.zeros(()))   # gives the pipeline a device to read

    def forward(self, tokens, text_states, pooled_text, micro_conds, timestep, reference_tokens=None, **_):
        named = (reference_tokens + self.shift) % self.config.codebook_size
        one_hot = F.one_hot(named, self.config.codebook_size).permute(0, 3, 1, 2)
        f = self.config.downsample_factor
        grid = (reference_tokens.shape[-2] // f) * (reference_tokens.shape[-1] // f)
        flat = torch.ones(reference_tokens.shape[0], 1, grid)             # an even attention map
        return TransformerOutput(logits=self.scale * one_hot.float(), text_to_image={0: flat})


SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-shapes"


def test_first_step_accuracy_of_a_model_that_only_copies():
    pipe = EditMGTPipeline.from_pretrained(SHIPPED)        # its VQ tells the domain's colours apart
    triples = [data.make_triple(0, i, "eval") for i in range(14)]
    pipe.transformer = _Copier(pipe.transformer)
    acc = first_step_accuracy(pipe, triples, batch_size=5)
    assert acc["changed"] == 0.0                    # it never makes the edit
    assert acc["untouched"] == 1.0                  # and always keeps the other shapes
    assert set(acc["by_kind"]) == set(data.EDIT_KINDS)
    assert acc["by_kind"]["style"]["untouched"] is None      # the style edit touches every shape
    # every kind changes some tokens (a token is unchanged only if all its pixels are)
    assert all(acc["by_kind"][kind]["changed"] == 0.0 for kind in data.EDIT_KINDS)


def test_keeping_through_sampling_of_a_sure_copier_and_a_redrawer():
    pipe = EditMGTPipeline.from_pretrained(SHIPPED)
    triples = [data.make_triple(0, i, "eval") for i in range(7)]         # one per kind
    model = pipe.transformer
    pipe.transformer = _Copier(model, scale=50.0)
    rows = keeping_through_sampling(pipe, triples, guidance=3.0)
    assert [r["step"] for r in rows] == list(range(16))
    committed = [r["committed"] for r in rows]
    assert committed == sorted(committed) and committed[0] < 0.5 and committed[-1] == 1.0
    assert all(r["kept"] == 1.0 and r["predicted_kept"] == 1.0 for r in rows if r["committed"] > 0)
    pipe.transformer = _Copier(model, scale=50.0, shift=1)                 # never the source's token
    rows = keeping_through_sampling(pipe, triples, guidance=3.0)
    assert rows[-1]["committed"] == 1.0
    assert all(r["kept"] == 0.0 and r["predicted_kept"] == 0.0 for r in rows)


class _DrawingOracle(torch.nn.Module):
    """Draws what each instruction it was shown asks: it recognises the instruction by its
    pooled text vector and predicts the VQ tokens of that edit's target."""

    def __init__(self, pipe, edits) -> None:
        super().__init__()
        self.config, self.dtype = pipe.transformer.config, pipe.transformer.dtype
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.keys = torch.stack([pipe.text.encode([t.instruction]).pooled[0] for t in edits])
        self.answers = pipe.vq.encode(torch.from_numpy(np.stack([t.target for t in edits])).permute(0, 3, 1, 2).float() / 255)

    def forward(self, tokens, text_states, pooled_text, micro_conds, timestep, reference_tokens=None, **_):
        which = torch.cdist(pooled_text.float(), self.keys).argmin(1)
        one_hot = F.one_hot(self.answers[which], self.config.codebook_size).permute(0, 3, 1, 2)
        return TransformerOutput(logits=20.0 * one_hot.float(), text_to_image={})


def test_swap_read_word_says_and_draws_another_shape_the_scene_allows():
    for index in range(60):
        triple = data.make_triple(0, index, "eval")
        if triple.kind not in READ_WORDS:
            with pytest.raises(ValueError, match="no word that says what to draw"):
                swap_read_word(triple)
            continue
        swapped = swap_read_word(triple)
        if swapped is None:                      # a replacement whose other kinds are all taken
            assert triple.kind == "replace"
            continue
        new, other = triple.info["new"], swapped.info["new"]
        changed = [f for f in ("colour", "kind", "cell") if getattr(new, f) != getattr(other, f)]
        assert changed == [{"colour": "colour", "add": "kind", "replace": "kind", "move": "cell"}[triple.kind]]
        assert swapped.instruction != triple.instruction and swapped.info["template"] == triple.info["template"]
        # the swapped edit is one the data could make: its target is the source with `other` drawn
        assert len({(s.kind, s.colour) for s in swapped.target_scene.shapes}) == len(swapped.target_scene.shapes)
        assert len({s.cell for s in swapped.target_scene.shapes}) == len(swapped.target_scene.shapes)
        assert check_edit(swapped.target, swapped) and not check_edit(triple.target, swapped)
        assert np.array_equal(swapped.source, triple.source)


@pytest.mark.parametrize("kind", list(READ_WORDS))
def test_new_word_reading_of_a_model_that_ignores_the_word_and_of_one_that_reads_it(kind):
    pipe = EditMGTPipeline.from_pretrained(SHIPPED)
    offset = data.EDIT_KINDS.index(kind)
    triples = [data.make_triple(0, i, "eval") for i in range(offset, offset + 56, 7)]
    assert {t.kind for t in triples} == {kind}
    triples = [t for t in triples if swap_read_word(t) is not None]   # edits that allow a swap
    assert len(triples) >= 7

    model = pipe.transformer
    pipe.transformer = _Copier(model)                     # reads nothing: keeps the source
    ignored = new_word_reading(pipe, triples + [data.make_triple(0, 2, "eval")], kind)   # other edits skipped
    assert ignored["n"] == len(triples)
    assert ignored["kl"] == 0.0 and ignored["done"] == 0.0 and ignored["follows_swap"] == 0.0

    pipe.transformer = _DrawingOracle(pipe, triples + [swap_read_word(t) for t in triples])   # reads it
    read = new_word_reading(pipe, triples, kind)
    assert read["kl"] > 1.0
    assert read["done"] >= 0.85 and read["follows_swap"] >= 0.85
    with pytest.raises(ValueError, match=f"no {kind} edits"):
        new_word_reading(pipe, [data.make_triple(0, 2, "eval")], kind)


def test_phrasing_success_of_a_model_that_misreads_one_phrasing():
    """An editor that does every colour change right except when told "the color of", where
    it greys the picture (as the style edit does): that phrasing alone fails, all grey."""
    triples = [data.make_triple(0, i, "eval") for i in range(28)]
    targets = {t.source.tobytes(): t.target for t in triples}
    calls = []

    def edit(source, instruction, seed):
        calls.append((instruction, seed))
        if "the color of" in instruction:
            return np.repeat(source.mean(-1, keepdims=True), 3, axis=-1).round().astype(np.uint8)
        return targets[source.tobytes()]

    table = phrasing_success(edit, triples, "colour", seed=0)
    colour = [i for i, t in enumerate(triples) if t.kind == "colour"]
    templates = data.TEMPLATES["colour"]
    assert list(table) == [*templates["train"], *templates["eval"], *templates["val"]]
    assert {table[t]["split"] for t in templates["train"]} == {"train"}
    assert {table[t]["split"] for t in templates["val"]} == {"val"}
    for template, row in table.items():
        assert row["n"] == len(colour)
        misread = "the color of" in template       # "change the color of ..." and "set the color of ..."
        assert (row["success"], row["grey"]) == ((0.0, 1.0) if misread else (1.0, 0.0))
    # every phrasing of triple i is sampled with triple i's seed, and says the same edit
    first = [(ins, seed) for ins, seed in calls if seed == colour[0]]
    assert len(first) == len(table) and len({ins for ins, _ in first}) == len(table)
    assert data.say(triples[colour[0]].info["template"], triples[colour[0]].info) == triples[colour[0]].instruction


def test_phrasing_success_says_the_edits_with_extra_phrasings_too():
    """Extra phrasings follow the kind's own, marked "extra", with the same triples and seeds:
    a word swapped in the misread phrasing ("hue" for "color") is read, the phrasing with
    "color" is not; an extra that repeats a template of the kind is not said twice."""
    triples = [data.make_triple(0, i, "eval") for i in range(21)]
    targets = {t.source.tobytes(): t.target for t in triples}

    def edit(source, instruction, seed):
        if "color of" in instruction:
            return source
        return targets[source.tobytes()]

    hue, mine = "change the hue of the {obj} to {colour}", "make the color of the {obj} {colour}"
    table = phrasing_success(edit, triples, "colour", seed=0,
                             extra=[hue, mine, data.TEMPLATES["colour"]["train"][0]])
    templates = data.TEMPLATES["colour"]
    assert list(table) == [*templates["train"], *templates["eval"], *templates["val"], hue, mine]
    assert table[hue] == {"split": "extra", "n": 3, "success": 1.0, "grey": 0.0}
    assert table[mine]["split"] == "extra" and table[mine]["success"] == 0.0
    assert table["change the color of the {obj} to {colour}"]["success"] == 0.0
    with pytest.raises(ValueError, match=r"must name \{colour\} \{obj\}"):
        phrasing_success(edit, triples, "colour", extra=["paint the {obj}"])


@pytest.mark.parametrize("text, message", [
    ("colour=change the hue of the {obj} to {color}", r"must name \{colour\} \{obj\}"),
    ("remove=remove the {obj} at the {pos}", r"must name \{obj\} and nothing else"),
    ("style=make it {obj", r"must name no fields"),
    ("recolour=paint the {obj} {colour}", "unknown edit kind 'recolour'"),
    ("paint the {obj} {colour}", "KIND=TEMPLATE"),
    ("colour=  ", "KIND=TEMPLATE"),
])
def test_parse_phrasing_names_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_phrasing(text)


def test_parse_phrasing_reads_kind_and_template():
    assert parse_phrasing(" move =  nudge the {obj}  to the {pos} ") == ("move", "nudge the {obj} to the {pos}")
    assert parse_phrasing("style=drain the colour") == ("style", "drain the colour")


def test_untouched_fates_tell_a_right_edit_from_one_applied_to_every_shape():
    """A perfect editor keeps every untouched shape; one that paints every shape the new colour
    gives them all the new colour in colour changes; one that wipes the shapes leaves them gone;
    a shape drawn as another kind keeps its colour and loses its form."""
    triples = [data.make_triple(0, i, "eval") for i in range(42)]
    targets = {t.source.tobytes(): t for t in triples}
    n_untouched = {}
    for t in triples:
        if untouched_shapes(t):
            n_untouched[t.kind] = n_untouched.get(t.kind, 0) + len(untouched_shapes(t))

    def right(source, instruction, seed):
        return targets[source.tobytes()].target

    def every_shape(source, instruction, seed):
        t = targets[source.tobytes()]
        if t.kind != "colour":
            return t.target
        shapes = tuple(dataclasses.replace(s, colour=t.info["colour"]) for s in t.target_scene.shapes)
        return data.render(data.Scene(t.target_scene.background, shapes))

    def wipe(source, instruction, seed):
        return data.background_image(targets[source.tobytes()].source_scene.background)

    fates = untouched_fates(right, triples)
    assert set(fates) == set(n_untouched)
    for kind, counts in fates.items():
        assert list(counts) == list(FATES)
        assert counts["kept"] == sum(counts.values()) == n_untouched[kind]
    painted = untouched_fates(every_shape, triples)
    same = sum(s.colour == t.info["colour"] for t in triples if t.kind == "colour" for s in untouched_shapes(t))
    assert painted["colour"]["took the new colour"] == n_untouched["colour"] - same > 0
    assert painted["colour"]["kept"] == same          # already the new colour: still itself
    assert all(c["kept"] == n_untouched[k] for k, c in painted.items() if k != "colour")
    gone = untouched_fates(wipe, triples)
    assert all(c["gone"] == n_untouched[k] for k, c in gone.items())
    square = data.Shape("square", "blue", 0)
    as_circle = data.render(data.Scene("white", (data.Shape("circle", "blue", 0),)))
    assert shape_fate(as_circle, square) == "kept its colour, lost its form"
    assert shape_fate(data.render(data.Scene("white", (data.Shape("square", "red", 0),))), square) == "another colour"


def test_greyed_looks_at_the_target_shapes():
    triple = data.make_triple(0, 0, "eval", kind="colour")
    assert not greyed(triple.target, triple)
    assert greyed(np.repeat(triple.target.mean(-1, keepdims=True), 3, -1).astype(np.uint8), triple)


def test_sampled_edit_samples_the_pipeline(pipe):
    triple = data.make_triple(0, 0, "eval", kind="colour")
    edit = sampled_edit(pipe)
    out = edit(triple.source, triple.instruction, 3)
    assert out.shape == triple.source.shape and out.dtype == np.uint8
    assert np.array_equal(out, edit(triple.source, triple.instruction, 3))   # seeded


def test_probes_command_adds_the_phrasings_asked_for(tiny_checkpoint, capsys):
    """`--phrasing KIND=TEMPLATE` rows follow the kind's own in the phrasing table, which
    `--phrasing-kinds` limits; a phrasing of a kind left out is refused, as is a bad template."""
    from editmgt.research.shapes.probes import main

    args = ["--model", str(tiny_checkpoint), "--n", "7", "--n-sampled", "0", "--n-fates", "0", "--guidance",
            "--n-phrasings", "14", "--split", "train", "--phrasing-kinds", "colour", "remove"]
    hue = "change the hue of the {obj} to {colour}"
    assert main(args + ["--phrasing", f"colour={hue}"]) == 0
    table = capsys.readouterr().out.split("said every way (first 14 triples, lambda 0):")[1]
    rows = [line for line in table.strip().splitlines()[2:] if line.startswith("|")]
    kinds = [r.split("|")[1].strip() for r in rows]
    n_colour = sum(len(v) for v in data.TEMPLATES["colour"].values()) + 1
    assert kinds == ["colour"] * n_colour + ["remove"] * sum(len(v) for v in data.TEMPLATES["remove"].values())
    assert rows[n_colour - 1].startswith(f"| colour | {hue} | extra | 2 | ")
    for bad, message in ((f"move=nudge the {{obj}} to the {{pos}}", "leaves move out"),
                         ("colour=paint the {obj}", "must name")):
        with pytest.raises(SystemExit):
            main(args + ["--phrasing", bad])
        assert message in capsys.readouterr().err


def test_probes_command_prints_every_table(tiny_checkpoint, capsys):
    """`python -m editmgt.research.shapes.probes` on training-split triples: each table, said as such;
    the fates table counts every untouched shape of the triples it samples."""
    from editmgt.research.shapes.probes import main

    assert main(["--model", str(tiny_checkpoint), "--n", "7", "--n-sampled", "7", "--n-phrasings", "0",
                 "--n-fates", "14", "--guidance", "1", "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "n = 7 training-split triples" in out and "held-out" not in out
    table = out.split("what became of the shapes the edit leaves alone (first 14 triples, lambda 0):")[1]
    lines = table.strip().splitlines()
    assert lines[0] == "| edit kind | " + " | ".join(FATES) + " |"
    counted = {cells[0]: sum(map(int, cells[1:]))
               for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    expected: dict[str, int] = {}
    for t in (data.make_triple(0, i, "train") for i in range(14)):
        if untouched_shapes(t):
            expected[t.kind] = expected.get(t.kind, 0) + len(untouched_shapes(t))
    assert counted == expected
