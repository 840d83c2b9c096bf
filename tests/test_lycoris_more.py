"""The LoRA variants beyond LoCon / LoHa / LoKr that model sites carry: IA3, OFT and BOFT, GLoRA, and
PEFT's DoRA, used as <lora:name:w>.

The reference is LyCORIS (the ``lycoris-lora`` package) wherever it implements the variant: a layer Atelier
patched from a file's tensors must compute what LyCORIS' module on the same layer computes. Where A1111
reads a layout LyCORIS no longer writes (OFT's ``oft_diag``, GLoRA's first layout), the same change is
built from LyCORIS' module in that layout. Then files for tiny SD 1.x and SDXL models and for the built-in
demo model change pictures, and removing them gives back the exact base weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.support.lycoris_files import _layers, layer_tensors, lycoris_module
from tests.test_lycoris import assert_exact, demo, pixels, request, weights_of  # noqa: F401 (demo: fixture)
from webui.models.lora import LoraLayer, LoraNetwork, LoraPatcher, LoraUse, parse_lora
from webui.models.lycoris import LayerWeights
from webui.pipelines.generate import generate
from webui.pipelines.request import GenerationRequest

pytest.importorskip("lycoris")


def linear() -> torch.nn.Module:
    return torch.nn.Linear(64, 48)


def conv() -> torch.nn.Module:
    return torch.nn.Conv2d(32, 24, 3, padding=1)


def square_linear() -> torch.nn.Module:  # BOFT wants power-of-two rows; PEFT's DoRA is tested where in == out
    return torch.nn.Linear(32, 32)


def square_conv() -> torch.nn.Module:
    return torch.nn.Conv2d(32, 32, 3, padding=1)


INPUTS: dict[Callable[[], torch.nn.Module], tuple[int, ...]] = {
    linear: (5, 64), conv: (2, 32, 9, 9), square_linear: (5, 32), square_conv: (2, 32, 9, 9)}


def _rms(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).mean().sqrt()


def make_module(layer: torch.nn.Module, algo: str, seed: int = 0, rank: int = 4, alpha: float = 2.0,
                strength: float = 0.2, **options) -> torch.nn.Module:
    """A LyCORIS module of `algo` on `layer` with seeded random factors, its change about `strength` times
    the weight's RMS (OFT: rotations that far from the identity)."""
    from lycoris.modules.boft import ButterflyOFTModule
    from lycoris.modules.diag_oft import DiagOFTModule
    from lycoris.modules.glora import GLoRAModule
    from lycoris.modules.ia3 import IA3Module

    module: torch.nn.Module
    if algo == "ia3":
        module = IA3Module("layer", layer, **options)
    elif algo == "glora":
        module = GLoRAModule("layer", layer, lora_dim=rank, alpha=alpha, **options)
    else:
        cls = {"diag-oft": DiagOFTModule, "boft": ButterflyOFTModule}[algo]
        module = cls("layer", layer, lora_dim=rank, **options)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name == "rescale":
                param.copy_(1 + 0.1 * noise)
            elif name == "oft_blocks":  # R − I ≈ 2Q: about 3·c·√(block) of each row
                param.copy_(noise * strength / (3 * param.shape[-1] ** 0.5))
            elif name == "weight":  # IA3's factors
                param.copy_(strength * noise)
            else:
                param.copy_(noise)
        if algo == "glora":  # its change is linear in a1 and b1 together
            change = module.get_diff_weight()[0]  # type: ignore[operator]
            factor = strength * _rms(layer.weight.detach()) / _rms(change)
            for name in ("a1", "b1"):
                getattr(module, name).weight.mul_(factor)
    return module


def file_tensors(module: torch.nn.Module, algo: str) -> dict[str, torch.Tensor]:
    """The tensors LyCORIS saves for this layer, by the names after the layer's stem."""
    saved = module.custom_state_dict() if algo == "glora" else module.state_dict()  # type: ignore[operator]
    return {kind: tensor.detach().clone().contiguous() for kind, tensor in saved.items()}


def network(layers: dict[str, dict[str, torch.Tensor]], name: str = "net") -> LoraNetwork:
    made = [LoraLayer("unet", key, weights) for key, tensors in layers.items()
            if (weights := LayerWeights.from_tensors(tensors)) is not None]
    return LoraNetwork(name, Path(f"{name}.safetensors"), made, (name, 0, 0, 0))


