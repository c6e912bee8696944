"""The demo through `gradio_client` against one launched app (tiny model, CPU): every named
endpoint, the bad-input list (specific errors, the app keeps serving), 8 concurrent calls."""

from __future__ import annotations

import json
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from editmgt.sampling.localization import default_hold_blocks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "coffee.jpg"
FAST = {"steps": 2}  # the tiny model at 2 steps keeps every call well under a second


def launch_app(tiny_checkpoint: Path, tmp: Path, **launch_kwargs):
    """Build the app with app.py's own `create_app`, on the session's tiny checkpoint, with
    an extra 'broken' zoo entry whose weights are garbage; launch it in this process."""
    import copy

    import yaml

    import app as app_module

    broken = tmp / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    for f in (broken / "editmgt").glob("*.safetensors"):
        f.write_bytes(b"\0" * 64)  # truncated / corrupt weights
    raw = yaml.safe_load((ROOT / "checkpoints.yaml").read_text())
    item = copy.deepcopy(next(e for e in raw["models"] if e["id"] == "tiny"))
    item.update(id="broken", label="Broken checkpoint", source={"path": str(broken)})
    raw["models"].append(item)
    zoo_file = tmp / "checkpoints.yaml"
    zoo_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    args = app_module.parse_args(["--zoo", str(zoo_file), "--checkpoint", f"tiny={tiny_checkpoint}",
                                  "--device", "cpu", "--memory-budget", "1"])
    demo, service = app_module.create_app(args)
    demo.queue(default_concurrency_limit=1)
    _app, url, _share = demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1",
                                    **launch_kwargs)
    return demo, url, service


