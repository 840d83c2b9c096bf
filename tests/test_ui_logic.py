"""The UI's pure parts: form values -> requests, infotext -> form values, styles, auth, settings, file names."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from webui.auth import AuthError, Credentials, parse_auth, read_auth_file, resolve_credentials
from webui.config import Settings, load_settings, save_settings
from webui.outputs import file_stem, save_image
from webui.pipelines.build import build_request
from webui.pipelines.request import InpaintArea, MaskedContent, RequestError, Task
from webui.styles import Style, StyleStore
from webui.ui import forms


def request_from(mode, checkpoint, values):
    """What a tab's Generate button asks for, as the app builds it (default settings, a 512 model)."""
    return build_request(Settings(), forms.form_fields(mode, checkpoint, values), lambda: 512)


BASE = {"prompt": "a cat", "negative_prompt": "", "sampler": "DPM++ 2M", "schedule_type": "Karras", "steps": 12,
        "width": 64, "height": 128, "batch_count": 2, "batch_size": 1, "cfg_scale": 6.5, "seed": 9, "clip_skip": 2}


def test_txt2img_values_become_a_request():
    req = request_from("txt2img", "model.safetensors", BASE)
    assert req.task is Task.TXT2IMG
    assert (req.steps, req.width, req.height, req.seed, req.clip_skip, req.cfg_scale) == (12, 64, 128, 9, 2, 6.5)
    assert req.checkpoint == "model.safetensors" and req.schedule_type == "Karras"


def test_bad_numbers_name_their_field():
    with pytest.raises(RequestError, match="steps"):
        request_from("txt2img", None, {**BASE, "steps": 2.5})
    with pytest.raises(RequestError, match="seed"):
        request_from("txt2img", None, {**BASE, "seed": "abc"})


def test_img2img_needs_a_picture():
    with pytest.raises(RequestError, match="init_image"):
        request_from("img2img", None, {**BASE, "init_image": None})
    req = request_from("img2img", None, {**BASE, "init_image": Image.new("RGBA", (64, 64)),
                                                      "denoising_strength": 0.4})
    assert req.task is Task.IMG2IMG and req.init_image.mode == "RGB" and req.denoising_strength == 0.4


def _editor(painted_box=None):
    background = Image.new("RGBA", (64, 64), (0, 0, 255, 255))
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    if painted_box:
        layer.paste((255, 255, 255, 190), painted_box)
    return {"background": background, "layers": [layer], "composite": background}


def test_painted_layer_becomes_the_inpaint_mask():
    values = {**BASE, "mask_editor": _editor((10, 20, 30, 40)), "masked_content": "fill",
              "inpaint_area": "Only masked", "mask_blur": 2, "mask_invert": True}
    req = request_from("inpaint", None, values)
    assert req.task is Task.INPAINT
    mask = req.mask
    assert mask.getpixel((15, 25)) == 255 and mask.getpixel((5, 5)) == 0
    assert mask.getbbox() == (10, 20, 30, 40)
    assert req.masked_content is MaskedContent.FILL and req.inpaint_area is InpaintArea.ONLY_MASKED
    assert req.mask_invert and req.mask_blur == 2


def test_inpaint_without_paint_or_upload_says_what_to_do():
    with pytest.raises(RequestError, match="paint over"):
        request_from("inpaint", None, {**BASE, "mask_editor": _editor()})


def test_uploaded_mask_wins_over_paint_and_is_resized():
    upload = Image.new("L", (32, 32), 0)
    upload.paste(255, (0, 0, 16, 16))
    req = request_from("inpaint", None, {**BASE, "mask_editor": _editor((40, 40, 60, 60)),
                                                      "mask_upload": upload})
    assert req.mask.size == (64, 64) and req.mask.getbbox() == (0, 0, 32, 32)


def test_infotext_fills_the_form():
    text = ("a cat, (masterpiece:1.2)\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5.5, "
            "Seed: 77, Size: 512x768, Model hash: abcdef1234, Model: dreamy, VAE hash: 0123456789, "
            "VAE: kl-f8.safetensors, Denoising strength: 0.4, Clip skip: 2")
    values = forms.values_from_infotext(text)
    assert values["prompt"] == "a cat, (masterpiece:1.2)" and values["negative_prompt"] == "blurry"
    assert (values["steps"], values["cfg_scale"], values["seed"]) == (30, 5.5, 77)
    assert (values["width"], values["height"]) == (512, 768)
    assert values["sampler"] == "DPM++ 2M" and values["schedule_type"] == "Karras"
    assert values["denoising_strength"] == 0.4 and values["clip_skip"] == 2 and values["checkpoint"] == "dreamy"
    assert values["vae"] == "kl-f8.safetensors"


def test_refiner_and_hires_checkpoint_boxes_become_request_fields_and_come_back_from_infotext():
    values = {"prompt": "a cat", "refiner_checkpoint": "other [0123456789]", "refiner_switch_at": 0.6,
              "enable_hr": True, "hr_checkpoint": "Use same checkpoint", "subseed": 5, "subseed_strength": 0.3}
    fields = forms.form_fields("txt2img", None, values)
    assert fields["refiner_checkpoint"] == "other [0123456789]" and fields["refiner_switch_at"] == 0.6
    assert fields["hr_checkpoint"] is None
    assert "refiner_checkpoint" not in forms.form_fields("txt2img", None, {**values, "refiner_checkpoint": "None"})
    picture = Image.new("RGB", (64, 64))
    img2img = forms.form_fields("img2img", None, {**values, "init_image": picture})
    assert img2img["subseed_strength"] == 0.3 and img2img["refiner_switch_at"] == 0.6
    text = ("a cat\nSteps: 6, Sampler: Euler, Seed: 1, Size: 64x64, Denoising strength: 0.5, Hires upscale: 2, "
            "Hires upscaler: Latent, Hires checkpoint: other [0123456789], Refiner: other, Refiner switch at: 0.6")
    back = forms.values_from_infotext(text)
    assert back["hr_checkpoint"] == "other [0123456789]" and back["refiner_checkpoint"] == "other"
    assert back["refiner_switch_at"] == 0.6
    plain = forms.values_from_infotext("a cat\nSteps: 6, Sampler: Euler, Seed: 1, Size: 64x64")
    assert plain["refiner_checkpoint"] == "None", "a text without a refiner switches it off"


