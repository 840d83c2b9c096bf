"""The upscaler library: model files found in A1111's and ComfyUI's folders, read safely, recognised by
spandrel, run tile by tile without visible seams; None / Lanczos / Nearest as A1111 has them.

Models are tiny but real Real-ESRGAN Compact networks (tests/support/upscaler_files.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.support.upscaler_files import compact_state, write_hostile_pth, write_upscaler
from webui.upscalers import UpscalerError, default_upscaler_dirs
from webui.upscalers.library import UpscalerLibrary, image_to_tensor, tensor_to_image
from webui.upscalers.spandrel_import import import_spandrel
from webui.upscalers.tiling import tile_layout, upscale_tiled

CPU = torch.device("cpu")


def library(models: Path, builtin: Path | None = None, **options) -> UpscalerLibrary:
    return UpscalerLibrary(default_upscaler_dirs(models), builtin, CPU, torch.float32, **options)


def picture(width: int = 70, height: int = 50) -> Image.Image:
    """Smooth colour waves with a sharp square: enough structure to tell resamplers and models apart."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([np.sin(x / 5) * 0.5 + 0.5, np.cos(y / 4) * 0.5 + 0.5, (x + y) / (width + height)], axis=-1)
    rgb[height // 4: height // 2, width // 4: width // 2] = (1.0, 0.1, 0.2)
    return Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")


def reference(state: dict[str, torch.Tensor], image: Image.Image) -> Image.Image:
    """The model run by spandrel directly on the whole picture, once."""
    descriptor = import_spandrel().ModelLoader().load_from_state_dict(state)
    return tensor_to_image(descriptor(image_to_tensor(image)))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_lists_plain_upscalers_then_models_from_every_folder(tmp_path):
    models, builtin = tmp_path / "models", tmp_path / "builtin"
    write_upscaler(models / "ESRGAN" / "zeta-4x.pth", compact_state(4))
    write_upscaler(models / "RealESRGAN" / "sub" / "Alpha-2x.safetensors", compact_state(2))
    write_upscaler(models / "upscale_models" / "comfy.pt", compact_state(2))
    write_upscaler(models / "SwinIR" / "Lanczos.pth", compact_state(2))  # would hide the plain Lanczos
    write_upscaler(models / "DAT" / ".hidden.pth", compact_state(2))
    (models / "HAT").mkdir()
    (models / "HAT" / "notes.txt").write_text("not a model")
    lib = library(models, builtin)  # the built-in folder does not exist yet
    assert lib.names() == ["None", "Lanczos", "Nearest", "Alpha-2x", "comfy", "zeta-4x"]
    builtin.mkdir()
    write_upscaler(builtin / "atelier-demo-2x.safetensors", compact_state(2))
    write_upscaler(builtin / "shipped.pth", compact_state(2))  # nothing shipped is a pickle: not listed
    assert lib.find("ATELIER-demo-2x") == "atelier-demo-2x", "a new file is found by name without a refresh"
    entries = {e["name"]: e for e in lib.entries()}
    assert list(entries) == ["None", "Lanczos", "Nearest", "Alpha-2x", "atelier-demo-2x", "comfy", "zeta-4x"]
    assert entries["zeta-4x"] == {"name": "zeta-4x", "model_name": "ESRGAN",
                                  "model_path": str(models / "ESRGAN" / "zeta-4x.pth"), "model_url": None,
                                  "scale": 4}, "a name that says its scale is listed with it before loading"
    assert entries["comfy"]["scale"] is None, "nothing says comfy's scale before it is loaded"
    assert entries["None"]["model_path"] is None
    write_upscaler(models / "ESRGAN" / "liar-4x.pth", compact_state(2))
    lib.refresh()
    lib.upscale(picture(), 280, 200, "comfy")
    lib.upscale(picture(), 100, 100, "liar-4x")
    scales = {e["name"]: e["scale"] for e in lib.entries()}
    assert scales["comfy"] == 2 and scales["liar-4x"] == 2, "the loaded model's own scale wins over its name"
    (models / "ESRGAN" / "zeta-4x.pth").unlink()
    lib.refresh()
    assert "zeta-4x" not in lib.names()


def test_safetensors_and_pth_files_give_the_models_own_output_at_the_exact_size(tmp_path):
    state = compact_state(2, seed=3)
    write_upscaler(tmp_path / "ESRGAN" / "as-safetensors.safetensors", state)
    write_upscaler(tmp_path / "ESRGAN" / "as-pth.pth", state)
    write_upscaler(tmp_path / "RealESRGAN" / "basicsr.pth", state, wrapper="params_ema")
    lib = library(tmp_path, tile_size=0)
    image = picture()
    expected = reference(state, image)
    for name in ("as-safetensors", "as-pth", "basicsr"):
        out = lib.upscale(image, 140, 100, name)
        assert out.size == (140, 100) and out.mode == "RGB"
        assert np.array_equal(pixels(out), pixels(expected)), name
    lanczos = lib.upscale(image, 140, 100, "Lanczos")
    assert np.abs(pixels(lanczos) - pixels(expected)).mean() > 5, "the model did something a resize does not"
    odd = lib.upscale(image, 123, 77, "as-pth")
    assert odd.size == (123, 77)
    assert np.array_equal(pixels(odd), pixels(expected.resize((123, 77), Image.Resampling.LANCZOS)))


def test_a_model_runs_again_until_the_picture_is_big_enough(tmp_path):
    """A 2x model asked for 4x runs twice (A1111's loop), then the result is resized exactly."""
    state = compact_state(2, seed=4)
    write_upscaler(tmp_path / "ESRGAN" / "two.safetensors", state)
    lib = library(tmp_path, tile_size=0)
    image = picture(40, 30)
    twice = reference(state, reference(state, image))
    assert np.array_equal(pixels(lib.upscale(image, 160, 120, "two")), pixels(twice))
    thrice = reference(state, twice)
    assert np.array_equal(pixels(lib.upscale(image, 300, 225, "two")),
                          pixels(thrice.resize((300, 225), Image.Resampling.LANCZOS)))
    smaller = lib.upscale(image, 60, 45, "two")  # less than the model's own 2x: one pass, then down
    assert np.array_equal(pixels(smaller), pixels(reference(state, image).resize((60, 45), Image.Resampling.LANCZOS)))


def test_none_lanczos_and_nearest_resample_as_a1111(tmp_path):
    lib = library(tmp_path)
    image = picture()
    assert lib.upscale(image, 70, 50, "None") is image, "None leaves a picture of the right size as it is"
    resized = lib.upscale(image, 140, 100, "None")  # hires fix's None: a plain resize
    assert np.array_equal(pixels(resized), pixels(image.resize((140, 100), Image.Resampling.LANCZOS)))
    nearest = lib.upscale(image, 140, 100, "nearest")
    assert np.array_equal(pixels(nearest)[::2, ::2], pixels(image)), "every pixel became a 2x2 block"
    lanczos = lib.upscale(image, 175, 125, "Lanczos")
    assert np.array_equal(pixels(lanczos), pixels(image.resize((175, 125), Image.Resampling.LANCZOS)))
    with pytest.raises(UpscalerError, match="Unknown upscaler 'Bicubic'") as caught:
        lib.upscale(image, 140, 100, "Bicubic", field="hr_upscaler")
    assert caught.value.field == "hr_upscaler" and "Lanczos" in caught.value.message
    with pytest.raises(UpscalerError) as caught:
        lib.upscale(image, 0, 100, "Lanczos")
    assert caught.value.field == "upscaler"


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    write_hostile_pth(tmp_path / "ESRGAN" / "evil-4x.pth", marker)
    raw = tmp_path / "ESRGAN" / "evil-raw.pt"
    raw.write_bytes(b"\x80\x04cposix\nsystem\n(Vtouch " + str(marker).encode() + b"\ntR.")
    lib = library(tmp_path)
    for name, path in (("evil-4x", tmp_path / "ESRGAN" / "evil-4x.pth"), ("evil-raw", raw)):
        with pytest.raises(UpscalerError) as caught:
            lib.upscale(picture(), 140, 100, name, field="upscaler_1")
        assert path.name in caught.value.message and caught.value.field == "upscaler_1"
        assert "refused" in caught.value.message or "corrupt" in caught.value.message, caught.value.message
        assert not marker.exists(), f"{path.name} ran code"
    assert lib.upscale(picture(), 140, 100, "Lanczos").size == (140, 100), "the library goes on"


def test_damaged_and_non_upscaler_files_are_refused_naming_the_file(tmp_path):
    good = write_upscaler(tmp_path / "ESRGAN" / "good.safetensors", compact_state(2))
    folder = tmp_path / "ESRGAN"
    data = good.read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "huge-header.safetensors").write_bytes(struct.pack("<Q", 2**62) + data[8:])
    (folder / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)},
              str(folder / "a-checkpoint.safetensors"))
    write_upscaler(folder / "denoiser-1x.safetensors", compact_state(1))  # a 1x restoration model
    broken = compact_state(2)
    broken["body.2.weight"] = torch.zeros(3, 3, 3, 3)  # right names, wrong shapes
    write_upscaler(folder / "mismatched.safetensors", broken)
    lib = library(tmp_path)
    expected = {"truncated": "corrupt", "huge-header": "", "noise": "", "a-checkpoint": "not an upscaler model",
                "denoiser-1x": "not an upscaler", "mismatched": "cannot be loaded"}
    for name, words in expected.items():
        with pytest.raises(UpscalerError) as caught:
            lib.upscale(picture(), 140, 100, name)
        message = caught.value.message
        assert next(folder.glob(f"{name}.*")).name in message and words in message, message
    assert lib.upscale(picture(), 140, 100, "good").size == (140, 100)


