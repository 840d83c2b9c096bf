"""The studio in a real browser: Debian's chromium driven by playwright against the real server.

The server runs the built-in demo model (64×64, fast on the CPU). Screenshots of every tab are
saved under tests/_output/screenshots/ for a reviewer to look at.
"""

from __future__ import annotations

import io
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.browser import CHROMIUM
from tools.demo_model import shapes
from webui.context import BUILTIN_DIR

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "tests" / "_output" / "screenshots"
TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.slow,  # a real Chromium against live servers
    pytest.mark.skipif(shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
                       reason="Debian's chromium is not installed (run_tests.sh installs it)"),
    pytest.mark.skipif(not (BUILTIN_DIR / "atelier-demo.safetensors").exists(), reason="demo model not built"),
]


def _start(tmp: Path, credentials=None):
    from webui.config import load_settings
    from webui.context import AppContext
    from webui.ui.app import launch

    (tmp / "models" / "Stable-diffusion").mkdir(parents=True)
    settings = load_settings({"settings_file": tmp / "settings.json", "models_dir": tmp / "models",
                              "outputs_dir": tmp / "outputs", "device": "cpu", "precision": "fp32",
                              "autolaunch": False, "port": 0, "preview_every_n_steps": 2}, env={})
    ctx = AppContext.create(settings)
    demo = launch(ctx, credentials=credentials, server_port=None, prevent_thread_lock=True, quiet=True)
    return ctx, demo


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ctx, demo = _start(tmp_path_factory.mktemp("browser"))
    yield ctx, demo.local_url
    demo.close()
    ctx.close()


@pytest.fixture
def page_at(browser, server):
    contexts = []

    def open_page():
        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server[1])
        page.wait_for_selector("#txt2img-generate")
        return page

    yield open_page
    for context in contexts:
        context.close()


def _fill(page, selector: str, value) -> None:
    page.fill(selector, str(value))
    page.locator(selector).dispatch_event("input")


def _gallery_images(page, mode: str) -> list[Image.Image]:
    sources = page.eval_on_selector_all(f"#{mode}-gallery img", "els => els.map(e => e.src)")
    images = []
    for src in dict.fromkeys(sources):  # the gallery may show a thumbnail and the selected image
        with urllib.request.urlopen(src) as response:
            images.append(Image.open(io.BytesIO(response.read())).convert("RGB"))
    return images


def _wait_for_info(page, mode: str, text: str) -> str:
    page.wait_for_function(
        "([sel, text]) => { const el = document.querySelector(sel); return el && el.innerText.includes(text); }",
        arg=[f"#{mode}-info", text])
    return page.inner_text(f"#{mode}-info")


def _screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_txt2img_shows_the_image_and_its_parameters(page_at, server):
    ctx, _ = server
    page = page_at()
    _fill(page, "#txt2img-prompt textarea", "a yellow star on a purple background")
    _fill(page, "#txt2img-seed input", 123)
    page.click("#txt2img-generate")
    info = _wait_for_info(page, "txt2img", "Seed: 123")
    assert "a yellow star on a purple background" in info
    images = _gallery_images(page, "txt2img")
    assert images and images[0].size == (64, 64)
    saved = list((ctx.settings.outputs_dir / "txt2img-images").rglob("*-123.png"))
    assert saved, "the picture is saved under outputs/"
    assert page.inner_text("#txt2img-token-count").startswith("7/75")
    _screenshot(page, "txt2img")


