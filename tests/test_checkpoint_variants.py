"""Checkpoint files as they exist in the wild load with exactly their weights (issue 20).

Variants: SDXL saved by diffusers' convert_diffusers_to_original_sdxl.py (the OpenCLIP projection as
``text_projection.weight`` in Linear layout, where Stability's files store it transposed as
``text_projection``), and the tensors real files carry beside the weights (``model_ema.*``, schedule
buffers, ``denoiser.sigmas``, ``logit_scale``, int64 ``position_ids``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests.support.tiny_models import tiny_components, write_single_file
from webui.models.loader import load_checkpoint
from webui.models.registry import CheckpointEntry

PROJECTION = "conditioner.embedders.1.model.text_projection"


def _load(path: Path, dtype: torch.dtype = torch.float32):
    return load_checkpoint(CheckpointEntry(path.name, path, "safetensors"), dtype)


def _keys(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as fh:
        return set(fh.keys())


def _assert_same_weights(loaded: dict[str, Any], source: dict[str, Any]) -> None:
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name not in source:
            continue
        want = dict(source[name].named_parameters())
        got = dict(loaded[name].named_parameters())
        assert set(got) == set(want), f"{name}: parameter names differ"
        bad = [k for k in want if not torch.equal(got[k], want[k])]
        assert not bad, f"{name}: {len(bad)} of {len(want)} tensors differ from the source, e.g. {bad[:3]}"


@pytest.mark.parametrize("pooled_dim", [16, 32], ids=["projection-16x32", "square-projection"])
def test_both_spellings_of_the_sdxl_projection_load_the_same_projection(tmp_path, pooled_dim):
    source = tiny_components("sdxl", seed=7, pooled_dim=pooled_dim)
    released = write_single_file(tmp_path / "released.safetensors", "sdxl", source)
    converted = write_single_file(tmp_path / "converted.safetensors", "sdxl", source, spelling="diffusers")
    assert PROJECTION in _keys(released) and PROJECTION + ".weight" not in _keys(released)
    assert PROJECTION + ".weight" in _keys(converted) and PROJECTION not in _keys(converted)

    want = source["text_encoder_2"].text_projection.weight
    projections = []
    for path in (released, converted):
        model = _load(path)
        projections.append(model.components["text_encoder_2"].text_projection.weight)
        _assert_same_weights(model.components, source)
    assert torch.equal(projections[0], projections[1]) and torch.equal(projections[0], want)
    if pooled_dim == 32:  # square: only the name tells the orientation; a transpose would go unseen by shape
        assert not torch.equal(want, want.T)


@pytest.mark.parametrize("arch, spelling", [("sd1", "stability"), ("sd2", "stability"), ("sd2-v", "stability"),
                                            ("sdxl", "stability"), ("sdxl", "diffusers")])
def test_files_with_training_leftovers_load_only_the_weights(tmp_path, arch, spelling):
    source = tiny_components(arch, seed=3)
    plain = write_single_file(tmp_path / "plain.safetensors", arch, source, spelling=spelling, dtype=torch.float16)
    path = write_single_file(tmp_path / "full.safetensors", arch, source, spelling=spelling, leftovers=True,
                             dtype=torch.float16)
    extra = _keys(path) - _keys(plain)
    assert any(k.startswith("model_ema.") for k in extra)
    assert ("denoiser.sigmas" if arch == "sdxl" else "alphas_cumprod") in extra
    if arch != "sd1":  # OpenCLIP encoders
        assert any(k.endswith("logit_scale") for k in extra)
    if not arch.startswith("sd2"):  # CLIP-L encoders
        with safe_open(str(path), framework="pt") as fh:
            ids = [k for k in fh.keys() if k.endswith("position_ids")]
            assert ids and all(fh.get_tensor(k).dtype == torch.int64 for k in ids)

    model = _load(path)
    half = {name: (m.half().float() if isinstance(m, torch.nn.Module) else m) for name, m in source.items()}
    _assert_same_weights(model.components, half)  # the EMA copy (halved) was not taken
    assert model.nbytes == _load(plain).nbytes, "leftovers take no RAM"
