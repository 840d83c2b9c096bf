"""Hires fix and outpainting from the page, in a real browser on the demo model."""

from __future__ import annotations

import pytest

from tests.test_browser import (  # noqa: F401 (fixtures)
    _fill,
    _gallery_images,
    _screenshot,
    _tab,
    _wait_for_info,
    page_at,
    pytestmark,
    server,
)

pytestmark = [*pytestmark, pytest.mark.slow]  # noqa: F811


def test_hires_fix_from_the_page_doubles_the_size_and_says_so(page_at, server):  # noqa: F811
    from PIL import Image

    ctx, _ = server
    page = page_at()
    _fill(page, "#txt2img-prompt textarea", "a green square on an orange background")
    _fill(page, "#txt2img-seed input", 77)
    _fill(page, "#txt2img-steps input[type=number]", 6)
    page.get_by_text("Hires. fix", exact=True).click()
    page.get_by_label("Hires. fix: upscale and denoise again at the larger size").check()
    page.click("#txt2img-generate")
    info = _wait_for_info(page, "txt2img", "Hires upscale")
    assert "Hires upscale: 2" in info and "Hires upscaler: Latent" in info and "Size: 64x64" in info
    saved = sorted((ctx.settings.outputs_dir / "txt2img-images").rglob("*-77.png"))
    assert saved, "the picture is saved"
    with Image.open(saved[-1]) as image:
        assert image.size == (128, 128)
    images = _gallery_images(page, "txt2img")
    assert images and images[0].size == (128, 128)
    _screenshot(page, "txt2img-hires")
