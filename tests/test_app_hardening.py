"""The demo under hostile or careless use, on one launched app (tiny model, CPU, loopback):
thin images, the direct REST route, cache cleanup, session memory, the messages users see,
the MCP server, and the noise in the logs."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import logging
import re
import resource
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

gr = pytest.importorskip("gradio")
from gradio.utils import get_upload_folder  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import app as app_module  # noqa: E402
from editmgt import settings  # noqa: E402
from editmgt.errors import CheckpointError, InputError  # noqa: E402
from editmgt.images import MAX_ASPECT_RATIO  # noqa: E402
from editmgt.pipeline import EditMGTPipeline  # noqa: E402
from editmgt_app import inputs, plots  # noqa: E402
from editmgt.settings import check_text  # noqa: E402
from editmgt_app.inputs import MAX_PIXELS, MAX_UPLOAD_MB, MAX_WORK, check_work  # noqa: E402
from editmgt_app.loading import PipelineLoader, scheduler_settings  # noqa: E402
from editmgt_app.manager import ComponentKey  # noqa: E402
from editmgt_app.ui import (CACHE_LIFETIME_S, MAX_SESSIONS, launch_options, public_message)  # noqa: E402
from editmgt.zoo import parse_zoo  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "coffee.jpg"
FAST = {"steps": 2}


def launch(tiny_checkpoint: Path, *extra: str):
    """app.py's own create_app on the tiny checkpoint, launched in this process with app.py's
    launch options (MCP, session bound, show_error), on 127.0.0.1."""
    args = app_module.parse_args(["--checkpoint", f"tiny={tiny_checkpoint}", "--model", "tiny", "--device", "cpu",
                                  "--memory-budget", "1", *extra])
    demo, service = app_module.create_app(args)
    _app, url, _share = demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1",
                                    **launch_options())
    return demo, url, service


@pytest.fixture(scope="module")
def app(tiny_checkpoint):
    demo, url, service = launch(tiny_checkpoint)
    client = Client(url, verbose=False)
    yield demo, url, client
    client.close()
    demo.close()


@pytest.fixture()
def pipeline_calls(monkeypatch):
    """Counts the model's sampling calls and the most that ran at once."""
    real = EditMGTPipeline.sweep
    state = {"calls": 0, "active": 0, "peak": 0}
    lock = threading.Lock()

    def tracked(self, *args, **kwargs):
        with lock:
            state["calls"] += 1
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
        try:
            time.sleep(0.05)  # widen the window in which overlapping calls would be seen
            return real(self, *args, **kwargs)
        finally:
            with lock:
                state["active"] -= 1

    monkeypatch.setattr(EditMGTPipeline, "sweep", tracked)
    return state


def edit(client, image, instruction="make the cup red", model="tiny", **kw):
    return client.predict(handle_file(str(image)), instruction, model, api_name="/edit", **{**FAST, **kw})


