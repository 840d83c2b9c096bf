"""The built-in demo upscaler (×2 for the demo model's 64×64 shapes pictures): the shipped file itself.

It must load through spandrel as the architecture it was trained as, and do better than Lanczos on
the demo world: fresh scenes drawn at 64 and enlarged are compared with the same scenes drawn at 128.
Nothing is trained here; ``tools/demo_model/train_upscaler.py`` made the file, and
``benchmarks/demo_upscaler.py`` is the full evaluation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tools.demo_model import shapes
from tools.demo_model.train_upscaler import METADATA_KEY, OUTPUT, drawn_pair, lanczos, psnr

# spandrel imported the way Atelier does, so it loads without torchvision.
from webui.upscalers.spandrel_import import import_spandrel  # noqa: E402

spandrel = import_spandrel()


@pytest.fixture(scope="module")
def upscaler():
    import torch

    torch.set_num_threads(2)
    descriptor = spandrel.ModelLoader().load_from_file(OUTPUT)
    descriptor.model.eval()
    return descriptor


def enlarge(descriptor, image: Image.Image) -> Image.Image:
    import torch

    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        out = descriptor(tensor)[0]
    return Image.fromarray(out.permute(1, 2, 0).mul(255.0).round().byte().numpy())


def test_shipped_file_is_a_small_compact_2x(upscaler):
    from safetensors import safe_open

    assert OUTPUT.stat().st_size < 5 * 10**6
    assert upscaler.architecture.id == "Compact"  # Real-ESRGAN's SRVGGNetCompact
    assert upscaler.scale == 2 and upscaler.input_channels == 3 and upscaler.output_channels == 3
    with safe_open(str(OUTPUT), "pt") as fh:
        metadata = fh.metadata()
        arch = json.loads(metadata[METADATA_KEY])
    assert metadata["scale"] == "2"
    assert arch["upscale"] == 2 and arch["num_feat"] == upscaler.model.num_feat
    out = enlarge(upscaler, Image.new("RGB", (48, 40), (30, 60, 225)))
    assert out.size == (96, 80)


def test_beats_lanczos_on_fresh_scenes_and_keeps_what_they_show(upscaler):
    rng = np.random.default_rng(4242)  # not a seed the training used
    ours, theirs = [], []
    for _ in range(8):
        scene = shapes.random_scene(rng)
        low, truth = drawn_pair(scene)
        enlarged = enlarge(upscaler, low)
        assert enlarged.size == truth.size
        assert shapes.classify(enlarged) == shapes.classify(truth), scene
        ours.append(psnr(enlarged, truth))
        theirs.append(psnr(lanczos(low), truth))
    assert np.mean(ours) > np.mean(theirs) + 1.0, (ours, theirs)
    assert sum(a > b for a, b in zip(ours, theirs, strict=True)) >= 7, (ours, theirs)
