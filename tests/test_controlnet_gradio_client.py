"""The page's own Gradio endpoints take ControlNet pictures: a gradio_client call sends a unit's control image
and mask by name (the last, optional parameters), on the demo model and the demo ControlNet."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tools.demo_model import outlines, positions

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    from tests.test_browser import _start
    from webui.context import BUILTIN_DIR

    if not (BUILTIN_DIR / "atelier-demo.safetensors").exists():
        pytest.skip("demo model not built")
    ctx, demo = _start(tmp_path_factory.mktemp("cn-client"))
    yield ctx, demo.local_url
    demo.close()
    ctx.close()


def test_a_client_sends_a_units_image_and_mask_by_name(page_server, tmp_path):
    from gradio_client import Client, handle_file

    from webui.context import BUILTIN_LABEL

    ctx, url = page_server
    title = next(t for t in ctx.manager.controlnets.titles() if t.startswith("atelier-demo-outline"))
    client = Client(url, download_files=str(tmp_path / "dl"), verbose=False)
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/txt2img"]["parameters"]
    last = [(p["parameter_name"], p["parameter_has_default"]) for p in params[-6:]]
    assert last == [(f"controlnet_{i}_{kind}", True) for i in range(3) for kind in ("image", "mask")], last

    control = outlines.to_rgb(outlines.outline_map(positions.grid_scene("yellow", "star", "blue", "in the top left")))
    control.save(tmp_path / "map.png")
    half = np.zeros((64, 64), dtype=np.uint8)
    half[:, :32] = 255  # the left half is masked: drawn; the right half is the unit's picture, pasted back
    Image.fromarray(half, "L").save(tmp_path / "mask.png")
    checkpoint = next(e.title for e in ctx.registry.entries() if e.title.startswith(BUILTIN_LABEL))
    gallery, info, *_ = client.predict(
        checkpoint=checkpoint, prompt="a yellow star on a blue background", negative_prompt="", steps=4, seed=0,
        width=64, height=64, controlnet_0_enabled=True, controlnet_0_model=title, controlnet_0_module="inpaint_only",
        controlnet_0_image=handle_file(str(tmp_path / "map.png")),
        controlnet_0_mask=handle_file(str(tmp_path / "mask.png")), api_name="/txt2img")
    assert "ControlNet 0" in info and "inpaint_only" in info, info
    with Image.open(gallery[0]["image"]) as image:
        result = np.asarray(image.convert("RGB"))
    expected = np.asarray(control.convert("RGB").resize((64, 64)))
    assert np.array_equal(result[:, 44:], expected[:, 44:]), "outside the mask: the unit's picture"
    assert not np.array_equal(result[:, :20], expected[:, :20]), "inside the mask: drawn"
