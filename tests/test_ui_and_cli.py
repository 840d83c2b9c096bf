"""The real Gradio server and the command line, on tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import make_models_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def served(make_context):
    """Start the real UI server in-process on a free port; yield (ctx, url)."""
    from webui.ui.app import launch

    started = []

    def start(names, **overrides):
        ctx = make_context(names, autolaunch=False, port=0, **overrides)
        demo = launch(ctx, server_port=None, prevent_thread_lock=True, quiet=True, inbrowser=False)
        started.append(demo)
        return ctx, demo.local_url

    yield start
    for demo in started:
        demo.close()


def test_txt2img_through_the_running_server(served, tmp_path):
    from gradio_client import Client

    ctx, url = served(["sd1"])
    client = Client(url, download_files=str(tmp_path / "dl"), verbose=False)
    gallery, info, *_ = client.predict(
        "sd1.safetensors", "a red circle", "", "Euler a", "Automatic", 3, 64, 64, 1, 2, 7.0, 77, 1, [], "Automatic",
        api_name="/txt2img",
    )
    assert len(gallery) == 2
    with Image.open(gallery[0]["image"]) as image:
        assert image.size == (64, 64)
    assert "Seed: 77" in info and "Steps: 3" in info
    saved = sorted((ctx.settings.outputs_dir / "txt2img-images").rglob("*.png"))
    assert [p.name[6:] for p in saved] == ["77.png", "78.png"]


def test_empty_models_folder_shows_where_to_put_checkpoints(served, tmp_path):
    import httpx

    ctx, url = served([], include_builtin=False)
    config = httpx.get(url.rstrip("/") + "/config", timeout=30).json()
    texts = [c.get("props", {}).get("value") for c in config["components"]]
    notice = next(t for t in texts if isinstance(t, str) and "No checkpoint" in t)
    assert str(ctx.registry.checkpoints_dir) in notice

    from gradio_client import Client

    client = Client(url, download_files=str(tmp_path / "dl"), verbose=False)
    with pytest.raises(Exception, match="No checkpoint found"):
        client.predict(None, "x", "", "Euler a", "Automatic", 3, 64, 64, 1, 1, 7.0, 1, 1, [], "Automatic",
                       api_name="/txt2img")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # An empty HF cache proves nothing is looked up on a hub.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "HF_HOME": str(cwd / "empty-hf-home")}
    return subprocess.run([sys.executable, "-m", "webui", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_cli_models_and_generate(tmp_path, tiny_files):
    models = make_models_dir(tmp_path, tiny_files, ["sd1", "sd1b"])
    listed = _cli("models", "--models-dir", str(models), "--settings-file", str(tmp_path / "s.json"), "--hash",
                  cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.split("\n")
    assert lines[0].startswith("sd1.safetensors [") and lines[1].startswith("sd1b.safetensors [")
    out = _cli("generate", "--prompt", "a red circle", "--models-dir", str(models), "--outputs-dir",
               str(tmp_path / "out"), "--settings-file", str(tmp_path / "s.json"), "--model", "sd1b",
               "--steps", "2", "--width", "64", "--height", "64", "--seed", "5", "--batch-size", "2",
               "--precision", "fp32", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    paths = [Path(line) for line in out.stdout.split()]
    assert [p.name[6:] for p in paths] == ["5.png", "6.png"] and all(p.exists() for p in paths)


@pytest.mark.slow
def test_cli_reports_bad_input_without_a_traceback(tmp_path, tiny_files):
    models = make_models_dir(tmp_path, tiny_files, ["sd1"])
    out = _cli("generate", "--prompt", "x", "--models-dir", str(models), "--settings-file", str(tmp_path / "s.json"),
               "--steps", "0", cwd=tmp_path)
    assert out.returncode == 2 and "steps" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_listen_without_auth_prints_the_address_and_a_generated_password(tmp_path):
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf")}
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webui", "--listen", "--port", str(port), "--no-autolaunch", "--models-dir",
             str(tmp_path / "models"), "--outputs-dir", str(tmp_path / "outputs"), "--settings-file",
             str(tmp_path / "settings.json")], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while "Sign in as user" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.5)
            text = log.read_text()
            assert f":{port}/" in text and "Sign in as user 'atelier' with password '" in text
            password = text.split("with password '")[1].split("'")[0]
            stored = (tmp_path / "lan-password.json").read_text()
            assert password in stored
            url = f"http://127.0.0.1:{port}/"
            while time.monotonic() < deadline:
                try:
                    status = httpx.get(url + "config", timeout=5).status_code
                    break
                except httpx.HTTPError:
                    time.sleep(0.5)
            assert status in (401, 403), "the studio is not open to the network without the password"
            with httpx.Client() as client:
                login = client.post(url + "login", data={"username": "atelier", "password": password}, timeout=30)
                assert login.status_code == 200
                assert client.get(url + "config", timeout=30).status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=30)
