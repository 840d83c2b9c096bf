"""The same job asked for through the CLI, the REST API and the page gives the same picture and infotext.

Only the prompt and the seed are given; steps, clip skip and VAE come from settings.json, so this also shows
that every front end takes its defaults from the settings (the CLI once ignored default_clip_skip/default_vae).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_browser import TIMEOUT_MS
from tools.ldm_writer import vae_to_ldm
from webui.context import BUILTIN_DIR
from webui.outputs import read_infotext

ROOT = Path(__file__).resolve().parent.parent
PROMPT, SEED = "a red circle on a blue background", 5

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
                       reason="Debian's chromium is not installed (run_tests.sh installs it)"),
    pytest.mark.skipif(not (BUILTIN_DIR / "atelier-demo.safetensors").exists(), reason="demo model not built"),
]


def _write_bright_vae(path: Path) -> None:
    """The demo model's own VAE with a brighter decoder, as an A1111 VAE file."""
    import torch

    from webui.models.loader import load_checkpoint
    from webui.models.registry import CheckpointEntry

    demo = BUILTIN_DIR / "atelier-demo.safetensors"
    model = load_checkpoint(CheckpointEntry("demo", demo, "safetensors"), torch.float32)
    state = {k: v.clone().contiguous() for k, v in vae_to_ldm(model.components["vae"].state_dict()).items()}
    state["decoder.conv_out.bias"] += 0.3
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def _pixels_and_text(png: bytes | Path) -> tuple[np.ndarray, str]:
    data = png.read_bytes() if isinstance(png, Path) else png
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")), read_infotext(image) or ""


@pytest.fixture
def studio(tmp_path):
    """A settings.json with non-default steps, clip skip and VAE, and the models folder it points at."""
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    _write_bright_vae(tmp_path / "models" / "VAE" / "bright.safetensors")
    settings_file = tmp_path / "settings.json"
    settings = {"default_steps": 6, "default_clip_skip": 2, "default_vae": "bright.safetensors", "device": "cpu",
                "precision": "fp32"}
    settings_file.write_text(json.dumps(settings))
    return tmp_path, settings_file


def _through_cli(root: Path, settings_file: Path) -> tuple[np.ndarray, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    out = subprocess.run([sys.executable, "-m", "webui", "generate", "--prompt", PROMPT, "--seed", str(SEED),
                          "--settings-file", str(settings_file), "--models-dir", str(root / "models"),
                          "--outputs-dir", str(root / "cli-outputs")],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return _pixels_and_text(Path(out.stdout.split()[0]))


def test_cli_api_and_page_make_the_same_picture_from_the_settings_defaults(studio):
    import httpx
    from playwright.sync_api import sync_playwright

    from webui.config import load_settings
    from webui.context import AppContext
    from webui.ui.app import launch

    root, settings_file = studio
    cli = _through_cli(root, settings_file)

    settings = load_settings({"settings_file": settings_file, "models_dir": root / "models",
                              "outputs_dir": root / "outputs", "autolaunch": False, "port": 0}, env={})
    ctx = AppContext.create(settings)
    demo = launch(ctx, api=True, server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        url = demo.local_url.rstrip("/")
        with httpx.Client(base_url=url + "/sdapi/v1", timeout=600) as client:
            body = client.post("/txt2img", json={"prompt": PROMPT, "seed": SEED}).json()
            api = _pixels_and_text(base64.b64decode(body["images"][0]))
            plain = client.post("/txt2img", json={"prompt": PROMPT, "seed": SEED,
                                                  "override_settings": {"sd_vae": "None"}}).json()
            without_vae = _pixels_and_text(base64.b64decode(plain["images"][0]))

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.fill("#txt2img-prompt textarea", PROMPT)
            page.locator("#txt2img-prompt textarea").dispatch_event("input")
            page.fill("#txt2img-seed input", str(SEED))
            page.locator("#txt2img-seed input").dispatch_event("input")
            page.click("#txt2img-generate")
            page.wait_for_function("() => (document.querySelector('#txt2img-info') || {}).innerText?.includes('Seed')")
            browser.close()
        saved = sorted((root / "outputs" / "txt2img-images").rglob(f"*-{SEED}.png"))
        assert saved, "the page saved its picture"
        page_result = _pixels_and_text(saved[-1])
    finally:
        demo.close()
        ctx.close()

    text = cli[1]
    assert "Steps: 6" in text and "Clip skip: 2" in text and "VAE: bright.safetensors" in text, text
    assert api[1] == text and page_result[1] == text
    assert np.array_equal(api[0], cli[0]) and np.array_equal(page_result[0], cli[0])
    # The settings' VAE is really in the picture: the checkpoint's own VAE decodes darker.
    assert without_vae[0].mean() < cli[0].mean() - 5