def patched_change(layer: torch.nn.Module, net: LoraNetwork, x: torch.Tensor, multiplier: float) -> torch.Tensor:
    """What patching `net` at `multiplier` adds to the layer's output; checks the weights come back exactly."""
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    patcher = LoraPatcher({(net.layers[0].component, net.layers[0].key): layer})
    with torch.no_grad():
        base = layer(x)
        assert patcher.apply([LoraUse(net, 1.0, multiplier)]) == []
        got = layer(x) - base
    patcher.restore()
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} restored bit-exactly"
    return got


def lycoris_change(module: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor,
                   multiplier: float) -> torch.Tensor:
    module.multiplier = multiplier  # type: ignore[assignment]
    with torch.no_grad():
        return module(x) - layer(x)  # LyCORIS' forward: the base layer plus its change


def assert_same_change(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert expected.abs().max() > 1e-3, "the change is not negligible"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


VARIANT = {"ia3": "ia3", "diag-oft": "oft", "boft": "oft", "glora": "glora"}
# Changes linear in the tag's weight in LyCORIS too (checked at 1 and 0.6)
CASES = [
    ("ia3", linear, {}),  # weight: one factor per output row
    ("ia3", linear, {"train_on_input": True}),  # on_input: per input column
    ("ia3", conv, {}),
    ("ia3", conv, {"train_on_input": True}),
    ("diag-oft", linear, {}),  # oft_blocks, alpha 0: no constraint
    ("diag-oft", conv, {}),
    ("diag-oft", linear, {"constraint": 1e-2}),  # kohya's constraint: the rotations' norm is capped
    ("glora", linear, {}),
    ("glora", conv, {}),
]
# LyCORIS scales these in ways A1111 does not for a weight != 1 (BOFT per stage; OFT's rescale in full)
CASES_AT_ONE = [
    ("diag-oft", conv, {"rescaled": True}),
    ("boft", square_linear, {}),  # 4-D oft_blocks
    ("boft", square_conv, {"rescaled": True, "constraint": 1e-2}),
]


def case_id(case) -> str:
    algo, make, options = case
    return "-".join([algo, make.__name__, *(f"{k}={v}" for k, v in options.items())])


def build(algo: str, make, options: dict, seed: int = 1):
    torch.manual_seed(0)
    layer = make()
    return layer, make_module(layer, algo, seed=seed, **options), torch.randn(*INPUTS[make])


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("multiplier", [1.0, 0.6])
def test_each_variant_changes_a_layer_as_lycoris_does(case, multiplier):
    algo, make, options = case
    layer, module, x = build(algo, make, options)
    expected = lycoris_change(module, layer, x, multiplier)
    net = network({"layer": file_tensors(module, algo)})
    assert [layer.weights.variant for layer in net.layers] == [VARIANT[algo]]
    assert_same_change(patched_change(layer, net, x, multiplier), expected)


@pytest.mark.parametrize("case", CASES_AT_ONE, ids=case_id)
def test_boft_and_rescaled_oft_change_a_layer_as_lycoris_does(case):
    algo, make, options = case
    layer, module, x = build(algo, make, options)
    net = network({"layer": file_tensors(module, algo)})
    assert_same_change(patched_change(layer, net, x, 1.0), lycoris_change(module, layer, x, 1.0))
    # A1111's rule at another weight: that fraction of the way to the full change
    full = net.layers[0].weights.weight_delta(layer.weight)
    base = layer.weight.detach().clone()
    patcher = LoraPatcher({("unet", "layer"): layer})
    patcher.apply([LoraUse(net, 1.0, 0.3)])
    torch.testing.assert_close(layer.weight.detach() - base, 0.3 * full, rtol=1e-5, atol=1e-6)
    patcher.restore()


@pytest.mark.parametrize("algo, make", [("diag-oft", linear), ("diag-oft", conv), ("boft", square_linear)])
def test_oft_diag_files_hold_the_rotations_themselves(algo, make):
    """Older LyCORIS exports, which A1111 reads as `oft_diag`: R itself, no Cayley transform."""
    from lycoris.functional.diag_oft import get_r

    layer, module, x = build(algo, make, {})
    blocks = file_tensors(module, algo)["oft_blocks"]
    net = network({"layer": {"oft_diag": get_r(blocks)}})
    assert [layer.weights.variant for layer in net.layers] == ["oft"]
    assert_same_change(patched_change(layer, net, x, 1.0), lycoris_change(module, layer, x, 1.0))


def test_oft_alpha_caps_the_rotations_and_a_scale_key_does_not_scale_it():
    layer, module, x = build("diag-oft", linear, {})
    tensors = file_tensors(module, "diag-oft")
    free = patched_change(layer, network({"layer": tensors}), x, 1.0)
    capped = patched_change(layer, network({"layer": {**tensors, "alpha": torch.tensor(1e-3)}}), x, 1.0)
    assert _rms(capped) < 0.5 * _rms(free), "alpha × rows caps the rotations' norm"
    scaled = patched_change(layer, network({"layer": {**tensors, "scale": torch.tensor(0.25)}}), x, 1.0)
    torch.testing.assert_close(scaled, free)


@pytest.mark.parametrize("make", [linear, conv])
def test_glora_in_the_layout_a1111_reads_is_its_formula_unscaled(make):
    """A1111 (from an early LyCORIS) reads a1 / b1 as the down halves and a2 / b2 as the up halves, and
    does not scale by alpha / rank; current LyCORIS swaps the halves' names and scales."""
    layer, module, x = build("glora", make, {}, seed=4)
    current = file_tensors(module, "glora")
    first = {"a1.weight": current["a2.weight"], "a2.weight": current["a1.weight"], "b1.weight": current["b2.weight"],
             "b2.weight": current["b1.weight"], "alpha": current["alpha"]}
    lycoris_scale = float(current["alpha"]) / current["a2.weight"].shape[0]
    assert lycoris_scale != 1
    expected = lycoris_change(module, layer, x, 1.0) / lycoris_scale
    assert_same_change(patched_change(layer, network({"layer": first}), x, 1.0), expected)


def test_glora_tucker_convs_rebuild_their_b_half_as_lycoris_does():
    from lycoris.functional.general import tucker_weight_from_conv

    torch.manual_seed(0)
    layer = conv()
    g = torch.Generator().manual_seed(3)
    w = {"a1.weight": torch.randn(32, 4, 1, 1, generator=g), "a2.weight": torch.randn(4, 32, 1, 1, generator=g),
         "b1.weight": torch.randn(24, 4, 1, 1, generator=g), "b2.weight": torch.randn(4, 32, 1, 1, generator=g),
         "bm.weight": torch.randn(4, 4, 3, 3, generator=g), "alpha": torch.tensor(2.0)}
    weight = layer.weight.detach()
    a = torch.einsum("o i ..., i j -> o j ...", weight, w["a1.weight"].flatten(1) @ w["a2.weight"].flatten(1))
    expected = 0.5 * (a + tucker_weight_from_conv(w["b1.weight"], w["b2.weight"], w["bm.weight"]))
    torch.testing.assert_close(LayerWeights.from_tensors(w).weight_delta(weight), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make, suffix", [(square_linear, "lora_magnitude_vector"),
                                          (square_conv, "lora_magnitude_vector.weight")])
