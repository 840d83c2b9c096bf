"""A1111's "RNG source" (GPU / CPU / NV), eta noise seed delta and emphasis modes: the numbers they draw, the
pictures they change, and what the infotext says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.infotext import parse_infotext
from webui.pipelines.conditioning import PromptEncoder
from webui.pipelines.generate import generate
from webui.pipelines.noise import seed_noise, variation_noise
from webui.pipelines.request import GenerationRequest, RequestError
from webui.pipelines.rng import PhiloxGenerator, philox4x32

# torch.randn(3, 4) on an NVIDIA GPU after manual_seed(0), as A1111's rng_philox module documents it.
CUDA_SEED_0 = [[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
               [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
               [-1.07454231, -0.36314407, -1.67105067, 2.26550497]]


def test_philox_draws_what_an_nvidia_gpu_draws():
    assert np.allclose(PhiloxGenerator(0).randn((3, 4)), CUDA_SEED_0, atol=1e-6)


def test_philox_is_the_counter_based_generator_a1111_describes():
    # The Random123 known-answer test for Philox4x32-10 with a zero counter and key.
    zero = philox4x32(np.zeros((4, 1), np.uint32), np.zeros((2, 1), np.uint32))[:, 0]
    assert [hex(v) for v in zero] == ["0x6627e8d5", "0xe169c58d", "0xbc57ac4c", "0x9b00dbd8"]
    generator = PhiloxGenerator(12345)
    first, second = generator.randn((2, 8)), generator.randn((2, 8))
    assert not np.allclose(first, second), "each draw moves the offset on"
    assert np.array_equal(PhiloxGenerator(12345, offset=1).randn((2, 8)), second)
    assert np.array_equal(PhiloxGenerator(12345).randn((16,)), first.reshape(-1)), "number k is counter k"
    big = PhiloxGenerator(7).randn((4, 64, 64))
    assert abs(float(big.mean())) < 0.03 and abs(float(big.std()) - 1) < 0.03


def test_noise_sources_differ_and_each_is_reproducible():
    cpu, nv = seed_noise(5, (4, 8, 8)), seed_noise(5, (4, 8, 8), source="NV")
    assert torch.equal(cpu, torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))[0])
    assert torch.equal(nv, torch.from_numpy(PhiloxGenerator(5).randn((4, 8, 8))))
    assert not torch.allclose(cpu, nv)
    # Variation seeds mix two NV draws exactly as two CPU draws.
    mixed = variation_noise((4, 8, 8), 5, 6, 0.5, source="NV")
    assert not torch.allclose(mixed, nv) and torch.isfinite(mixed).all()


def test_request_checks_the_new_fields():
    for bad in ({"rng": "TPU"}, {"emphasis": "Loud"}, {"eta_noise_seed_delta": -1}):
        with pytest.raises(RequestError) as info:
            GenerationRequest(**bad).validate()
        assert info.value.field == next(iter(bad))


def request(**kw) -> GenerationRequest:
    base = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 1, "save_images": False}
    return GenerationRequest(**{**base, **kw})


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


@pytest.mark.slow
def test_gpu_source_without_cuda_uses_nv_and_says_so(make_context):
    ctx = make_context(["sd1"])
    cpu = generate(ctx.manager, request(rng="CPU"))
    assert not cpu.warnings and parse_infotext(cpu.infotexts[0])["RNG"] == "CPU"
    gpu = generate(ctx.manager, request(rng="GPU"))
    nv = generate(ctx.manager, request(rng="NV"))
    assert any("no CUDA GPU" in w for w in gpu.warnings), gpu.warnings
    assert parse_infotext(gpu.infotexts[0])["RNG"] == "NV", "the infotext names the generator that was used"
    assert np.array_equal(pixels(gpu), pixels(nv))
    assert np.abs(pixels(nv) - pixels(cpu)).mean() > 1, "another source is another picture"
    # Image i of an NV batch is still the single run with seed + i.
    batch = generate(ctx.manager, request(rng="NV", batch_size=2))
    second = generate(ctx.manager, request(rng="NV", seed=2))
    assert np.abs(np.asarray(batch.images[1], dtype=np.int16) - pixels(second)).max() <= 1


@pytest.mark.slow
def test_eta_noise_seed_delta_changes_only_ancestral_pictures(make_context):
    ctx = make_context(["sd1"])
    for sampler, changes in (("Euler a", True), ("Euler", False)):
        plain = generate(ctx.manager, request(sampler=sampler))
        delta = generate(ctx.manager, request(sampler=sampler, eta_noise_seed_delta=31337))
        assert parse_infotext(delta.infotexts[0])["ENSD"] == 31337 and "ENSD" not in parse_infotext(plain.infotexts[0])
        differs = not np.array_equal(pixels(plain), pixels(delta))
        assert differs == changes, sampler


def test_emphasis_modes_encode_as_a1111(make_context):
    ctx = make_context(["sd1"])
    model = ctx.manager.load("sd1")

    def encode(text: str, mode: str) -> torch.Tensor:
        return PromptEncoder(model.components, False, 1, torch.device("cpu"), emphasis=mode).encode(text).embeds

    plain = encode("a red circle", "Original")
    original, no_norm = encode("a (red:1.5) circle", "Original"), encode("a (red:1.5) circle", "No norm")
    assert torch.allclose(original.mean(), plain.mean(), atol=1e-6), "Original restores the mean"
    assert not torch.allclose(original, no_norm)
    assert torch.allclose(no_norm * (plain.mean() / no_norm.mean()), original, atol=1e-5)
    # "None": brackets are text, so the prompt is other tokens, and no weight applies.
    none = encode("a (red:1.5) circle", "None")
    assert not torch.allclose(none, encode("a red circle", "None"))


@pytest.mark.slow
def test_emphasis_setting_reaches_the_picture_and_the_infotext(make_context):
    ctx = make_context(["sd1"])
    prompt = "a (red:1.6) circle"
    original = generate(ctx.manager, request(prompt=prompt))
    no_norm = generate(ctx.manager, request(prompt=prompt, emphasis="No norm"))
    assert "Emphasis" not in parse_infotext(original.infotexts[0])
    assert parse_infotext(no_norm.infotexts[0])["Emphasis"] == "No norm"
    assert not np.array_equal(pixels(original), pixels(no_norm))
