"""The History tab in a real browser on a signed-in studio: a friend sees only their own pictures, the host
(an admin user) sees everyone's, including pictures the CLI made; parameters, favourites, Send to img2img,
delete to the trash and restore; the index itself is never served."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.test_browser import CHROMIUM, TIMEOUT_MS, _fill, _wait_for_info
from webui.context import BUILTIN_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
                       reason="Debian's chromium is not installed (run_tests.sh installs it)"),
    pytest.mark.skipif(not (BUILTIN_DIR / "atelier-demo.safetensors").exists(), reason="demo model not built"),
]

USERS = (("host", "host-pass-1"), ("friend", "friend-pass-2"))
CLI_TEXT = ("a cli picture <b>bold?</b>\nNegative prompt: none\nSteps: 5, Sampler: Euler a, CFG scale: 7, Seed: 31337, "
            "Size: 64x64, Model: atelier-demo, Version: atelier-0.1.0")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from webui.auth import Credentials
    from webui.config import load_settings
    from webui.context import AppContext
    from webui.outputs import save_image
    from webui.ui.app import launch

    tmp = tmp_path_factory.mktemp("history")
    (tmp / "models" / "Stable-diffusion").mkdir(parents=True)
    settings = load_settings({"settings_file": tmp / "settings.json", "models_dir": tmp / "models",
                              "outputs_dir": tmp / "outputs", "device": "cpu", "precision": "fp32",
                              "autolaunch": False, "port": 0, "admin_users": "host",
                              "save_per_user_folders": True}, env={})
    ctx = AppContext.create(settings)
    save_image(Image.new("RGB", (64, 64), "purple"), tmp / "outputs" / "txt2img-images" / "2024-01-02", 31337,
               CLI_TEXT)  # made by the CLI: no owner, so the host's
    demo = launch(ctx, credentials=Credentials(USERS), server_port=None, prevent_thread_lock=True, quiet=True)
    yield ctx, demo.local_url
    demo.close()
    ctx.close()


def _sign_in(browser, url: str, user: str):
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.fill("input[type=text]", user)
    page.fill("input[type=password]", dict(USERS)[user])
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#txt2img-generate")
    return context, page


def _open_history(page) -> None:
    page.get_by_role("tab", name="History").click()
    page.wait_for_function("() => document.querySelector('#history-page').innerText.trim().length > 0")


def _count(page) -> int:
    return page.locator("#history-gallery img").count()


def test_friend_sees_own_pictures_host_sees_all(browser, studio):
    ctx, url = studio
    context, page = _sign_in(browser, url, "friend")
    try:
        _fill(page, "#txt2img-prompt textarea", "a green circle on a red background")
        _fill(page, "#txt2img-seed input", 5)
        page.click("#txt2img-generate")
        _wait_for_info(page, "txt2img", "Seed: 5")
        saved = list(ctx.settings.outputs_dir.glob("friend/txt2img-images/*/*-5.png"))
        assert saved, "saved under outputs/friend/"
        _open_history(page)
        page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length === 1")
        assert "1 of your pictures" in page.inner_text("#history-page")
        page.locator("#history-gallery img").first.click()
        page.wait_for_function("() => document.querySelector('#history-info').innerText.includes('green circle')")
        page.click("#history-favourite")
        page.wait_for_function("() => document.querySelector('#history-favourite').innerText.includes('⭐')")
        page.check("#history-favourites input")
        page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length === 1")
        page.uncheck("#history-favourites input")
        page.click("#history-send-img2img")
        page.wait_for_function("() => document.querySelector('#img2img-init-image img') !== null")
        assert page.input_value("#img2img-prompt textarea") == "a green circle on a red background"

        # Delete to the trash and restore.
        page.get_by_role("tab", name="History").click()
        page.locator("#history-gallery img").first.click()
        page.click("#history-delete")
        page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length === 0")
        assert not saved[0].exists()
        page.click("#history-trash-panel")
        page.wait_for_function("() => document.querySelectorAll('#history-trash img').length === 1")
        page.locator("#history-trash img").first.click()
        page.click("#history-restore")
        page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length === 1")
        assert saved[0].exists()
    finally:
        context.close()

    context, page = _sign_in(browser, url, "host")
    try:
        _open_history(page)
        page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length === 2")
        assert "2 of everyone's pictures" in page.inner_text("#history-page")
        _fill(page, "#history-seed textarea", "31337")
        page.click("#history-search")
        page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length === 1")
        page.locator("#history-gallery img").first.click()
        page.wait_for_function("() => document.querySelector('#history-info').innerText.includes('cli picture')")
        assert "<b>bold?</b>" in page.inner_text("#history-info"), "markup in a prompt is shown as text"
        assert page.locator("#history-info b").count() == 0
        assert "made by the host" in page.inner_text("#history-info")
        # The index holds everyone's prompts: the file route refuses it, to everyone.
        index = ctx.settings.outputs_dir / ".atelier" / "history" / "index.sqlite"
        assert index.is_file()
        response = page.request.get(f"{url}gradio_api/file={index}")
        assert response.status in (403, 404), response.status
    finally:
        context.close()
