"""Checkpoints from strangers (issue 8, items 1-2): pickles that try to run code, and damaged safetensors.

Every file is refused with a clear message before any of its code could run; the model that was in use
keeps working and memory goes back to where it was.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from webui.models.loader import CheckpointLoadError, UnsafeCheckpointError
from webui.pipelines.generate import generate
from webui.pipelines.request import GenerationRequest


class _Call:
    """Pickles as a call of ``func(*args)``: what a malicious checkpoint hides inside its data."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, object]:
    import subprocess
    import timeit

    command = f"touch {marker}"
    payloads = {
        "os.system": _Call(os.system, command),
        "subprocess.Popen": _Call(subprocess.Popen, ["touch", str(marker)]),
        "builtins.exec": _Call(exec, f"open({str(marker)!r}, 'w').close()"),
        "timeit.timeit": _Call(timeit.timeit, f"open({str(marker)!r}, 'w').close()", "pass", None, 1),
    }
    try:
        import pip

        payloads["pip.main"] = _Call(pip.main, ["--version"])
    except ImportError:
        pass
    return payloads


def _checkpoint_with(payload: object) -> dict:
    return {"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, "evil": payload}


def _flip_zip_flags(path: Path) -> None:
    """Set the 'encrypted' and a reserved bit in every zip header: scanners that trust the flags skip the file."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (found := data.find(signature, start)) != -1:
            flags = struct.unpack_from("<H", data, found + offset)[0]
            struct.pack_into("<H", data, found + offset, flags | 0x0001 | 0x0040)
            start = found + 4
    path.write_bytes(bytes(data))


def hostile_files(folder: Path, marker: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, payload in _payloads(marker).items():
        path = folder / f"evil-{name}.ckpt"
        torch.save(_checkpoint_with(payload), path)
        files.append(path)
        legacy = folder / f"evil-{name}-legacy.ckpt"
        torch.save(_checkpoint_with(payload), legacy, _use_new_zipfile_serialization=False)
        files.append(legacy)
    flipped = folder / "evil-flipped-zip-flags.ckpt"
    torch.save(_checkpoint_with(_Call(os.system, f"touch {marker}")), flipped)
    _flip_zip_flags(flipped)
    files.append(flipped)
    raw = folder / "evil-raw-pickle.pt"
    raw.write_bytes(pickle.dumps(_checkpoint_with(_Call(os.system, f"touch {marker}"))))
    files.append(raw)
    return files


def damaged_safetensors(folder: Path, good: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    files = {
        "truncated": data[: len(data) // 2],
        "huge-header-length": struct.pack("<Q", 2**63) + data[8:],
        "header-not-json": struct.pack("<Q", header_len) + b"{not json".ljust(header_len) + data[8 + header_len:],
    }
    header = json.loads(data[8:8 + header_len])
    first = next(k for k in header if k != "__metadata__")
    header[first]["data_offsets"] = [0, len(data) * 4]
    text = json.dumps(header).encode()
    files["offsets-past-end"] = struct.pack("<Q", len(text)) + text + data[8 + header_len:]
    paths = []
    for name, content in files.items():
        path = folder / f"damaged-{name}.safetensors"
        path.write_bytes(content)
        paths.append(path)
    return paths


def test_pickles_that_run_code_are_refused_before_anything_runs(make_context, tmp_path):
    ctx = make_context(["sd1"])
    marker = tmp_path / "pwned"
    files = hostile_files(ctx.settings.checkpoints_dir, marker)
    ctx.registry.refresh()
    for path in files:
        with pytest.raises(CheckpointLoadError) as caught:
            ctx.manager.load(path.name)
        message = str(caught.value)
        assert path.name in message
        assert isinstance(caught.value, UnsafeCheckpointError) or "corrupt" in message, message
        assert not marker.exists(), f"{path.name} ran code"


def test_damaged_safetensors_are_named_and_the_previous_model_keeps_working(make_context, tmp_path):
    ctx = make_context(["sd1"])
    request = GenerationRequest(prompt="a red circle", steps=3, width=64, height=64, seed=1, save_images=False)
    before = generate(ctx.manager, request).images[0]
    files = damaged_safetensors(ctx.settings.checkpoints_dir, ctx.settings.checkpoints_dir / "sd1.safetensors")
    ctx.registry.refresh()
    process = psutil.Process()
    rss = process.memory_info().rss
    for _ in range(3):
        for path in files:
            with pytest.raises(CheckpointLoadError, match="corrupt") as caught:
                ctx.manager.load(path.name)
            assert path.name in str(caught.value)
    assert process.memory_info().rss < rss + 64 * 2**20, "failed loads leave nothing behind"
    assert ctx.manager.current_name == "sd1.safetensors"
    after = generate(ctx.manager, request).images[0]
    assert np.array_equal(np.asarray(before), np.asarray(after))


def test_the_running_server_refuses_a_hostile_checkpoint_and_goes_on(make_context, tmp_path):
    from gradio_client import Client

    from webui.ui.app import launch

    ctx = make_context(["sd1"], port=0, autolaunch=False)
    marker = tmp_path / "pwned"
    hostile_files(ctx.settings.checkpoints_dir, marker)
    ctx.registry.refresh()
    demo = launch(ctx, server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        with pytest.raises(Exception, match="refused|corrupt"):
            client.predict("evil-os.system.ckpt", api_name="/switch_checkpoint")
        assert not marker.exists()
        assert "sd1" in client.predict("sd1.safetensors", api_name="/switch_checkpoint")
    finally:
        demo.close()

