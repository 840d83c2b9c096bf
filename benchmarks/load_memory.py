"""Peak memory of loading an SDXL-shaped fp16 single file into fp32 on the CPU (issue 20).

Counts *anonymous* memory (RssAnon in /proc/self/status: what the process itself holds, not file pages
the kernel can drop), sampled every millisecond during the load, against the loaded model's own bytes.
Goal: peak anonymous memory <= 1.1x the loaded model.

Each load runs in a fresh process. Two readers are measured in the same run:
- ``atelier``: the engine's loader (plain reads into process memory, cast tensor by tensor);
- ``mmap``: the same conversion over safetensors' memory-mapped ``safe_open`` (the reader before issue 20),
  as the baseline; its file pages show in RSS (and same-dtype weights would stay file-backed).

A full-size SDXL file is 6.9 GB in fp16 and loads to 13.9 GB in fp32; ``--scale`` shrinks every width
(depths and vocabulary kept, about scale² of the bytes) for machines without that much free memory.

    .venv/bin/python -m benchmarks.load_memory --scale 0.5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import gib, work_dir


def _status() -> dict[str, int]:
    """RssAnon, RssFile and VmHWM of this process in bytes."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out


class _Peaks:
    """Peak RssAnon and VmRSS, sampled in a thread (reads release the GIL, so samples keep coming)."""

    def __init__(self) -> None:
        self.anon = self.rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        now = _status()
        self.anon = max(self.anon, now["RssAnon"])
        self.rss = max(self.rss, now["VmRSS"])

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.001)

    def __enter__(self) -> _Peaks:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _load_mmap(path: Path, dtype):
    """The reader as it was before issue 20: safe_open's mapping, each tensor cast as it is taken."""
    from safetensors import safe_open

    from webui.models.loader import _SKIPPED_PREFIXES, build_components, detect_file

    detection = detect_file(path)
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        tensors = {k: fh.get_tensor(k).to(dtype) for k in fh.keys() if not k.startswith(_SKIPPED_PREFIXES)}
    components = build_components(tensors, detection, dtype, path.name)
    del tensors
    return components


def measure(path: Path, reader: str, precision: str) -> dict[str, float]:
    """One load in this (fresh) process; returns bytes and seconds."""
    import torch

    from webui.models.loader import load_checkpoint, modules_nbytes
    from webui.models.registry import CheckpointEntry

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    torch.set_num_threads(2)
    import diffusers  # noqa: F401  (imports are not the load)
    import transformers  # noqa: F401

    before = _status()
    start = time.perf_counter()
    with _Peaks() as peaks:
        if reader == "atelier":
            model = load_checkpoint(CheckpointEntry(path.name, path, "safetensors"), dtype)
            components = model.components
        else:
            components = _load_mmap(path, dtype)
    seconds = time.perf_counter() - start
    after = _status()
    return {
        "model_bytes": modules_nbytes(components.values()),
        "anon_peak": peaks.anon - before["RssAnon"],
        "anon_after": after["RssAnon"] - before["RssAnon"],
        "rss_peak": peaks.rss - before["VmRSS"],
        "file_after": after["RssFile"] - before["RssFile"],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.5, help="width factor (1.0: full-size SDXL)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--readers", default="atelier,mmap", help="comma-separated: atelier, mmap")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child process: one load
    parser.add_argument("--reader", default="atelier", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.reader, args.precision)))
        return

    from benchmarks.random_checkpoints import write_random_sdxl

    path = write_random_sdxl(work_dir("load_memory") / f"sdxl-x{args.scale:g}.safetensors", scale=args.scale)
    print(f"file {path.name}: {gib(path.stat().st_size)} fp16, SDXL widths x{args.scale:g}, "
          f"loading as {args.precision}")
    with path.open("rb") as fh:  # page cache warm for every reader alike
        while fh.read(64 * 2**20):
            pass
    print(f"{'reader':8} {'model':>10} {'anon peak':>10} {'ratio':>6} {'anon after':>10} {'RSS peak':>10} "
          f"{'file pages':>10} {'seconds':>8}")
    for reader in args.readers.split(","):
        out = subprocess.run([sys.executable, "-m", "benchmarks.load_memory", "--measure", str(path),
                              "--reader", reader, "--precision", args.precision],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{reader:8} {gib(r['model_bytes']):>10} {gib(r['anon_peak']):>10} "
              f"{r['anon_peak'] / r['model_bytes']:>5.3f}x {gib(r['anon_after']):>10} {gib(r['rss_peak']):>10} "
              f"{gib(r['file_after']):>10} {r['seconds']:>8.1f}")
    print("goal: anon peak <= 1.100x the loaded model")


if __name__ == "__main__":
    main()
