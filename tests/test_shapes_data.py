"""The synthetic shapes triples: deterministic, split, exact regions, checkable from pixels."""

import numpy as np
import pytest

from editmgt.research.shapes import data
from editmgt.research.shapes.checks import check_edit, iou, others_kept, outside_l1, untouched_shapes


def test_same_arguments_same_triple():
    a, b = data.make_triple(3, 17), data.make_triple(3, 17)
    assert a.instruction == b.instruction
    assert np.array_equal(a.source, b.source) and np.array_equal(a.target, b.target)
    assert np.array_equal(a.mask, b.mask)
    assert data.make_triple(3, 18).instruction != a.instruction or not np.array_equal(
        data.make_triple(3, 18).source, a.source)


def test_every_kind_in_each_block_of_seven():
    kinds = [data.make_triple(0, i).kind for i in range(14)]
    assert sorted(kinds[:7]) == sorted(data.EDIT_KINDS)
    assert kinds[:7] == kinds[7:]


def test_train_and_eval_are_disjoint():
    train = [data.make_triple(0, i, "train") for i in range(70)]
    held = [data.make_triple(0, i, "eval") for i in range(70)]
    assert all(data.scene_split(t.source_scene) == "train" for t in train)
    assert all(data.scene_split(t.source_scene) == "eval" for t in held)
    assert not {t.source_scene.key() for t in train} & {t.source_scene.key() for t in held}
    train_templates = {t for per in data.TEMPLATES.values() for t in per["train"]}
    assert all(t.info["template"] not in train_templates for t in held)
    assert all(t.info["template"] in train_templates for t in train)


def test_val_draws_training_scenes_with_phrasings_of_its_own_and_no_new_word():
    val = [data.make_triple(0, i, "val") for i in range(70)]
    train = [data.make_triple(0, i, "train") for i in range(70)]
    assert all(data.scene_split(t.source_scene) == "train" for t in val)
    assert [t.instruction for t in val] != [t.instruction for t in train]       # a stream of its own
    for kind, per in data.TEMPLATES.items():
        assert per["val"] and not set(per["val"]) & (set(per["train"]) | set(per["eval"])), kind
    assert {t.info["template"] for t in val} == {t for per in data.TEMPLATES.values() for t in per["val"]}
    # val phrasings reuse words the train and eval phrasings already have: the tokenizer
    # the recipe builds from data.vocabulary() is unchanged
    other = {w for per in data.TEMPLATES.values() for split in ("train", "eval") for t in per[split]
             for w in t.split()}
    assert {w for per in data.TEMPLATES.values() for t in per["val"] for w in t.split()} <= other
    with pytest.raises(ValueError, match="split must be one of"):
        data.make_triple(0, 0, "test")


def test_images_and_regions():
    for i in range(35):
        t = data.make_triple(1, i)
        assert t.source.shape == t.target.shape == (data.IMAGE_SIZE, data.IMAGE_SIZE, 3)
        assert t.source.dtype == np.uint8 and t.mask.dtype == bool and t.mask.any()
        assert not np.array_equal(t.source, t.target)
        if t.kind != "style":
            # Nothing changes outside the target region.
            assert outside_l1(t.target, t.source, t.mask) == 0.0
        assert 1 <= len(t.source_scene.shapes) <= 3
        names = [s.name for s in t.source_scene.shapes]
        assert len(names) == len(set(names))


def test_instructions_name_the_edit():
    for i in range(35):
        t = data.make_triple(2, i)
        if "old" in t.info:
            assert t.info["old"].name in t.instruction
        if t.kind == "colour":
            assert t.instruction.split()[-1] == t.info["new"].colour
        if t.kind in ("add", "move"):
            assert t.instruction.endswith(t.info["pos"])


