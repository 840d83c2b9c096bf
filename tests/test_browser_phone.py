"""The studio on a phone: Debian's chromium emulating a 390x844 touch screen against a signed-in server.

A friend signs in, types a prompt, taps Generate, and sees the picture within the first screen and a half, and
then in the History tab, one tap away in the tab bar; the options wait folded below; every control there is at
least 44 px; the inpaint brush paints by touch and the change stays inside the painted region. The desktop layout
is unchanged by any of it.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_browser import CHROMIUM, SCREENSHOTS, TIMEOUT_MS, _fill, _wait_for_info
from tools.demo_model import shapes
from webui.context import BUILTIN_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
                       reason="Debian's chromium is not installed (run_tests.sh installs it)"),
    pytest.mark.skipif(not (BUILTIN_DIR / "atelier-demo.safetensors").exists(), reason="demo model not built"),
]

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
SCREEN = 844
USER, PASSWORD = "friend", "phone-pass-1"


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from webui.auth import Credentials
    from webui.config import load_settings
    from webui.context import AppContext
    from webui.ui.app import launch

    tmp = tmp_path_factory.mktemp("phone")
    (tmp / "models" / "Stable-diffusion").mkdir(parents=True)
    settings = load_settings({"settings_file": tmp / "settings.json", "models_dir": tmp / "models",
                              "outputs_dir": tmp / "outputs", "device": "cpu", "precision": "fp32",
                              "autolaunch": False, "port": 0, "preview_every_n_steps": 2}, env={})
    ctx = AppContext.create(settings)
    demo = launch(ctx, credentials=Credentials(((USER, PASSWORD),)), server_port=None, prevent_thread_lock=True,
                  quiet=True)
    yield ctx, demo.local_url
    demo.close()
    ctx.close()


def _signed_in(browser, url: str, **device):
    context = browser.new_context(**device)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.fill("input[type=text]", USER)
    page.fill("input[type=password]", PASSWORD)
    page.get_by_role("button", name="Login").tap() if device.get("has_touch") else \
        page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#txt2img-generate")
    page.wait_for_timeout(500)  # the page script's first pass (folds, names)
    return context, page


def _gallery_images(page, mode: str) -> list[Image.Image]:
    """The gallery's pictures, fetched with the page's own sign-in."""
    sources = page.eval_on_selector_all(f"#{mode}-gallery img", "els => els.map(e => e.src)")
    return [Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB") for src in dict.fromkeys(sources)]


def _top(page, selector: str) -> float:
    """Where an element starts, in page coordinates (how far down a user scrolls to reach it)."""
    return page.evaluate("(sel) => document.querySelector(sel).getBoundingClientRect().top + window.scrollY",
                         selector)


def _small_controls(page, below: float) -> list[str]:
    """Visible buttons, tabs and inputs starting above ``below`` that are under 44 px either way (a dropdown's
    text field counts as its whole box)."""
    return page.evaluate("""(below) => Array.from(document.querySelectorAll(
        'button, [role=tab], input:not([type=range]), select, textarea')).filter(e => {
          const r = e.getBoundingClientRect(), s = getComputedStyle(e);
          if (!r.width || !r.height || s.visibility === 'hidden' || r.top + window.scrollY > below) return false;
          if (e.closest('.wrap-inner') || e.closest('[aria-hidden=true]')) return false;
          return r.width < 44 || r.height < 44;
        }).map(e => `${e.tagName} ${e.id || e.getAttribute('aria-label') || e.innerText.slice(0, 20)} `
                   + `${Math.round(e.getBoundingClientRect().width)}x${Math.round(e.getBoundingClientRect().height)}`)
    """, below)


def test_sign_in_prompt_generate_and_the_picture_is_near_the_top(browser, studio):
    ctx, url = studio
    context, page = _signed_in(browser, url, **PHONE)
    try:
        assert _top(page, "#txt2img-prompt") < _top(page, "#txt2img-generate") < _top(page, "#txt2img-gallery")
        assert _top(page, "#txt2img-generate") < SCREEN, "Generate is on the first screen"
        assert not page.locator("#txt2img-sampler").is_visible(), "the options wait folded below"
        assert _top(page, "[aria-controls='txt2img-sampling-row']") > _top(page, "#txt2img-gallery")
        assert _small_controls(page, 1.5 * SCREEN) == []
        page.locator("#txt2img-prompt textarea").tap()
        page.keyboard.type("a yellow star on a blue background")
        page.locator("[aria-controls='txt2img-seed-row']").tap()  # the folded group with the seed
        _fill(page, "#txt2img-seed input", 3)
        page.locator("#txt2img-generate").tap()
        _wait_for_info(page, "txt2img", "Seed: 3")
        picture = page.locator("#txt2img-gallery img").first
        box = picture.bounding_box()
        top = box["y"] + page.evaluate("window.scrollY")
        assert top + box["height"] <= 1.5 * SCREEN, f"the picture ends at {top + box['height']:.0f} px"
        assert _gallery_images(page, "txt2img")[0].size == (64, 64)
        page.screenshot(path=str(_shot("phone-txt2img")), full_page=True)

        toggle = page.locator("[aria-controls='txt2img-sampling-row']")
        toggle.tap()
        page.wait_for_selector("#txt2img-sampler", state="visible")
        assert toggle.get_attribute("aria-expanded") == "true"
        toggle.tap()
        page.wait_for_selector("#txt2img-sampler", state="hidden")

        history = page.get_by_role("tab", name="History")  # in the tab bar itself, not behind a "More tabs" menu
        assert history.is_visible() and page.get_by_role("button", name="More tabs").count() == 0
        page.evaluate("window.scrollTo(0, 0)")
        history.tap()
        page.wait_for_function("() => document.querySelector('#history-page').innerText.includes('of your pictures')")
        page.wait_for_selector("#history-gallery img")
    finally:
        context.close()


def test_the_desktop_layout_is_unchanged(browser, studio):
    _, url = studio
    context, page = _signed_in(browser, url, viewport={"width": 1400, "height": 1000})
    try:
        generate, prompt = page.locator("#txt2img-generate").bounding_box(), page.locator("#txt2img-prompt") \
            .bounding_box()
        assert generate["x"] > prompt["x"] + prompt["width"] and abs(generate["y"] - prompt["y"]) < 40, \
            "Generate sits to the right of the prompt, at its height"
        assert page.locator("#txt2img-sampler").is_visible(), "options are shown, not folded"
        assert page.locator(".atelier-fold-toggle").evaluate_all("els => els.filter(e => e.offsetParent).length") == 0
    finally:
        context.close()


def _touch_stroke(page, points: list[tuple[float, float]]) -> None:
    """One finger drawing through ``points`` (viewport coordinates), as a phone sends it."""
    cdp = page.context.new_cdp_session(page)
    kinds = ["touchStart"] + ["touchMove"] * (len(points) - 1)
    for kind, (x, y) in zip(kinds, points, strict=True):
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
        page.wait_for_timeout(30)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def test_inpaint_brush_paints_by_touch(browser, studio, tmp_path):
    picture = shapes.draw(shapes.Scene("green", "circle", "blue"))
    source = tmp_path / "green-circle.png"
    picture.save(source)
    _, url = studio
    context, page = _signed_in(browser, url, **PHONE)
    try:
        page.locator("#tab-inpaint-button").tap()
        page.wait_for_selector("#inpaint-editor .empty")
        page.wait_for_timeout(300)
        page.set_input_files("#inpaint-editor input[type=file]", str(source))
        page.wait_for_function("!document.querySelector('#inpaint-editor').innerText.includes('Upload an image')")
        page.wait_for_timeout(500)
        assert _top(page, "#inpaint-editor") < _top(page, "#inpaint-generate") < _top(page, "#inpaint-gallery")
        canvas = page.locator("#inpaint-editor canvas").first
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        zoom = float(page.inner_text("#inpaint-editor").split("%")[0].split()[-1]) / 100

        def screen(x: float, y: float) -> tuple[float, float]:
            return box["x"] + box["width"] / 2 + (x - 32) * zoom, box["y"] + box["height"] / 2 + (y - 32) * zoom

        before = page.evaluate("window.scrollY")
        _touch_stroke(page, [screen(14 + i, 14 + i) for i in range(0, 5)])
        assert page.evaluate("window.scrollY") == before, "the finger painted; the page did not scroll"
        _fill(page, "#inpaint-prompt textarea", "a red circle on a blue background")
        page.locator("[aria-controls='inpaint-seed-row']").tap()
        _fill(page, "#inpaint-seed input", 1)
        page.locator("[aria-controls='inpaint-strength-row']").tap()
        _fill(page, "#inpaint-strength input[type=number]", 1)
        page.locator("#inpaint-generate").tap()
        _wait_for_info(page, "inpaint", "Seed: 1")
        result = np.asarray(_gallery_images(page, "inpaint")[0], dtype=int)
        changed = np.abs(result - np.asarray(picture, dtype=int)).sum(axis=2) > 6
        assert changed[:32, :32].sum() > 20, "the painted spot is repainted"
        rows, cols = np.where(changed)
        assert not changed[44:, :].any() and not changed[:, 44:].any(), \
            f"changes outside the painted region: rows {rows.min()}-{rows.max()}, columns {cols.min()}-{cols.max()}"
        page.screenshot(path=str(_shot("phone-inpaint")), full_page=True)
    finally:
        context.close()


def _shot(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"
