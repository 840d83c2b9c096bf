"""The normal_bae preprocessor (Bae et al.'s NNET, ``scannet.pt``): random weights saved in the original
file's layout (``{"model": state_dict}`` .pth, and a flat .safetensors) run through the entry the preview
button and ``POST /controlnet/detect`` use. The net has ~73M parameters, so each file is written once and run
once, at a small resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from webui.controlnet import preprocess
from webui.controlnet.annotator_store import AnnotatorFileError, AnnotatorStore
from webui.controlnet.nets import normal_bae


def picture() -> Image.Image:
    image = Image.new("RGB", (150, 100), "white")
    ImageDraw.Draw(image).ellipse((30, 20, 90, 80), fill=(90, 60, 30))
    return image


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """One random net: as the original scannet.pt ({"model": ...}), and as a .safetensors in a sub-folder."""
    root = tmp_path_factory.mktemp("normal_bae")
    pth, st = root / "pth" / "ControlNetAnnotators", root / "st" / "ControlNetAnnotators" / "normal_bae"
    pth.mkdir(parents=True)
    st.mkdir(parents=True)
    torch.manual_seed(0)
    net = normal_bae.NormalBaeNet()
    with torch.no_grad():  # the random trunk's features fade with depth: without biases the decoder follows them
        for layer in net.decoder.modules():
            if isinstance(layer, torch.nn.Conv1d | torch.nn.Conv2d) and layer.bias is not None:
                layer.bias.zero_()
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    torch.save({"model": state}, pth / normal_bae.FILE)
    save_file(state, st / "scannet.safetensors")
    return {"pth": pth, "safetensors": st.parent}


def test_the_net_has_the_original_layout():
    """B5's stage depths (B0's x2.2, rounded up) and widths (x1.6, to multiples of 8), as the file's names say."""
    shapes = {k: tuple(v.shape) for k, v in normal_bae.NormalBaeNet().state_dict().items()}
    trunk = "encoder.original_model."
    depths = [len({k.split(".")[4] for k in shapes if k.startswith(f"{trunk}blocks.{stage}.")}) for stage in range(7)]
    assert depths == [3, 5, 5, 7, 7, 9, 3]
    assert shapes[f"{trunk}conv_stem.weight"] == (48, 3, 3, 3)
    assert shapes[f"{trunk}blocks.0.0.se.conv_reduce.weight"] == (12, 48, 1, 1)
    assert shapes[f"{trunk}blocks.1.0.se.conv_reduce.weight"] == (6, 144, 1, 1), "SE: a quarter of the input"
    assert shapes[f"{trunk}blocks.4.6.conv_pwl.weight"] == (176, 1056, 1, 1)
    assert shapes[f"{trunk}conv_head.weight"] == (2048, 512, 1, 1) and f"{trunk}bn2.running_var" in shapes
    assert shapes["decoder.up1._net.0.weight"] == (1024, 2048 + 176, 3, 3)
    assert shapes["decoder.out_conv_res4.0.weight"] == (128, 516, 1)
    assert shapes["decoder.out_conv_res1.6.weight"] == (4, 128, 1)


def test_tensorflow_same_padding_pads_the_right_and_bottom_of_a_strided_conv():
    conv = normal_bae.SameConv2d(1, 1, 3, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        out = conv(torch.ones(1, 1, 4, 4))
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]], "nothing padded on the top and left"
    assert normal_bae.SameConv2d(1, 1, 5, 2)(torch.ones(1, 1, 7, 7)).shape == (1, 1, 4, 4)


def test_normal_bae_makes_a_normal_map_of_the_resolution_from_both_layouts(folders):
    maps = {}
    for layout in ("pth", "safetensors"):
        map_ = preprocess.detect_map("normal_bae", picture(), 64, annotators_dir=AnnotatorStore(folders[layout]))
        assert map_.mode == "RGB" and map_.size == (96, 64), layout  # short side 100 -> 64, aspect kept
        maps[layout] = np.asarray(map_)
    assert np.array_equal(maps["pth"], maps["safetensors"])
    normals = maps["pth"].astype(np.float32) / 255.0 * 2.0 - 1.0
    length = np.linalg.norm(normals, axis=-1)
    assert np.abs(length - 1.0).max() < 0.03, "every pixel's colour is a unit normal"
    assert len(np.unique(maps["pth"].reshape(-1, 3), axis=0)) > 10, "the normals vary over the picture"


def test_the_full_resolution_prediction_is_drawn_as_the_extension_colours_it():
    """A net whose last refinement answers (0, 0, 1) everywhere: a surface facing the viewer, lavender."""
    net = normal_bae.NormalBaeNet().eval()
    last = net.decoder.out_conv_res1[6]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0]))
    with torch.inference_mode():
        drawn = normal_bae.predict(net, np.full((64, 96, 3), 128, np.uint8), torch.device("cpu"))
    assert drawn.shape == (64, 96, 3) and drawn.dtype == np.uint8
    assert (drawn == (127, 127, 255)).all()
    known = np.array([[[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [1.0, -1.0, 0.5], [0.0, 2.0, -3.0]]], np.float32)
    assert normal_bae.to_picture(known).tolist() == [[[127, 127, 0], [0, 127, 127], [255, 0, 191], [127, 255, 0]]]


def test_a_file_with_other_tensors_is_named_in_the_message(tmp_path):
    folder = tmp_path / "ControlNetAnnotators"
    folder.mkdir()
    foreign = {"encoder.original_model.conv_stem.weight": torch.zeros(32, 3, 3, 3),
               "decoder.extra.weight": torch.zeros(4)}
    torch.save({"model": foreign}, folder / normal_bae.FILE)
    with pytest.raises(AnnotatorFileError) as raised:
        preprocess.detect_map("normal_bae", picture(), 64, annotators_dir=folder, field="controlnet_module")
    message = str(raised.value)
    assert normal_bae.FILE in message and "not the normal_bae" in message and raised.value.field == "controlnet_module"
    assert "decoder.extra.weight" in message and "encoder.original_model.conv_stem.weight" in message
    assert "tensors missing" in message and "of other shapes" in message