def test_peft_dora_rescales_each_output_row_as_lycoris_does(make, suffix):
    """PEFT keeps one magnitude per output row, flat for a Linear ((out,)) and (1, out, 1, 1) for a conv; on
    a square layer a flat kohya dora_scale would be read per input column, which must not happen here."""
    torch.manual_seed(0)
    layer = make()
    module = lycoris_module(layer, "locon", seed=2, alpha=4.0, weight_decompose=True)  # alpha = rank: PEFT's 1
    lora = layer_tensors(module, "locon")
    magnitude = lora["dora_scale"].flatten()
    if layer.weight.dim() == 4:
        magnitude = magnitude.reshape(1, -1, 1, 1)
    stem = "unet.mid_block.attentions.0.proj_in"
    tensors = {f"{stem}.lora_A.weight": lora["lora_down.weight"], f"{stem}.lora_B.weight": lora["lora_up.weight"],
               f"{stem}.{suffix}": magnitude}
    net = parse_lora("peft", Path("peft.safetensors"), tensors, {}, ("peft", 0, 0, 0))
    assert net.ignored_keys == 0 and [layer.key for layer in net.layers] == ["mid_block_attentions_0_proj_in"]
    x = torch.randn(*INPUTS[make])
    expected = lycoris_change(module, layer, x, 1.0)
    assert_same_change(patched_change(layer, net, x, 1.0), expected)
    as_kohya = network({"layer": {"lora_down.weight": lora["lora_down.weight"], "alpha": torch.tensor(4.0),
                                  "lora_up.weight": lora["lora_up.weight"], "dora_scale": magnitude.flatten()}})
    assert not torch.allclose(patched_change(layer, as_kohya, x, 1.0), expected, rtol=1e-3, atol=1e-4), \
        "the same numbers read per input column are another change"


