"""Model cards' files (A1111's name.preview.png and name.json notes), the page script's sound, and who is host."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from webui import model_cards
from webui.ui import page_script
from webui.users import folder_name, is_admin


def test_preview_is_found_as_a1111_names_it_and_replaced_atomically(tmp_path):
    model = tmp_path / "style.safetensors"
    model.write_bytes(b"weights")
    assert model_cards.preview_file(model) is None and model_cards.thumbnail(model) is None
    Image.new("RGB", (80, 40), "red").save(tmp_path / "style.png")
    assert model_cards.preview_file(model) == tmp_path / "style.png"
    saved = model_cards.save_preview(model, Image.new("RGB", (1024, 768), "blue"))
    assert saved == tmp_path / "style.preview.png", "name.preview.png wins over name.png"
    assert model_cards.preview_file(model) == saved
    assert Image.open(saved).size == (512, 384) and Image.open(saved).info.get("parameters") is None
    thumb = model_cards.thumbnail(model)
    assert thumb is not None and max(thumb.size) == model_cards.THUMB_SIDE and thumb.getpixel((0, 0)) == (0, 0, 255)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["style.png", "style.preview.png", "style.safetensors"]


def test_a_diffusers_folder_keeps_its_card_beside_it(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    model_cards.save_notes(folder, "folder notes")
    assert (tmp_path / "my-model.json").is_file() and model_cards.read_notes(folder) == "folder notes"


def test_notes_keep_the_other_keys_of_a1111s_json(tmp_path):
    model = tmp_path / "lora.safetensors"
    (tmp_path / "lora.json").write_text(json.dumps({"activation text": "wxyz", "preferred weight": 0.7}))
    assert model_cards.read_notes(model) == ""
    model_cards.save_notes(model, "ünïcode notes")
    data = json.loads((tmp_path / "lora.json").read_text(encoding="utf-8"))
    assert data == {"activation text": "wxyz", "preferred weight": 0.7, "notes": "ünïcode notes"}
    assert model_cards.read_notes(model) == "ünïcode notes"


def test_unreadable_notes_file_is_not_overwritten(tmp_path):
    model = tmp_path / "lora.safetensors"
    (tmp_path / "lora.json").write_text("{broken")
    with pytest.raises(model_cards.CardError, match="not readable JSON"):
        model_cards.save_notes(model, "x")
    assert (tmp_path / "lora.json").read_text() == "{broken"
    with pytest.raises(model_cards.CardError, match="limited"):
        model_cards.save_notes(tmp_path / "other.safetensors", "x" * (model_cards.NOTES_LIMIT + 1))


def test_notification_sound_is_inlined_only_when_present_and_small(tmp_path):
    assert page_script.sound_file([tmp_path]) is None
    assert '"@SOUND@"' not in page_script.head_html(None) and "SOUND = null" in page_script.head_html(None)
    (tmp_path / "notification.mp3").write_bytes(b"ID3 sound")
    html = page_script.head_html(page_script.sound_file([tmp_path / "missing", tmp_path]))
    assert "data:audio/mpeg;base64,SUQzIHNvdW5k" in html
    assert html.startswith("<script>") and html.count("</script>") == 1
    (tmp_path / "notification.mp3").write_bytes(b"\0" * (page_script.SOUND_LIMIT + 1))
    assert page_script.sound_url(tmp_path / "notification.mp3") is None


def test_the_host_is_the_open_studio_or_a_named_admin():
    assert is_admin(None, "")
    assert not is_admin("friend", "")
    assert is_admin("me", "me, partner") and is_admin("partner", "me, partner") and not is_admin("friend", "me")
    assert folder_name("../../etc") == "etc" and folder_name("ann smith") == "ann_smith"
    assert folder_name("...") == "_" and "/" not in folder_name("a/b\\c")
