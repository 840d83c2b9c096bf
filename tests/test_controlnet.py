"""ControlNet without a model run: units and their errors, infotext, the preprocessors on a known picture, map
fitting, file detection, the original-layout mapping, the model list and its titles."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.controlnet import annotators, catalog, files, layout, maps, preprocess
from webui.controlnet.detect import ControlNetFileError, detect_controlnet
from webui.controlnet.guidance import layer_scales
from webui.controlnet.infotext import format_unit, infotext_params, parse_unit, units_from_params
from webui.controlnet.placement import JOB, PASS, STAY, STREAM, placement
from webui.controlnet.units import (
    ControlMode,
    ControlResizeMode,
    ControlUnit,
    HiresOption,
    UnitError,
    decode_image_data,
)
from webui.errors import AtelierError
from webui.infotext import format_infotext, parse_infotext, request_fields_from_infotext
from webui.models.offload import OffloadMode
from webui.pipelines.request import GenerationRequest


def square(size: int = 128, box: tuple[int, int, int, int] = (32, 32, 95, 95)) -> Image.Image:
    """A black square on white: its edges are known to the pixel."""
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).rectangle(box, fill="black")
    return image


def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------- units
def test_a_unit_from_an_a1111_client_takes_names_indices_and_aliases():
    unit = ControlUnit.from_dict({
        "input_image": b64_png(square(64)), "module": "canny", "model": "control_v11p_sd15_canny [d14c016b]",
        "weight": 0.8, "resize_mode": 0, "lowvram": True, "processor_res": 256, "threshold_a": 50,
        "threshold_b": 150, "guidance_start": 0.1, "guidance": 0.9, "control_mode": 2, "pixel_perfect": True,
        "hr_option": "Low res only", "unknown_field": "ignored as the extension does"})
    assert unit.image is not None and unit.image.size == (64, 64)
    assert unit.resize_mode is ControlResizeMode.JUST_RESIZE and unit.low_vram and unit.guidance_end == 0.9
    assert unit.control_mode is ControlMode.CONTROL and unit.hr_option is HiresOption.LOW_RES_ONLY
    assert isinstance(unit.threshold_a, float) and unit.processor_res == 256
    spelled = ControlUnit.from_dict({"resize_mode": "Inner Fit (Scale to Fit)", "control_mode": "Balanced",
                                     "hr_option": 2, "image": {"image": b64_png(square(32)), "mask": None}})
    assert spelled.resize_mode is ControlResizeMode.CROP_AND_RESIZE and spelled.hr_option is HiresOption.HIGH_RES_ONLY
    assert ControlUnit.from_dict({"resize_mode": "Resize and Fill"}).resize_mode is ControlResizeMode.RESIZE_AND_FILL
    assert ControlUnit.from_dict({"resize_mode": 3}).resize_mode is ControlResizeMode.JUST_RESIZE
    assert ControlUnit.from_dict({"control_mode": "My prompt is more important"}).control_mode is ControlMode.PROMPT


def test_the_extensions_defaults():
    unit = ControlUnit()
    assert (unit.enabled, unit.module, unit.model, unit.weight) == (True, "none", "None", 1.0)
    assert unit.resize_mode is ControlResizeMode.CROP_AND_RESIZE and unit.control_mode is ControlMode.BALANCED
    assert (unit.processor_res, unit.threshold_a, unit.threshold_b) == (-1, -1.0, -1.0)
    assert (unit.guidance_start, unit.guidance_end, unit.pixel_perfect) == (0.0, 1.0, False)
    assert unit.hr_option is HiresOption.BOTH
    filled = ControlUnit(module="canny").with_defaults()
    assert (filled.processor_res, filled.threshold_a, filled.threshold_b) == (512, 100.0, 200.0)


def _request(**unit_fields) -> GenerationRequest:
    unit = {"module": "canny", "model": "m", "image": square(64), **unit_fields}
    return GenerationRequest(prompt="p", width=64, height=64, controlnet_units=[ControlUnit(**unit)])


@pytest.mark.parametrize(("fields", "field"), [
    ({"weight": -1.0}, "controlnet_units[0].weight"),
    ({"weight": float("nan")}, "controlnet_units[0].weight"),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "controlnet_units[0].guidance_start"),
    ({"guidance_end": 1.5}, "controlnet_units[0].guidance_end"),
    ({"module": "no_such_preprocessor"}, "controlnet_units[0].module"),
    ({"model": "None"}, "controlnet_units[0].model"),  # an image but no model
    ({"image": b"not a picture"}, "controlnet_units[0].image"),
    ({"image": Image.new("L", (20000, 8))}, "controlnet_units[0].image"),
    ({"image": None}, "controlnet_units[0].image"),  # txt2img has no picture to fall back on
])
def test_bad_unit_fields_are_named(fields, field):
    with pytest.raises(UnitError) as raised:
        _request(**fields).validate()
    assert raised.value.field == field and field in str(raised.value)
    assert isinstance(raised.value, AtelierError)


def test_img2img_may_leave_the_unit_image_to_the_init_image():
    request = _request(image=None).replace(init_image=square(64))
    request.validate()


def test_a_disabled_unit_or_an_unused_slot_is_not_checked():
    _request(enabled=False, weight=-5.0, module="nonsense").validate()
    _request(model="None", image=None, weight=-5.0).validate()
    assert not ControlUnit().used and ControlUnit(model="x").used and not ControlUnit(model="x", enabled=False).used


@pytest.mark.parametrize(("given", "field"), [
    ({"resize_mode": 7}, "controlnet_units[2].resize_mode"),
    ({"control_mode": "Loud"}, "controlnet_units[2].control_mode"),
    ({"hr_option": True}, "controlnet_units[2].hr_option"),
    ({"weight": "heavy"}, "controlnet_units[2].weight"),
    ({"image": "bm90IGFuIGltYWdl"}, "controlnet_units[2].image"),  # base64 of "not an image"
    ({"image": "%%%"}, "controlnet_units[2].image"),
    ({"enabled": "perhaps"}, "controlnet_units[2].enabled"),
])
def test_bad_client_values_are_named(given, field):
    with pytest.raises(UnitError) as raised:
        ControlUnit.from_dict(given, index=2)
    assert raised.value.field == field


def _png_header_only(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of any size without the memory: zlib packs the all-zero rows to almost nothing."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_a_20000_pixel_map_is_refused_before_it_is_decoded():
    data = base64.b64encode(_png_header_only(20000, 20000)).decode()
    with pytest.raises(UnitError) as raised:
        decode_image_data(data, "controlnet_units[0].image")
    assert "too large" in str(raised.value) and raised.value.field == "controlnet_units[0].image"


# ---------------------------------------------------------------- infotext
EXAMPLE = ('Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Crop and Resize, '
           'Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, '
           'Pixel Perfect: False, Control Mode: Balanced')


def test_infotext_is_written_as_the_extension_writes_it():
    unit = ControlUnit(module="canny", model="control_v11p_sd15_canny [d14c016b]").with_defaults()
    assert format_unit(unit) == EXAMPLE
    text = format_infotext("a cat", "", {"Steps": 20, **infotext_params([ControlUnit(enabled=False), unit])})
    assert f'ControlNet 1: "{EXAMPLE}"' in text and "ControlNet 0" not in text


def test_infotext_round_trip_restores_each_unit_without_its_image():
    units = [ControlUnit(module="canny", model="a [12345678]", weight=0.75, guidance_end=0.5).with_defaults(),
             ControlUnit(enabled=False),
             ControlUnit(module="invert (from white bg & black line)", model="b", control_mode=ControlMode.PROMPT,
                         resize_mode=ControlResizeMode.RESIZE_AND_FILL, pixel_perfect=True).with_defaults()]
    text = format_infotext("a cat", "ugly", {"Steps": 20, "Seed": 1, "Size": "64x64", **infotext_params(units)})
    back = request_fields_from_infotext(text)["controlnet_units"]
    assert len(back) == 3 and not back[1].enabled
    for before, after in ((units[0], back[0]), (units[2], back[2])):
        assert after.image is None and after.enabled
        for name in ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
                     "guidance_start", "guidance_end", "pixel_perfect", "control_mode"):
            assert getattr(after, name) == getattr(before, name), name
    parsed = parse_infotext(text)
    assert units_from_params(parsed)[0].model == "a [12345678]"


def test_a_model_name_with_a_comma_survives_and_junk_is_skipped():
    unit = parse_unit(EXAMPLE.replace("control_v11p_sd15_canny", "canny, v2"))
    assert unit.model == "canny, v2 [d14c016b]" and unit.threshold_b == 200.0
    assert units_from_params({"ControlNet 0": "nothing useful", "ControlNet 900": EXAMPLE}) == []


# ---------------------------------------------------------------- preprocessors
def _white(map_: np.ndarray) -> np.ndarray:
    return map_[..., 0] > 64  # lineart_standard draws its lines at about 127, as the extension


def test_canny_finds_the_squares_edges():
    edges = _white(preprocess.run("canny", square(), 128, 100, 200))
    ys, xs = np.nonzero(edges)
    assert abs(xs.min() - 32) <= 1 and abs(xs.max() - 95) <= 1 and abs(ys.min() - 32) <= 1 and abs(ys.max() - 95) <= 1
    assert not edges[40:88, 40:88].any() and not edges[:24].any(), "nothing inside the square or in the background"
    bigger = preprocess.run("canny", square(), 256)
    assert bigger.shape == (256, 256, 3), "the map comes out at the preprocessor resolution"


def test_invert_and_threshold_and_none():
    picture = square()
    assert np.array_equal(preprocess.run("none", picture), np.asarray(picture))
    inverted = preprocess.run("invert", picture)
    assert inverted[64, 64, 0] == 255 and inverted[5, 5, 0] == 0
    thresholded = preprocess.run("threshold", picture, 128, 127)
    assert thresholded[64, 64, 0] == 0 and thresholded[5, 5, 0] == 255


def test_lineart_standard_and_xdog_draw_white_lines_on_black_where_the_drawing_has_lines():
    drawing = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(drawing).line((20, 64, 108, 64), fill="black", width=3)
    for module in ("lineart_standard", "scribble_xdog"):
        lines = _white(preprocess.run(module, drawing, 128))
        assert lines[62:67, 30:100].mean() > 0.5, module
        assert not lines[:40].any() and not lines[90:].any(), module


def test_tile_resample_shrinks_and_blur_softens():
    picture = square()
    assert preprocess.run("tile_resample", picture, 128, 2.0).shape == (64, 64, 3)
    assert preprocess.run("tile_resample", picture, 128, 1.0).shape == (128, 128, 3)
    blurred = preprocess.run("blur_gaussian", picture, 128, 4.0)
    assert 20 < blurred[64, 31, 0] < 235, "the edge is now a gradient"


def test_shuffle_moves_the_content_repeatably():
    picture = square()
    one, again = preprocess.run("shuffle", picture, 128, seed=5), preprocess.run("shuffle", picture, 128, seed=5)
    other = preprocess.run("shuffle", picture, 128, seed=6)
    assert np.array_equal(one, again) and not np.array_equal(one, other)
    assert not np.array_equal(one, np.asarray(picture)) and set(np.unique(one[..., 0])) <= set(range(256))


def test_pixel_perfect_resolution_is_the_fitted_short_side():
    crop = ControlResizeMode.CROP_AND_RESIZE
    assert preprocess.pixel_perfect_resolution((1024, 768), 512, 512, crop) == 512
    assert preprocess.pixel_perfect_resolution((1024, 768), 512, 512, ControlResizeMode.RESIZE_AND_FILL) == 384
    assert preprocess.pixel_perfect_resolution((300, 200), 768, 512, crop) == 512


def test_annotators_name_the_missing_file_and_where_it_goes(tmp_path):
    folder = tmp_path / "ControlNetAnnotators"
    with pytest.raises(annotators.AnnotatorMissingError) as raised:
        preprocess.run("openpose_full", square(), annotators_dir=folder, field="controlnet_units[0].module")
    message = str(raised.value)
    assert "body_pose_model.pth" in message and "hand_pose_model.pth" in message and str(folder) in message
    assert "lllyasviel/Annotators" in message and raised.value.field == "controlnet_units[0].module"
    (folder / "annotator" / "downloads").mkdir(parents=True)
    (folder / "annotator" / "downloads" / "dpt_hybrid-midas-501f0c75.pt").write_bytes(b"weights")
    with pytest.raises(annotators.AnnotatorMissingError, match="cannot run this annotator yet"):
        preprocess.run("depth_midas", square(), annotators_dir=folder)


def test_the_module_list_has_the_extensions_names_and_labels():
    names, labels = catalog.module_list(), catalog.module_list(alias_names=True)
    assert names[0] == "none" and labels[:1] == ["none"]
    for name in ("canny", "invert", "lineart_standard", "scribble_xdog", "tile_resample", "blur_gaussian", "shuffle",
                 "openpose", "dw_openpose_full", "depth", "depth_anything", "lineart_anime", "hed", "pidinet",
                 "normal_bae", "mlsd"):
        assert name in names
    assert "invert (from white bg & black line)" in labels and "depth_midas" in labels and "softedge_hed" in labels
    assert names.index("canny") < names.index("scribble_xdog"), "priority 100 before priority 0"
    detail = catalog.module_detail()["canny"]
    assert detail["sliders"][1] == {"name": "Low Threshold", "value": 100, "min": 0, "max": 256, "step": 1}
    assert catalog.find("softedge_hed").name == "hed" and catalog.find(None).name == "none"


# ---------------------------------------------------------------- maps
def test_resize_modes_fit_a_wide_map_to_a_square_picture():
    wide = np.zeros((50, 100, 3), dtype=np.uint8)
    wide[:, 45:55] = 255  # a vertical bar in the middle
    wide[:, :5] = 255  # and one at the left edge
    just = maps.fit_map(wide, 64, 64, ControlResizeMode.JUST_RESIZE)
    crop = maps.fit_map(wide, 64, 64, ControlResizeMode.CROP_AND_RESIZE)
    fill = maps.fit_map(wide, 64, 64, ControlResizeMode.RESIZE_AND_FILL)
    assert just.shape == crop.shape == fill.shape == (64, 64, 3)
    assert crop[:, 0].max() == 0, "crop and resize cut the left bar off"
    assert crop[32, 28:36].min() == 255 and just[32, 30:34].min() == 255 and just[32, 20].max() == 0
    assert fill[:14].max() == 0 and fill[32, 0, 0] == 255, "fill letterboxes with the border's median colour"
    assert set(np.unique(just)) <= {0, 255}, "a black-and-white map stays black and white"


# ---------------------------------------------------------------- files and layouts
def _shapes(prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {f"{prefix}input_hint_block.0.weight": (16, 3, 3, 3), f"{prefix}zero_convs.0.0.weight": (32, 32, 1, 1),
            f"{prefix}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}


def test_detection_tells_layouts_and_families_and_names_what_else_a_file_is():
    ldm = detect_controlnet(_shapes("control_model."), "a.pth")
    assert (ldm.layout, ldm.prefix, ldm.family, ldm.union) == ("ldm", "control_model.", "SD 1.x", False)
    assert detect_controlnet(_shapes(), "b").prefix == ""
    xl = detect_controlnet({"controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3), "add_embedding.linear_1.weight":
                            (1280, 2816), "x.attn2.to_k.weight": (640, 2048)}, "c")
    assert (xl.layout, xl.family) == ("diffusers", "SDXL")
    union = detect_controlnet({"controlnet_cond_embedding.conv_in.weight": (1,), "task_embedding": (8, 320)}, "u")
    assert union.union
    for keys, what in ((["adapter.body.0.resnets.0.block1.weight"], "T2I-Adapter"),
                       (["model.diffusion_model.input_blocks.0.0.weight"], "models/Stable-diffusion"),
                       (["lora_unet_down_blocks_0.lora_down.weight"], "models/Lora"),
                       (["lora_controlnet", "input_hint_block.0.weight"], "Control-LoRA")):
        with pytest.raises(ControlNetFileError, match=what):
            detect_controlnet(dict.fromkeys(keys, (1,)), "x.safetensors")


def test_original_names_map_to_diffusers_names():
    names = layout.ldm_to_diffusers([
        "input_blocks.0.0.weight", "input_blocks.1.0.in_layers.2.weight", "input_blocks.2.1.proj_in.weight",
        "input_blocks.3.0.op.weight", "input_blocks.4.0.skip_connection.bias", "middle_block.1.norm.weight",
        "middle_block.2.emb_layers.1.weight", "input_hint_block.0.weight", "input_hint_block.2.weight",
        "input_hint_block.14.weight", "input_hint_block.12.bias", "zero_convs.11.0.weight", "middle_block_out.0.bias",
        "time_embed.2.weight", "label_emb.0.0.weight"])
    assert names == {
        "input_blocks.0.0.weight": "conv_in.weight",
        "input_blocks.1.0.in_layers.2.weight": "down_blocks.0.resnets.0.conv1.weight",
        "input_blocks.2.1.proj_in.weight": "down_blocks.0.attentions.1.proj_in.weight",
        "input_blocks.3.0.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "input_blocks.4.0.skip_connection.bias": "down_blocks.1.resnets.0.conv_shortcut.bias",
        "middle_block.1.norm.weight": "mid_block.attentions.0.norm.weight",
        "middle_block.2.emb_layers.1.weight": "mid_block.resnets.1.time_emb_proj.weight",
        "input_hint_block.0.weight": "controlnet_cond_embedding.conv_in.weight",
        "input_hint_block.2.weight": "controlnet_cond_embedding.blocks.0.weight",
        "input_hint_block.12.bias": "controlnet_cond_embedding.blocks.5.bias",
        "input_hint_block.14.weight": "controlnet_cond_embedding.conv_out.weight",
        "zero_convs.11.0.weight": "controlnet_down_blocks.11.weight",
        "middle_block_out.0.bias": "controlnet_mid_block.bias",
        "time_embed.2.weight": "time_embedding.linear_2.weight",
        "label_emb.0.0.weight": "add_embedding.linear_1.weight",
    }


def test_a_family_mismatch_is_described():
    sd15, sdxl = layout.template(False, False), layout.template(False, True)
    assert layout.mismatch(sd15, sd15) is None
    assert layout.mismatch(sdxl, sd15) == "it is made for SDXL and the checkpoint is SD 1.x"


def test_model_list_titles_use_the_extensions_short_hash(tmp_path):
    models = tmp_path / "models"
    a = models / "ControlNet" / "sub" / "control_v11p_sd15_canny.safetensors"
    b = models / "controlnet" / "t2i.pth"
    for path, size in ((a, 0x120000), (b, 100)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    folder = models / "controlnet" / "union-sdxl"
    folder.mkdir()
    (folder / "config.json").write_text('{"_class_name": "ControlNetUnionModel"}')
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model_promax.safetensors"):
        (folder / name).write_bytes(b"0" * 10)
    entries = files.scan(files.default_controlnet_dirs(models), None)
    assert [e.name for e in entries] == ["control_v11p_sd15_canny", "t2i", "union-sdxl", "union-sdxl_promax"]
    expected = hashlib.sha256(a.read_bytes()[0x100000:0x110000]).hexdigest()[:8]
    assert entries[0].title == f"control_v11p_sd15_canny [{expected}]"
    assert entries[2].weights.name == "diffusion_pytorch_model.safetensors" and entries[2].config is not None
    assert files.find(entries, f"control_v11p_sd15_canny [{expected}]") is entries[0]
    assert files.find(entries, "CONTROL_v11p_sd15_canny [00000000]") is entries[0], "a stale hash still matches"
    assert files.find(entries, expected) is entries[0] and files.find(entries, "None") is None


def test_placement_follows_the_offload_plan():
    assert placement("cpu", OffloadMode.NONE, False) == STAY
    assert placement("cuda", OffloadMode.NONE, False) == JOB
    assert placement("cuda", None, False) == JOB
    assert placement("cuda", OffloadMode.MODEL, False) == PASS
    assert placement("cuda", OffloadMode.SEQUENTIAL, False) == STREAM
    assert placement("cuda", OffloadMode.NONE, True) == STREAM, "low_vram streams the ControlNet"


def test_control_mode_scales_match_the_extension():
    assert layer_scales(13, 0.5, False, False) == [0.5] * 13
    soft = layer_scales(13, 1.0, True, False)
    assert soft[-1] == 1.0 and soft[0] == pytest.approx(0.825 ** 12) and soft[11] == pytest.approx(0.825)
    xl = layer_scales(10, 1.0, True, True)
    assert xl == pytest.approx([0.825 ** (12 - i) for i in range(10)]), "the first 10 of SD's 13, as the extension"


def test_builtin_folder_is_where_the_demo_controlnet_goes():
    assert files.BUILTIN_DIR == Path(files.__file__).parent / "builtin"


def test_xyz_plot_has_controlnet_weight_start_and_end_axes():
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "extensions" / "xyz-plot" / "axes.py"
    spec = importlib.util.spec_from_file_location("xyz_axes_under_test", path)
    assert spec is not None and spec.loader is not None
    axes = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = axes  # its dataclasses look their module up
    spec.loader.exec_module(axes)
    request = _request().replace(controlnet_units=[ControlUnit(enabled=False), ControlUnit(model="m", module="canny")])
    for label, field, text, expected in (("ControlNet weight", "weight", "0-1 [3]", [0.0, 0.5, 1.0]),
                                         ("ControlNet start", "guidance_start", "0, 0.25", [0.0, 0.25]),
                                         ("ControlNet end", "guidance_end", "0.5-1 (+0.25)", [0.5, 0.75, 1.0])):
        axis = axes.AXES[label]
        values = axes.parse_values(axis, text)
        assert values == expected
        changed = axis.apply(request, values[-1], values)
        assert getattr(changed.controlnet_units[1], field) == values[-1]
        assert changed.controlnet_units[0] == request.controlnet_units[0], "a disabled unit is left alone"
    with pytest.raises(axes.AxisError, match="enable a ControlNet unit"):
        axes.AXES["ControlNet weight"].apply(request.replace(controlnet_units=[]), 0.5, [0.5])


def test_front_ends_may_hand_the_request_builder_unit_dicts():
    from webui.config import Settings
    from webui.pipelines.build import build_request

    given = {"prompt": "p", "width": 64, "height": 64,
             "controlnet_units": [{"module": "canny", "model": "m", "image": square(64), "resize_mode": 2},
                                  {"enabled": False}]}
    request = build_request(Settings(), given, lambda: 512)
    assert request.controlnet_units[0].resize_mode is ControlResizeMode.RESIZE_AND_FILL
    assert not request.controlnet_units[1].enabled
    with pytest.raises(UnitError) as raised:
        build_request(Settings(), {**given, "controlnet_units": [{}, {"weight": -1, "model": "m"}]}, lambda: 512)
    assert raised.value.field == "controlnet_units[1].weight", "an empty slot ({}) is skipped, as placeholders are"


# ---------------------------------------------------------------- masks and the inpaint preprocessors
def _quarters() -> tuple[Image.Image, Image.Image]:
    """A 64×32 picture, red on the left and blue on the right, and a mask over its top-left 32×16."""
    picture = Image.new("RGB", (64, 32), (0, 0, 255))
    picture.paste((255, 0, 0), (0, 0, 32, 32))
    mask = Image.new("L", (64, 32), 0)
    mask.paste(255, (0, 0, 32, 16))
    return picture, mask


def test_the_inpaint_map_is_the_picture_with_masked_pixels_at_minus_one():
    from webui.controlnet import inpaint

    picture, mask = _quarters()
    detected = preprocess.run("inpaint", picture, mask=mask)
    assert detected.shape == (32, 64, 4) and (detected[:16, :32, 3] == 255).all() and (detected[16:, :, 3] == 0).all()
    hint = inpaint.hint_pixels(maps.fit_map(detected, 64, 32, ControlResizeMode.JUST_RESIZE))
    assert (hint[:16, :32] == -1).all(), "masked pixels are -1"
    assert np.allclose(hint[16:, :32], [1, 0, 0]) and np.allclose(hint[:, 32:], [0, 0, 1]), "the rest is the picture"
    # Fitted to a square by "Resize and Fill": the added bands are masked (to be drawn), the mask stays binary.
    filled = maps.fit_map(detected, 64, 64, ControlResizeMode.RESIZE_AND_FILL)
    assert filled.shape == (64, 64, 4) and set(np.unique(filled[:, :, 3])) == {0, 255}
    assert (filled[:10, :, 3] == 255).all() and (filled[-10:, :, 3] == 255).all()
    assert (filled[40:48, 40:, 3] == 0).all()
    # Without a mask nothing is masked; inpaint_only makes the same map; the preview shows the mask half see-through.
    assert (preprocess.run("inpaint_only", picture)[:, :, 3] == 0).all()
    shown = preprocess.detect_map("inpaint", picture, mask=mask)
    assert shown.mode == "RGBA" and shown.getpixel((0, 0))[3] == 128 and shown.getpixel((0, 31))[3] == 255


def test_inpaint_only_pastes_the_unmasked_part_back_feathered():
    from webui.controlnet import inpaint

    picture, mask = _quarters()
    detected = preprocess.run("inpaint_only", picture, mask=mask)
    result = Image.new("RGB", (64, 32), (0, 255, 0))
    pasted = np.asarray(inpaint.paste_unmasked(result, detected))
    assert (pasted[:10, :26] == [0, 255, 0]).all(), "deep inside the mask: the result"
    assert (pasted[26:, :] == np.asarray(picture)[26:, :]).all(), "well outside it: the picture, exactly"
    assert 0 < pasted[17, 10, 1] < 255, "at the mask's edge the two are blended"


def test_a_mask_on_another_preprocessor_is_its_scribble_unless_blank():
    picture, mask = _quarters()
    strokes = preprocess.run("none", picture, mask=mask)
    assert (strokes[:16, :32] == 255).all() and (strokes[16:] == 0).all(), "the mask's strokes are the input"
    blank = preprocess.run("none", picture, mask=Image.new("L", (64, 32), 0))
    assert np.array_equal(blank, np.asarray(picture)), "a blank mask is ignored"


def test_an_inpaint_unit_without_a_mask_takes_the_inpaint_tabs_mask():
    from types import SimpleNamespace

    from webui.controlnet.session import _control_mask, _mask_warning

    picture, mask = _quarters()
    job = SimpleNamespace(mask=mask, mask_invert=True, mask_blur=0)
    pre = catalog.find("inpaint")
    taken = _control_mask(ControlUnit(module="inpaint"), pre, job, picture)
    assert taken is not None and taken.getpixel((0, 0)) == 0 and taken.getpixel((40, 20)) == 255, "inverted"
    own = Image.new("L", (64, 32), 255)
    assert _control_mask(ControlUnit(module="inpaint", mask=own), pre, job, picture) is own
    assert _control_mask(ControlUnit(module="canny"), catalog.find("canny"), job, picture) is None
    assert "scribble" in _mask_warning(ControlUnit(module="canny", mask=mask), catalog.find("canny"), 1, job)