def test_lora_and_embedding_cards_insert_into_the_prompt_and_apply(page_at, server):
    from tests.support.network_files import write_a1111_embedding, write_kohya_lora

    ctx, _ = server
    manager = ctx.manager
    components = manager.load(manager.resolve(None).name).components
    write_kohya_lora(manager.loras.folder / "bold colours.safetensors", components)
    width = components["text_encoder"].get_input_embeddings().embedding_dim
    write_a1111_embedding(manager.embeddings.folders[0] / "swirl.pt", width)
    page = page_at()
    page.click("#txt2img-networks")  # open the accordion
    page.click("#txt2img-refresh-networks")  # files added after the page loaded
    page.locator("#txt2img-lora-cards").get_by_text("bold colours", exact=True).click()
    page.wait_for_function("() => document.querySelector('#txt2img-prompt textarea').value.includes('bold')")
    page.locator("#txt2img-card-tabs").get_by_role("tab", name="Embeddings").click()
    page.locator("#txt2img-embedding-cards").get_by_text("swirl", exact=True).click()
    page.wait_for_function("() => document.querySelector('#txt2img-prompt textarea').value.includes('swirl')")
    prompt = page.input_value("#txt2img-prompt textarea")
    assert prompt == "<lora:bold colours:1>, swirl"
    _fill(page, "#txt2img-prompt textarea", "a red circle on a blue background, " + prompt)
    page.click("#txt2img-generate")
    info = _wait_for_info(page, "txt2img", "Lora hashes")
    assert page.inner_text("#txt2img-token-count").startswith("10/75"), "the tag costs no tokens"
    assert "bold colours: " in info and "TI hashes" in info and "swirl: " in info
    _screenshot(page, "txt2img-networks")


def test_inpaint_changes_only_the_painted_region(page_at, tmp_path):
    picture = shapes.draw(shapes.Scene("green", "circle", "blue"))
    source = tmp_path / "green-circle.png"
    picture.save(source)
    page = page_at()
    _tab(page, "Inpaint")
    page.wait_for_selector("#inpaint-editor .empty")  # the editor is mounted and waits for a picture
    page.wait_for_timeout(300)
    page.set_input_files("#inpaint-editor input[type=file]", str(source))
    # The editor keeps the picture in the page; its "Upload an image" prompt goes away once it is drawn.
    page.wait_for_function("!document.querySelector('#inpaint-editor').innerText.includes('Upload an image')")
    page.wait_for_timeout(500)
    canvas = page.locator("#inpaint-editor canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    # The picture is drawn centred in the canvas at the zoom the editor shows ("528%").
    zoom = float(page.inner_text("#inpaint-editor").split("%")[0].split()[-1]) / 100

    def screen(x: float, y: float) -> tuple[float, float]:
        return box["x"] + box["width"] / 2 + (x - 32) * zoom, box["y"] + box["height"] / 2 + (y - 32) * zoom

    page.mouse.move(*screen(14, 14))  # a short stroke in the top-left quarter
    page.mouse.down()
    page.mouse.move(*screen(18, 18), steps=4)
    page.mouse.up()
    _fill(page, "#inpaint-prompt textarea", "a red circle on a blue background")
    _fill(page, "#inpaint-seed input", 1)
    _fill(page, "#inpaint-strength input[type=number]", 1)
    _screenshot(page, "inpaint-painted")
    page.click("#inpaint-generate")
    _wait_for_info(page, "inpaint", "Seed: 1")
    result = np.asarray(_gallery_images(page, "inpaint")[0], dtype=int)
    original = np.asarray(picture, dtype=int)
    changed = np.abs(result - original).sum(axis=2) > 6
    assert changed[:32, :32].sum() > 20, "the painted spot is repainted"
    rows, cols = np.where(changed)
    assert not changed[44:, :].any() and not changed[:, 44:].any(), \
        f"changes outside the painted region: rows {rows.min()}-{rows.max()}, columns {cols.min()}-{cols.max()}"
    _screenshot(page, "inpaint")


def test_png_info_reads_a_generated_png_and_sends_it_to_txt2img(page_at, server, tmp_path):
    from gradio_client import Client

    ctx, url = server
    client = Client(url, download_files=str(tmp_path / "dl"), verbose=False)
    client.predict(None, "a pink square on a cyan background", "<b>blurry</b>", "Euler a", "Automatic", 12, 64, 64,
                   1, 1, 6.5, 4242, 1, [], "Automatic", api_name="/txt2img")
    saved = next((ctx.settings.outputs_dir / "txt2img-images").rglob("*-4242.png"))
    page = page_at()
    _tab(page, "PNG Info")
    page.set_input_files("#pnginfo-image input[type=file]", str(saved))
    page.wait_for_function("document.querySelector('#pnginfo-info').innerText.includes('4242')")
    text = page.inner_text("#pnginfo-info")
    assert "a pink square on a cyan background" in text and "Euler a" in text
    assert "<b>blurry</b>" in text and page.locator("#pnginfo-info b").count() == 0, "prompt text is escaped"
    _screenshot(page, "png-info")
    page.click("#pnginfo-send-txt2img")
    page.wait_for_function(
        "document.querySelector('#txt2img-prompt textarea').value === 'a pink square on a cyan background'")
    assert page.input_value("#txt2img-negative textarea") == "<b>blurry</b>"
    assert page.input_value("#txt2img-seed input") == "4242"
    assert page.input_value("#txt2img-steps input[type=number]") == "12"
    assert page.input_value("#txt2img-cfg input[type=number]") == "6.5"


XSS = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=2</script>",
       '<svg onload="window.__xss=3"></svg>']


