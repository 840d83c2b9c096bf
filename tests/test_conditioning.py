"""Prompt encoding as A1111 does it: 75-token chunks, BREAK, emphasis weights with the mean restored,
prompt editing switching embeddings during sampling; plain prompts encode exactly as diffusers does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.pipelines.conditioning import PromptEncoder, build_conditioning, count_tokens, tokenize_chunks
from webui.pipelines.generate import generate
from webui.pipelines.request import GenerationRequest, Task

WORDS = "red green blue black pink gold".split()


def long_prompt(tokens: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(tokens))  # one token per word


def request(**kw) -> GenerationRequest:
    base = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 3, "save_images": False}
    return GenerationRequest(**{**base, **kw})


@pytest.fixture
def sd1(make_context):
    ctx = make_context(["sd1", "sdxl"])
    return ctx, ctx.manager.load("sd1")


def test_chunks_of_75_with_break_and_comma_backtrack(sd1):
    _, model = sd1
    tokenizer = model.components["tokenizer"]
    assert [len(c.tokens) for c in tokenize_chunks(tokenizer, long_prompt(150))] == [75, 75]
    assert [len(c.tokens) for c in tokenize_chunks(tokenizer, long_prompt(151))] == [75, 75, 1]
    assert [len(c.tokens) for c in tokenize_chunks(tokenizer, "red BREAK blue green")] == [1, 2]
    # A comma 5 tokens before the limit: the phrase after it moves to the next chunk whole.
    text = long_prompt(69) + ", " + long_prompt(10)
    assert [len(c.tokens) for c in tokenize_chunks(tokenizer, text)] == [70, 10]
    weights = tokenize_chunks(tokenizer, "red (blue:1.5) [green]")[0].weights
    assert weights == pytest.approx([1.0, 1.5, 1 / 1.1])
    assert count_tokens(tokenizer, "(red:1.3) [blue:green:5]") == 2


def _diffusers_embeds(model, prompt: str, clip_skip: int | None = None):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if model.is_sdxl else StableDiffusionPipeline
    extra = {} if model.is_sdxl else {"safety_checker": None, "feature_extractor": None,
                                      "requires_safety_checker": False}
    pipe = cls(**model.components, **extra)
    with torch.no_grad():
        if not model.is_sdxl and clip_skip:
            # diffusers' own clip skip reaches for `text_model`, which transformers 5 removed from CLIPTextModel:
            # the same rule by hand, the penultimate layer through the final norm.
            ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
            hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
            return pipe.text_encoder.final_layer_norm(hidden), None
        if model.is_sdxl:
            out = pipe.encode_prompt(prompt, device=torch.device("cpu"), do_classifier_free_guidance=False,
                                     clip_skip=clip_skip)
            return out[0], out[2]
        return pipe.encode_prompt(prompt, torch.device("cpu"), 1, False, clip_skip=clip_skip)[0], None


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_plain_prompts_encode_exactly_as_diffusers(sd1, name, clip_skip):
    ctx, _ = sd1
    model = ctx.manager.load(name)
    ours = PromptEncoder(model.components, model.is_sdxl, clip_skip, torch.device("cpu")).encode("a red circle")
    theirs, pooled = _diffusers_embeds(model, "a red circle", clip_skip - 1 if clip_skip > 1 else None)
    assert torch.equal(ours.embeds, theirs)
    if model.is_sdxl:
        assert torch.equal(ours.pooled, pooled)


def test_a_weight_scales_its_tokens_and_the_mean_is_restored(sd1):
    _, model = sd1
    encoder = PromptEncoder(model.components, False, 1, torch.device("cpu"))
    plain = encoder.encode("red circle").embeds
    weighted = encoder.encode("(red:1.5) circle").embeds
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-4)
    restore = weighted[0, 2] / plain[0, 2]  # "circle": scaled only by the mean restoration
    assert torch.allclose(weighted[0, 1], plain[0, 1] * 1.5 * restore.mean(), rtol=1e-3, atol=1e-5)
    assert torch.allclose(restore, restore.mean().expand_as(restore), rtol=1e-4)


def test_long_prompts_keep_every_token_and_the_negative_is_padded(sd1):
    ctx, model = sd1
    encoder = PromptEncoder(model.components, False, 1, torch.device("cpu"))
    schedule = build_conditioning(encoder, long_prompt(150), "blurry", 4)
    positive, negative = schedule.at(1)
    assert positive.embeds.shape[1] == negative.embeds.shape[1] == 154
    whole = generate(ctx.manager, request(prompt=long_prompt(150), checkpoint="sd1")).images[0]
    first = generate(ctx.manager, request(prompt=long_prompt(75), checkpoint="sd1")).images[0]
    assert np.abs(np.asarray(whole, dtype=int) - np.asarray(first, dtype=int)).mean() > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_prompt_editing_switches_during_sampling(sd1, name):
    ctx, _ = sd1

    def image(prompt: str, **kw):
        return np.asarray(generate(ctx.manager, request(prompt=prompt, checkpoint=name, steps=6, **kw)).images[0],
                          dtype=int)

    red, blue, edited = image("a red circle"), image("a blue circle"), image("a [red:blue:0.5] circle")
    # Exactly equal to either would mean no switch (or a switch at the start); random tiny weights react little.
    assert not np.array_equal(edited, red) and not np.array_equal(edited, blue)
    # From step 0 the edit equals its second prompt; past the last step it never switches.
    assert np.array_equal(image("a [red:blue:0] circle"), blue)
    assert np.array_equal(image("a [red:blue:99] circle"), red)
    alternating = image("a [red|blue] circle")
    assert not np.array_equal(alternating, red) and not np.array_equal(alternating, blue)


def test_img2img_schedules_over_the_steps_that_run(sd1):
    from PIL import Image

    ctx, _ = sd1
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    kw = {"checkpoint": "sd1", "init_image": init, "denoising_strength": 0.5, "steps": 8}
    assert request(**kw).task is Task.IMG2IMG
    # 8 steps at strength 0.5 run 5 steps (A1111's t_enc + 1): switching at step 5 of 5 is no switch at all.
    late = generate(ctx.manager, request(prompt="a [red:blue:5] circle", **kw)).images[0]
    plain = generate(ctx.manager, request(prompt="a red circle", **kw)).images[0]
    assert np.array_equal(np.asarray(late), np.asarray(plain))
