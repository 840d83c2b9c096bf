"""Crashes and full disks while saving (issue 8, items 16-17): a process killed with SIGKILL in the middle
of writing images and settings never leaves a truncated file under a real name, its temp files are
removed at the next start, and a full disk fails the save with an error instead of a partial file."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

WRITER = textwrap.dedent("""
    import sys, itertools
    from pathlib import Path
    from PIL import Image
    from webui.config import load_settings, save_settings
    from webui.outputs import save_image

    root = Path(sys.argv[1])
    settings = load_settings({"settings_file": root / "settings.json", "outputs_dir": root / "outputs"}, env={})
    print("ready", flush=True)
    for i in itertools.count():
        # Big enough that a kill often lands inside a write.
        image = Image.effect_noise((768, 768), 40 + i % 50).convert("RGB")
        save_image(image, root / "outputs", i, f"prompt {i}" + ", x" * 2000)
        pattern = "[number]-[seed]" + "-" * (i % 7)
        settings = save_settings(settings, {"default_steps": 1 + i % 150, "filename_pattern": pattern})
""")


def _check_files(root: Path) -> int:
    """Every PNG under a real name decodes fully with its infotext; settings.json is whole JSON."""
    images = sorted((root / "outputs").glob("*.png"))
    for path in images:
        with Image.open(path) as image:
            image.load()
            assert image.info["parameters"].startswith("prompt "), path
    settings = root / "settings.json"
    if settings.exists():
        assert isinstance(json.loads(settings.read_text()), dict)
    return len(images)


@pytest.mark.slow
def test_kill_9_while_saving_never_leaves_a_truncated_file(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    saved = 0
    for _ in range(20):
        process = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, env=env,
                                   cwd=ROOT)
        assert process.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        saved = _check_files(tmp_path)
    assert saved >= 10, "the writer got far enough for the kills to land mid-write"
    leftovers = list((tmp_path / "outputs").glob(".atelier-*.tmp")) + list(tmp_path.glob(".atelier-*.tmp"))
    from webui.fileio import remove_stale_temp_files

    remove_stale_temp_files(tmp_path / "outputs", tmp_path)
    assert not list((tmp_path / "outputs").glob(".atelier-*.tmp")) and not list(tmp_path.glob(".atelier-*.tmp"))
    print(f"{saved} pictures, {len(leftovers)} temp files left by kills and removed")


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_fails_the_save_cleanly_and_the_server_goes_on(make_context, small_disk):
    from webui.pipelines.generate import SaveError, generate
    from webui.pipelines.request import GenerationRequest

    ctx = make_context(["sd1"], outputs_dir=small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (240 * 1024))  # leave a few KB free
    request = GenerationRequest(prompt="a red circle", steps=2, width=64, height=64, seed=1)
    with pytest.raises(SaveError, match="No space left on device") as caught:
        generate(ctx.manager, request.replace(prompt="x" * 60_000), ctx.outputs)  # infotext larger than the space
    assert str(small_disk) in str(caught.value)
    leftovers = [p for p in small_disk.rglob("*") if p.is_file() and p.name != "filler"]
    assert leftovers == [], f"no partial file: {leftovers}"
    (small_disk / "filler").unlink()
    result = generate(ctx.manager, request, ctx.outputs)
    assert result.paths and Image.open(result.paths[0]).size == (64, 64), "with space again, saving works"
