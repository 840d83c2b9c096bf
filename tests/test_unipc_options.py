"""A1111's four UniPC options (uni_pc_variant, uni_pc_skip_type, uni_pc_order, uni_pc_lower_order_final) as
settings and per-job fields: they reach UniPC's scheduler, change its pictures, and leave other samplers alone."""

from __future__ import annotations

import numpy as np
import pytest

from webui.infotext import parse_infotext
from webui.pipelines.generate import generate, with_unipc_options
from webui.pipelines.request import GenerationRequest
from webui.pipelines.schedulers import make_scheduler
from webui.samplers import resolve_sampler

CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
          "prediction_type": "epsilon"}
# 8 steps: at 4, order 3 with lower order final never runs above order 2 (orders 1, 2, 2, 1), as in A1111
BASE = {"prompt": "a red circle", "steps": 8, "width": 64, "height": 64, "seed": 7, "save_images": False}


def test_the_jobs_options_build_unipcs_scheduler_without_touching_the_sampler_table():
    job = GenerationRequest(sampler="UniPC", uni_pc_variant="bh2", uni_pc_skip_type="logSNR", uni_pc_order=2,
                            uni_pc_lower_order_final=False)
    choice = resolve_sampler("UniPC")
    config = make_scheduler(with_unipc_options(choice, job), CONFIG).config
    assert (config["variant"], config["skip_type"], config["solver_order"], config["lower_order_final"]) == \
        ("bh2", "logSNR", 2, False)
    assert resolve_sampler("UniPC").kwargs["variant"] == "bh1", "the shared table keeps A1111's defaults"
    assert choice.kwargs["solver_order"] == 3
    euler = resolve_sampler("Euler")
    assert with_unipc_options(euler, job) is euler, "other samplers take no UniPC options"


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


@pytest.mark.slow
def test_unipc_options_change_unipcs_picture_and_the_defaults_are_a1111s(make_context):
    ctx = make_context(["sd1"])
    unmentioned = generate(ctx.manager, ctx.new_request({**BASE, "sampler": "UniPC"}))
    spelled_out = generate(ctx.manager, ctx.new_request({
        **BASE, "sampler": "UniPC", "uni_pc_variant": "bh1", "uni_pc_skip_type": "time_uniform", "uni_pc_order": 3,
        "uni_pc_lower_order_final": True}))
    assert np.array_equal(pixels(unmentioned), pixels(spelled_out)), "A1111's defaults are what a job gets"
    changed = {"uni_pc_variant": "bh2", "uni_pc_skip_type": "logSNR", "uni_pc_order": 2,
               "uni_pc_lower_order_final": False}
    for name, value in changed.items():
        other = generate(ctx.manager, ctx.new_request({**BASE, "sampler": "UniPC", name: value}))
        assert np.abs(pixels(other) - pixels(unmentioned)).mean() > 0.05, name
    # As A1111, the options are not written into the infotext
    assert not any(key.startswith("UniPC") for key in parse_infotext(unmentioned.infotexts[0]))
    # The setting is every job's default; a sampler other than UniPC is not affected by it
    ctx.apply_settings(ctx.settings.replace(uni_pc_variant="bh2"))
    from_setting = generate(ctx.manager, ctx.new_request({**BASE, "sampler": "UniPC"}))
    bh2 = generate(ctx.manager, ctx.new_request({**BASE, "sampler": "UniPC", "uni_pc_variant": "bh2"}))
    assert np.array_equal(pixels(from_setting), pixels(bh2))
    assert not np.array_equal(pixels(from_setting), pixels(unmentioned))
    euler_bh2 = generate(ctx.manager, ctx.new_request({**BASE, "sampler": "Euler"}))
    ctx.apply_settings(ctx.settings.replace(uni_pc_variant="bh1"))
    euler = generate(ctx.manager, ctx.new_request({**BASE, "sampler": "Euler"}))
    assert np.array_equal(pixels(euler), pixels(euler_bh2))


def test_the_settings_tab_saves_the_unipc_options_and_names_a_refused_one(make_context):
    from webui.ui.app import build

    ctx = make_context(["sd1"])
    demo = build(ctx)
    labels = {getattr(block, "label", None): block for block in demo.blocks.values()}
    assert [choice[0] for choice in labels["UniPC variant"].choices] == ["bh1", "bh2"]
    assert [choice[0] for choice in labels["UniPC skip type"].choices] == ["time_uniform", "time_quadratic", "logSNR"]
    assert (labels["UniPC order"].minimum, labels["UniPC order"].maximum) == (1, 50)
    assert labels["UniPC lower order final"].value is True
    save = next(block.fn for block in demo.fns.values() if getattr(block.fn, "__name__", "") == "on_save")
    s = ctx.settings
    page = (str(s.outputs_dir), s.filename_pattern, "png", 1.0, "auto", 5, "Euler a", 20, 0, s.upscaler_tile_size,
            False, False, "Full", 3, False)
    message, _ = save(*page, "bh2", "time_quadratic", 2, False)
    assert "Saved" in message
    assert (ctx.settings.uni_pc_variant, ctx.settings.uni_pc_skip_type, ctx.settings.uni_pc_order,
            ctx.settings.uni_pc_lower_order_final) == ("bh2", "time_quadratic", 2, False)
    message, _ = save(*page, "vary_coeff", "time_uniform", 3, True)  # a forged save: the page offers bh1 and bh2
    assert "Not saved" in message and "uni_pc_variant" in message and "vary_coeff" in message
    assert ctx.settings.uni_pc_variant == "bh2", "nothing changed"