def test_a_file_saved_again_under_its_name_is_read_again(tmp_path):
    path = write_upscaler(tmp_path / "ESRGAN" / "model.safetensors", compact_state(2, seed=1))
    lib = library(tmp_path)
    first = lib.upscale(picture(), 140, 100, "model")
    write_upscaler(path, compact_state(2, seed=2))
    second = lib.upscale(picture(), 140, 100, "model")
    assert np.array_equal(pixels(second), pixels(reference(compact_state(2, seed=2), picture())))
    assert not np.array_equal(pixels(first), pixels(second))


@pytest.mark.parametrize("num_conv", [2, 12])
def test_tiles_blend_into_the_untiled_picture(num_conv):
    """With overlap the tiled result matches the whole-picture run (exactly for a model that looks only a few
    pixels around, within 1e-3 for one that looks further); without it, seams show along tile borders."""
    descriptor = import_spandrel().ModelLoader().load_from_state_dict(compact_state(2, seed=5, num_conv=num_conv))
    image = image_to_tensor(picture(130, 100))
    whole = descriptor(image)
    tiled = upscale_tiled(descriptor, image, 2, 48, 16)
    seamed = upscale_tiled(descriptor, image, 2, 48, 0)
    assert tiled.shape == whole.shape == (1, 3, 200, 260)
    # Output rows and columns where a tile begins or ends.
    (height, rows), (width, cols) = tile_layout(100, 48, 16), tile_layout(130, 48, 16)
    assert len(rows) == 3 and len(cols) == 4
    borders_y = [2 * e for s in rows for e in (s, s + height) if 0 < e < 100]
    borders_x = [2 * e for s in cols for e in (s, s + width) if 0 < e < 130]
    along_borders = torch.cat([(tiled - whole)[:, :, y - 2:y + 2, :].flatten() for y in borders_y]
                              + [(tiled - whole)[:, :, :, x - 2:x + 2].flatten() for x in borders_x])
    assert float((tiled - whole).abs().max()) < (1e-5 if num_conv == 2 else 1e-3)
    assert float(along_borders.abs().max()) < (1e-5 if num_conv == 2 else 1e-3)
    assert float((seamed - whole).abs().max()) > 0.01, "the test can see a seam"


