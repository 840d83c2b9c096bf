"""Shared fixtures: tiny real models written to disk as users' files, and app contexts over them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Idle OpenMP threads sleep instead of spinning (set before torch loads): on a shared CPU a spinning thread
# waits for a descheduled peer, and the tiny models' tests ran 3-4x slower whenever another job was running.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory) -> dict[str, Path]:
    """One folder of tiny checkpoints in every format the loader accepts, built once per test run."""
    import torch

    from tests.support.tiny_models import tiny_components, write_diffusers_folder, write_single_file

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    root = tmp_path_factory.mktemp("tiny-models")
    files: dict[str, Path] = {}
    for name, arch, seed in [("sd1", "sd1", 0), ("sd1b", "sd1", 1), ("sd1c", "sd1", 2),
                             ("sd1-inpaint", "sd1-inpaint", 3), ("sdxl", "sdxl", 4)]:
        files[name] = write_single_file(root / f"{name}.safetensors", arch, tiny_components(arch, seed=seed))
    files["folder"] = root / "sd1-folder"
    write_diffusers_folder(files["folder"], "sd1", tiny_components("sd1", seed=5))
    return files


def make_models_dir(root: Path, tiny_files: dict[str, Path], names: list[str]) -> Path:
    """A models/ folder holding copies of the chosen tiny checkpoints (tests may damage their copies)."""
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = tiny_files[name]
        if src.is_dir():
            shutil.copytree(src, ckpts / src.name)
        else:
            shutil.copy2(src, ckpts / src.name)
    return root / "models"


@pytest.fixture
def make_context(tmp_path, tiny_files):
    """Build an AppContext over copies of some tiny checkpoints, on the CPU in fp32."""
    from webui.config import load_settings
    from webui.context import AppContext

    made = []

    def build(names: list[str], ram_cache_bytes: int = 2**30, **overrides) -> AppContext:
        models = make_models_dir(tmp_path, tiny_files, names)
        settings = load_settings(
            {"settings_file": tmp_path / "settings.json", "models_dir": models, "outputs_dir": tmp_path / "outputs",
             "extensions_dir": tmp_path / "extensions", "device": "cpu", "precision": "fp32",
             "ram_cache_bytes": ram_cache_bytes,
             "include_builtin": False, **overrides},
            env={},
        )
        ctx = AppContext.create(settings)
        made.append(ctx)
        return ctx

    yield build
    for ctx in made:
        ctx.close()


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under playwright, one per test module (playwright's sync API holds an event loop
    while it runs, which only the browser modules' tests live with)."""
    from playwright.sync_api import sync_playwright

    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
