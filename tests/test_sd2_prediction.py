"""SD 2.x files with no hint of their parameterisation are told apart by their weights (issue 20).

Two tiny SD 2 models trained briefly from the same start, one for epsilon and one for v, written with
neutral names, no sidecar .yaml and no prediction type in their metadata. The loader decides each from
what its UNet predicts, shows the decision in the model list and the log, and remembers it; hints still win.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from tests.support.tiny_models import write_single_file
from tests.support.trained_sd2 import trained_sd2
from webui.models import configs
from webui.models.loader import describe_checkpoint, load_checkpoint
from webui.models.parameterization import V_ABOVE, probe_prediction
from webui.models.registry import CheckpointEntry

pytestmark = pytest.mark.slow  # two brief trainings, once per module

EPS, V = "alpha.safetensors", "beta.safetensors"  # names that hint nothing


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sd2-unhinted")
    files = {}
    for name, prediction in ((EPS, "epsilon"), (V, "v_prediction")):
        parts = trained_sd2(prediction)
        probe = probe_prediction(parts["unet"], parts["text_encoder"], configs.load_clip_tokenizer("!"))
        # The training made each unambiguous: well on its side of the line.
        assert abs(probe.noise_error - V_ABOVE) > 0.15, (prediction, probe)
        files[name] = write_single_file(folder / name, "sd2", parts, hint_prediction=False)
    return files


def _context(root: Path, files: dict[str, Path], extra: dict[str, Path] | None = None):
    from webui.config import load_settings
    from webui.context import AppContext

    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True, exist_ok=True)
    for name, path in {**files, **(extra or {})}.items():
        if not (ckpts / name).exists():
            shutil.copy2(path, ckpts / name)
    settings = load_settings(
        {"settings_file": root / "settings.json", "models_dir": root / "models", "outputs_dir": root / "outputs",
         "extensions_dir": root / "extensions", "device": "cpu", "precision": "fp32", "include_builtin": False},
        env={},
    )
    return AppContext.create(settings)


def test_unhinted_files_are_decided_by_their_weights_shown_and_remembered(trained, tmp_path, caplog):
    ctx = _context(tmp_path, trained)
    entries = {name: ctx.registry.find(name) for name in (EPS, V)}
    undecided = "SD 2.x, epsilon or v-prediction: decided from the weights when first loaded"
    assert all(describe_checkpoint(entry) == undecided for entry in entries.values())

    caplog.set_level(logging.INFO, logger="webui.models.loader")
    eps, v = ctx.manager.load(EPS), ctx.manager.load(V)
    assert (eps.arch, eps.components["scheduler"].config.prediction_type) == ("sd2", "epsilon")
    assert (v.arch, v.components["scheduler"].config.prediction_type) == ("sd2-v", "v_prediction")
    log = caplog.text
    assert f"{EPS} has no sidecar .yaml, metadata or name" in log and f"{V} has no sidecar .yaml" in log
    assert "SD 2.x, epsilon (64), decided from the weights" in log
    assert "SD 2.x, v-prediction (64), decided from the weights" in log

    # The model list tells, now and after a restart, before the files are loaded again.
    ctx.close()
    again = _context(tmp_path, trained)
    assert describe_checkpoint(again.registry.find(EPS)) == "SD 2.x, epsilon (64), decided from the weights"
    assert describe_checkpoint(again.registry.find(V)) == "SD 2.x, v-prediction (64), decided from the weights"
    again.close()


def test_a_generation_uses_the_decided_parameterisation(trained, tmp_path):
    ctx = _context(tmp_path, trained)
    try:
        for name, want in ((EPS, "epsilon"), (V, "v_prediction")):
            request = ctx.new_request({"prompt": "", "steps": 2, "width": 64, "height": 64, "seed": 1,
                                       "save_images": False, "checkpoint": name})
            result = ctx.run_job(request)
            assert result.images and ctx.manager.cache.get(name).components["scheduler"].config.prediction_type == want
    finally:
        ctx.close()


def test_hints_still_decide_over_the_weights(trained, tmp_path, caplog):
    folder = tmp_path / "files"
    folder.mkdir()
    named = shutil.copy2(trained[EPS], folder / "alpha-768-v.safetensors")  # epsilon weights, a v name
    sidecar = shutil.copy2(trained[V], folder / "beta2.safetensors")  # v weights, an epsilon config beside it
    Path(sidecar).with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: eps\n")
    caplog.set_level(logging.INFO, logger="webui.models.loader")
    for path, arch, source in ((named, "sd2-v", "the file name"), (sidecar, "sd2", "beta2.yaml")):
        entry = CheckpointEntry(Path(path).name, Path(path), "safetensors")
        assert describe_checkpoint(entry).endswith(f"decided from {source}")
        model = load_checkpoint(entry, torch.float32)
        assert model.arch == arch and model.detection.prediction_from == source
    assert "has no sidecar .yaml" not in caplog.text  # nothing was probed
