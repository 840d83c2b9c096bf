"""Outpainting on the demo model: the canvas grows, the old picture stays, the new area is the background."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.context import BUILTIN_DIR
from webui.pipelines.images import extend_canvas
from webui.pipelines.request import GenerationRequest, RequestError

DEMO = BUILTIN_DIR / "atelier-demo.safetensors"
PROMPT = "a red circle on a blue background"


def test_the_canvas_grows_with_stretched_edges_and_a_seam_to_repaint():
    picture = Image.new("RGB", (32, 24), (10, 20, 200))
    picture.putpixel((31, 5), (255, 0, 0))
    canvas, mask = extend_canvas(picture, None, (0, 16, 8, 0), seam=4)
    assert canvas.size == (48, 32)
    assert canvas.getpixel((47, 13)) == (255, 0, 0), "the right edge is stretched outward"
    m = np.asarray(mask) > 0
    assert m[:8].all() and m[:, 32:].all(), "the new area is repainted"
    assert m[8:12, :].all() and m[:, 28:32].all(), "and a seam into the picture on the extended sides"
    assert not m[12:, :28].any(), "the rest of the picture is kept"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from webui.config import load_settings
    from webui.context import AppContext, builtin_checkpoints

    if not DEMO.exists():
        pytest.skip("demo model not built")
    root = tmp_path_factory.mktemp("outpaint")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    ctx = AppContext.create(load_settings({"settings_file": root / "s.json", "models_dir": root / "models",
                                           "outputs_dir": root / "out", "device": "cpu", "precision": "fp32"}, env={}))
    yield ctx, next(e.name for e in builtin_checkpoints() if e.path == DEMO)
    ctx.close()


@pytest.mark.slow
def test_outpainting_keeps_the_picture_and_fills_the_new_area_with_background(demo):
    from webui.pipelines.generate import generate

    ctx, name = demo
    base = GenerationRequest(prompt=PROMPT, checkpoint=name, steps=20, width=64, height=64, seed=3,
                             sampler="Euler a", save_images=False)
    picture = generate(ctx.manager, base).images[0]
    result = generate(ctx.manager, base.replace(init_image=picture, denoising_strength=1.0, outpaint_right=32,
                                                outpaint_bottom=16, mask_blur=4, masked_content="fill"))
    out = np.asarray(result.images[0], dtype=np.int16)
    assert out.shape == (80, 96, 3)
    kept = np.asarray(picture, dtype=np.int16)[:64 - 16 - 12, :64 - 16 - 12]  # beyond the seam and its blur
    assert np.array_equal(out[:kept.shape[0], :kept.shape[1]], kept), "the old pixels are exactly as they were"
    background = np.median(np.asarray(picture, dtype=np.int16)[:4, :4].reshape(-1, 3), axis=0)
    new_area = out[:, 64:].reshape(-1, 3)
    assert np.abs(np.median(new_area, axis=0) - background).max() < 40, "the new area continues the background"
    noise = np.random.default_rng(0).integers(0, 256, new_area.shape)
    assert new_area.std(axis=0).mean() < noise.std(axis=0).mean() / 2, "not noise"


def test_outpainting_fields_are_checked():
    picture = Image.new("RGB", (64, 64))
    with pytest.raises(RequestError) as caught:
        GenerationRequest(init_image=picture, width=64, height=64, outpaint_left=12).validate()
    assert caught.value.field == "outpaint_left" and "multiple of 8" in str(caught.value)
    with pytest.raises(RequestError) as caught:
        GenerationRequest(outpaint_top=64, width=64, height=64).validate()
    assert caught.value.field == "init_image"
    with pytest.raises(RequestError) as caught:
        GenerationRequest(init_image=picture, width=4000, height=64, outpaint_right=512).validate()
    assert caught.value.field == "outpaint_left"