def test_markup_in_prompts_styles_and_png_text_is_shown_as_text(page_at, server, tmp_path):
    from PIL import PngImagePlugin

    page = page_at()
    page.evaluate("window.__xss = 0")
    _fill(page, "#txt2img-prompt textarea", "a red circle " + XSS[0])
    _fill(page, "#txt2img-negative textarea", XSS[1])
    _fill(page, "#txt2img-seed input", 5150)
    page.click("#txt2img-generate")
    info = _wait_for_info(page, "txt2img", "Seed: 5150")
    assert XSS[0] in info and XSS[1] in info, "shown as the user typed it"
    _fill(page, "#txt2img-style-name textarea", XSS[2])
    page.click("#txt2img-save-style")
    page.wait_for_timeout(500)
    page.click("#txt2img-styles input")
    page.get_by_role("option", name=XSS[2]).wait_for()
    page.keyboard.press("Escape")
    picture = tmp_path / "hostile.png"
    text = PngImagePlugin.PngInfo()
    text.add_text("parameters", XSS[0] + "\nNegative prompt: " + XSS[1] + "\nSteps: 3, Seed: 1, Size: 64x64")
    Image.new("RGB", (64, 64)).save(picture, pnginfo=text)
    assert page.evaluate("window.__xss") == 0, "no injected code ran"
    reader = page_at()
    reader.evaluate("window.__xss = 0")
    _tab(reader, "PNG Info")
    reader.set_input_files("#pnginfo-image input[type=file]", str(picture))
    try:
        reader.wait_for_function("document.querySelector('#pnginfo-info').innerText.includes('onerror')")
    finally:
        _screenshot(reader, "png-info-hostile")
    assert XSS[0] in reader.inner_text("#pnginfo-info")
    for shown in (page, reader):
        assert shown.evaluate("window.__xss") == 0, "no injected code ran"
        assert shown.locator("img[src='x']").count() == 0 and shown.locator("svg[onload]").count() == 0


def test_interrupt_stops_a_long_job(page_at):
    page = page_at()
    _fill(page, "#txt2img-prompt textarea", "a blue circle")
    _fill(page, "#txt2img-steps input[type=number]", 150)
    _fill(page, "#txt2img-batch-count input[type=number]", 20)
    page.click("#txt2img-generate")
    page.wait_for_function("document.querySelector('#txt2img-progress').innerText.toLowerCase().includes('step ')")
    _screenshot(page, "txt2img-progress")
    # The page answers while the job runs: the token counter follows a new prompt long before the job ends.
    _fill(page, "#txt2img-prompt textarea", "one two three four five")
    page.wait_for_function("document.querySelector('#txt2img-token-count').innerText.startsWith('5/75')")
    assert "Interrupted" not in page.inner_text("#txt2img-info")
    started = time.monotonic()
    page.click("#txt2img-interrupt")
    _wait_for_info(page, "txt2img", "Interrupted.")
    assert time.monotonic() - started < 60
    assert len(_gallery_images(page, "txt2img")) < 20


