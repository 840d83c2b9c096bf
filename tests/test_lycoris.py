"""LyCORIS files (LoCon, LoHa, LoKr, full differences, norm layers, DoRA) used as <lora:name:w>.

The reference is LyCORIS itself (the ``lycoris-lora`` package): a layer Atelier patched from a file's
tensors must compute what LyCORIS' module on the same layer computes. Then files for tiny SD 1.x and
SDXL models and for the built-in demo model change pictures, and removing them gives back the exact
base weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.support.lycoris_files import layer_tensors, lycoris_module, write_lycoris
from webui.models.lora import LoraLayer, LoraNetwork, LoraPatcher, LoraUse, parse_lora
from webui.models.lycoris import LayerWeights
from webui.pipelines.generate import generate
from webui.pipelines.request import GenerationRequest

pytest.importorskip("lycoris")


def linear() -> torch.nn.Module:
    return torch.nn.Linear(64, 48)


def conv() -> torch.nn.Module:
    return torch.nn.Conv2d(32, 24, 3, padding=1)


def layernorm() -> torch.nn.Module:
    return torch.nn.LayerNorm(40)


def groupnorm() -> torch.nn.Module:
    return torch.nn.GroupNorm(4, 32)


INPUTS = {linear: (5, 64), conv: (2, 32, 9, 9), layernorm: (5, 40), groupnorm: (2, 32, 6, 6)}

CASES = [
    ("locon", linear, {}),  # plain LoRA
    ("locon", conv, {}),  # LoCon: k×k down, 1×1 up
    ("locon", conv, {"use_tucker": True}),  # CP / Tucker: lora_mid
    ("loha", linear, {}),
    ("loha", conv, {}),
    ("loha", conv, {"use_tucker": True}),  # hada_t1 / hada_t2
    ("lokr", linear, {"factor": 4}),  # lokr_w1, lokr_w2_a/b
    ("lokr", linear, {"factor": 8, "decompose_both": True, "rank": 2}),  # lokr_w1_a/b too
    ("lokr", linear, {"full_matrix": True}),  # lokr_w1, lokr_w2: no rank, no alpha scaling
    ("lokr", conv, {"factor": 4, "rank": 2}),
    ("lokr", conv, {"factor": 4, "rank": 2, "use_tucker": True}),  # lokr_t2
    ("lokr", conv, {"full_matrix": True}),
    ("full", linear, {}),  # diff, diff_b
    ("full", conv, {}),
    ("norm", layernorm, {}),  # w_norm, b_norm
    ("norm", groupnorm, {}),
]
DORA_CASES = [
    ("locon", linear, {"weight_decompose": True}),  # magnitudes per output row (LyCORIS' default)
    ("locon", conv, {"weight_decompose": True, "wd_on_out": False}),  # per input column (A1111, DoRA paper)
    ("loha", linear, {"weight_decompose": True, "wd_on_out": False}),
    ("loha", conv, {"weight_decompose": True}),
    ("lokr", linear, {"factor": 4, "weight_decompose": True}),
    ("lokr", conv, {"factor": 4, "rank": 2, "weight_decompose": True, "wd_on_out": False}),
]
VARIANT = {"locon": "lora", "loha": "loha", "lokr": "lokr", "full": "full", "norm": "norm"}


def network(layers: dict[str, dict[str, torch.Tensor]], name: str = "net") -> LoraNetwork:
    made = [LoraLayer("unet", key, weights) for key, tensors in layers.items()
            if (weights := LayerWeights.from_tensors(tensors)) is not None]
    return LoraNetwork(name, Path(f"{name}.safetensors"), made, (name, 0, 0, 0))


def case_id(case) -> str:
    algo, make, options = case
    return "-".join([algo, make.__name__, *(f"{k}={v}" for k, v in options.items())])


def check_against_lycoris(algo: str, make, options: dict, multiplier: float) -> None:
    torch.manual_seed(0)
    layer = make()
    options = dict(options)
    module = lycoris_module(layer, algo, seed=1, rank=options.pop("rank", 4), **options)
    module.multiplier = multiplier  # type: ignore[assignment]
    x = torch.randn(*INPUTS[make])
    with torch.no_grad():
        base = layer(x)
        expected = module(x) - base  # LyCORIS' forward: the base layer plus its change
    tensors = layer_tensors(module, algo)
    before = {k: v.clone() for k, v in layer.state_dict().items()}

    patcher = LoraPatcher({("unet", "layer"): layer})
    net = network({"layer": tensors})
    assert [layer.weights.variant for layer in net.layers] == [VARIANT[algo]]
    assert patcher.apply([LoraUse(net, 1.0, multiplier)]) == []
    with torch.no_grad():
        got = layer(x) - base
    assert expected.abs().max() > 1e-3, "the change is not negligible"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))

    patcher.restore()
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} restored bit-exactly"


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("multiplier", [1.0, 0.6])
def test_each_variant_changes_a_layer_as_lycoris_does(case, multiplier):
    check_against_lycoris(*case, multiplier)


@pytest.mark.parametrize("case", DORA_CASES, ids=case_id)
def test_dora_rescales_the_merged_weight_as_lycoris_does(case):
    check_against_lycoris(*case, 1.0)


@pytest.mark.parametrize("case", DORA_CASES[:2], ids=case_id)
def test_dora_at_a_weight_moves_that_fraction_of_the_way_as_in_a1111(case):
    """A1111 multiplies DoRA's whole change by the tag's weight (LyCORIS' own module scales its magnitudes
    instead); a picture from A1111 with <lora:x:0.5> needs A1111's rule."""
    algo, make, options = case
    torch.manual_seed(0)
    layer = make()
    tensors = layer_tensors(lycoris_module(layer, algo, seed=1, **options), algo)
    full = LayerWeights.from_tensors(tensors).weight_delta(layer.weight)
    patcher = LoraPatcher({("unet", "layer"): layer})
    base = layer.weight.detach().clone()
    patcher.apply([LoraUse(network({"layer": tensors}), 1.0, 0.5)])
    torch.testing.assert_close(layer.weight.detach() - base, 0.5 * full, rtol=1e-5, atol=1e-7)


