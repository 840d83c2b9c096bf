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


def sdxl_configs(scale: float = 1.0) -> dict[str, dict]:
    """SDXL's component configs with every width times `scale` (depths, head counts and vocabulary kept).

    Widths stay multiples of 32 (the group norms); 1.0 gives the released configs unchanged.
    """
    from webui.models import configs

    parts = {name: configs.load_component_config("sdxl", name)
             for name in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")}
    if scale == 1.0:
        return parts

    def width(n: int) -> int:
        return max(32, round(n * scale / 32) * 32)

    unet, vae, te1, te2 = parts["unet"], parts["vae"], parts["text_encoder"], parts["text_encoder_2"]
    for te in (te1, te2):
        te["hidden_size"], te["intermediate_size"] = width(te["hidden_size"]), width(te["intermediate_size"])
    te2["projection_dim"] = te2["hidden_size"]
    unet["block_out_channels"] = [width(c) for c in unet["block_out_channels"]]
    unet["cross_attention_dim"] = te1["hidden_size"] + te2["hidden_size"]
    unet["projection_class_embeddings_input_dim"] = 6 * unet["addition_time_embed_dim"] + te2["projection_dim"]
    vae["block_out_channels"] = [width(c) for c in vae["block_out_channels"]]
    return parts


def write_random_sdxl(path: Path, scale: float = 1.0, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """An SDXL-shaped single file of random weights (~6.9 GB in fp16 at scale 1, about scale² of that
    otherwise). Scaled files carry their configs in the ``atelier.config`` metadata, as the test models do.

    Names and shapes come from weightless (meta) modules; each tensor is drawn as it is written, so
    writing takes the memory of one tensor, not of the model.
    """
    if path.exists():
        return path
    import json

    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tools.ldm_writer import to_original_layout
    from webui.models.detect import CONFIG_METADATA_KEY

    parts = sdxl_configs(scale)

    def text(cls, config):
        return cls(CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"}))

    with init_empty_weights(include_buffers=True):
        modules = {
            "unet": UNet2DConditionModel.from_config(parts["unet"]),
            "vae": AutoencoderKL.from_config(parts["vae"]),
            "text_encoder": text(CLIPTextModel, parts["text_encoder"]),
            "text_encoder_2": text(CLIPTextModelWithProjection, parts["text_encoder_2"]),
        }
    shapes = to_original_layout("sdxl", **{name: m.state_dict() for name, m in modules.items()})
    metadata = {"format": "pt"}
    if scale != 1.0:
        metadata[CONFIG_METADATA_KEY] = json.dumps({"arch": "sdxl", **parts})
    gen = torch.Generator().manual_seed(seed)

    def draw(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name.endswith("weight") and "norm" in name:
            return torch.ones(shape, dtype=dtype)
        return (torch.randn(shape, generator=gen) * 0.02).to(dtype)

    _stream_safetensors(path, {k: tuple(v.shape) for k, v in shapes.items()}, dtype, draw, metadata)
    return path


_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def _stream_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, draw, metadata) -> None:
    """A .safetensors file written tensor by tensor (safetensors' save_file holds a bytes copy of all)."""
    import json
    import struct

    size = torch.tensor([], dtype=dtype).element_size()
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, shape in shapes.items():
        n = size * int(torch.Size(shape).numel())
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            fh.write(draw(name, shape).contiguous().reshape(-1).view(torch.uint8).numpy().data)
    tmp.replace(path)
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
