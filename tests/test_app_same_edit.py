"""One settings object end to end: the app's service, `python -m editmgt edit --model
tiny-shapes` and the library called with the zoo entry's settings give the same edit, bit for
bit; the command line checks its inputs before loading a model and does not wait for an
unreachable Hub."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editmgt.__main__ import main
from editmgt.pipeline import EditMGTPipeline
from editmgt.zoo import load_zoo

ROOT = Path(__file__).resolve().parent.parent
SCENE = ROOT / "examples" / "shapes" / "00_colour.png"
INSTRUCTION = "paint the green square orange"


def test_service_command_line_and_library_give_the_same_edit(tmp_path):
    from editmgt_app.loading import PipelineLoader
    from editmgt_app.manager import ModelManager
    from editmgt_app.service import EditService

    zoo = load_zoo()
    entry = zoo["tiny-shapes"]
    service = EditService(ModelManager(zoo, PipelineLoader()))
    served = service.edit(str(SCENE), INSTRUCTION, "tiny-shapes", seed=0)
    pipe = EditMGTPipeline.from_pretrained(ROOT / "checkpoints" / "tiny-shapes", resolution=entry.resolution)
    direct = pipe.edit(SCENE, INSTRUCTION, entry.settings.replace(keywords=entry.keywords_for(INSTRUCTION)), seed=0)
    out = tmp_path / "cli.png"
    assert main(["edit", "--model", "tiny-shapes", "--image", str(SCENE), "--instruction", INSTRUCTION,
                 "--out", str(out), "--seed", "0"]) == 0
    expected = np.asarray(direct.image)
    assert np.array_equal(np.asarray(served.edited), expected)
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), expected)
    assert served.info["settings"] == direct.settings.as_dict()
    assert served.info["keywords"] == ["green", "square"] and direct.settings.draw == "inverse-cdf"
    # a flag overrides the recommendation, and only that setting
    flagged = tmp_path / "flagged.png"
    assert main(["edit", "--model", "tiny-shapes", "--image", str(SCENE), "--instruction", INSTRUCTION,
                 "--out", str(flagged), "--seed", "0", "--hold-lambda", "1"]) == 0
    held = pipe.edit(SCENE, INSTRUCTION, entry.settings.replace(keywords=("green", "square"), hold_lambda=1.0), seed=0)
    assert np.array_equal(np.asarray(Image.open(flagged).convert("RGB")), np.asarray(held.image))


def test_command_line_checks_the_image_before_loading_a_model(tmp_path, monkeypatch, caplog):
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(EditMGTPipeline, "from_pretrained", no_load)
    with caplog.at_level(logging.ERROR):
        code = main(["edit", "--model", "tiny-shapes", "--image", str(tmp_path / "nope.png"), "--instruction",
                     "make it red", "--out", str(tmp_path / "o.png")])
    assert code == 2 and "no image file" in caplog.text
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["edit", "--model", "tiny-shapes", "--image", str(bad), "--instruction", "x",
                     "--out", str(tmp_path / "o.png")]) == 2
    assert "not an image" in caplog.text or "cannot" in caplog.text


def test_command_line_offline_fails_at_once_on_an_uncached_hub_model(tmp_path, monkeypatch, caplog):
    """HF_HUB_OFFLINE (set for every test): the zoo's Hub entry is refused with the reason,
    without asking the Hub (no socket is opened)."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with caplog.at_level(logging.ERROR):
        code = main(["edit", "--model", "editmgt", "--image", str(SCENE), "--instruction", "make it red",
                     "--out", str(tmp_path / "o.png")])
    assert code == 2 and "not in the local Hub cache and the Hub is unreachable" in caplog.text


@pytest.mark.parametrize("flag, value", [("--guidance", "30"), ("--draw", "fast")])
def test_command_line_settings_are_checked_by_edit_settings(tmp_path, flag, value, capsys, caplog):
    argv = ["edit", "--model", "tiny-shapes", "--image", str(SCENE), "--instruction", "x", "--out",
            str(tmp_path / "o.png"), flag, value]
    if flag == "--draw":  # a choice: argparse refuses it
        with pytest.raises(SystemExit):
            main(argv)
        assert "invalid choice: 'fast'" in capsys.readouterr().err
        return
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    assert "guidance must be a number in [0.0, 20.0], got 30.0" in caplog.text


def test_readme_command_line_examples_parse_and_use_shipped_images():
    import shlex

    from editmgt.__main__ import build_parser

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Command line", 1)[1].split("\n#", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    commands = [line for line in block.splitlines() if line.startswith("python -m editmgt edit")]
    assert len(commands) >= 2
    parser = build_parser()
    for line in commands:
        args = parser.parse_args(shlex.split(line)[3:])
        assert (ROOT / args.image).is_file(), args.image
    assert any("--model tiny-shapes" in line for line in commands)