def test_redraw_with_the_same_shape_is_the_same_triple_and_another_shape_is_said_and_drawn():
    for i in range(21):
        t = data.make_triple(4, i, "eval")
        if "new" not in t.info:                                    # remove, background, style
            with pytest.raises(ValueError, match="draws no new shape"):
                data.redraw(t, data.Shape("circle", "red", 0))
            continue
        same = data.redraw(t, t.info["new"])
        assert same.instruction == t.instruction and same.info == t.info
        assert np.array_equal(same.target, t.target) and np.array_equal(same.mask, t.mask)
        new = t.info["new"]
        free = next(c for c in range(9) if c not in {s.cell for s in t.target_scene.shapes})
        other = data.Shape("triangle" if new.kind != "triangle" else "star", new.colour, free)
        moved = data.redraw(t, other)
        assert other in moved.target_scene.shapes and new not in moved.target_scene.shapes
        assert moved.mask[data.shape_mask(other.kind, other.cell)].all()
        assert np.array_equal(moved.source, t.source) and moved.info["template"] == t.info["template"]
        if t.kind in ("add", "move"):
            assert moved.instruction.endswith(data.POSITIONS[free])
        if t.kind in ("add", "replace"):
            assert other.kind in moved.instruction.split()


@pytest.mark.parametrize("split", data.SPLITS)
def test_pixel_checks_accept_targets_and_reject_sources(split):
    for i in range(70):
        t = data.make_triple(5, i, split)
        assert check_edit(t.target, t), (t.kind, t.instruction)
        assert not check_edit(t.source, t), (t.kind, t.instruction)


def test_vocabulary_and_iou():
    words = data.vocabulary()
    assert {"red", "circle", "remove", "background", "grayscale"} <= set(words)
    a = np.zeros((4, 4), bool)
    a[:2] = True
    assert iou(a, a) == 1.0 and iou(a, ~a) == 0.0


def test_phrasing_noise_keeps_the_meaning_words():
    rng = np.random.default_rng(0)
    template_words = set(data.vocabulary())
    changed = 0
    for i in range(300):
        tr = data.make_triple(0, i)
        noisy = data.perturb_phrasing(tr.instruction, rng)
        changed += noisy != tr.instruction
        meaning = [w for w in tr.instruction.split() if w in data.MEANING_WORDS]
        assert [w for w in noisy.split() if w in data.MEANING_WORDS] == meaning
        # a new word is a pseudo-word, never a word some template (train or eval) uses
        for w in set(noisy.split()) - set(tr.instruction.split()):
            assert w not in template_words and w.isalpha()
    assert 0.3 < changed / 300 < 0.9
    a = data.perturb_phrasing("move the red circle to the top", np.random.default_rng(5))
    assert a == data.perturb_phrasing("move the red circle to the top", np.random.default_rng(5))


def test_phrasing_noise_leaves_the_kept_words_alone_with_the_same_draws():
    text = "convert the picture to grayscale"
    noisy = [data.perturb_phrasing(text, np.random.default_rng(s)) for s in range(200)]
    kept = [data.perturb_phrasing(text, np.random.default_rng(s), keep=("picture",)) for s in range(200)]
    assert sum("picture" not in n.split() for n in noisy) > 20      # the word is noised by default
    assert all("picture" in k.split() for k in kept)
    # where the default noise left the word alone, keeping it changes nothing (same draws)
    assert all(k == n for k, n in zip(kept, noisy) if "picture" in n.split())


def test_insertable_words_are_training_phrasing_words_that_name_nothing():
    words = data.insertable_words()
    train_words = {w for k in data.TEMPLATES.values() for t in k["train"] for w in t.split()}
    held_out = {w for k in data.TEMPLATES.values() for sp in ("eval", "val") for t in k[sp] for w in t.split()}
    assert list(words) == sorted(words) and set(words) <= train_words
    assert {"color", "remove", "background", "grayscale", "the", "into"} <= set(words)
    assert not set(words) & ({"a", *data.SHAPE_COLOURS, *data.SHAPE_KINDS, *data.BACKGROUND_COLOURS,
                              *data.BACKGROUND_WORDS.values(), "top", "left", "center"})
    assert not set(words) & (held_out - train_words)            # "of", "paint", "slide" ... never
    assert "of" not in words and "paint" not in words


