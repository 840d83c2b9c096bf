"""ControlNet from the page, in a real browser on the demo model and the built-in demo ControlNet.

Upload an outline map with a star in the top-left corner into unit 0, enable it with the demo ControlNet
(preprocessor "none"), generate: the star lands in the top left. The preview button shows the map it makes.
"""

from __future__ import annotations

import pytest

from tests.test_browser import (  # noqa: F401 (fixtures)
    _fill,
    _gallery_images,
    _screenshot,
    _wait_for_info,
    page_at,
    pytestmark,
    server,
)
from tools.demo_model import outlines, positions, shapes

pytestmark = [*pytestmark, pytest.mark.slow]  # noqa: F811

DEMO_CONTROLNET = "atelier-demo-outline"


def _choose(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option).click()


def test_an_outline_in_unit_0_puts_the_shape_top_left(page_at, server, tmp_path):  # noqa: F811
    ctx, _ = server
    title = next(t for t in ctx.manager.controlnets.titles() if t.startswith(DEMO_CONTROLNET))
    scene = positions.grid_scene("yellow", "star", "blue", "in the top left")
    outline = tmp_path / "outline.png"
    outlines.to_rgb(outlines.outline_map(scene)).save(outline)

    page = page_at()
    page.click("#txt2img-controlnet")  # the accordion
    page.wait_for_selector("#txt2img-cn0-image", state="visible")
    page.set_input_files("#txt2img-cn0-image input[type=file]", str(outline))
    page.wait_for_selector("#txt2img-cn0-image img")
    page.check("#txt2img-cn0-enable input")
    _choose(page, "txt2img-cn0-model", title)
    assert page.input_value("#txt2img-cn0-module input") == "none"

    page.click("#txt2img-cn0-preview")  # "none" shows the map itself
    page.wait_for_selector("#txt2img-cn0-detected img")

    _fill(page, "#txt2img-prompt textarea", "a yellow star on a blue background")
    _fill(page, "#txt2img-seed input", 0)
    _fill(page, "#txt2img-steps input[type=number]", 20)
    page.click("#txt2img-generate")
    info = _wait_for_info(page, "txt2img", "Seed: 0")
    assert "ControlNet 0" in info and DEMO_CONTROLNET in info, info
    picture = _gallery_images(page, "txt2img")[0]
    _screenshot(page, "txt2img-controlnet")
    x, y = shapes.mass_centre_of(picture)
    assert x < 26 and y < 26, (x, y)  # the middle of the 64×64 picture is 32; the map's star is at ~18
    assert positions.place_of(picture, "star") == "in the top left"


def test_an_enabled_unit_without_an_image_says_so(page_at, server):  # noqa: F811
    ctx, _ = server
    title = next(t for t in ctx.manager.controlnets.titles() if t.startswith(DEMO_CONTROLNET))
    page = page_at()
    page.click("#txt2img-controlnet")
    page.get_by_role("tab", name="ControlNet Unit 1").click()
    page.check("#txt2img-cn1-enable input")
    _choose(page, "txt2img-cn1-model", title)
    page.click("#txt2img-generate")
    page.get_by_text("controlnet_units[1].image: give a control image").first.wait_for()


def test_a_scribble_drawn_on_the_blank_canvas_becomes_the_control_image(page_at):  # noqa: F811
    import io
    import urllib.request

    import numpy as np
    from PIL import Image

    page = page_at()
    page.click("#txt2img-controlnet")
    page.click("#txt2img-cn0-scribble")  # the canvas's accordion
    canvas = page.locator("#txt2img-cn0-canvas canvas").first
    canvas.wait_for(state="visible")
    page.wait_for_timeout(500)
    canvas.scroll_into_view_if_needed()
    # The sketchpad starts with no tool chosen ("select the draw tool to start"): pick the brush.
    page.locator("#txt2img-cn0-canvas button[aria-label*='rush'], #txt2img-cn0-canvas [title*='rush']").first.click()
    page.wait_for_timeout(300)
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + box["width"] * 0.4, y, steps=8)
    page.mouse.up()
    page.wait_for_timeout(300)
    page.click("#txt2img-cn0-use-drawing")
    page.wait_for_selector("#txt2img-cn0-image img")
    _choose(page, "txt2img-cn0-module", "invert")
    page.click("#txt2img-cn0-preview")
    page.wait_for_selector("#txt2img-cn0-detected img")
    src = page.get_attribute("#txt2img-cn0-detected img", "src")
    with urllib.request.urlopen(src) as response:
        detected = np.asarray(Image.open(io.BytesIO(response.read())).convert("L"))
    lines = detected > 128
    assert 0 < lines.mean() < 0.2, lines.mean()  # the stroke, white on black after "invert"
    _screenshot(page, "txt2img-controlnet-scribble")


