"""Small things people expect, in a real browser: buttons with names, progress in the tab title, a notification
(and notification.mp3) when pictures arrive in a background tab, and model cards with previews and notes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.test_browser import CHROMIUM, TIMEOUT_MS, _fill, _start, _wait_for_info
from webui.context import BUILTIN_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
                       reason="Debian's chromium is not installed (run_tests.sh installs it)"),
    pytest.mark.skipif(not (BUILTIN_DIR / "atelier-demo.safetensors").exists(), reason="demo model not built"),
]

# What the page does when it is in the background: recorded instead of shown (a headless browser has no
# notification area or speakers), and the tab reports that it has no focus.
BACKGROUND_TAB = """
window.__notes = []; window.__plays = 0;
window.Notification = class { constructor(title, options) { window.__notes.push([title, options.body]); } };
window.Notification.permission = 'granted';
window.Notification.requestPermission = async () => 'granted';
HTMLMediaElement.prototype.play = function () { window.__plays += 1; return Promise.resolve(); };
document.hasFocus = () => false;
"""


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("niceties")
    (root / "notification.mp3").write_bytes(b"ID3" + b"\0" * 64)  # beside settings.json, as A1111 keeps it
    ctx, demo = _start(root)
    yield ctx, demo.local_url
    demo.close()
    ctx.close()


def _open(browser, url: str, init_script: str | None = None):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#txt2img-generate")
    return context, page


def test_icon_buttons_have_names_and_tooltips(browser, studio):
    context, page = _open(browser, studio[1])
    try:
        for name in ("Refresh checkpoints", "Random seed", "Reuse seed", "Swap width and height", "Read parameters"):
            button = page.locator("#tab-txt2img").get_by_role("button", name=name, exact=True) \
                if name != "Refresh checkpoints" else page.get_by_role("button", name=name, exact=True)
            button.wait_for()
            assert button.count() == 1, name
            assert button.get_attribute("title"), f"{name} has a tooltip"
            assert len(button.inner_text().strip()) > 2, f"{name} shows a word, not only an icon"
        page.locator("#tab-txt2img").get_by_role("button", name="Swap width and height", exact=True).click()
    finally:
        context.close()


def test_title_shows_progress_and_a_background_tab_is_notified(browser, studio):
    context, page = _open(browser, studio[1], BACKGROUND_TAB)
    try:
        assert page.title() == "Atelier"
        _fill(page, "#txt2img-prompt textarea", "a blue star on a yellow background")
        _fill(page, "#txt2img-steps input[type=number]", 60)
        page.click("#txt2img-generate")
        page.wait_for_function("() => /^\\[\\d+%\\] Atelier$/.test(document.title)")
        _wait_for_info(page, "txt2img", "Steps: 60")
        page.wait_for_function("() => document.title === 'Atelier'")
        page.wait_for_function("() => window.__notes.length === 1")
        notes = page.evaluate("window.__notes")
        assert notes == [["Atelier", "Your picture is ready"]]
        assert page.evaluate("window.__plays") == 1, "notification.mp3 played"
    finally:
        context.close()


def test_lora_card_gets_the_current_picture_and_notes(browser, studio):
    from tests.support.network_files import write_kohya_lora

    ctx, url = studio
    manager = ctx.manager
    components = manager.load(manager.resolve(None).name).components
    lora = write_kohya_lora(manager.loras.folder / "soft light.safetensors", components)
    context, page = _open(browser, url)
    try:
        _fill(page, "#txt2img-prompt textarea", "a red circle on a green background")
        page.click("#txt2img-generate")
        _wait_for_info(page, "txt2img", "Seed:")
        page.click("#txt2img-networks")
        page.get_by_role("button", name="Refresh cards", exact=True).click()
        page.locator("#txt2img-lora-cards").get_by_text("soft light", exact=True).click()
        page.wait_for_function("() => document.querySelector('#txt2img-prompt textarea').value.includes('soft light')")
        _fill(page, "#txt2img-card-notes textarea", "Warm, low contrast. <b>not bold</b>")
        page.get_by_role("button", name="Save notes", exact=True).click()
        page.wait_for_function("() => document.querySelector('#txt2img-card-status').innerText.includes('Saved')")
        notes = json.loads(lora.with_name("soft light.json").read_text(encoding="utf-8"))
        assert notes == {"notes": "Warm, low contrast. <b>not bold</b>"}
        page.get_by_role("button", name="Use current picture as preview", exact=True).click()
        page.wait_for_function("() => document.querySelector('#txt2img-card-status').innerText.includes('preview')")
        preview = lora.with_name("soft light.preview.png")
        assert preview.is_file()
        from PIL import Image

        assert Image.open(preview).size == (64, 64)
        card = page.locator("#txt2img-lora-cards img").first
        assert re.search(r"\.png|\.webp", card.get_attribute("src") or ""), "the card shows a picture"
    finally:
        context.close()
