"""The README's launch path on a clean checkout with an empty models folder: the server starts with the
built-in demo model selected, and the example prompt gives a picture the shape classifier accepts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from webui.context import BUILTIN_LABEL, EXAMPLE_PROMPT, builtin_checkpoints

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # starts the real server in a subprocess and generates on the demo model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    # What ./webui.sh runs after installing: python -m webui with the user's flags.
    log = (tmp_path / "server.log").open("w")
    args = ["--no-autolaunch", "--port", str(port), "--models-dir", str(tmp_path / "models"),
            "--outputs-dir", str(tmp_path / "outputs"), "--settings-file", str(tmp_path / "settings.json")]
    proc = subprocess.Popen([sys.executable, "-m", "webui", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited: {(tmp_path / 'server.log').read_text()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("server did not start in 180 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_fresh_install_starts_on_the_demo_model_and_draws_the_example_prompt(server, tmp_path):
    from gradio_client import Client

    from tools.demo_model.shapes import classify

    assert builtin_checkpoints(), "the built-in demo model must ship inside the package"
    config = httpx.get(server + "config", timeout=30).json()
    dropdown = next(c["props"] for c in config["components"] if c["props"].get("elem_id") == "checkpoint")
    assert BUILTIN_LABEL in dropdown["value"]
    width = next(c["props"] for c in config["components"] if c["props"].get("elem_id") == "txt2img-width")["value"]
    client = Client(server, download_files=str(tmp_path / "dl"), verbose=False)
    gallery, info, *_ = client.predict(dropdown["value"], EXAMPLE_PROMPT, "", "Euler a", "Automatic", 20, width, width,
                                   1, 1, 7.0, 1, 1, [], "Automatic", api_name="/txt2img")
    with Image.open(gallery[0]["image"]) as image:
        background, foreground, shape = classify(image.convert("RGB"))
    assert (foreground, shape, background) == ("red", "circle", "blue"), info
