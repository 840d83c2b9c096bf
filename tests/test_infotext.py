"""Infotext: A1111's text layout written and read back, and turned into request fields."""

from __future__ import annotations

import subprocess
import sys

import pytest

from webui.infotext import format_infotext, parse_infotext, request_fields_from_infotext
from webui.pipelines.request import GenerationRequest

# Written the way A1111 1.10 writes them (hand-made, realistic values).
HIRES_TEXT = """masterpiece, best quality, (a red fox:1.2) sitting in snow,
  <lora:detail:0.6> soft light, bokeh
Negative prompt: lowres, bad anatomy, (worst quality:1.4),
watermark
Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3456789012, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, \
Hires upscale: 2, Hires steps: 12, Hires upscaler: R-ESRGAN 4x+, \
Lora hashes: "detail: 0123456789ab, style: ba9876543210", TI hashes: "easynegative: c74b4e810b03", \
Version: v1.10.1"""

NO_NEGATIVE_TEXT = """portrait of an old sailor, oil painting
Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 42, Size: 768x512, \
Model hash: abcdef1234, Model: sdxl/juggernaut, Version: v1.9.4"""


def _params(parsed: dict[str, object]) -> dict[str, object]:
    """Parsed keys minus the prompts and the derived width/height entries."""
    return {k: v for k, v in parsed.items()
            if k not in ("Prompt", "Negative prompt") and not k.endswith(("-1", "-2"))}


