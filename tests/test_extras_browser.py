"""The Extras tab in a real browser (Debian's chromium through playwright): drop a picture, pick an upscaler
model, Generate, and get the enlarged picture shown and saved with its Postprocess infotext."""

from __future__ import annotations

import io
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.upscaler_files import compact_state, write_upscaler
from webui.outputs import read_infotext

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "tests" / "_output" / "screenshots"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
                       reason="Debian's chromium is not installed (run_tests.sh installs it)"),
]


def test_the_extras_tab_enlarges_a_dropped_picture(tmp_path):
    from playwright.sync_api import sync_playwright

    from webui.config import load_settings
    from webui.context import AppContext
    from webui.ui.app import launch

    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    write_upscaler(tmp_path / "models" / "ESRGAN" / "tiny-2x.pth", compact_state(2, seed=7))
    settings = load_settings({"settings_file": tmp_path / "settings.json", "models_dir": tmp_path / "models",
                              "outputs_dir": tmp_path / "outputs", "device": "cpu", "precision": "fp32",
                              "include_builtin": False, "autolaunch": False, "port": 0}, env={})
    ctx = AppContext.create(settings)
    demo = launch(ctx, server_port=None, prevent_thread_lock=True, quiet=True)
    source = tmp_path / "source.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB").save(source)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(120_000)
            page.goto(demo.local_url)
            page.get_by_role("tab", name="Extras").click()
            page.set_input_files("#extras-image input[type=file]", str(source))
            page.click("#extras-upscaler-1 input")
            page.get_by_role("option", name="tiny-2x").click()
            page.click("#extras-generate")
            page.wait_for_function("document.querySelector('#extras-info').innerText.includes('Postprocess')")
            assert "Postprocess upscale by: 2, Postprocess upscaler: tiny-2x" in page.inner_text("#extras-info")
            src = page.eval_on_selector("#extras-gallery img", "e => e.src")
            with urllib.request.urlopen(src) as response:
                assert Image.open(io.BytesIO(response.read())).size == (80, 60)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "extras.png"), full_page=True)
            browser.close()
        saved = next((ctx.settings.outputs_dir / "extras-images").rglob("*.png"))
        assert read_infotext(saved) == "Postprocess upscale by: 2, Postprocess upscaler: tiny-2x"
    finally:
        demo.close()
        ctx.close()