def _progress_says(page, mode: str, text: str) -> None:
    page.wait_for_function(f"document.querySelector('#{mode}-progress').innerText.toLowerCase().includes('{text}')")


def test_two_users_get_their_own_images_and_interrupt_only_their_own_job(page_at):
    alice, bob = page_at(), page_at()
    _fill(bob, "#txt2img-prompt textarea", "bob: a green triangle")
    _fill(bob, "#txt2img-steps input[type=number]", 60)
    _fill(bob, "#txt2img-seed input", 2)
    _fill(alice, "#txt2img-prompt textarea", "alice: an orange star")
    _fill(alice, "#txt2img-seed input", 1)
    bob.click("#txt2img-generate")
    _progress_says(bob, "txt2img", "step ")
    alice.click("#txt2img-generate")
    _progress_says(alice, "txt2img", "waiting: yours is next")  # her place in Atelier's queue
    alice.click("#txt2img-interrupt")  # cancels her waiting job; it never reaches Bob's
    cancelled = _wait_for_info(alice, "txt2img", "Cancelled before it started")
    assert "Seed" not in cancelled and len(_gallery_images(alice, "txt2img")) == 0
    alice.click("#txt2img-generate")
    bob_info = _wait_for_info(bob, "txt2img", "Seed: 2")
    alice_info = _wait_for_info(alice, "txt2img", "Seed: 1")
    assert "bob: a green triangle" in bob_info and "Interrupted" not in bob_info and "alice" not in bob_info
    assert "alice: an orange star" in alice_info and "bob" not in alice_info
    assert len(_gallery_images(bob, "txt2img")) == 1 and len(_gallery_images(alice, "txt2img")) == 1


def test_after_a_reload_the_page_shows_the_running_job_then_its_pictures(page_at, server):
    ctx, _ = server
    page = page_at()
    _fill(page, "#txt2img-prompt textarea", "a purple square on a yellow background")
    _fill(page, "#txt2img-steps input[type=number]", 150)
    _fill(page, "#txt2img-batch-count input[type=number]", 2)
    _fill(page, "#txt2img-seed input", 31)
    page.click("#txt2img-generate")
    _progress_says(page, "txt2img", "step ")
    page.reload()
    page.wait_for_selector("#txt2img-generate")
    _progress_says(page, "txt2img", "step ")  # the job went on, and the new page follows it
    _screenshot(page, "txt2img-after-reload")
    _tab(page, "Queue")
    page.wait_for_function("document.querySelector('#queue-jobs').innerText.includes('purple square')")
    assert "running" in page.inner_text("#queue-jobs")
    _screenshot(page, "queue-tab")
    _tab(page, "txt2img")
    info = _wait_for_info(page, "txt2img", "Seed: 31")
    assert "purple square" in info and "Interrupted" not in info
    page.wait_for_function("document.querySelectorAll('#txt2img-gallery img').length >= 2")
    assert len(_gallery_images(page, "txt2img")) == 2
    saved = sorted((ctx.settings.outputs_dir / "txt2img-images").rglob("*-3[12].png"))
    assert [p.stem.split("-")[1] for p in saved] == ["31", "32"], "each picture saved once"