def test_phrasing_noise_inserts_known_words_only_when_asked_with_the_same_draws():
    text = "make the red circle blue"
    plain = [data.perturb_phrasing(text, np.random.default_rng(s)) for s in range(300)]
    assert plain == [data.perturb_phrasing(text, np.random.default_rng(s), insert_known=0.0) for s in range(300)]
    known = [data.perturb_phrasing(text, np.random.default_rng(s), insert_known=0.5) for s in range(300)]
    inserted = 0
    for p, k in zip(plain, known):
        extra = k.split()
        assert len(extra) in (len(p.split()), len(p.split()) + 1)
        if len(extra) > len(p.split()):       # the same noise, and one known word somewhere in it
            inserted += 1
            spots = [i for i in range(len(extra)) if extra[:i] + extra[i + 1:] == p.split()]
            assert spots and any(extra[i] in data.insertable_words() for i in spots)
        else:
            assert k == p
        assert [w for w in k.split() if w in ("red", "circle", "blue")] == ["red", "circle", "blue"]
    assert 100 < inserted < 200
    assert any(k.split().count("color") for k in known) or any("remove" in k.split() for k in known)


def test_others_kept_looks_at_the_shapes_the_edit_leaves_alone():
    red, blue = data.Shape("circle", "red", 4), data.Shape("square", "blue", 0)
    scene = data.Scene("white", (red, blue))
    removal = data.EditTriple(data.render(scene), "remove the red circle",
                              data.render(data.Scene("white", (blue,))), data.shape_mask("circle", 4),
                              "remove", scene, data.Scene("white", (blue,)), {"old": red})
    assert untouched_shapes(removal) == [blue]
    assert others_kept(removal.target, removal) is True
    assert others_kept(data.render(data.Scene("white", ())), removal) is False   # both removed
    assert others_kept(removal.source, removal) is True                          # nothing done
    for i in range(21):
        t = data.make_triple(0, i)
        others = untouched_shapes(t)
        if t.kind == "style":
            assert others == []
        elif t.kind in ("add", "background"):
            assert others == list(t.source_scene.shapes)
        else:
            assert len(others) == len(t.source_scene.shapes) - 1
        if others:
            assert others_kept(t.target, t) is True


def test_region_scores_are_the_ideal_map_and_its_iou_ceiling():
    from editmgt.research.shapes.eval import region_scores

    mask = data.shape_mask("square", 4)                           # the centre cell
    scores = region_scores(mask, (16, 16), 2, "none", 1.0)
    assert scores.shape == (16, 16)
    pixels = np.kron(scores, np.ones((4, 4)))
    inside, outside = pixels[mask], pixels[~mask]
    assert inside.mean() > 0.6 > 0.05 > outside.mean()             # the map marks the square
    best = max(iou(pixels >= t, mask) for t in (0.1, 0.2, 0.3, 0.4, 0.5))
    assert 0.5 < best < 1.0                                        # 8 px tokens blur a 14 px square
    whole = region_scores(np.ones((64, 64), bool), (16, 16), 2, "adaptive", 1.0)
    assert (whole == 1).all()                                      # style edits: every token


def _every_shape_shares_a_word(scene: data.Scene) -> bool:
    return all(any(o is not s and (o.colour == s.colour or o.kind == s.kind) for o in scene.shapes)
               for s in scene.shapes)


def test_shared_names_give_scenes_whose_shapes_need_both_words():
    plain = [data.make_triple(0, i) for i in range(140)]
    shared = [data.make_triple(0, i, shared_names=1.0) for i in range(140)]
    # 0 is the default stream itself, so the eval's scenes do not move
    assert all(np.array_equal(a.source, data.make_triple(0, i, shared_names=0.0).source)
               for i, a in enumerate(plain[:14]))
    for t in shared:
        names = [(s.kind, s.colour) for s in t.source_scene.shapes]
        assert len(set(names)) == len(names)                 # still one shape per name
        assert data.scene_split(t.source_scene) == "train"
    crowded = [t for t in shared if len(t.source_scene.shapes) > 1]
    assert crowded and all(_every_shape_shares_a_word(t.source_scene) for t in crowded)
    rates = []
    for chance in (0.0, 0.5):
        scenes = [data.make_triple(0, i, shared_names=chance).source_scene for i in range(280)]
        crowded = [s for s in scenes if len(s.shapes) > 1]
        rates.append(sum(map(_every_shape_shares_a_word, crowded)) / len(crowded))
    assert rates[0] < 0.4 < rates[1] < 0.85         # by chance about 0.29; half the scenes more
