"""LoRA and embedding files written the way trainers write them, for tests."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from webui.models.ldm_layout import unet_to_ldm

RANK = 4


def _pairs(module: torch.nn.Module, generator: torch.Generator, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    weight = module.weight
    if weight.dim() == 4:
        down = torch.randn(RANK, weight.shape[1], *weight.shape[2:], generator=generator)
        up = torch.randn(weight.shape[0], RANK, 1, 1, generator=generator)
    else:
        down = torch.randn(RANK, weight.shape[1], generator=generator)
        up = torch.randn(weight.shape[0], RANK, generator=generator)
    return down * scale, up * scale


def _targets(components: dict, component: str, sgm_names: bool = False) -> dict[str, torch.nn.Module]:
    """Attention and projection layers as kohya's trainer picks them, by the module path it writes."""
    model = components[component]
    wanted = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "q_proj", "k_proj", "v_proj", "out_proj",
              "fc1", "fc2")
    found = {name: m for name, m in model.named_modules() if name.endswith(wanted)
             and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    if sgm_names:
        renames = {d.rpartition(".")[0]: o.rpartition(".")[0] for o, d in unet_to_ldm({k: k for k in
                                                                                        model.state_dict()}).items()}
        found = {renames[name]: m for name, m in found.items()}
    return found


def write_kohya_lora(path: Path, components: dict, seed: int = 0, scale: float = 0.3, sgm_names: bool = False,
                     text_encoder: bool = True, groups: list[tuple[str, str]] | None = None) -> Path:
    """A LoRA in kohya's format: lora_unet_* / lora_te_* names with underscores, lora_down/lora_up, alpha."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    if groups is None:
        groups = [("lora_unet_", "unet")] + ([("lora_te_", "text_encoder")] if text_encoder else [])
    for prefix, component in groups:
        for name, module in _targets(components, component, sgm_names and component == "unet").items():
            if component.startswith("text_encoder"):
                name = "text_model." + name  # kohya writes the transformers path with its text_model wrapper
            key = prefix + name.replace(".", "_")
            down, up = _pairs(module, generator, scale)
            state[f"{key}.lora_down.weight"] = down
            state[f"{key}.lora_up.weight"] = up
            state[f"{key}.alpha"] = torch.tensor(float(RANK) / 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def kohya_to_peft(source: Path, target: Path) -> Path:
    """The same LoRA in diffusers / PEFT naming (unet.<dotted path>.lora_A/lora_B), alpha folded in."""
    from safetensors.torch import load_file

    kohya = load_file(str(source))
    out: dict[str, torch.Tensor] = {}
    names = {}
    for key in kohya:
        if key.endswith(".lora_down.weight"):
            stem = key.removesuffix(".lora_down.weight")
            names[stem] = stem
    for stem in names:
        scale = kohya[f"{stem}.alpha"].item() / RANK
        component = "unet" if stem.startswith("lora_unet_") else "text_encoder"
        dotted = _dotted(stem.removeprefix("lora_unet_").removeprefix("lora_te_"), component)
        out[f"{component}.{dotted}.lora_A.weight"] = kohya[f"{stem}.lora_down.weight"] * scale
        out[f"{component}.{dotted}.lora_B.weight"] = kohya[f"{stem}.lora_up.weight"]
    save_file(out, str(target))
    return target


def _dotted(underscored: str, component: str) -> str:
    """Undo kohya's underscores for the names the tiny models use (no digits-only names are ambiguous here)."""
    words = ["down_blocks", "up_blocks", "mid_block", "transformer_blocks", "attentions", "to_q", "to_k", "to_v",
             "to_out", "proj_in", "proj_out", "text_model", "encoder", "layers", "self_attn", "q_proj", "k_proj",
             "v_proj", "out_proj", "mlp", "fc1", "fc2", "attn1", "attn2", "ff", "net"]
    parts, rest = [], underscored
    while rest:
        for word in sorted(words, key=len, reverse=True):
            if rest.startswith(word):
                parts.append(word)
                rest = rest[len(word):].lstrip("_")
                break
        else:
            number = re.match(r"\d+", rest)
            assert number, rest
            parts.append(number.group(0))
            rest = rest[number.end():].lstrip("_")
    return ".".join(parts)


def write_a1111_embedding(path: Path, width: int, vectors: int = 2, seed: int = 0) -> Path:
    """A1111's textual-inversion .pt: {"string_to_param": {"*": (n, width)}, "name", "step", ...}."""
    generator = torch.Generator().manual_seed(seed)
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(vectors, width, generator=generator)},
            "name": path.stem, "step": 1000, "sd_checkpoint": "abc", "sd_checkpoint_name": "tiny"}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path