def test_module_is_pure():
    code = ("import sys, webui.infotext, webui.samplers\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_parse_a1111_text_with_hires_lora_hashes_and_legacy_sampler():
    p = parse_infotext(HIRES_TEXT)
    assert p["Prompt"] == ("masterpiece, best quality, (a red fox:1.2) sitting in snow,\n"
                           "  <lora:detail:0.6> soft light, bokeh")
    assert p["Negative prompt"] == "lowres, bad anatomy, (worst quality:1.4),\nwatermark"
    assert p["Steps"] == 28 and p["Seed"] == 3456789012 and p["Clip skip"] == 2
    assert p["CFG scale"] == 6.5 and p["Denoising strength"] == 0.45 and p["Hires upscale"] == 2.0
    assert (p["Sampler"], p["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert p["Size"] == "512x768" and (p["Size-1"], p["Size-2"]) == (512, 768)
    assert p["Lora hashes"] == "detail: 0123456789ab, style: ba9876543210"
    assert p["TI hashes"] == "easynegative: c74b4e810b03"
    assert p["Hires upscaler"] == "R-ESRGAN 4x+"
    assert p["Model"] == "v1-5-pruned-emaonly" and p["Model hash"] == "6ce0161689"
    assert p["Version"] == "v1.10.1"


def test_parse_without_negative_prompt():
    p = parse_infotext(NO_NEGATIVE_TEXT)
    assert p["Prompt"] == "portrait of an old sailor, oil painting"
    assert p["Negative prompt"] == ""
    assert p["Sampler"] == "Euler a" and p["Schedule type"] == "Automatic"
    assert (p["Size-1"], p["Size-2"]) == (768, 512)


def test_text_without_parameters_is_all_prompt():
    text = "a castle: tall, grey\nNo settings here: just words"
    p = parse_infotext(text)
    assert p == {"Prompt": text, "Negative prompt": ""}
    assert parse_infotext("") == {"Prompt": "", "Negative prompt": ""}


def test_parameters_only_and_crlf_line_ends():
    p = parse_infotext("Negative prompt: ugly\r\nSteps: 5, Seed: 1, Size: 64x64\r\n")
    assert p["Prompt"] == "" and p["Negative prompt"] == "ugly" and p["Steps"] == 5


def test_format_orders_keys_like_a1111_and_skips_empty_values():
    params = {
        "Version": "atelier-0.1.0", "Lora hashes": {"detail": "0123456789ab"}, "Clip skip": 2, "Seed": 7,
        "Size": "512x512", "Steps": 20, "CFG scale": 7.0, "Sampler": "Euler a", "Model": "m",
        "Model hash": None, "VAE": "", "Schedule type": "Karras", "Denoising strength": 0.75,
    }
    text = format_infotext("a cat", "", params)
    assert text == (
        "a cat\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 7, Size: 512x512, Model: m, "
        'Denoising strength: 0.75, Clip skip: 2, Lora hashes: "detail: 0123456789ab", Version: atelier-0.1.0'
    )


def test_format_quotes_values_that_would_break_the_line():
    text = format_infotext("p", "n", {"Steps": 1, "Seed": 2, "Note": 'a, b: "c"\nd', "Quoted": '"x"'})
    assert text.splitlines()[-1] == r'Steps: 1, Seed: 2, Note: "a, b: \"c\"\nd", Quoted: "\"x\""'
    p = parse_infotext(text)
    assert p["Note"] == 'a, b: "c"\nd' and p["Quoted"] == '"x"'


def test_round_trip_from_parameters():
    prompt = "line one, (detail:1.1)\nline two — ünïcode 猫"
    negative = "blurry,\nlow quality"
    params = {"Steps": 30, "Sampler": "DPM++ SDE", "Schedule type": "Karras", "CFG scale": 5.5,
              "Seed": 123, "Size": "832x1216", "Model": "sd_xl_base_1.0", "Hires upscaler": "Latent",
              "Lora hashes": "a: 123, b: 456", "Version": "atelier-0.1.0"}
    parsed = parse_infotext(format_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt and parsed["Negative prompt"] == negative
    assert _params(parsed) == params
    assert (parsed["Size-1"], parsed["Size-2"]) == (832, 1216)


def test_round_trip_from_text():
    once = parse_infotext(HIRES_TEXT)
    text = format_infotext(once["Prompt"], once["Negative prompt"], _params(once))
    assert parse_infotext(text) == once
    assert format_infotext(once["Prompt"], once["Negative prompt"], _params(parse_infotext(text))) == text


def test_request_fields_from_a1111_text():
    fields = request_fields_from_infotext(HIRES_TEXT)
    assert fields == {
        "prompt": parse_infotext(HIRES_TEXT)["Prompt"],
        "negative_prompt": "lowres, bad anatomy, (worst quality:1.4),\nwatermark",
        "steps": 28, "sampler": "DPM++ 2M", "schedule_type": "Karras", "cfg_scale": 6.5, "seed": 3456789012,
        "width": 512, "height": 768, "denoising_strength": 0.45, "clip_skip": 2,
        "checkpoint": "v1-5-pruned-emaonly",
        # A1111's hires-fix fields turn hires fix on with the same second pass
        "enable_hr": True, "hr_scale": 2.0, "hr_second_pass_steps": 12, "hr_upscaler": "R-ESRGAN 4x+",
        "rng": "GPU",  # A1111 writes no "RNG" for its default source, the GPU
    }
    GenerationRequest(**fields).validate()


def test_request_fields_skip_odd_values_and_unknown_keys():
    text = ("x\nSteps: many, Sampler: Fancy New Sampler, CFG scale: 99, Seed: -5, Size: 513x512, "
            "Denoising strength: 2, Clip skip: 0, Model hash: 6ce0161689, Mystery key: 1")
    fields = request_fields_from_infotext(text)
    assert fields == {"prompt": "x", "negative_prompt": "", "checkpoint": "6ce0161689", "rng": "GPU"}
    GenerationRequest(**fields).validate()


def test_request_fields_sampler_aliases_and_impossible_schedule():
    fields = request_fields_from_infotext("x\nSteps: 4, Sampler: k_euler_a, Seed: 3")
    assert fields["sampler"] == "Euler a" and "schedule_type" not in fields
    fields = request_fields_from_infotext("x\nSteps: 4, Sampler: DDIM, Schedule type: Karras, Seed: 3")
    assert fields["sampler"] == "DDIM" and "schedule_type" not in fields  # DDIM cannot do Karras here
    text = "x\nSteps: 4, Sampler: DPM++ 2M SDE, Schedule type: Quadratic, Seed: 3"  # no such schedule type
    fields = request_fields_from_infotext(text)
    assert fields["sampler"] == "DPM++ 2M SDE" and "schedule_type" not in fields


@pytest.mark.parametrize("sampler, schedule", [
    ("DPM++ 2S a", "Karras"), ("DPM++ 3M SDE", "Exponential"), ("HeunPP2", "Automatic"),
    ("Euler", "Uniform"), ("Euler a", "Polyexponential"), ("DPM++ 2M", "KL Optimal"),
    ("DPM++ 2M", "Align Your Steps"), ("Euler", "Simple"), ("Euler", "Normal"), ("DPM++ SDE", "DDIM"),
    ("Euler a", "Turbo"), ("DPM++ 2M SDE", "SGM Uniform"),
])
def test_new_samplers_and_schedule_types_round_trip(sampler, schedule):
    """What A1111 writes for its samplers and schedule types reads back as the same choice here."""
    text = f"x\nSteps: 4, Sampler: {sampler}, Schedule type: {schedule}, Seed: 3"
    fields = request_fields_from_infotext(text)
    assert fields["sampler"] == sampler
    assert fields.get("schedule_type", "Automatic") == schedule


def test_rng_ensd_and_emphasis_are_read_as_a1111_writes_them():
    text = "a cat\nSteps: 6, Sampler: Euler, Seed: 1, Size: 64x64, RNG: NV, ENSD: 31337, Emphasis: No norm"
    fields = request_fields_from_infotext(text)
    assert (fields["rng"], fields["eta_noise_seed_delta"], fields["emphasis"]) == ("NV", 31337, "No norm")
    # Without "RNG": A1111's default (GPU); Atelier's own older files drew on the CPU.
    assert request_fields_from_infotext("a\nSteps: 6, Sampler: Euler, Seed: 1")["rng"] == "GPU"
    assert request_fields_from_infotext("a\nSteps: 6, Sampler: Euler, Version: atelier-0.1.0")["rng"] == "CPU"
    odd = request_fields_from_infotext("a\nSteps: 6, Sampler: Euler, RNG: quantum, ENSD: -3, Emphasis: loud")
    assert "rng" not in odd and "eta_noise_seed_delta" not in odd and "emphasis" not in odd