@pytest.fixture(scope="module")
def app(tiny_checkpoint, tmp_path_factory):
    demo, url, service = launch_app(tiny_checkpoint, tmp_path_factory.mktemp("app"), max_file_size="2mb")
    client = Client(url, verbose=False)
    yield client, service
    client.close()
    demo.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Awkward inputs, written once."""
    d = tmp_path_factory.mktemp("inputs")
    src = Image.open(EXAMPLE).convert("RGB").resize((96, 64))
    out = {}
    out["gray"] = d / "gray.png"
    src.convert("L").save(out["gray"])
    out["rgba"] = d / "rgba.png"
    rgba = src.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(out["rgba"])
    out["cmyk"] = d / "cmyk.jpg"
    src.convert("CMYK").save(out["cmyk"])
    out["16bit"] = d / "sixteen.png"
    Image.fromarray((np.asarray(src.convert("L"), dtype=np.uint16) * 257)).save(out["16bit"])
    out["animated"] = d / "animated.gif"
    src.save(out["animated"], save_all=True, append_images=[src.rotate(90), src.rotate(180)], duration=100)
    out["text"] = d / "notes.txt"
    out["text"].write_text("this is not an image\n")
    out["corrupt"] = d / "corrupt.png"
    buf = d / "full.png"
    src.save(buf)
    out["corrupt"].write_bytes(buf.read_bytes()[:300])  # header fine, pixel data cut off
    out["bomb"] = d / "bomb.png"
    out["bomb"].write_bytes(_png_header_only(40_000, 40_000))
    out["huge"] = d / "huge.png"
    out["huge"].write_bytes(_png_header_only(5000, 4000))
    out["big_file"] = d / "big.png"
    out["big_file"].write_bytes(buf.read_bytes() + b"\0" * (3 * 2**20))  # 3 MB > the 2 MB limit
    out["small_mask"] = d / "mask.png"
    Image.new("L", (10, 10), 255).save(out["small_mask"])
    out["mask"] = d / "mask_ok.png"
    m = Image.new("L", src.size, 0)
    m.paste(255, (20, 10, 60, 50))
    m.save(out["mask"])
    out["small"] = d / "small.png"
    src.save(out["small"])
    return out


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels but holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def edit(client, image, instruction="make the cup red", model="tiny", **kw):
    kw = {**FAST, **kw}
    return client.predict(handle_file(str(image)) if image is not None else None, instruction, model,
                          api_name="/edit", **kw)


# ---------------------------------------------------------------------------- endpoints


def test_api_lists_named_endpoints_with_optional_parameters(app):
    client, _ = app
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/edit", "/sweep", "/generate", "/models"} <= set(api)
    params = api["/edit"]["parameters"]
    assert [p["parameter_name"] for p in params[:3]] == ["image", "instruction", "model"]
    required = [p["parameter_name"] for p in params if not p["parameter_has_default"]]
    assert required == ["image", "instruction"]  # model defaults to the start-up model
    assert all(p["parameter_default"] is None for p in params[3:] if p["parameter_name"] != "load_8bit")


def test_every_setting_is_an_argument_of_edit_and_sweep(app):
    """The API's parameters follow EditSettings: one argument per field, named as the field
    (the lambda grid of /sweep sets hold_lambda), and nothing else but the fixed ones."""
    from editmgt.settings import names

    client, _ = app
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = {name: [p["parameter_name"] for p in api[name]["parameters"]] for name in ("/edit", "/sweep")}
    assert params["/edit"] == ["image", "instruction", "model", "seed", "mask", "load_8bit", *names()]
    assert params["/sweep"] == ["image", "instruction", "model", "lambdas", "seed", "mask", "load_8bit",
                                *(n for n in names() if n != "hold_lambda")]


def test_a_keyword_left_over_falls_back_with_a_note(app):
    """A keyword the instruction does not say (e.g. left in the box from an earlier example)
    does not break the edit: it is left out, and the notes say so and where to clear it."""
    client, _ = app
    _, _, info = edit(client, EXAMPLE, instruction="make the sky purple", keywords="cat", seed=3)
    assert info["keywords"] is None                               # the tiny model reads every word
    assert any("'cat' not in the instruction" in n and "Keywords box" in n for n in info["notes"]), info["notes"]
    _, _, info = edit(client, EXAMPLE, instruction="make the sky purple", keywords="cat, sky", seed=3)
    assert info["keywords"] == ["sky"]


def test_edit_returns_png_heatmap_and_info(app, tiny_checkpoint):
    client, _ = app
    edited, heat, info = edit(client, EXAMPLE, seed=7, hold_lambda=0.5)
    for path in (edited, heat):
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert im.size == Image.open(EXAMPLE).size
    for key in ("l1_to_source", "seconds", "seed", "changed_fraction", "steps_per_second", "tokens_changed",
                "peak_memory_mb", "l1_to_reconstruction"):
        assert key in info, key
    assert info["seed"] == 7 and info["lambda"] == 0.5 and info["settings"]["steps"] == 2 and info["mask"] is False
    assert 0 <= info["changed_fraction"] <= 1 and info["l1_to_source"] > 0
    # the seed it returns reproduces the edit
    again = edit(client, EXAMPLE, seed=7, hold_lambda=0.5)
    assert again[2]["l1_to_source"] == info["l1_to_source"]
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(edited)))
    # the model's defaults fill what is not given; a random seed is returned
    _, _, info = edit(client, EXAMPLE)
    assert info["lambda"] == 0.3 and isinstance(info["seed"], int)
    # no hold blocks given, none in the zoo entry: the pipeline's default range, reported
    config = json.loads((tiny_checkpoint / "editmgt" / "config.json").read_text())
    blocks = default_hold_blocks(config["num_layers"] + config["num_single_layers"])
    assert info["hold_blocks"] == [blocks[0], blocks[-1]]


def test_edit_with_mask_and_settings(app, files):
    client, _ = app
    _, _, info = edit(client, files["small"], mask=handle_file(str(files["mask"])), keywords="cup",
                      smoothing="gaussian", smoothing_strength=2.0, hold_blocks=[1, 2], gamma=1.3,
                      guidance=3.0, seed=1, draw="inverse-cdf", mask_reference="source")
    used = info["settings"]
    assert info["hold_blocks"] == [1, 2] and used["smoothing"] == "gaussian" and used["gamma"] == 1.3
    assert (used["draw"], used["mask_reference"], info["keywords"]) == ("inverse-cdf", "source", ["cup"])
    assert used["sample_temperature"] == 1.0                     # the zoo entry's default
    assert info["mask"] is True and any("mask" in n for n in info["notes"])


def test_sample_temperature_reaches_the_sampler(app):
    client, _ = app
    default = edit(client, EXAMPLE, seed=4)
    greedy = edit(client, EXAMPLE, seed=4, sample_temperature=0.05)
    assert greedy[2]["settings"]["sample_temperature"] == 0.05
    assert greedy[2]["l1_to_source"] != default[2]["l1_to_source"]


def test_keep_unchanged_pixels_returns_the_upload_itself_where_nothing_changed(app):
    """Lambda 1 changes no token: with keep_unchanged_pixels the edit is the uploaded photo, bit
    for bit; by default (the tiny entry's: off) it is the VQ round trip."""
    client, _ = app
    photo = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    kept, _, info = edit(client, EXAMPLE, seed=4, hold_lambda=1.0, keep_unchanged_pixels=True)
    assert info["settings"]["keep_unchanged_pixels"] is True and info["l1_to_source"] == 0.0
    assert np.array_equal(np.asarray(Image.open(kept).convert("RGB")), photo)
    plain, _, info = edit(client, EXAMPLE, seed=4, hold_lambda=1.0)
    assert info["settings"]["keep_unchanged_pixels"] is False and info["l1_to_source"] > 0.0
    assert not np.array_equal(np.asarray(Image.open(plain).convert("RGB")), photo)


def test_sweep_returns_rows_images_and_curve(app):
    client, _ = app
    rows, gallery, curve = client.predict(handle_file(str(EXAMPLE)), "make the cup red", "tiny",
                                          lambdas=[0.0, 0.5, 1.0], seed=3, steps=2, api_name="/sweep")
    assert [r["lambda"] for r in rows] == [0.0, 0.5, 1.0]
    assert {"lambda", "l1_to_source", "l1_to_reconstruction", "changed_fraction"} <= set(rows[0])
    assert len(gallery) == 3 and all(Path(g["image"]).is_file() for g in gallery)
    assert Image.open(curve).size[0] > 100
    # lambda = 1 holds every token: the output is the VQ reconstruction
    assert rows[-1]["changed_fraction"] == 0.0 and rows[-1]["l1_to_reconstruction"] == pytest.approx(0.0, abs=1e-6)
    # the sweep's lambda-0.5 row equals a single edit with the same seed
    _, _, info = edit(client, EXAMPLE, seed=3, hold_lambda=0.5)
    assert info["l1_to_source"] == pytest.approx(rows[1]["l1_to_source"], abs=1e-5)


def test_generate(app):
    client, _ = app
    image, info = client.predict("a red cup", "tiny", steps=2, seed=5, api_name="/generate")
    assert Image.open(image).format == "PNG" and info["seed"] == 5


def test_models_reports_status(app):
    client, _ = app
    edit(client, EXAMPLE)
    models = {m["id"]: m for m in client.predict(api_name="/models")}
    assert models["tiny"]["state"] == "ready" and models["tiny"]["device"] == "cpu"
    assert models["tiny"]["settings"]["steps"] == 4 and models["tiny"]["resolution"] == 64
    assert models["editmgt-stage2"]["state"] == "unavailable" and "EDITMGT_STAGE2" in models["editmgt-stage2"]["reason"]
    assert models["editmgt"]["state"] in ("unavailable", "not loaded")


def test_8bit_edit_on_cpu(app):
    client, _ = app
    _, _, info = edit(client, EXAMPLE, load_8bit=True, seed=2)
    assert info["load_8bit"] is True
    models = {m["id"]: m for m in client.predict(api_name="/models")}
    assert True in models["tiny"]["loaded_8bit"] and "8-bit saves" in models["tiny"]["reason"]


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case, kwargs, message", [
    ("no image", dict(image=None), "no image"),
    ("empty instruction", dict(instruction="   "), "instruction is empty"),
    ("long instruction", dict(instruction="x" * 1001), "the limit is 1000"),
    ("not an image", dict(image="text"), "not an image"),
    ("corrupt", dict(image="corrupt"), "corrupt or truncated"),
    ("bomb", dict(image="bomb"), "decompression bomb"),
    ("over pixel limit", dict(image="huge"), "the limit is 16,777,216 pixels"),
    ("mask size", dict(image="small", mask="small_mask"), "the mask is 10x10 but the image is 96x64"),
    ("steps", dict(steps=1000), "steps must be an integer in [1, 100], got 1000"),
    ("fractional steps", dict(steps=2.5), "steps must be an integer"),
    ("guidance", dict(guidance=-1), "guidance must be a number in [0.0, 20.0]"),
    ("lambda", dict(hold_lambda=1.5), "lambda must be a number in [0.0, 1.0]"),
    ("seed", dict(seed=-7), "seed must be an integer"),
    ("hold blocks", dict(hold_blocks=[0, 999]), "hold_blocks must lie within [0, "),
    ("hold blocks order", dict(hold_blocks=[3, 1]), "hold_blocks: the first block (3) must not come after the last"),
    ("smoothing", dict(smoothing="blurry"), "smoothing must be one of"),
    ("sample temperature", dict(sample_temperature=0), "sample_temperature must be a number in [0.01, 5.0]"),
    ("draw", dict(draw="fast"), "draw must be one of ['released', 'inverse-cdf'], got 'fast'"),
    ("keep pixels", dict(keep_unchanged_pixels="yes"), "keep_unchanged_pixels must be true or false, got 'yes'"),
    ("unknown model", dict(model="nope"), "unknown model 'nope'"),
    ("unavailable model", dict(model="editmgt-stage2"), "'editmgt-stage2' is unavailable"),
    ("failing checkpoint", dict(model="broken"), "'broken' failed to load"),
    ("upload too big", dict(image="big_file"), "exceeds the maximum file size of 2097152 bytes"),
])
def test_bad_input_gets_a_specific_error(app, files, case, kwargs, message):
    client, _ = app
    image = kwargs.pop("image", EXAMPLE)
    image = files[image] if isinstance(image, str) else image
    if "mask" in kwargs:
        kwargs["mask"] = handle_file(str(files[kwargs["mask"]]))
    with pytest.raises(Exception) as err:
        edit(client, image, **kwargs)
    # an upload over max_file_size is refused before it reaches a handler (the client checks
    # the limit the server announces; the server enforces it too)
    assert err.type is (ValueError if case == "upload too big" else AppError), err.value
    assert message in str(err.value), (case, str(err.value))