@pytest.mark.parametrize(("count", "label"), [(0, "0/75"), (75, "75/75"), (76, "76/150"), (151, "151/225")])
def test_token_counter_shows_chunks_of_75(count, label):
    assert forms.token_count_label(count) == label


def test_styles_apply_and_save_atomically(tmp_path):
    store = StyleStore(tmp_path / "styles.csv")
    assert store.names() == []
    store.save(Style("cinema", "{prompt}, cinematic, film grain", "cartoon"))
    store.save(Style("plain", "high detail"))
    store.save(Style("cinema", "{prompt}, cinematic", "cartoon, \"quoted\""))  # replaces, keeps its place
    assert store.names() == ["cinema", "plain"]
    prompt, negative = store.apply(["cinema", "plain"], "a cat", "blurry")
    assert prompt == "a cat, cinematic, high detail"
    assert negative == 'blurry, cartoon, "quoted"'
    assert not list(tmp_path.glob(".styles.csv.*")), "no temp file is left behind"
    # A1111's file layout, so its styles.csv can be copied over as is.
    assert (tmp_path / "styles.csv").read_text().splitlines()[0] == "name,prompt,negative_prompt"


def test_auth_strings_and_files(tmp_path):
    assert parse_auth("ann:pw1, bob:pa:ss") == [("ann", "pw1"), ("bob", "pa:ss")]
    with pytest.raises(AuthError):
        parse_auth("ann")
    path = tmp_path / "auth.txt"
    path.write_text("ann:pw1\nbob:pw2\n")
    assert read_auth_file(path) == [("ann", "pw1"), ("bob", "pw2")]
    with pytest.raises(AuthError, match="cannot read"):
        read_auth_file(tmp_path / "missing.txt")
    creds = Credentials((("ann", "pw1"),))
    assert creds.check("ann", "pw1") and not creds.check("ann", "pw2") and not creds.check("bob", "pw1")


def test_listen_without_auth_generates_a_stable_password(tmp_path):
    password_file = tmp_path / "lan-password.json"
    assert resolve_credentials(None, None, listen=False, no_auth=False, password_file=password_file) is None
    first = resolve_credentials(None, None, listen=True, no_auth=False, password_file=password_file)
    again = resolve_credentials(None, None, listen=True, no_auth=False, password_file=password_file)
    assert first.generated and first.pairs == again.pairs and len(first.pairs[0][1]) >= 12
    assert password_file.stat().st_mode & 0o077 == 0, "the password file is private to the user"
    assert resolve_credentials(None, None, listen=True, no_auth=True, password_file=password_file) is None
    explicit = resolve_credentials("ann:pw", None, listen=True, no_auth=False, password_file=password_file)
    assert explicit.pairs == (("ann", "pw"),) and not explicit.generated


def test_settings_save_merges_atomically_and_refuses_bad_values(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"default_steps": 25, "port": 9000}))
    settings = load_settings({"settings_file": path}, env={})
    updated = save_settings(settings, {"default_sampler": "DDIM", "preview_every_n_steps": 3, "default_size": 768})
    stored = json.loads(path.read_text())
    assert stored == {"default_steps": 25, "port": 9000, "default_sampler": "DDIM", "preview_every_n_steps": 3,
                      "default_size": 768}
    assert updated.default_sampler == "DDIM" and updated.default_size == 768
    before = path.read_text()
    for bad in ({"default_steps": 0}, {"offload": "warp"}, {"default_size": 100}, {"host": "0.0.0.0"}):
        with pytest.raises(ValueError):
            save_settings(updated, bad)
    assert path.read_text() == before, "a refused change leaves the file alone"
    assert load_settings({"settings_file": path}, env={}).default_size == 768


def test_file_name_pattern(tmp_path):
    assert file_stem("[number]-[seed]", 7, {"seed": "42"}) == "00007-42"
    assert file_stem("[seed]-[prompt_words]", 3, {"seed": "1", "prompt_words": "a/b: c"}) == "00003-1-a_b_ c"
    assert file_stem("[number]-[unknown]", 0, {}) == "00000-[unknown]"
    first = save_image(Image.new("RGB", (8, 8)), tmp_path, 5, "x", pattern="[number]-[seed]-[model_name]",
                       fields={"model_name": "dreamy"})
    second = save_image(Image.new("RGB", (8, 8)), tmp_path, 5, "x", pattern="[number]-[seed]-[model_name]",
                        fields={"model_name": "dreamy"})
    assert (first.name, second.name) == ("00000-5-dreamy.png", "00001-5-dreamy.png")


@pytest.mark.parametrize("prompt, text, expected", [
    ("", "<lora:a:1>", "<lora:a:1>"),
    ("a cat", "<lora:a:1>", "a cat, <lora:a:1>"),
    ("a cat, ", "mystyle", "a cat, mystyle"),
    ("a cat <lora:a:1>", "<lora:a:1>", "a cat <lora:a:1>"),
])
def test_clicking_a_network_card_adds_it_to_the_prompt_once(prompt, text, expected):
    assert forms.insert_into_prompt(prompt, text) == expected
