"""T2I-Adapters as ControlNet unit models, on tiny real models: TencentARC's original files (.pth and
.safetensors) and diffusers' (single file and folder) load the same weights, list as "name [hash]", change the
picture at weight 1 and leave it exactly alone at weight 0, and an adapter made for another family is refused
with a message naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.support import adapter_files as af
from webui.controlnet import t2i
from webui.controlnet.adapter_loader import build_adapter
from webui.controlnet.detect import ControlNetFileError
from webui.controlnet.units import ControlMode, ControlUnit
from webui.models.header import read_header
from webui.pipelines.generate import generate
from webui.pipelines.request import GenerationRequest

SIZE = 64
SD1_FORMATS = ("t2iadapter_canny_sd14v1.pth", "t2iadapter_sketch_sd15v2.safetensors",
               "sd15_adapter_diffusers.safetensors", "sd15_adapter_folder")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    sd1, xl = af.tiny_adapter("sd1", seed=21), af.tiny_adapter("sdxl", seed=22)
    return {
        "t2iadapter_canny_sd14v1.pth": af.write_original(root / "t2iadapter_canny_sd14v1.pth", sd1),
        "t2iadapter_sketch_sd15v2.safetensors": af.write_original(root / "t2iadapter_sketch_sd15v2.safetensors", sd1),
        "sd15_adapter_diffusers.safetensors": af.write_diffusers_file(root / "sd15_adapter_diffusers.safetensors",
                                                                      sd1),
        "sd15_adapter_folder": af.write_diffusers_folder(root / "sd15_adapter_folder", sd1),
        "xl_adapter_folder": af.write_diffusers_folder(root / "xl_adapter_folder", xl),
        # TencentARC's sd14v1 sketch adapter reads one channel
        "t2iadapter_sketch_sd14v1.pth": af.write_original(root / "t2iadapter_sketch_sd14v1.pth",
                                                          af.tiny_adapter("sd1", seed=23, in_channels=1)),
    }


@pytest.fixture
def adapter_context(make_context, adapters):
    def build(checkpoints: list[str], names: list[str]):
        ctx = make_context(checkpoints)
        folder = ctx.settings.models_dir / "ControlNet"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            src = adapters[name]
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, folder / src.name)
        ctx.manager.controlnets.refresh()
        return ctx
    return build


def outline() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), "black")
    ImageDraw.Draw(image).rectangle((6, 6, 30, 30), outline="white", width=2)
    return image


def run(ctx, checkpoint: str = "sd1.safetensors", **kw) -> np.ndarray:
    request = GenerationRequest(prompt="a red circle", steps=4, width=SIZE, height=SIZE, seed=3, save_images=False,
                                sampler="Euler", checkpoint=checkpoint, **kw)
    return np.asarray(generate(ctx.manager, request).images[0].convert("RGB"), dtype=np.float64)


def unit(model: str, **kw) -> ControlUnit:
    return ControlUnit(**{"module": "none", "model": model, "image": outline(), **kw})


# ---------------------------------------------------------------- layouts (no generation)
SD1_UNET = {"block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "cross_attention_dim": 32}


@pytest.mark.parametrize("kind, unet", [
    ("sd1", SD1_UNET),
    # the light (color) adapter makes one feature more than its widths: a UNet whose last two levels are as wide
    ("light", {"block_out_channels": [32, 64, 64], "cross_attention_dim": 32,
               "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]}),
])
def test_original_names_convert_to_the_same_adapter(kind, unet):
    source = af.tiny_adapter(kind, seed=5)
    original = af.original_names(source)
    found = t2i.detect_adapter(list(original))
    assert found is not None and found.layout == "original" and found.light == (kind == "light")
    loaded = build_adapter("x.pth", found, original, unet, torch.float32, "tiny")
    assert loaded.config.adapter_type == source.config.adapter_type
    hint = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    for mine, theirs in zip(loaded(hint), source(hint), strict=True):
        assert torch.equal(mine, theirs)


def test_header_tells_the_kind_and_a_style_adapter_is_named(adapters):
    header = read_header(adapters["sd15_adapter_diffusers.safetensors"])
    shapes = {k: v.shape for k, v in header.tensors.items()}
    kind = t2i.detect_adapter(list(shapes))
    assert kind == t2i.AdapterKind("diffusers", light=False)
    assert t2i.derive_config(shapes)["adapter_type"] == "full_adapter"
    xl = read_header(adapters["xl_adapter_folder"] / "diffusion_pytorch_model.safetensors")
    assert t2i.derive_config({k: v.shape for k, v in xl.tensors.items()})["adapter_type"] == "full_adapter_xl"
    style = ["style_embedding", "ln_pre.weight", "proj", "transformer_layes.0.attn.in_proj_weight"]
    assert t2i.detect_adapter(style) is None
    assert "style adapter" in (t2i.unsupported(style) or "")


# ---------------------------------------------------------------- through the engine
@pytest.mark.slow
def test_every_format_of_an_sd15_adapter_lists_loads_the_same_weights_and_guides(adapter_context):
    ctx = adapter_context(["sd1"], list(SD1_FORMATS))
    titles = ctx.manager.controlnets.titles()
    names = sorted(Path(n).stem if not n.endswith("folder") else n for n in SD1_FORMATS)
    assert [t.split(" [")[0] for t in titles] == names
    assert all(t.endswith("]") and len(t.split(" [")[1]) == 9 for t in titles), titles
    plain = run(ctx)
    pictures = [run(ctx, controlnet_units=[unit(name)]) for name in names]
    assert float(np.abs(pictures[0] - plain).mean()) > 2, "the adapter changes the picture"
    for name, picture in zip(names[1:], pictures[1:], strict=True):
        assert np.array_equal(picture, pictures[0]), f"{name} holds the same weights as the others"
    assert np.array_equal(run(ctx, controlnet_units=[unit(names[0], weight=0.0)]), plain), "weight 0 is no adapter"
    soft = run(ctx, controlnet_units=[unit(names[0], control_mode=ControlMode.PROMPT)])
    assert not np.array_equal(soft, pictures[0]), "soft injection scales the features down"


@pytest.mark.slow
def test_a_one_channel_sketch_adapter_in_the_original_layout_guides(adapter_context):
    ctx = adapter_context(["sd1"], ["t2iadapter_sketch_sd14v1.pth"])
    plain = run(ctx)
    assert float(np.abs(run(ctx, controlnet_units=[unit("t2iadapter_sketch_sd14v1")]) - plain).mean()) > 2


@pytest.mark.slow
def test_sdxl_adapter_guides_sdxl_and_adapters_of_the_other_family_are_refused_by_name(adapter_context):
    ctx = adapter_context(["sd1", "sdxl"], ["xl_adapter_folder", "t2iadapter_canny_sd14v1.pth",
                                            "sd15_adapter_diffusers.safetensors"])
    xl = "sdxl.safetensors"
    plain = run(ctx, xl)
    assert float(np.abs(run(ctx, xl, controlnet_units=[unit("xl_adapter_folder")]) - plain).mean()) > 2
    for name, label in (("t2iadapter_canny_sd14v1", "t2iadapter_canny_sd14v1.pth"),
                        ("sd15_adapter_diffusers", "sd15_adapter_diffusers.safetensors")):
        with pytest.raises(ControlNetFileError, match=f"T2I-Adapter {label} cannot guide checkpoint sdxl: it is "
                                                      "made for SD 1.x and the checkpoint is SDXL"):
            run(ctx, xl, controlnet_units=[unit(name)])
    with pytest.raises(ControlNetFileError, match="xl_adapter_folder cannot guide checkpoint sd1: it is made for SDXL"):
        run(ctx, controlnet_units=[unit("xl_adapter_folder")])
    assert run(ctx, xl).shape == plain.shape, "the next job runs normally"


def test_an_adapter_and_a_controlnet_on_one_unet_call_add_both_kinds_of_residuals():
    """The hook hands the UNet the ControlNet's residuals and the adapter's features at once, each scaled by its
    unit's weight, the adapter's on both CFG halves: the same output as calling the UNet with them by hand."""
    from tests.support import controlnet_files as cnf
    from tests.support.tiny_models import tiny_components
    from webui.controlnet.guidance import ControlNetHook, GuidedUnit

    unet = tiny_components("sd1", seed=0)["unet"]
    controlnet, adapter = cnf.tiny_controlnet(unet, seed=11), af.tiny_adapter("sd1", seed=21)
    generator = torch.Generator().manual_seed(1)
    hint = torch.rand(1, 3, SIZE, SIZE, generator=generator)
    x, context = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 77, 32, generator=generator)
    t = torch.tensor(500)
    units = [GuidedUnit(controlnet, hint, 0.01, 0.0, 1.0, soft=False, cond_only=False),
             GuidedUnit(adapter, hint, 2.0, 0.0, 1.0, soft=False, cond_only=False, adapter=True)]
    hook = ControlNetHook(units, images=1, sdxl=False, steps=lambda: 4, unet_config=dict(unet.config))
    with torch.no_grad():
        handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            hooked = unet(x, t, encoder_hidden_states=context).sample
        finally:
            handle.remove()
        down, mid = controlnet(x, t, encoder_hidden_states=context, controlnet_cond=hint.repeat(2, 1, 1, 1),
                               return_dict=False)
        features = [2.0 * f.repeat(2, 1, 1, 1) for f in adapter(hint)]
        by_hand = unet(x, t, encoder_hidden_states=context, down_block_additional_residuals=[d * 0.01 for d in down],
                       mid_block_additional_residual=mid * 0.01, down_intrablock_additional_residuals=features).sample
        controlnet_only = unet(x, t, encoder_hidden_states=context,
                               down_block_additional_residuals=[d * 0.01 for d in down],
                               mid_block_additional_residual=mid * 0.01).sample
    assert torch.allclose(hooked, by_hand, atol=1e-5)
    assert float((hooked - controlnet_only).abs().max()) > 1e-2, "the adapter's features count too"