def test_lokr_without_a_rank_ignores_alpha_and_an_explicit_scale_wins():
    w1, w2 = torch.randn(4, 8), torch.randn(12, 8)
    plain = LayerWeights.from_tensors({"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(8.0)})
    assert plain.weight_delta(torch.zeros(48, 64)).equal(torch.kron(w1, w2)), "A1111: no rank, no alpha/rank"
    scaled = LayerWeights.from_tensors({"lokr_w1": w1, "lokr_w2": w2, "scale": torch.tensor(0.25)})
    torch.testing.assert_close(scaled.weight_delta(torch.zeros(48, 64)), 0.25 * torch.kron(w1, w2))
    loha = {"hada_w1_a": torch.randn(48, 4), "hada_w1_b": torch.randn(4, 64), "hada_w2_a": torch.randn(48, 4),
            "hada_w2_b": torch.randn(4, 64)}
    product = (loha["hada_w1_a"] @ loha["hada_w1_b"]) * (loha["hada_w2_a"] @ loha["hada_w2_b"])
    for alpha, scale in [(1.0, 0.25), (0.0, 1.0)]:  # alpha / rank; a zero alpha means no scaling
        delta = LayerWeights.from_tensors({**loha, "alpha": torch.tensor(alpha)}).weight_delta(torch.zeros(48, 64))
        torch.testing.assert_close(delta, scale * product)


def test_stacked_variants_restore_every_weight_and_bias_bit_exactly():
    torch.manual_seed(0)
    layers = {"a": linear(), "b": conv(), "c": layernorm()}
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in layers.items()}
    patcher = LoraPatcher({("unet", name): m for name, m in layers.items()})
    first = network({"a": layer_tensors(lycoris_module(layers["a"], "full", seed=2), "full"),
                     "b": layer_tensors(lycoris_module(layers["b"], "loha", seed=3, use_tucker=True), "loha"),
                     "c": layer_tensors(lycoris_module(layers["c"], "norm", seed=4), "norm")}, "first")
    second = network({"a": layer_tensors(lycoris_module(layers["a"], "lokr", seed=5, factor=4,
                                                        weight_decompose=True), "lokr"),
                      "b": layer_tensors(lycoris_module(layers["b"], "locon", seed=6), "locon")}, "second")
    patcher.apply([LoraUse(first, 1.0, 0.8), LoraUse(second, 1.0, 1.3)])
    patched = {f"{name}.{key}" for name, module in layers.items() for key, value in module.state_dict().items()
               if not torch.equal(value, before[name][key])}
    assert patched == {"a.weight", "a.bias", "b.weight", "c.weight", "c.bias"}  # the conv's variants have no bias
    patcher.apply([])
    for name, module in layers.items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, before[name][key]), f"{name}.{key} restored bit-exactly"