def test_pasted_parameters_fill_two_units_and_say_the_images_are_missing(page_at, server):  # noqa: F811
    import shutil

    ctx, _ = server
    title = next(t for t in ctx.manager.controlnets.titles() if t.startswith(DEMO_CONTROLNET))
    text = ("a yellow star\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Emphasis: No norm, "
            f'ControlNet 0: "Module: canny, Model: {title}, Weight: 0.6, Resize Mode: Just Resize, Processor Res: '
            "256, Threshold A: 80.0, Threshold B: 160.0, Guidance Start: 0.1, Guidance End: 0.9, Pixel Perfect: "
            'True, Control Mode: My prompt is more important", ControlNet 1: "Module: invert, Model: '
            "control_v11p_sd15_lineart [43d4be0d], Weight: 1.2, Resize Mode: Resize and Fill, Processor Res: -1, "
            "Threshold A: -1, Threshold B: -1, Guidance Start: 0.0, Guidance End: 0.5, Pixel Perfect: False, "
            'Control Mode: ControlNet is more important"')
    page = page_at()
    _fill(page, "#txt2img-prompt textarea", text)
    page.click("#txt2img-read-params")
    page.wait_for_function("document.querySelector('#txt2img-prompt textarea').value === 'a yellow star'")
    page.click("#txt2img-controlnet")
    note = page.locator("#txt2img-cn0-note")
    note.wait_for(state="visible")
    assert "Control image missing" in note.inner_text()
    assert page.is_checked("#txt2img-cn0-enable input") and page.is_checked("#txt2img-cn0-pixel-perfect input")
    assert page.input_value("#txt2img-cn0-module input") == "canny"
    assert page.input_value("#txt2img-cn0-model input") == title
    assert page.input_value("#txt2img-cn0-weight input[type=number]") == "0.6"
    assert page.input_value("#txt2img-cn0-end input[type=number]") == "0.9"
    assert page.input_value("#txt2img-cn0-threshold-a input[type=number]") == "80"
    assert page.locator("#txt2img-cn0-control-mode").get_by_label("My prompt is more important").is_checked()
    assert page.locator("#txt2img-cn0-resize-mode").get_by_label("Just Resize").is_checked()
    assert page.input_value("#txt2img-emphasis input") == "No norm"  # this job's override, shown
    page.get_by_role("tab", name="ControlNet Unit 1").click()
    note = page.locator("#txt2img-cn1-note")
    note.wait_for(state="visible")
    assert "Control image missing" in note.inner_text() and "Model missing" in note.inner_text()
    assert page.is_checked("#txt2img-cn1-enable input")
    assert page.input_value("#txt2img-cn1-module input") == "invert"
    assert page.input_value("#txt2img-cn1-model input") == "None"
    assert page.locator("#txt2img-cn1-control-mode").get_by_label("ControlNet is more important").is_checked()
    _screenshot(page, "txt2img-controlnet-restored")

    # The model arrives: 🔄 lists it without a restart.
    entry = next(e for e in ctx.manager.controlnets.entries() if e.title == title)
    source = entry.weights.parent if entry.weights.parent.name == DEMO_CONTROLNET else entry.weights
    target = ctx.manager.controlnets.folders[0] / "control_v11p_sd15_lineart"
    target.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
    page.get_by_role("button", name="Refresh ControlNet models").first.click()
    page.click("#txt2img-cn1-model input")
    page.get_by_role("option", name="control_v11p_sd15_lineart", exact=False).first.wait_for()


def test_a_page_mask_on_an_inpaint_only_unit_keeps_the_unmasked_half(page_at, server, tmp_path):  # noqa: F811
    import numpy as np
    from PIL import Image

    ctx, _ = server
    title = next(t for t in ctx.manager.controlnets.titles() if t.startswith(DEMO_CONTROLNET))
    control = outlines.to_rgb(outlines.outline_map(positions.grid_scene("yellow", "star", "blue", "in the top left")))
    control.save(tmp_path / "map.png")
    half = np.zeros((64, 64), dtype=np.uint8)
    half[:, :32] = 255  # the left half is masked (drawn); the right half is the unit's picture, pasted back
    Image.fromarray(half, "L").save(tmp_path / "mask.png")

    page = page_at()
    page.click("#txt2img-controlnet")
    page.wait_for_selector("#txt2img-cn0-image", state="visible")
    page.set_input_files("#txt2img-cn0-image input[type=file]", str(tmp_path / "map.png"))
    page.wait_for_selector("#txt2img-cn0-image img")
    assert not page.is_visible("#txt2img-cn0-mask"), "the mask is folded away until asked for"
    page.get_by_role("button", name="Mask (optional: the part to inpaint, or a scribble)").first.click()
    page.get_by_text("Unit 0 mask (white = masked)").first.wait_for()
    page.set_input_files("#txt2img-cn0-mask input[type=file]", str(tmp_path / "mask.png"))
    page.wait_for_selector("#txt2img-cn0-mask img")
    page.check("#txt2img-cn0-enable input")
    _choose(page, "txt2img-cn0-model", title)
    _choose(page, "txt2img-cn0-module", "inpaint_only")
    _fill(page, "#txt2img-prompt textarea", "a yellow star on a blue background")
    _fill(page, "#txt2img-seed input", 0)
    _fill(page, "#txt2img-steps input[type=number]", 4)
    page.click("#txt2img-generate")
    info = _wait_for_info(page, "txt2img", "Seed: 0")
    assert "inpaint_only" in info, info
    result = np.asarray(_gallery_images(page, "txt2img")[0])
    _screenshot(page, "txt2img-controlnet-page-mask")
    expected = np.asarray(control.convert("RGB").resize((64, 64)))
    assert np.array_equal(result[:, 44:], expected[:, 44:]), "outside the page's mask: the unit's picture"
    assert not np.array_equal(result[:, :20], expected[:, :20]), "inside it: drawn"