def test_bundled_extensions_work_in_the_page(page_at):
    page = page_at()
    page.click("#txt2img-ext-dynamic-prompts")  # the extension's section
    page.check("#txt2img-dynamic-prompts-enabled input")
    _fill(page, "#txt2img-prompt textarea", "a {red|yellow} circle on a {green|blue} background")
    _fill(page, "#txt2img-seed input", 77)
    page.click("#txt2img-generate")
    info = _wait_for_info(page, "txt2img", "Seed: 77")
    assert "{" not in info.splitlines()[0] and " circle on a " in info.splitlines()[0]
    page.uncheck("#txt2img-dynamic-prompts-enabled input")

    page.click("#txt2img-script input")
    page.get_by_role("option", name="X/Y/Z plot").click()
    page.wait_for_selector("#txt2img-xyz-x-values", state="visible")
    _fill(page, "#txt2img-xyz-x-values textarea", "1, 2")
    _fill(page, "#txt2img-prompt textarea", "a red circle on a blue background")
    page.click("#txt2img-generate")
    _wait_for_info(page, "txt2img", "Seed: 1")
    page.wait_for_function("document.querySelectorAll('#txt2img-gallery img').length >= 3")
    images = _gallery_images(page, "txt2img")
    grid = max(images, key=lambda im: im.width)
    assert grid.width >= 2 * 64 and grid.height > 64, "a labelled grid of two cells"
    _screenshot(page, "txt2img-xyz")


def test_pasted_parameters_fill_the_form(page_at):
    page = page_at()
    _fill(page, "#txt2img-prompt textarea", "a red star\nNegative prompt: dull\nSteps: 33, Sampler: DPM++ 2M, "
          "Schedule type: Karras, CFG scale: 4.5, Seed: 99, Size: 128x192")
    page.click("#txt2img-read-params")
    page.wait_for_function("document.querySelector('#txt2img-prompt textarea').value === 'a red star'")
    assert page.input_value("#txt2img-negative textarea") == "dull"
    assert page.input_value("#txt2img-seed input") == "99"
    assert page.input_value("#txt2img-steps input[type=number]") == "33"
    assert page.input_value("#txt2img-width input[type=number]") == "128"
    assert page.input_value("#txt2img-height input[type=number]") == "192"


def test_every_tab_renders_and_settings_are_saved(page_at, server):
    import json

    ctx, _ = server
    page = page_at()
    for name, shot in (("img2img", "img2img"), ("Settings", "settings"), ("txt2img", "txt2img-empty")):
        _tab(page, name)
        page.wait_for_timeout(300)
        _screenshot(page, shot)
    assert page.locator("#sd-vae").count() == 1 and page.locator("#clip-skip").count() == 1
    _tab(page, "Settings")
    _fill(page, "#settings-default-steps input[type=number]", 31)
    # A1111's UniPC options under A1111's labels
    page.locator("#settings-uni-pc-variant").get_by_label("bh2").check()
    page.get_by_label("UniPC lower order final").uncheck()
    page.click("#settings-apply")
    page.wait_for_function("document.querySelector('#settings-status').innerText.includes('Saved')")
    stored = json.loads(ctx.settings.settings_file.read_text())
    assert (stored["default_steps"], stored["uni_pc_variant"], stored["uni_pc_lower_order_final"]) == (31, "bh2", False)
    assert (ctx.settings.default_steps, ctx.settings.uni_pc_variant, ctx.settings.uni_pc_order) == (31, "bh2", 3)


def test_auth_refuses_unauthenticated_page_and_api(browser, tmp_path):
    import httpx

    from webui.auth import Credentials

    ctx, demo = _start(tmp_path, credentials=Credentials((("friend", "s3cret-pass"),)))
    try:
        url = demo.local_url
        assert httpx.get(url + "config", timeout=30).status_code in (401, 403)
        run = httpx.post(url + "gradio_api/run/txt2img", json={"data": [None, "x"]}, timeout=30)
        assert run.status_code in (401, 403)
        assert httpx.get(url + "gradio_api/info", timeout=30).status_code in (401, 403)
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("input[type=password]")
        assert page.locator("#txt2img-generate").count() == 0
        page.fill("input[type=password]", "wrong")
        page.fill("input[type=text]", "friend")
        page.get_by_role("button", name="Login").click()
        page.wait_for_timeout(1000)
        assert page.locator("#txt2img-generate").count() == 0
        page.fill("input[type=text]", "friend")
        page.fill("input[type=password]", "s3cret-pass")
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#txt2img-generate")
        context.close()
    finally:
        demo.close()
        ctx.close()
