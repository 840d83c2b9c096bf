"""Full-size SD 1.5-shaped checkpoints with random weights, written locally in the original layout.

No real weights can be downloaded here; for load, swap and memory measurements the values do not
matter, only the shapes, dtypes and file layout. Files are cached in benchmarks/_work/.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _random_state_dict(module: torch.nn.Module, generator: torch.Generator, dtype: torch.dtype) -> dict:
    out = {}
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            out[name] = tensor
        elif name.endswith("weight") and "norm" in name:
            out[name] = torch.ones(tensor.shape, dtype=dtype)
        else:
            out[name] = (torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * 0.02).to(dtype)
    return out


def write_random_sd15(path: Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """An SD 1.5-shaped single file (UNet, VAE, CLIP-L) of random weights; ~2 GB in fp16."""
    if path.exists():
        return path
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from tools.ldm_writer import to_original_layout
    from webui.models import configs

    gen = torch.Generator().manual_seed(seed)
    with init_empty_weights(include_buffers=False):
        unet = UNet2DConditionModel.from_config(configs.load_component_config("sd1", "unet"))
        vae = AutoencoderKL.from_config(configs.load_component_config("sd1", "vae"))
        te_config = configs.load_component_config("sd1", "text_encoder")
        text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in te_config.items() if k != "architectures"}))
    parts = {name: _random_state_dict(m, gen, dtype) for name, m in (("unet", unet), ("vae", vae), ("te", text))}
    # position_ids is a buffer that is real even under init_empty_weights; it is not part of SD files.
    parts["te"] = {k: v for k, v in parts["te"].items() if not k.endswith("position_ids")}
    tensors = to_original_layout("sd1", unet=parts["unet"], vae=parts["vae"], text_encoder=parts["te"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)
    return path


_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                 "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def write_random_lora(path: Path, seed: int = 0, rank: int = 16) -> Path:
    """A kohya-format LoRA for the SD 1.5 shapes (attention, feed-forward and text-encoder layers, as
    typical character/style LoRAs train them); ~70 MB in fp16 at rank 16."""
    if path.exists():
        return path
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from webui.models import configs

    gen = torch.Generator().manual_seed(seed)
    with init_empty_weights(include_buffers=False):
        unet = UNet2DConditionModel.from_config(configs.load_component_config("sd1", "unet"))
        te_config = configs.load_component_config("sd1", "text_encoder")
        text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in te_config.items() if k != "architectures"}))
    state = {}
    for prefix, model, extra in (("lora_unet_", unet, ""), ("lora_te_", text, "text_model_")):
        for name, module in model.named_modules():
            if not name.endswith(_LORA_TARGETS) or not hasattr(module, "weight"):
                continue
            shape = module.weight.shape
            key = prefix + extra + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = (torch.randn(rank, *shape[1:], generator=gen) * 0.01).half()
            state[f"{key}.lora_up.weight"] = (torch.randn(shape[0], rank, *([1] * (len(shape) - 2)),
                                                          generator=gen) * 0.01).half()
            state[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_random_sd15_controlnet(path: Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """An SD 1.5 ControlNet (v1.1 shape) of random weights in the original single-file layout
    (``control_model.*``, as lllyasviel's files); ~720 MB in fp16."""
    if path.exists():
        return path
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    from tests.support.controlnet_files import original_names
    from webui.models import configs

    gen = torch.Generator().manual_seed(seed)
    with init_empty_weights(include_buffers=False):
        unet = UNet2DConditionModel.from_config(configs.load_component_config("sd1", "unet"))
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    state = original_names(_random_state_dict(controlnet, gen, dtype), controlnet.config.layers_per_block)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({f"control_model.{k}": v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    return path