def test_a_file_with_unknown_kinds_keeps_its_known_layers():
    torch.manual_seed(0)
    loha = layer_tensors(lycoris_module(linear(), "loha", seed=1), "loha")
    tensors = {f"lora_unet_mid_block_attentions_0_proj_in.{k}": v for k, v in loha.items()}
    # T-LoRA: a change that depends on the timestep, which no patch of the weights can be
    tensors["lora_unet_mid_block_attentions_0_proj_out.lambda_layer"] = torch.zeros(1, 4)
    net = parse_lora("x", Path("x.safetensors"), tensors, {}, ("x", 0, 0, 0))
    assert [(layer.key, layer.weights.variant) for layer in net.layers] == [("mid_block_attentions_0_proj_in", "loha")]
    assert net.ignored_keys == 1


# --------------------------------------------------------------------------- whole models

def request(prompt: str = "a red circle", **kw) -> GenerationRequest:
    base = {"steps": 3, "width": 64, "height": 64, "seed": 7, "save_images": False, "checkpoint": "sd1.safetensors"}
    return GenerationRequest(prompt=prompt, **{**base, **kw})


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def weights_of(components: dict) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.clone() for name in ("unet", "text_encoder", "text_encoder_2")
            if components.get(name) is not None for key, value in components[name].state_dict().items()}


def assert_exact(components: dict, before: dict[str, torch.Tensor]) -> None:
    after = weights_of(components)
    assert after.keys() == before.keys()
    for key, value in after.items():
        assert torch.equal(value, before[key]), f"{key} restored bit-exactly"


def test_a_file_mixing_variants_changes_the_picture_and_removing_it_restores_the_base(make_context):
    ctx = make_context(["sd1"])
    components = ctx.manager.load("sd1").components
    path = write_lycoris(ctx.settings.models_dir / "Lora" / "mixed.safetensors", components,
                         algo=("locon", "loha", "lokr", "full", "norm"), use_tucker=True)
    net = ctx.manager.loras.load("mixed", path)
    assert {layer.weights.variant for layer in net.layers} == {"lora", "loha", "lokr", "full", "norm"}
    assert {layer.component for layer in net.layers} == {"unet", "text_encoder"}
    before = weights_of(components)
    base = pixels(generate(ctx.manager, request()))
    used = generate(ctx.manager, request("a red circle <lora:mixed:1>"))
    assert not used.warnings
    assert np.abs(pixels(used) - base).mean() > 2, "the file changes the picture"
    changed = {key for key, value in weights_of(components).items() if not torch.equal(value, before[key])}
    assert any(key.endswith("norm1.bias") for key in changed), "norm layers' biases too"
    half = generate(ctx.manager, request("a red circle <lora:mixed:0.5>"))
    assert not np.array_equal(pixels(half), pixels(used)), "the weight matters"
    assert np.array_equal(pixels(generate(ctx.manager, request())), base), "without it: the exact base picture"
    assert_exact(components, before)
    assert ctx.manager.load("sd1").components is components, "no checkpoint reload"


def test_lokr_and_dora_files_for_sd1_act_on_text_encoder_and_unet_separately(make_context):
    ctx = make_context(["sd1"])
    components = ctx.manager.load("sd1").components
    folder = ctx.settings.models_dir / "Lora"
    write_lycoris(folder / "kron.safetensors", components, algo="lokr", factor=4, rank=2)
    write_lycoris(folder / "dora.safetensors", components, algo="locon", weight_decompose=True, seed=3)
    base = pixels(generate(ctx.manager, request()))
    for name in ("kron", "dora"):
        te_only = generate(ctx.manager, request(f"a red circle <lora:{name}:1:0>"))
        unet_only = generate(ctx.manager, request(f"a red circle <lora:{name}:0:1>"))
        assert not te_only.warnings and not unet_only.warnings
        assert not np.array_equal(pixels(te_only), base) and not np.array_equal(pixels(unet_only), base), name
        assert not np.array_equal(pixels(te_only), pixels(unet_only)), name
    both = generate(ctx.manager, request("a red circle <lora:kron:1> <lora:dora:0.7>"))
    assert not both.warnings and not np.array_equal(pixels(both), base)


