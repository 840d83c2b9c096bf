"""LyCORIS layers and files as LyCORIS' own modules make them, with seeded random factors (no training).

LyCORIS (the ``lycoris-lora`` package) is the test reference: its modules build each layer's tensors in
the layout its trainers save, and their forward pass is what the layer should compute once patched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from webui.models.ldm_layout import unet_to_ldm

ALGOS = ("locon", "loha", "lokr", "full", "norm")
# The factor each change is linear in: scaling it scales the layer's change.
_LEAD = {"locon": ("lora_up.weight",), "loha": ("hada_w1_a",), "lokr": ("lokr_w1", "lokr_w1_a"), "full": ("weight",),
         "norm": ("w_norm",)}


def lycoris_module(layer: torch.nn.Module, algo: str, seed: int = 0, rank: int = 4, alpha: float = 2.0,
                   strength: float = 0.2, **options) -> torch.nn.Module:
    """A LyCORIS module on `layer` whose change has about `strength` times the weight's RMS. Trainers start
    one factor at zero; here every factor is random (fixed seed), and DoRA's magnitudes are the weight's
    norms, perturbed."""
    from lycoris.modules.full import FullModule
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule
    from lycoris.modules.norms import NormModule

    generator = torch.Generator().manual_seed(seed)
    if algo == "full":
        module: torch.nn.Module = FullModule("layer", layer)
    elif algo == "norm":
        module = NormModule("layer", layer)
    else:
        cls = {"locon": LoConModule, "loha": LohaModule, "lokr": LokrModule}[algo]
        module = cls("layer", layer, multiplier=1.0, lora_dim=rank, alpha=alpha, **options)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name == "dora_scale":
                param.mul_(torch.exp(0.3 * torch.randn(param.shape, generator=generator)))
            else:
                param.copy_(torch.randn(param.shape, generator=generator))
        change = lycoris_change(module, algo)
        lead = next(p for n, p in module.named_parameters() if n in _LEAD[algo])
        target = strength * layer.weight.detach().pow(2).mean().sqrt()
        lead.mul_(target / change.pow(2).mean().sqrt())
    return module


def lycoris_change(module: torch.nn.Module, algo: str) -> torch.Tensor:
    """LyCORIS' own weight change at multiplier 1 before DoRA (what its forward adds to the weight)."""
    m: object = module
    if algo == "locon":
        return m.make_weight() * m.scale  # type: ignore[attr-defined]
    if algo in ("loha", "lokr"):
        return m.get_weight(m.shape) * m.scalar  # type: ignore[attr-defined]
    return m.get_diff_weight()[0]  # type: ignore[attr-defined]


def layer_tensors(module: torch.nn.Module, algo: str) -> dict[str, torch.Tensor]:
    """The tensors a LyCORIS file holds for this layer, by the names after the layer's stem."""
    if algo == "full":  # saved as the difference to the base weight
        tensors = {"diff": module.weight}
        if module.bias is not None:
            tensors["diff_b"] = module.bias
    elif algo == "norm":
        tensors = {"w_norm": module.w_norm, "b_norm": module.b_norm}
    else:
        tensors = module.custom_state_dict()  # type: ignore[operator]
    return {kind: tensor.detach().clone().contiguous() for kind, tensor in tensors.items()}


def _layers(components: dict, component: str, algo: str, sgm_names: bool) -> dict[str, torch.nn.Module]:
    """The layers a kohya-format LyCORIS run trains, by the module path it writes: attention and projection
    Linears, and ResNet convs (LoCon-style) or the norm layers for norm files."""
    model = components[component]
    linears = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "q_proj", "k_proj", "v_proj", "out_proj",
               "fc1", "fc2")
    found = {}
    for name, module in model.named_modules():
        if algo == "norm":
            wanted = isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and module.weight is not None
        else:
            wanted = (isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name.endswith(linears)
                      or isinstance(module, torch.nn.Conv2d) and name.endswith(("conv1", "conv2")))
        if wanted:
            found[name] = module
    if sgm_names:
        renames = {d.rpartition(".")[0]: o.rpartition(".")[0]
                   for o, d in unet_to_ldm({k: k for k in model.state_dict()}).items()}
        found = {renames[name]: m for name, m in found.items()}
    return found


def write_lycoris(path: Path, components: dict, algo: str | Sequence[str] = "loha", seed: int = 0,
                  strength: float = 0.2, sgm_names: bool = False, text_encoder: bool = True,
                  groups: list[tuple[str, str]] | None = None, **options) -> Path:
    """A LyCORIS file in kohya naming (lora_unet_* / lora_te_* or lora_te1_/te2_), one algorithm for every layer
    or a sequence of them taken in turn layer by layer (a file mixing variants). Norm layers are added when
    "norm" is among them."""
    algos = [algo] if isinstance(algo, str) else list(algo)
    if groups is None:
        groups = [("lora_unet_", "unet")] + ([("lora_te_", "text_encoder")] if text_encoder else [])
    state: dict[str, torch.Tensor] = {}
    index = 0
    for prefix, component in groups:
        layers = _layers(components, component, "other", sgm_names and component == "unet")
        if "norm" in algos:
            layers |= _layers(components, component, "norm", sgm_names and component == "unet")
        for name, layer in layers.items():
            if isinstance(layer, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                kind = "norm"
            else:
                choices = [a for a in algos if a != "norm"] or ["locon"]
                kind = choices[index % len(choices)]
                index += 1
            if component.startswith("text_encoder"):
                name = "text_model." + name  # kohya writes the transformers path with its text_model wrapper
            module = lycoris_module(layer, kind, seed=seed + index, strength=strength, **options)
            for weight_kind, tensor in layer_tensors(module, kind).items():
                state[f"{prefix}{name.replace('.', '_')}.{weight_kind}"] = tensor
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"ss_network_module": "lycoris.kohya", "ss_network_args": str(algos)})
    return path