def test_tiles_cover_the_picture_with_the_overlap_asked_for():
    for size, tile, overlap in ((256, 192, 16), (1000, 192, 16), (193, 192, 16), (100, 48, 16), (77, 32, 0)):
        length, starts = tile_layout(size, tile, overlap)
        assert length <= tile and starts[0] == 0 and starts[-1] + length == size
        assert all(0 < b - a <= length - overlap for a, b in zip(starts, starts[1:], strict=False))
    assert tile_layout(256, 192, 16) == (136, [0, 120]), "two tiles of 136, not two of 192"
    assert tile_layout(64, 192, 16) == (64, [0])


def test_the_tile_size_setting_changes_nothing_visible(tmp_path):
    write_upscaler(tmp_path / "ESRGAN" / "m.safetensors", compact_state(2, seed=6, num_conv=4))
    whole = library(tmp_path, tile_size=0).upscale(picture(130, 100), 260, 200, "m")
    tiled = library(tmp_path, tile_size=32).upscale(picture(130, 100), 260, 200, "m")
    assert np.abs(pixels(whole) - pixels(tiled)).max() <= 1, "at most a rounding step apart"


def test_the_tile_size_is_a_setting_checked_when_saved(tmp_path):
    from webui.config import load_settings, save_settings

    settings = load_settings({"settings_file": tmp_path / "settings.json"}, env={"ATELIER_UPSCALER_TILE_SIZE": "256"})
    assert settings.upscaler_tile_size == 256
    for bad in (10, -1, 5000, "big"):
        with pytest.raises(ValueError, match="upscaler_tile_size"):
            save_settings(settings, {"upscaler_tile_size": bad})
    assert save_settings(settings, {"upscaler_tile_size": 0}).upscaler_tile_size == 0
    assert load_settings({"settings_file": tmp_path / "settings.json"}, env={}).upscaler_tile_size == 0
