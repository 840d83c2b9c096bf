"""Settings layering, and a corrupt settings file that is kept aside instead of crashing start-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from webui.config import check_changes, load_settings, save_settings


def test_layers_file_then_env_then_overrides(tmp_path):
    f = tmp_path / "settings.json"
    f.write_text(json.dumps({"port": 7001, "default_steps": 30, "outputs_dir": str(tmp_path / "o")}))
    s = load_settings({"settings_file": f}, env={})
    assert (s.port, s.default_steps, s.outputs_dir) == (7001, 30, tmp_path / "o")
    s = load_settings({"settings_file": f}, env={"ATELIER_PORT": "7002"})
    assert s.port == 7002
    s = load_settings({"settings_file": f, "port": 7003}, env={"ATELIER_PORT": "7002"})
    assert s.port == 7003


def test_defaults_are_safe(tmp_path):
    s = load_settings({"settings_file": tmp_path / "none.json"}, env={})
    assert s.host == "127.0.0.1"
    assert s.checkpoints_dir == s.models_dir / "Stable-diffusion"
    moved = load_settings({"settings_file": tmp_path / "n.json", "ckpt_dir": tmp_path}, env={})
    assert moved.checkpoints_dir == tmp_path


def test_corrupt_file_is_moved_aside_and_defaults_used(tmp_path, caplog):
    f = tmp_path / "settings.json"
    f.write_text("{not json")
    s = load_settings({"settings_file": f}, env={})
    assert s.port == 7860
    assert not f.exists() and Path(str(f) + ".corrupt").read_text() == "{not json"
    assert "unreadable" in caplog.text


def test_wrong_types_and_unknown_keys_are_ignored(tmp_path, caplog):
    f = tmp_path / "settings.json"
    f.write_text(json.dumps({"port": "not a number", "colour": "blue", "default_steps": 12}))
    s = load_settings({"settings_file": f}, env={})
    assert s.port == 7860 and s.default_steps == 12
    assert "colour" in caplog.text


def test_settings_outside_their_choices_are_refused(tmp_path, caplog):
    f = tmp_path / "settings.json"
    f.write_text(json.dumps({"offload": "low", "batch_mode": "Exact", "precision": "fp8"}))
    s = load_settings({"settings_file": f}, env={})
    assert (s.offload, s.batch_mode, s.precision) == ("auto", "exact", "auto")
    assert "offload" in caplog.text and "precision" in caplog.text


def test_checking_changes_writes_nothing_and_new_settings_are_validated(tmp_path):

    s = load_settings({"settings_file": tmp_path / "settings.json"}, env={})
    assert (s.save_images, s.default_clip_skip, s.default_vae) == (True, 1, "Automatic")
    updated, stored = check_changes(s, {"default_clip_skip": "2", "save_images": "false"})
    assert (updated.default_clip_skip, updated.save_images) == (2, False) and stored["default_clip_skip"] == 2
    assert not (tmp_path / "settings.json").exists()
    with pytest.raises(ValueError, match="default_clip_skip"):
        check_changes(s, {"default_clip_skip": 13})
    saved = save_settings(s, {"default_vae": "None"})
    reloaded = load_settings({"settings_file": tmp_path / "settings.json"}, env={})
    assert reloaded.default_vae == saved.default_vae == "None"


def test_the_controlnet_unit_count_is_editable_within_the_extensions_limit(tmp_path):
    settings = load_settings({"settings_file": tmp_path / "s.json"}, env={})
    assert save_settings(settings, {"controlnet_unit_count": "5"}).controlnet_unit_count == 5
    assert json.loads((tmp_path / "s.json").read_text())["controlnet_unit_count"] == 5
    for bad in (0, 11):
        with pytest.raises(ValueError, match="controlnet_unit_count"):
            check_changes(settings, {"controlnet_unit_count": bad})


def test_a1111s_unipc_options_are_settings_saved_and_checked(tmp_path):
    settings = load_settings({"settings_file": tmp_path / "s.json"}, env={})
    assert (settings.uni_pc_variant, settings.uni_pc_skip_type, settings.uni_pc_order,
            settings.uni_pc_lower_order_final) == ("bh1", "time_uniform", 3, True), "A1111's defaults"
    # A1111 keeps whole-number options as floats and clients send booleans as text: both are read as A1111 means
    saved = save_settings(settings, {"uni_pc_variant": "bh2", "uni_pc_skip_type": "logSNR", "uni_pc_order": 2.0,
                                     "uni_pc_lower_order_final": "false"})
    reloaded = load_settings({"settings_file": tmp_path / "s.json"}, env={})
    for s in (saved, reloaded):
        assert (s.uni_pc_variant, s.uni_pc_skip_type, s.uni_pc_order, s.uni_pc_lower_order_final) == \
            ("bh2", "logSNR", 2, False)
    stored = json.loads((tmp_path / "s.json").read_text())
    assert (stored["uni_pc_order"], stored["uni_pc_lower_order_final"]) == (2, False)
    refusals = [({"uni_pc_variant": "bh3"}, "uni_pc_variant"), ({"uni_pc_skip_type": "time_cubic"}, "uni_pc_skip_type"),
                ({"uni_pc_order": 0}, "uni_pc_order"), ({"uni_pc_order": 51}, "uni_pc_order"),
                ({"uni_pc_order": 2.5}, "uni_pc_order")]
    for bad, name in refusals:
        with pytest.raises(ValueError, match=f"^{name}"):
            check_changes(saved, bad)
    # A1111's third variant is refused by name, not as a typo
    with pytest.raises(ValueError, match="^uni_pc_variant: vary_coeff .* not available in Atelier"):
        check_changes(saved, {"uni_pc_variant": "vary_coeff"})
    assert load_settings({"settings_file": tmp_path / "s.json"}, env={}).uni_pc_variant == "bh2", "nothing saved"