def test_peft_files_take_lora_alpha_over_r_from_diffusers_metadata():
    """diffusers keeps PEFT's LoraConfig as JSON in the safetensors metadata: lora_alpha / r, per-module
    alpha_pattern entries, and lora_alpha / √r with rsLoRA; nothing usable there means a scale of 1."""
    import json

    g = torch.Generator().manual_seed(0)
    stems = {"unet.mid_block.attentions.0.proj_in": 8, "unet.down_blocks.0.attentions.0.proj_out": 8,
             "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": 4}
    tensors = {}
    for stem, rank in stems.items():
        tensors[f"{stem}.lora_A.weight"] = torch.randn(rank, 32, generator=g)
        tensors[f"{stem}.lora_B.weight"] = torch.randn(32, rank, generator=g)

    def scales(config) -> dict[str, float]:
        metadata = {"format": "pt"} if config is None else {"lora_adapter_metadata": config}
        net = parse_lora("peft", Path("peft.safetensors"), tensors, metadata, ("peft", 0, 0, 0))
        return {layer.key: layer.weights.scale for layer in net.layers}

    config = json.dumps({"unet.r": 8, "unet.lora_alpha": 16, "unet.alpha_pattern": {"attentions.0.proj_in": 4},
                         "text_encoder.r": 4, "text_encoder.lora_alpha": 4, "text_encoder.use_rslora": True})
    assert scales(config) == {"mid_block_attentions_0_proj_in": 0.5, "down_blocks_0_attentions_0_proj_out": 2.0,
                              "encoder_layers_0_self_attn_q_proj": 2.0}
    assert set(scales(None).values()) == {1.0} and set(scales("{not json").values()) == {1.0}
    net = parse_lora("peft", Path("peft.safetensors"), tensors, {"lora_adapter_metadata": config}, ("p", 0, 0, 0))
    layer = next(layer for layer in net.layers if layer.key == "down_blocks_0_attentions_0_proj_out")
    stem = "unet.down_blocks.0.attentions.0.proj_out"
    torch.testing.assert_close(layer.weights.weight_delta(torch.zeros(32, 32)),
                               2.0 * tensors[f"{stem}.lora_B.weight"] @ tensors[f"{stem}.lora_A.weight"])


# --------------------------------------------------------------------------- whole models

def write_variants(path: Path, components: dict, algos: list[str], groups: list[tuple[str, str]],
                   sgm_names: bool = False, seed: int = 0, strength: float = 0.2) -> Path:
    """A file in kohya naming whose layers take the variants in turn (BOFT only where the rows allow it)."""
    state: dict[str, torch.Tensor] = {}
    index = 0
    for prefix, component in groups:
        for name, layer in _layers(components, component, "other", sgm_names and component == "unet").items():
            algo = algos[index % len(algos)]
            options: dict = {"train_on_input": True} if algo == "ia3" and index % 2 else {}
            index += 1
            try:
                module = make_module(layer, algo, seed=seed + index, strength=strength, **options)
            except ValueError:  # rows BOFT cannot split in butterfly stages
                algo = "diag-oft"
                module = make_module(layer, algo, seed=seed + index, strength=strength)
            if component.startswith("text_encoder"):
                name = "text_model." + name
            for kind, tensor in file_tensors(module, algo).items():
                state[f"{prefix}{name.replace('.', '_')}.{kind}"] = tensor
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_peft_dora(path: Path, components: dict, seed: int = 0) -> Path:
    """A diffusers / PEFT-named DoRA file for the UNet's and text encoder's attention projections."""
    state: dict[str, torch.Tensor] = {}
    for index, (component, prefix) in enumerate([("unet", "unet"), ("text_encoder", "text_encoder")]):
        for name, layer in components[component].named_modules():
            if isinstance(layer, torch.nn.Linear) and name.endswith(("to_q", "to_v", "q_proj", "v_proj")):
                lora = layer_tensors(lycoris_module(layer, "locon", seed=seed + index, alpha=4.0,
                                                    weight_decompose=True), "locon")
                state[f"{prefix}.{name}.lora_A.weight"] = lora["lora_down.weight"]
                state[f"{prefix}.{name}.lora_B.weight"] = lora["lora_up.weight"]
                state[f"{prefix}.{name}.lora_magnitude_vector"] = lora["dora_scale"].flatten()
    save_file(state, str(path))
    return path


