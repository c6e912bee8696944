"""The tiny shapes model: an EditMGT trained offline on synthetic shapes scenes, where the
truth of every edit is known, and measured with the paper's two mechanisms.

- `data`: the scenes, edits and phrasings (deterministic triples, train / eval / val splits);
- `checks`: did an output carry out its edit (pixels only), and the L1 / IoU measures;
- the recipe: `recipe` (every knob), `text_towers`, `tokens`, `sampling`, `loop`,
  `checkpoint`, and `train`, the command that runs it all
  (`python -m editmgt.research.shapes.train --out DIR`);
- `eval`: the report (`python -m editmgt.research.shapes.eval --model DIR`);
- `probes`: the model's internals (`python -m editmgt.research.shapes.probes --model DIR`).

docs/SHAPES.md is the model card of the shipped checkpoint, `checkpoints/tiny-shapes/`.
"""
