"""Composable prompts (``AND`` with weights), with A1111's semantics: every part conditioned on its own, its
guidance delta weighted: denoised = uncond + cfg * sum_i w_i (cond_i - uncond)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.network_files import write_kohya_lora
from webui.pipelines.conditioning import count_part_tokens
from webui.pipelines.generate import generate
from webui.pipelines.request import GenerationRequest
from webui.prompts import split_and


def request(prompt: str, **kw) -> GenerationRequest:
    base = {"prompt": prompt, "steps": 4, "width": 64, "height": 64, "seed": 3, "save_images": False,
            "sampler": "Euler"}
    return GenerationRequest(**{**base, **kw})


def picture(ctx, prompt: str, **kw) -> np.ndarray:
    return np.asarray(generate(ctx.manager, request(prompt, **kw)).images[0], dtype=np.float32)


def test_split_and_reads_a1111s_weights():
    assert split_and("a red circle :1.2 AND a blue background :0.8") == [("a red circle", 1.2),
                                                                        (" a blue background", 0.8)]
    assert split_and("a cat") == [("a cat", 1.0)]
    assert split_and("a [b:c:0.5] (x:1.2)") == [("a [b:c:0.5] (x:1.2)", 1.0)], "editing and emphasis are no weight"
    assert split_and("ANDROID AND sand") == [("ANDROID", 1.0), (" sand", 1.0)], "AND is a word of its own"
    assert split_and("cat:1.5") == [("cat", 1.5)]


def test_token_counter_counts_each_part(make_context):
    ctx = make_context(["sd1"])
    tokenizer = ctx.manager.load("sd1").components["tokenizer"]
    assert count_part_tokens(tokenizer, "red circle <lora:x:1> AND (blue:1.2) green square :0.5") == [2, 3]
    assert count_part_tokens(tokenizer, "red circle") == [2]


@pytest.fixture(scope="module")
def contexts(tmp_path_factory, tiny_files):
    from tests.conftest import make_models_dir
    from webui.config import load_settings
    from webui.context import AppContext

    made = {}
    for name in ("sd1", "sdxl"):
        root = tmp_path_factory.mktemp(name)
        settings = load_settings({"settings_file": root / "s.json", "models_dir": make_models_dir(root, tiny_files,
                                 [name]), "outputs_dir": root / "out", "extensions_dir": root / "ext",
                                  "device": "cpu", "precision": "fp32", "include_builtin": False}, env={})
        made[name] = AppContext.create(settings)
    yield made
    for ctx in made.values():
        ctx.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_a_parts_weight_scales_its_guidance_like_cfg(contexts, name):
    """uncond + cfg * w * (cond - uncond): weight 2 at CFG 3 is CFG 6 (SDXL: each part's pooled embedding)."""
    ctx = contexts[name]
    weighted = picture(ctx, "a red circle :2", cfg_scale=3.0)
    reference = picture(ctx, "a red circle", cfg_scale=6.0)
    assert np.abs(weighted - reference).max() <= 1.0
    # Two equal halves are the prompt itself; a part of weight 0 contributes nothing.
    halves = picture(ctx, "a red circle :0.5 AND a red circle :0.5")
    assert np.abs(halves - picture(ctx, "a red circle")).max() <= 1.0
    both = picture(ctx, "a red circle AND a blue square")
    for alone in ("a red circle", "a blue square"):
        assert np.abs(both - picture(ctx, alone)).mean() > 1.0, alone


@pytest.mark.slow
def test_and_with_negative_prompt_editing_and_lora_tags(contexts):
    ctx = contexts["sd1"]
    write_kohya_lora(ctx.settings.models_dir / "Lora" / "style.safetensors", ctx.manager.load("sd1").components)
    negative = {"negative_prompt": "green"}
    # Prompt editing inside a part; a part of weight 0 changes nothing, so each is the part alone.
    edited = "a [red:blue:1] circle"
    assert np.abs(picture(ctx, edited + " AND yellow :0", **negative) - picture(ctx, edited, **negative)).max() <= 1
    assert not np.array_equal(picture(ctx, edited, **negative), picture(ctx, "a red circle", **negative))
    # A LoRA tag in any part applies to the whole job, as in A1111.
    tagged = picture(ctx, "a red circle AND <lora:style:1> a blue square :0.7", **negative)
    untagged = picture(ctx, "a red circle AND a blue square :0.7", **negative)
    assert np.abs(tagged - untagged).mean() > 1.0
    result = generate(ctx.manager, request("a red circle AND <lora:style:1> a blue square :0.7"))
    assert "AND" in result.infotexts[0] and not result.warnings


def test_xyz_prompt_search_replace_reaches_every_part():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "extensions" / "xyz-plot" / "axes.py"
    spec = importlib.util.spec_from_file_location("xyz_axes_for_test", path)
    assert spec is not None and spec.loader is not None
    axes = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = axes  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(axes)
    finally:
        del sys.modules[spec.name]
    axis = axes.AXES["Prompt S/R"]
    base = GenerationRequest(prompt="a red circle :1.2 AND a red background :0.8")
    changed = axis.apply(base, "blue", ["red", "blue"])
    assert split_and(changed.prompt) == [("a blue circle", 1.2), (" a blue background", 0.8)]
    # Replacing the separator itself turns two parts into one prompt, as in A1111.
    assert len(split_and(axis.apply(base, "and", ["AND", "and"]).prompt)) == 1