def test_ia3_oft_boft_glora_and_peft_dora_files_change_an_sd1_picture_and_restore_it(make_context):
    ctx = make_context(["sd1"])
    components = ctx.manager.load("sd1").components
    folder = ctx.settings.models_dir / "Lora"
    write_variants(folder / "mixed.safetensors", components, ["ia3", "diag-oft", "boft", "glora"],
                   [("lora_unet_", "unet"), ("lora_te_", "text_encoder")])
    write_peft_dora(folder / "peft-dora.safetensors", components, seed=5)
    net = ctx.manager.loras.load("mixed", folder / "mixed.safetensors")
    assert {layer.weights.variant for layer in net.layers} == {"ia3", "oft", "glora"}
    assert any(layer.weights.tensors["oft_blocks"].dim() == 4 for layer in net.layers if layer.weights.variant == "oft")
    assert {layer.component for layer in net.layers} == {"unet", "text_encoder"} and net.ignored_keys == 0
    before = weights_of(components)
    base = pixels(generate(ctx.manager, request()))
    for name in ("mixed", "peft-dora"):
        used = generate(ctx.manager, request(f"a red circle <lora:{name}:1>"))
        assert not used.warnings, used.warnings
        assert np.abs(pixels(used) - base).mean() > 2, f"{name} changes the picture"
        half = generate(ctx.manager, request(f"a red circle <lora:{name}:0.5>"))
        assert not np.array_equal(pixels(half), pixels(used)), "the weight matters"
    assert np.array_equal(pixels(generate(ctx.manager, request())), base), "without them: the exact base picture"
    assert_exact(components, before)
    assert ctx.manager.load("sd1").components is components, "no checkpoint reload"


def test_sdxl_ia3_and_oft_in_original_layout_names_apply_to_an_sdxl_model(make_context):
    ctx = make_context(["sdxl"])
    components = ctx.manager.load("sdxl").components
    folder = ctx.settings.models_dir / "Lora"
    groups = [("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2")]
    for name, sgm in (("sgm", True), ("diffusers", False)):
        write_variants(folder / f"{name}.safetensors", components, ["ia3", "diag-oft"], groups, sgm_names=sgm)
    net = ctx.manager.loras.load("sgm", folder / "sgm.safetensors")
    assert any(layer.key.startswith("input_blocks_") for layer in net.layers), "original-layout names"
    assert {layer.component for layer in net.layers} == {"unet", "text_encoder", "text_encoder_2"}
    before = weights_of(components)
    req = {"checkpoint": "sdxl.safetensors"}
    base = pixels(generate(ctx.manager, request(**req)))
    sgm = generate(ctx.manager, request("a red circle <lora:sgm:1>", **req))
    plain = generate(ctx.manager, request("a red circle <lora:diffusers:1>", **req))
    assert not sgm.warnings, sgm.warnings
    assert np.abs(pixels(sgm) - base).mean() > 1, "the file changes the picture"
    assert np.array_equal(pixels(sgm), pixels(plain)), "both namings reach the same layers"
    assert np.array_equal(pixels(generate(ctx.manager, request(**req))), base)
    assert_exact(components, before)


# --------------------------------------------------------------------------- the built-in demo model

@pytest.mark.slow
def test_an_oft_and_ia3_file_changes_the_demo_models_picture_and_removing_restores_it(demo):  # noqa: F811
    ctx, checkpoint = demo
    components = ctx.manager.load(checkpoint).components
    write_variants(ctx.settings.loras_dir / "demo-oft.safetensors", components, ["diag-oft", "ia3"],
                   [("lora_unet_", "unet"), ("lora_te_", "text_encoder")], seed=11, strength=0.3)

    def run(prompt: str) -> tuple[np.ndarray, list[str]]:
        result = generate(ctx.manager, GenerationRequest(prompt=prompt, checkpoint=checkpoint, steps=10, width=64,
                                                         height=64, seed=3, sampler="Euler a", save_images=False))
        return pixels(result), result.warnings

    before = weights_of(components)
    base, _ = run("a red square on a blue background")
    used, warnings = run("a red square on a blue background <lora:demo-oft:1>")
    assert not warnings
    assert np.abs(used - base).mean() > 3, "the picture changes"
    again, _ = run("a red square on a blue background")
    assert np.array_equal(again, base), "removing it gives back the exact picture"
    assert_exact(components, before)