def png(path: Path, size: tuple[int, int], colour=(90, 140, 200)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def upload(url: str, path: Path) -> dict:
    """Upload `path` as the page does; the FileData payload naming the server's copy."""
    with path.open("rb") as f:
        response = httpx.post(url + "gradio_api/upload", files={"files": (path.name, f)}, timeout=30)
    response.raise_for_status()
    return {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def raw_edit(url: str, image, instruction="make the cup red", model="tiny") -> tuple[str, dict]:
    """/edit through the queued REST route with raw JSON (values no client would send);
    returns the final SSE event and its data."""
    body = json.dumps({"image": image, "instruction": instruction, "model": model, "steps": 2},
                      ensure_ascii=True)  # a lone surrogate travels as \\ud800
    joined = httpx.post(url + "gradio_api/call/v2/edit", content=body, headers={"content-type": "application/json"},
                        timeout=30)
    joined.raise_for_status()
    stream = httpx.get(url + f"gradio_api/call/v2/edit/{joined.json()['event_id']}", timeout=120)
    event, payload = None, None
    for line in stream.text.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            payload = json.loads(line.split(":", 1)[1])
    return event, payload


def positional(client: Client, api_name: str, **given) -> list:
    """An endpoint's inputs in order, as the direct route takes them: `given`, else the defaults."""
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"][api_name]["parameters"]
    return [given.get(p["parameter_name"], p.get("parameter_default")) for p in params]


# ---------------------------------------------------------------------------- thin images, bounded work


@pytest.mark.parametrize("size", [(1, 4000), (1, 300)])
def test_thin_images_are_refused_before_any_model_work(app, tmp_path, pipeline_calls, size):
    """A ~100-byte 1 x 4000 PNG used to drive the server to 8.5 GB (the heat-map enlarged its
    thin side 192-fold); now it is refused from the header, before the model runs."""
    _demo, _url, client = app
    strip = png(tmp_path / "strip.png", size)
    assert strip.stat().st_size < 1000
    peak_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(AppError) as err:
        edit(client, strip)
    ratio = max(size) / min(size)
    assert f"an aspect ratio of {ratio:.4g}:1; the limit is {MAX_ASPECT_RATIO:g}:1" in str(err.value)
    assert "Crop it" in str(err.value)
    assert pipeline_calls["calls"] == 0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kb < 200 * 1024  # < 200 MB more


def test_derived_images_stay_within_the_pixel_bound(app, tmp_path):
    """A panorama at the aspect limit, 4096 x 512 (2 MP): the heat-map, every sweep preview
    and the curve are at most MAX_PLOT_PIXELS; the edit itself keeps the photo's size."""
    _demo, _url, client = app
    wide = png(tmp_path / "wide.png", (4096, 512))
    _edited, heat, _info = edit(client, wide, steps=1, seed=1)
    with Image.open(heat) as im:
        assert im.width * im.height <= plots.MAX_PLOT_PIXELS and im.width / im.height == pytest.approx(8, rel=0.01)
    rows, gallery, curve = client.predict(handle_file(str(wide)), "make the cup red", "tiny", lambdas=[0.0, 1.0],
                                          steps=1, seed=1, api_name="/sweep")
    assert len(rows) == len(gallery) == 2
    for item in gallery:
        with Image.open(item["image"]) as im:
            assert im.width * im.height <= plots.MAX_PLOT_PIXELS
    with Image.open(curve) as im:
        assert im.width * im.height <= plots.MAX_PLOT_PIXELS


def test_plots_bound_every_picture_whatever_the_source():
    bound = plots.MAX_PLOT_PIXELS
    scores = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    for size, min_side in [((1, 4000), 192), ((4000, 1), 192), ((8, 64), 192), ((3000, 2000), 0), ((64, 64), 192)]:
        out = plots.heatmap_overlay(Image.new("RGB", size), scores, scores < 0.5, min_side=min_side)
        assert out.width * out.height <= bound, size
    small = plots.heatmap_overlay(Image.new("RGB", (64, 64)), scores, min_side=192)
    assert small.size == (192, 192)  # small pictures are still enlarged by a whole factor
    assert plots.bounded(Image.new("RGB", (4000, 3000))).size == plots.bounded_size((4000, 3000))
    assert plots.bounded_size((4000, 3000))[0] * plots.bounded_size((4000, 3000))[1] <= bound
    curve = plots.lambda_curve([0, 1], [0.2, 0.1], size=(4000, 3000))
    assert curve.width * curve.height <= bound


def test_work_per_request_is_bounded_by_pixels_steps_and_samples(app, monkeypatch, pipeline_calls):
    check_work((1024, 1024), 16, MAX_WORK // (1024 * 1024 * 16))  # at the limit: accepted
    with pytest.raises(InputError) as err:
        check_work((1024, 1024), 100, 7)
    assert "x 100 steps x 7 sample(s)" in str(err.value) and "fewer steps, fewer sweep lambdas" in str(err.value)
    # the service checks it before sampling: a limit below one 2-step edit of the tiny model
    _demo, _url, client = app
    monkeypatch.setattr(inputs, "MAX_WORK", 100)
    with pytest.raises(AppError, match="too much work"):
        edit(client, EXAMPLE)
    assert pipeline_calls["calls"] == 0


# ---------------------------------------------------------------------------- the queue


def test_model_work_only_runs_through_the_queue(app, pipeline_calls):
    """Gradio's direct route (POST /gradio_api/run/<name>) ran 8 clients' edits 6-fold in
    parallel past concurrency_limit=1. Direct and queued requests sent together: the direct
    ones are refused, the queued ones run one at a time and are correct."""
    demo, url, client = app
    assert all(fn.queue for fn in demo.fns.values() if fn.concurrency_id == "gpu")
    image = upload(url, EXAMPLE)
    requests = [("edit", positional(client, "/edit", image=image, instruction="make the cup red", steps=2)),
                ("edit", positional(client, "/edit", image=image, instruction="make the cup blue", steps=2)),
                ("sweep", positional(client, "/sweep", image=image, instruction="make it red", steps=2)),
                ("generate", positional(client, "/generate", prompt="a red cup", steps=2))]
    direct = [None] * len(requests)

    def post_direct(i: int, name: str, data: list) -> None:
        direct[i] = httpx.post(url + f"gradio_api/run/{name}", json={"data": data}, timeout=120)

    threads = [threading.Thread(target=post_direct, args=(i, *request)) for i, request in enumerate(requests)]
    jobs = [client.submit(handle_file(str(EXAMPLE)), "make the cup red", "tiny", seed=s, steps=2, api_name="/edit")
            for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    results = [job.result(timeout=300) for job in jobs]
    for response in direct:
        assert response.status_code == 404 and "join the queue" in response.json()["detail"], response.text
    assert [r[2]["seed"] for r in results] == [0, 1, 2, 3]
    assert pipeline_calls["calls"] == 4 and pipeline_calls["peak"] == 1
    # /models does no model work and answers directly
    models = httpx.post(url + "gradio_api/run/models", json={"data": []}, timeout=30)
    assert models.status_code == 200 and any(m["id"] == "tiny" for m in models.json()["data"][0])


# ---------------------------------------------------------------------------- cache and sessions


def test_uploads_and_outputs_are_deleted_after_their_lifetime_and_at_shutdown(tiny_checkpoint, tmp_path):
    lifetime = 3
    demo, url, _service = launch(tiny_checkpoint, "--cache-lifetime", str(lifetime))
    client = Client(url, verbose=False)
    try:
        assert demo.delete_cache == (1, lifetime)
        probe = png(tmp_path / "cache-probe-a.png", (96, 64))
        edit(client, probe, steps=1)
        examples = set().union(*(getattr(b, "keep_in_cache", set()) for b in demo.blocks.values()))
        first = set().union(*demo.temp_file_sets) - examples  # the examples' copies stay while serving
        assert any(Path(f).name == probe.name for f in first)                     # the upload
        assert len(first) >= 3 and all(Path(f).is_file() for f in first)          # + edit and heat-map
        deadline = time.monotonic() + lifetime + 10
        while any(Path(f).exists() for f in first) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [f for f in first if Path(f).exists()]
        assert not list(Path(get_upload_folder()).glob(f"*/{probe.name}"))
        edit(client, png(tmp_path / "cache-probe-b.png", (96, 64)), steps=1)
        second = set().union(*demo.temp_file_sets) - first - examples
        assert second and all(Path(f).is_file() for f in second)                  # younger than the lifetime
    finally:
        client.close()
        demo.close()
    assert not any(Path(f).exists() for f in second)                              # removed at shutdown


def test_sessions_kept_in_memory_are_bounded(app, monkeypatch):
    demo, url, _client = app
    assert MAX_SESSIONS < 10_000 and demo.state_session_capacity == MAX_SESSIONS
    assert demo.state_holder.capacity == MAX_SESSIONS
    monkeypatch.setattr(demo.state_holder, "capacity", 3)  # the same mechanism, at a size a test can fill
    for i in range(8):
        r = httpx.post(url + "gradio_api/run/models", json={"data": [], "session_hash": f"probe-session-{i}"},
                       timeout=30)
        assert r.status_code == 200
    kept = [s for s in demo.state_holder.session_data if s.startswith("probe-session-")]
    assert len(demo.state_holder.session_data) <= 3 and kept == ["probe-session-5", "probe-session-6",
                                                                  "probe-session-7"]


# ---------------------------------------------------------------------------- messages


def test_public_message_hides_server_paths():
    uploads = get_upload_folder()
    assert public_message(f"the file {uploads}/0a1b2c/My photo.png is corrupt") == "the file My photo.png is corrupt"
    assert public_message("cannot identify image file '/etc/passwd'") == "cannot identify image file '.../passwd'"
    assert public_message("folder /data/ckpt/broken/editmgt has no config.json") == \
        "folder .../editmgt has no config.json"
    kept = "see https://huggingface.co/WeiChow/EditMGT, WeiChow/EditMGT@0a00f14e, /models, [0.0, 1.0], 1/2"
    assert public_message(kept) == kept


def test_lone_surrogate_in_the_instruction_is_refused_clearly(app):
    _demo, url, _client = app
    event, payload = raw_edit(url, upload(url, EXAMPLE), instruction="make the \ud800 cup red")
    assert event == "error"
    assert "not valid Unicode text" in payload["error"] and "retype or paste it again" in payload["error"]
    with pytest.raises(InputError, match="not valid Unicode text"):
        check_text("a \udc80 b")
    assert check_text("  make it red ") == "make it red"


@pytest.mark.parametrize("value, expected", [
    ("hello", "the image must be an uploaded file, got 'hello'"),
    (5, "the image must be an uploaded file, got 5"),
    ({"path": "/etc/passwd"}, ".../passwd was not uploaded to this server: upload the image"),
    ({"size": 3}, "the image must be an uploaded file"),
])
def test_a_value_that_is_no_upload_gets_a_message_not_a_dump(app, value, expected):
    _demo, url, _client = app
    event, payload = raw_edit(url, value)
    assert event == "error" and expected in payload["error"], payload
    for leak in ("validation error", "pydantic", "/etc", "Traceback"):
        assert leak not in payload["error"]


def test_unreadable_upload_is_named_by_its_own_name_not_a_server_path(app, tmp_path):
    _demo, url, client = app
    notes = tmp_path / "notes.png"
    notes.write_text("this is not an image\n")
    with pytest.raises(AppError) as err:
        edit(client, notes)
    message = str(err.value)
    assert message.startswith("notes.png is not an image that can be read") and "use PNG, JPEG" in message
    assert get_upload_folder() not in message and "/tmp" not in message


def test_bad_scheduler_json_names_the_file_and_what_is_wrong(tiny_checkpoint, tmp_path):
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, broken)
    config = broken / "scheduler" / "scheduler_config.json"
    config.write_text('{"mask_token_id": 63,, }')
    key = ComponentKey("scheduler", str(broken), None, "scheduler", False, "cpu", "float32")
    with pytest.raises(CheckpointError) as err:
        PipelineLoader(local_files_only=True).load(key, None)
    message = str(err.value)
    assert "scheduler/scheduler_config.json is not valid JSON" in message and "line 1 column 22" in message
    assert "restore it from the checkpoint" in message and str(tmp_path) not in message
    config.write_text("[63]")
    with pytest.raises(CheckpointError, match="scheduler_config.json must hold a JSON object, got list"):
        scheduler_settings(broken, "scheduler")
    config.unlink()
    assert scheduler_settings(broken, "scheduler") == {}


# ---------------------------------------------------------------------------- MCP


def test_mcp_lists_the_endpoints_with_argument_meanings_and_runs_them(app):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    _demo, url, _client = app
    buf = io.BytesIO()
    Image.open(EXAMPLE).convert("RGB").resize((96, 64)).save(buf, format="PNG")
    photo = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    async def session_run():
        async with streamablehttp_client(url + "gradio_api/mcp/") as (read, write, _session_id):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = {t.name: t for t in (await session.list_tools()).tools}
                models = await asyncio.wait_for(session.call_tool("models", {}), 60)
                edited = await asyncio.wait_for(session.call_tool(
                    "edit", {"image": photo, "instruction": "make the cup red", "model": "tiny", "steps": 2,
                             "seed": 11}), 120)
                refused = await asyncio.wait_for(session.call_tool(
                    "edit", {"image": photo, "instruction": "   ", "model": "tiny"}), 60)
                return tools, models, edited, refused

    tools, models, edited, refused = asyncio.run(session_run())
    assert set(tools) == {"edit", "sweep", "generate", "models"}
    schema = tools["edit"].inputSchema
    assert schema["required"] == ["image", "instruction"]
    for name, prop in schema["properties"].items():
        assert len(prop.get("description", "")) > 15, name
    assert settings.spec("steps")["help"] in schema["properties"]["steps"]["description"]
    assert "region-hold" in schema["properties"]["hold_lambda"]["description"]
    assert "what to change" in schema["properties"]["instruction"]["description"]
    assert "lambdas" in tools["sweep"].inputSchema["properties"]
    assert "Edit a photo" in tools["edit"].description
    assert not models.isError and "tiny" in json.dumps([c.model_dump() for c in models.content])
    assert not edited.isError, edited.content[0].text[:3000]
    text = edited.content[0].text  # Gradio sends the outputs as one text: file URLs and the info
    assert "'seed': 11" in text and "'model': 'tiny'" in text
    image_url = re.search(r"'url': '(http://127\.0\.0\.1:\d+/gradio_api/file=[^']+\.png)'", text).group(1)
    with Image.open(io.BytesIO(httpx.get(image_url, timeout=30).content)) as im:
        assert im.size == (96, 64)
    assert refused.isError and "instruction is empty" in refused.content[0].text


# ---------------------------------------------------------------------------- logs


def test_an_unpinned_zoo_revision_is_one_info_line_not_a_warning(caplog):
    raw = yaml.safe_load((ROOT / "checkpoints.yaml").read_text())
    raw = copy.deepcopy(raw)
    entry = next(e for e in raw["models"] if e["id"] == "meissonic")
    entry["source"]["revision"] = "main"
    with caplog.at_level(logging.DEBUG, logger="editmgt.zoo"):
        parse_zoo(raw)
    said = [r for r in caplog.records if r.name == "editmgt.zoo" and "not a commit id" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO and "id 'meissonic'" in said[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_readme_states_the_limits_the_code_enforces():
    readme = (ROOT / "README.md").read_text()
    first_screen = readme.split("## Library")[0]
    commands = [line for line in first_screen.split("```bash")[1].split("```")[0].splitlines() if line.strip()]
    assert len(commands) == 2 and commands[0].startswith("pip install torch==2.13.0 -r requirements.txt -e . ")
    for fact in (f"{MAX_UPLOAD_MB} MB", f"{MAX_PIXELS / 1e6:.1f} megapixels", f"{MAX_ASPECT_RATIO:g}:1",
                 f"{MAX_WORK / 1e6:.0f} megapixel-steps", f"{plots.MAX_PLOT_PIXELS / 2**20:g} megapixel",
                 f"{MAX_SESSIONS:,} client sessions", "/gradio_api/mcp/", "`edit`, `sweep`, `generate` and `models`"):
        assert fact in readme, fact
    assert CACHE_LIFETIME_S == 3600 and "deleted an hour after" in readme
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("mcp>=") for line in requirements)