@pytest.mark.parametrize("kind, note", [("gray", "from L"), ("rgba", "from RGBA"), ("cmyk", "from CMYK"),
                                        ("16bit", "from I"), ("animated", "animated (3 frames)")])
def test_unusual_images_are_converted_not_refused(app, files, kind, note):
    client, _ = app
    edited, _, info = edit(client, files[kind], steps=1)
    assert any(note in n for n in info["notes"]), info["notes"]
    assert Image.open(edited).mode == "RGB"


def test_out_of_memory_is_reported_and_the_app_recovers(app, monkeypatch):
    client, _ = app
    from editmgt.pipeline import EditMGTPipeline

    real = EditMGTPipeline.sweep
    calls = []

    def oom_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(EditMGTPipeline, "sweep", oom_once)
    with pytest.raises(AppError, match="out of memory"):
        edit(client, EXAMPLE)
    assert edit(client, EXAMPLE)[2]["l1_to_source"] > 0  # serving again


def test_app_keeps_serving_after_errors(app):
    client, _ = app
    for bad in ("", "x" * 2000):
        with pytest.raises(AppError):
            edit(client, EXAMPLE, instruction=bad)
    assert edit(client, EXAMPLE)[2]["settings"]["steps"] == 2


# ---------------------------------------------------------------------------- load


def test_eight_concurrent_calls_are_serialised_and_correct(app, monkeypatch):
    client, _ = app
    from editmgt.pipeline import EditMGTPipeline

    real = EditMGTPipeline.sweep
    active, peak, lock = [0], [0], threading.Lock()

    def tracked(self, *args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return real(self, *args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(EditMGTPipeline, "sweep", tracked)
    seeds = list(range(100, 108))
    jobs = [client.submit(handle_file(str(EXAMPLE)), "make the cup red", "tiny", seed=s, steps=2,
                          api_name="/edit") for s in seeds]
    results = [job.result(timeout=300) for job in jobs]
    assert [r[2]["seed"] for r in results] == seeds
    assert peak[0] == 1  # the queue ran one GPU job at a time
    # each result is the one its own seed gives when run alone
    for index in (0, 5):
        alone = edit(client, EXAMPLE, seed=seeds[index])
        assert alone[2]["l1_to_source"] == results[index][2]["l1_to_source"]
        assert np.array_equal(np.asarray(Image.open(alone[0])), np.asarray(Image.open(results[index][0])))
    assert len({r[2]["l1_to_source"] for r in results}) > 1  # different seeds, different edits
