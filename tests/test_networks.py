"""LoRA tags and textual-inversion embeddings, end to end on tiny real models.

LoRA and embedding files are written here the way trainers write them (kohya / A1111 key names,
diffusers / PEFT names, A1111's .pt with string_to_param), then used through the normal job path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.support.network_files import kohya_to_peft, write_a1111_embedding, write_kohya_lora
from webui.extra_networks import NetworkTag, extract_tags, lora_tag
from webui.infotext import parse_infotext
from webui.pipelines.generate import generate
from webui.pipelines.request import GenerationRequest


def request(prompt: str = "a red circle", **kw) -> GenerationRequest:
    base = {"steps": 3, "width": 64, "height": 64, "seed": 7, "save_images": False, "checkpoint": "sd1.safetensors"}
    return GenerationRequest(prompt=prompt, **{**base, **kw})


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


# --------------------------------------------------------------------------- tags (pure)

@pytest.mark.parametrize("prompt, text, tags", [
    ("a cat <lora:style:0.8>", "a cat ", [("lora", "style", 0.8, 0.8)]),
    ("<lora:style>x", "x", [("lora", "style", 1.0, 1.0)]),
    ("<lora:a:0.5:1.5> <LORA:b:2>", " ", [("lora", "a", 0.5, 1.5), ("lora", "b", 2.0, 2.0)]),
    ("<lora:a:te=0.25:unet=0.75>", "", [("lora", "a", 0.25, 0.75)]),
    ("<lora:sub/dir name:1>", "", [("lora", "sub/dir name", 1.0, 1.0)]),
    ("<hypernet:h:1> text", " text", [("hypernet", "h", 1.0, 1.0)]),
    ("a < b > c, no tag", "a < b > c, no tag", []),
])
def test_tags_are_removed_from_the_text_and_parsed(prompt, text, tags):
    stripped, found, problems = extract_tags(prompt)
    assert stripped == text and not problems
    assert [(t.kind, t.name, t.te_weight, t.unet_weight) for t in found] == tags


def test_a_malformed_weight_is_reported_not_raised():
    stripped, found, problems = extract_tags("x <lora:a:lots>")
    assert stripped == "x " and found == [] and "lots" in problems[0]
    assert lora_tag("my lora", 0.75) == "<lora:my lora:0.75>"
    assert isinstance(extract_tags("<lora:a>")[1][0], NetworkTag)


# --------------------------------------------------------------------------- LoRA files

@pytest.fixture
def sd1(make_context):
    ctx = make_context(["sd1"])
    components = ctx.manager.load("sd1").components
    return ctx, components


def test_a_kohya_lora_changes_the_picture_and_removing_it_restores_the_exact_base(sd1):
    ctx, components = sd1
    write_kohya_lora(ctx.settings.models_dir / "Lora" / "style.safetensors", components)
    unet_before = {k: v.clone() for k, v in components["unet"].state_dict().items()}
    base = generate(ctx.manager, request())
    with_lora = generate(ctx.manager, request("a red circle <lora:style:1>"))
    assert np.abs(pixels(with_lora) - pixels(base)).mean() > 2, "the LoRA changes the picture"
    assert not with_lora.warnings
    params = parse_infotext(with_lora.infotexts[0])
    assert params["Prompt"] == "a red circle <lora:style:1>", "infotext keeps the tag so the image can be redone"
    assert re.fullmatch(r"style: [0-9a-f]{12}", params["Lora hashes"])
    half = generate(ctx.manager, request("a red circle <lora:style:0.5>"))
    assert not np.array_equal(pixels(half), pixels(with_lora)), "the weight matters"
    after = generate(ctx.manager, request())
    assert np.array_equal(pixels(after), pixels(base)), "the next job without the LoRA equals a never-touched model"
    for key, value in components["unet"].state_dict().items():
        assert torch.equal(value, unet_before[key]), key
    assert ctx.manager.load("sd1").components is components, "no checkpoint reload"


def test_text_encoder_and_unet_weights_act_separately(sd1):
    ctx, components = sd1
    write_kohya_lora(ctx.settings.models_dir / "Lora" / "style.safetensors", components)
    base = pixels(generate(ctx.manager, request()))
    te_only = pixels(generate(ctx.manager, request("a red circle <lora:style:1:0>")))
    unet_only = pixels(generate(ctx.manager, request("a red circle <lora:style:0:1>")))
    both = pixels(generate(ctx.manager, request("a red circle <lora:style:1:1>")))
    for picture in (te_only, unet_only):
        assert not np.array_equal(picture, base)
        assert not np.array_equal(picture, both)


def test_peft_naming_gives_the_same_picture_as_kohya_naming(sd1):
    ctx, components = sd1
    folder = ctx.settings.models_dir / "Lora"
    kohya = write_kohya_lora(folder / "k.safetensors", components)
    kohya_to_peft(kohya, folder / "p.safetensors")
    from_kohya = generate(ctx.manager, request("a red circle <lora:k:0.8>"))
    from_peft = generate(ctx.manager, request("a red circle <lora:p:0.8>"))
    assert np.abs(pixels(from_kohya) - pixels(from_peft)).max() <= 1


def test_two_loras_at_once_and_a_missing_one_warns(sd1):
    ctx, components = sd1
    folder = ctx.settings.models_dir / "Lora"
    write_kohya_lora(folder / "one.safetensors", components, seed=1)
    write_kohya_lora(folder / "styles" / "two.safetensors", components, seed=2)
    one = pixels(generate(ctx.manager, request("x <lora:one:1>")))
    both = generate(ctx.manager, request("x <lora:one:1> <lora:two:1>"))
    assert not np.array_equal(pixels(both), one)
    assert set(parse_infotext(both.infotexts[0])["Lora hashes"].split(", ")) >= {
        f"one: {ctx.manager.loras.short_hash('one', folder / 'one.safetensors')}"}
    missing = generate(ctx.manager, request("x <lora:nowhere:1>"))
    plain = generate(ctx.manager, request("x "))
    assert any("LoRA not found: nowhere" in w for w in missing.warnings)
    assert np.array_equal(pixels(missing), pixels(plain)), "the prompt ran without the missing LoRA"


def test_a_lora_for_another_architecture_warns_and_changes_nothing(make_context):
    ctx = make_context(["sd1", "sdxl"])
    sdxl = ctx.manager.load("sdxl").components
    # An SDXL LoRA's second-text-encoder layers: SD 1.x has no such encoder.
    write_kohya_lora(ctx.settings.models_dir / "Lora" / "xl.safetensors", sdxl,
                     groups=[("lora_te2_", "text_encoder_2")])
    base = generate(ctx.manager, request())
    result = generate(ctx.manager, request("a red circle <lora:xl:1>"))
    assert any("does not fit this model" in w for w in result.warnings)
    assert np.array_equal(pixels(result), pixels(base))


def test_sdxl_kohya_lora_with_original_layout_names(make_context):
    ctx = make_context(["sdxl"])
    components = ctx.manager.load("sdxl").components
    folder = ctx.settings.models_dir / "Lora"
    write_kohya_lora(folder / "sgm.safetensors", components, sgm_names=True, text_encoder=False)
    write_kohya_lora(folder / "diffusers.safetensors", components, sgm_names=False, text_encoder=False)
    req = {"checkpoint": "sdxl.safetensors"}
    base = pixels(generate(ctx.manager, request(**req)))
    sgm = generate(ctx.manager, request("a red circle <lora:sgm:1>", **req))
    plain = generate(ctx.manager, request("a red circle <lora:diffusers:1>", **req))
    assert not sgm.warnings
    assert not np.array_equal(pixels(sgm), base)
    assert np.array_equal(pixels(sgm), pixels(plain)), "both namings reach the same layers"


def fresh_pixels(ctx, req: GenerationRequest) -> np.ndarray:
    """The job on a manager that has never patched anything (as a fresh process would run it)."""
    from webui.pipelines.manager import PipelineManager

    manager = PipelineManager(ctx.registry, device=torch.device("cpu"), dtype=torch.float32, ram_cache_bytes=2**30,
                              lora_dir=ctx.settings.loras_dir)
    try:
        return pixels(generate(manager, req))
    finally:
        manager.shutdown()


def test_a_lora_file_saved_again_under_its_name_is_used_with_its_new_weights(sd1):
    ctx, components = sd1
    path = ctx.settings.models_dir / "Lora" / "style.safetensors"
    base = pixels(generate(ctx.manager, request(steps=1)))
    write_kohya_lora(path, components, seed=1)
    old = pixels(generate(ctx.manager, request("a red circle <lora:style:1>", steps=1)))

    # Re-trained and saved over the old file, with a later time (file systems may keep coarse times).
    first = path.stat()
    write_kohya_lora(path, components, seed=2)
    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns + 10**10))
    new_job = request("a red circle <lora:style:1>", steps=1)
    new = pixels(generate(ctx.manager, new_job))
    assert not np.array_equal(new, old), "the new weights, not the old file's"
    assert np.array_equal(new, fresh_pixels(ctx, new_job))

    # Replaced again by a copy that kept its source's time (cp -p, rsync -t): only the size tells.
    second = path.stat()
    write_kohya_lora(path, components, seed=3, text_encoder=False)
    os.utime(path, ns=(second.st_atime_ns, second.st_mtime_ns))
    assert path.stat().st_size != second.st_size
    third = pixels(generate(ctx.manager, new_job))
    assert not np.array_equal(third, new)
    assert np.array_equal(third, fresh_pixels(ctx, new_job))

    assert np.array_equal(pixels(generate(ctx.manager, request(steps=1))), base), "without it: the exact base weights"


def test_more_loras_than_the_library_keeps_each_give_their_own_picture(make_context):
    """Parsed LoRAs beyond the library's last few are dropped while a model may still carry one of them; a
    LoRA parsed later must never be taken for the one a model carries."""
    ctx = make_context(["sd1", "sd1b"])
    components = ctx.manager.load("sd1").components
    folder = ctx.settings.models_dir / "Lora"
    for index in range(6):
        write_kohya_lora(folder / f"l{index}.safetensors", components, seed=10 + index)
    assert ctx.manager.loras.keep == 4
    # One model runs a LoRA, the other runs four more (so the parse of the LoRA the first model carries is
    # dropped), then the first model runs another LoRA.
    jobs = [request(f"x <lora:l{index}:1>", steps=1, checkpoint=f"{checkpoint}.safetensors") for checkpoint, index in
            [("sd1", 0), ("sd1b", 1), ("sd1b", 2), ("sd1b", 3), ("sd1b", 4), ("sd1", 5)]]
    expected = [fresh_pixels(ctx, job) for job in jobs]
    for _round in range(2):
        for job, picture in zip(jobs, expected, strict=True):
            assert np.array_equal(pixels(generate(ctx.manager, job)), picture), (job.checkpoint, job.prompt)
    assert len({picture.tobytes() for picture in expected}) == len(jobs), "every LoRA gives its own picture"


# --------------------------------------------------------------------------- embeddings

def test_an_a1111_embedding_is_found_by_name_and_changes_the_picture(sd1):
    ctx, components = sd1
    width = components["text_encoder"].get_input_embeddings().embedding_dim
    write_a1111_embedding(ctx.settings.models_dir / "embeddings" / "MyStyle.pt", width)
    plain = generate(ctx.manager, request("a red circle, mystyle-2"))  # not a whole-word match: plain text
    used = generate(ctx.manager, request("a red circle, mystyle"))
    assert not used.warnings
    params = parse_infotext(used.infotexts[0])
    assert re.fullmatch(r"MyStyle: [0-9a-f]{12}", params["TI hashes"])
    assert "TI hashes" not in parse_infotext(plain.infotexts[0])
    text_only = generate(ctx.manager, request("a red circle, mystyle", checkpoint="sd1.safetensors"))
    assert np.array_equal(pixels(text_only), pixels(used)), "deterministic"
    ctx.manager.embeddings.folders = []  # the same prompt with the file gone: the name is plain text again
    as_text = generate(ctx.manager, request("a red circle, mystyle"))
    assert np.abs(pixels(used) - pixels(as_text)).mean() > 1, "the embedding's vectors change the picture"


def test_embedding_vectors_replace_the_token_embeddings(sd1):
    from webui.pipelines.conditioning import PromptEncoder

    ctx, components = sd1
    width = components["text_encoder"].get_input_embeddings().embedding_dim
    vectors = torch.randn(3, width)
    encoder = PromptEncoder(components, False, 1, torch.device("cpu"), {"thing": [vectors]})
    text_encoder = components["text_encoder"]
    embeddings = getattr(text_encoder, "text_model", text_encoder).embeddings  # token + position embeddings
    seen: list[torch.Tensor] = []
    hook = embeddings.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        encoder.encode("a thing here")
    finally:
        hook.remove()
    # BOS, "a", then the three vectors
    tokens = seen[-1][0, 2:5] - embeddings.position_embedding.weight[2:5]
    assert torch.allclose(tokens, vectors, atol=1e-5)


def test_an_embedding_for_another_model_is_skipped_with_a_warning(sd1):
    ctx, components = sd1
    width = components["text_encoder"].get_input_embeddings().embedding_dim
    write_a1111_embedding(ctx.settings.models_dir / "embeddings" / "wide.pt", width + 8)
    result = generate(ctx.manager, request("a red circle, wide"))
    assert any("wide" in w and "another kind of model" in w for w in result.warnings)
    assert "TI hashes" not in parse_infotext(result.infotexts[0])


def test_safetensors_and_sdxl_embeddings(make_context):
    ctx = make_context(["sdxl"])
    components = ctx.manager.load("sdxl").components
    folder = ctx.settings.models_dir / "embeddings"
    folder.mkdir(parents=True)
    l_width = components["text_encoder"].get_input_embeddings().embedding_dim
    g_width = components["text_encoder_2"].get_input_embeddings().embedding_dim
    xl_vectors = {"clip_l": torch.randn(2, l_width), "clip_g": torch.randn(2, g_width)}
    save_file(xl_vectors, str(folder / "xlstyle.safetensors"))
    save_file({"emb_params": torch.randn(2, l_width)}, str(folder / "sd1only.safetensors"))
    req = {"checkpoint": "sdxl.safetensors"}
    plain = generate(ctx.manager, request("a red circle", **req))
    used = generate(ctx.manager, request("a red circle xlstyle", **req))
    text = generate(ctx.manager, request("a red circle sd1only", **req))
    assert not used.warnings and not np.array_equal(pixels(used), pixels(plain))
    assert any("sd1only" in w for w in text.warnings)


def test_a_pickled_embedding_that_runs_code_is_refused(sd1, tmp_path):
    import pickle

    ctx, _ = sd1
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = ctx.settings.models_dir / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evil.pt").write_bytes(pickle.dumps({"string_to_param": Evil()}))
    result = generate(ctx.manager, request("a red circle evil"))
    assert any("evil" in w and "could not be used" in w for w in result.warnings)
    assert not marker.exists()
