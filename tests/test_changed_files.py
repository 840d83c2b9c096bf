"""A checkpoint file replaced, rewritten or truncated while its model is cached (issue 20).

The load precision equals the file's (fp16 file, fp16 on the CPU): the case where weights could stay
backed by the file's pages. The scenario runs in a child process, so a regression (SIGBUS on touching a
truncated mapping) shows as a failed test instead of killing the test run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NAME = "model.safetensors"


def _write(path: Path, seed: int) -> Path:
    from tests.support.tiny_models import tiny_components, write_single_file

    return write_single_file(path, "sd1", tiny_components("sd1", seed=seed), dtype=torch.float16)


def _context(root: Path):
    from webui.config import load_settings
    from webui.context import AppContext

    settings = load_settings(
        {"settings_file": root / "settings.json", "models_dir": root / "models", "outputs_dir": root / "outputs",
         "extensions_dir": root / "extensions", "device": "cpu", "precision": "fp16", "include_builtin": False},
        env={},
    )
    return AppContext.create(settings)


def _job(ctx) -> np.ndarray:
    request = ctx.new_request({"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 3,
                               "save_images": False, "checkpoint": NAME})
    return np.asarray(ctx.run_job(request).images[0].convert("RGB"), dtype=np.int16)


def _scenario(root: str) -> None:
    """Job, truncate the file, job, copy a new version over it in place, job; prints what happened."""
    from webui.errors import AtelierError

    base = Path(root)
    path = base / "models" / "Stable-diffusion" / NAME
    ctx = _context(base)
    first = _job(ctx)
    model = ctx.manager.cache.get(NAME)
    assert model is not None and model.dtype == torch.float16

    os.truncate(path, path.stat().st_size // 2)
    try:
        _job(ctx)
        error = None
    except AtelierError as exc:
        error = {"type": type(exc).__name__, "message": str(exc), "field": exc.field}

    inode = path.stat().st_ino
    shutil.copyfile(_write(base / "new.safetensors", seed=1), path)  # rewrites the same file (same inode)
    assert path.stat().st_ino == inode
    third = _job(ctx)
    print(json.dumps({"error": error, "first": first.tolist(), "third": third.tolist()}))


@pytest.mark.slow
def test_truncated_then_rewritten_file_gives_a_clear_error_then_the_new_model(tmp_path):
    _write(tmp_path / "models" / "Stable-diffusion" / NAME, seed=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", f"from tests.test_changed_files import _scenario; "
                          f"_scenario({str(tmp_path)!r})"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"the process died (exit {out.returncode}): {out.stderr[-2000:]}"
    result = json.loads(out.stdout.strip().splitlines()[-1])

    error = result["error"]
    assert error is not None, "a job ran on a model whose file was cut in half"
    assert error["type"] == "CheckpointLoadError" and error["field"] == "checkpoint"
    assert NAME in error["message"] and "truncated" in error["message"]

    # The rewritten file is loaded again: its picture is the one a fresh start gives with the new file.
    fresh = tmp_path / "fresh"
    _write(fresh / "models" / "Stable-diffusion" / NAME, seed=1)
    ctx = _context(fresh)
    try:
        want = _job(ctx)
    finally:
        ctx.close()
    third, first = np.array(result["third"]), np.array(result["first"])
    assert np.array_equal(third, want)
    assert np.abs(third - first).mean() > 1, "the old weights were still in use"


def test_cached_weights_do_not_live_in_the_files_pages(tmp_path):
    """Same dtype as the file: nothing of the cached model changes when the file is overwritten in place."""
    from webui.models.loader import load_checkpoint
    from webui.models.registry import CheckpointEntry

    path = _write(tmp_path / NAME, seed=0)
    model = load_checkpoint(CheckpointEntry(NAME, path, "safetensors"), torch.float16)
    before = {k: v.clone() for k, v in model.components["unet"].state_dict().items()}
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    with path.open("r+b") as fh:  # zero every weight byte in place, as a sync tool rewriting the file would
        fh.seek(header_end)
        fh.write(bytes(len(data) - header_end))
    after = model.components["unet"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.identity != CheckpointEntry(NAME, path, "safetensors").identity()


def test_a_file_replaced_under_the_same_name_is_loaded_again(make_context, tiny_files):
    """A download tool renaming the finished file over the old one: the next load takes the new weights;
    an unchanged file is served from the cache."""
    ctx = make_context(["sd1"])
    first = ctx.manager.load("sd1.safetensors")
    assert ctx.manager.load("sd1.safetensors") is first
    old_weight = next(first.components["unet"].parameters()).clone()
    path = ctx.registry.find("sd1.safetensors").path
    staged = path.with_name(".download.tmp")
    shutil.copy2(tiny_files["sd1b"], staged)
    os.replace(staged, path)
    second = ctx.manager.load("sd1.safetensors")
    assert second is not first and ctx.manager.cache.keys() == ["sd1.safetensors"]
    assert not torch.equal(next(second.components["unet"].parameters()), old_weight)