def test_sdxl_loha_in_original_layout_names_applies_to_an_sdxl_model(make_context):
    ctx = make_context(["sdxl"])
    components = ctx.manager.load("sdxl").components
    folder = ctx.settings.models_dir / "Lora"
    groups = [("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2")]
    write_lycoris(folder / "sgm.safetensors", components, algo="loha", sgm_names=True, groups=groups, use_tucker=True)
    write_lycoris(folder / "diffusers.safetensors", components, algo="loha", sgm_names=False, groups=groups,
                  use_tucker=True)
    net = ctx.manager.loras.load("sgm", folder / "sgm.safetensors")
    assert any(layer.key.startswith("input_blocks_") for layer in net.layers), "original-layout names"
    assert {layer.component for layer in net.layers} == {"unet", "text_encoder", "text_encoder_2"}
    before = weights_of(components)
    req = {"checkpoint": "sdxl.safetensors"}
    base = pixels(generate(ctx.manager, request(**req)))
    sgm = generate(ctx.manager, request("a red circle <lora:sgm:1>", **req))
    plain = generate(ctx.manager, request("a red circle <lora:diffusers:1>", **req))
    assert not sgm.warnings
    assert np.abs(pixels(sgm) - base).mean() > 1, "the LoHa changes the picture"
    assert np.array_equal(pixels(sgm), pixels(plain)), "both namings reach the same layers"
    assert np.array_equal(pixels(generate(ctx.manager, request(**req))), base)
    assert_exact(components, before)


def test_a_file_with_none_of_the_known_keys_warns_and_changes_nothing(make_context):
    ctx = make_context(["sd1"])
    folder = ctx.settings.models_dir / "Lora"
    folder.mkdir(parents=True)
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lambda_layer": torch.zeros(1, 4),  # T-LoRA
               "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(1.0),
               "something.else": torch.zeros(3)}, str(folder / "odd.safetensors"))
    base = generate(ctx.manager, request())
    result = generate(ctx.manager, request("a red circle <lora:odd:1>"))
    assert any("LoRA odd could not be used" in w and "no LoRA layers found" in w for w in result.warnings), \
        result.warnings
    assert np.array_equal(pixels(result), pixels(base))


# --------------------------------------------------------------------------- the built-in demo model

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """An engine on the CPU in fp32 whose only checkpoint is the built-in demo model; yields (ctx, name)."""
    from webui.config import load_settings
    from webui.context import BUILTIN_DIR, AppContext, builtin_checkpoints

    path = BUILTIN_DIR / "atelier-demo.safetensors"
    if not path.exists():
        pytest.skip("built-in demo model not built")
    root = tmp_path_factory.mktemp("demo-lycoris")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    settings = load_settings({"settings_file": root / "settings.json", "models_dir": root / "models",
                              "outputs_dir": root / "outputs", "device": "cpu", "precision": "fp32"}, env={})
    ctx = AppContext.create(settings)
    yield ctx, next(e.name for e in builtin_checkpoints() if e.path == path)
    ctx.close()


@pytest.mark.slow
@pytest.mark.parametrize("algo, options", [("loha", {"use_tucker": True}), ("lokr", {"factor": 4, "rank": 2})])
def test_a_loha_and_a_lokr_change_the_demo_models_picture_and_removing_restores_it(demo, algo, options):
    ctx, checkpoint = demo
    components = ctx.manager.load(checkpoint).components
    write_lycoris(ctx.settings.loras_dir / f"demo-{algo}.safetensors", components, algo=algo, seed=11,
                  strength=0.3, **options)

    def run(prompt: str) -> tuple[np.ndarray, list[str]]:
        result = generate(ctx.manager, GenerationRequest(prompt=prompt, checkpoint=checkpoint, steps=10, width=64,
                                                         height=64, seed=3, sampler="Euler a", save_images=False))
        return pixels(result), result.warnings

    before = weights_of(components)
    base, _ = run("a red square on a blue background")
    used, warnings = run(f"a red square on a blue background <lora:demo-{algo}:1>")
    assert not warnings
    assert np.abs(used - base).mean() > 3, "the picture changes"
    again, _ = run("a red square on a blue background")
    assert np.array_equal(again, base), "removing it gives back the exact picture"
    assert_exact(components, before)
