"""The page in headless Chromium (Debian `chromium` driven by Playwright): upload an example,
type an instruction, run, and check that the edit, the heat-map and the curve render.
Saves a screenshot; docs/screenshot.png (shown in the README) is written when missing or
when EDITMGT_UPDATE_SCREENSHOT=1, so ordinary runs leave the tree clean."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


@pytest.fixture(scope="module")
def url(tiny_checkpoint):
    import app

    demo, _service = app.create_app(app.parse_args(["--checkpoint", f"tiny={tiny_checkpoint}", "--device", "cpu"]))
    demo.queue(default_concurrency_limit=1)
    _app, url, _share = demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    yield url
    demo.close()


def _image_loaded(page, selector: str) -> None:
    page.wait_for_function(
        """sel => { const imgs = document.querySelectorAll(sel);
                    return imgs.length > 0 && [...imgs].every(i => i.complete && i.naturalWidth > 0); }""",
        arg=selector, timeout=120_000)


def test_edit_in_the_browser(url, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="networkidle")
            page.locator("#source-image input[type=file]").set_input_files(str(ROOT / "examples" / "chelsea.png"))
            _image_loaded(page, "#source-image img")
            page.locator("#instruction textarea").fill("make the cat black")
            page.get_by_text("Advanced").first.click()
            # blank hold-block boxes mean the model's default (a blank number box would send block 0)
            assert page.get_by_label("Hold blocks: first (blank = model default)").first.input_value() == ""
            assert page.get_by_label("Hold blocks: last").first.input_value() == ""
            # the offline default (tiny-shapes) keeps the photo's own pixels where no token changed
            keep = page.locator("#keep-pixels input[type=checkbox]")
            assert keep.is_checked()
            keep.uncheck()
            page.locator("#run-edit").click()
            _image_loaded(page, "#edit-output img")
            _image_loaded(page, "#heatmap img")
            _image_loaded(page, "#curve img")
            _image_loaded(page, "#sweep-gallery img")
            page.wait_for_function("() => document.querySelector('#info').innerText.includes('l1_to_source')",
                                   timeout=30_000)
            assert page.locator("#edit-output img").count() >= 2  # before and after
            info = page.locator("#info").inner_text()
            assert "keep_unchanged_pixels" in info and "false" in info.split("keep_unchanged_pixels", 1)[1][:40]
            assert "ready" in page.locator("#status").inner_text()
            shot = tmp_path / "screenshot.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            docs_shot = ROOT / "docs" / "screenshot.png"
            if os.environ.get("EDITMGT_UPDATE_SCREENSHOT") == "1" or not docs_shot.exists():
                docs_shot.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, docs_shot)
        finally:
            browser.close()
