"""Swap benchmark: a checkpoint already in the RAM cache vs a cold load of the same file, and our cold
load vs diffusers' own `from_single_file`, on a full-size SD 1.5-shaped fp16 file (random weights).

Targets: cached switch <= 0.05x our cold load; our cold load <= 1.0x diffusers.
Both cold loads read the file from a warm page cache (it is read once up front), so the comparison
is about conversion and construction, not disk speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.common import gib, make_context, median_seconds, work_dir
from benchmarks.random_checkpoints import write_random_sd15


def touch(modules) -> None:
    """Read every page of every weight, so lazily mapped tensors are really loaded."""
    for module in modules:
        for tensor in module.parameters():
            tensor.view(-1)[::1024].float().sum()


def warm_page_cache(path: Path) -> None:
    with path.open("rb") as fh:
        while fh.read(64 * 2**20):
            pass


def diffusers_config_folder(dest: Path) -> Path:
    """A complete local diffusers folder from our shipped configs, for from_single_file(config=...)."""
    from webui.models import configs

    dest.mkdir(parents=True, exist_ok=True)
    src = configs.config_dir("sd1")
    for item in src.iterdir():
        if item.is_dir():
            shutil.copytree(item, dest / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dest / item.name)
    tok = configs.load_clip_tokenizer("<|endoftext|>")
    shutil.rmtree(dest / "tokenizer", ignore_errors=True)
    tok.save_pretrained(dest / "tokenizer")
    index = json.loads((dest / "model_index.json").read_text())
    for key in ("safety_checker", "feature_extractor", "image_encoder"):
        index.pop(key, None)
    (dest / "model_index.json").write_text(json.dumps(index))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    args = parser.parse_args()
    work = work_dir("swap")
    models = work / "models"
    a = write_random_sd15(models / "Stable-diffusion" / "random-a.safetensors", seed=0)
    write_random_sd15(models / "Stable-diffusion" / "random-b.safetensors", seed=1)
    ctx = make_context(models, work / "outputs", precision=args.precision, ram_cache_bytes=16 * 2**30)
    manager = ctx.manager
    dtype = manager.dtype
    print(f"file {a.name}: {gib(a.stat().st_size)}, loading as {dtype}")
    warm_page_cache(a)

    def ours_cold():
        manager.cache.clear()
        model = manager.load("random-a")
        touch(m for m in model.components.values() if isinstance(m, torch.nn.Module))

    from diffusers import StableDiffusionPipeline

    config_dir = diffusers_config_folder(Path(tempfile.mkdtemp()) / "sd1")

    def diffusers_cold():
        pipe = StableDiffusionPipeline.from_single_file(
            str(a), config=str(config_dir), local_files_only=True, torch_dtype=dtype,
            safety_checker=None, requires_safety_checker=False,
        )
        touch([pipe.unet, pipe.vae, pipe.text_encoder])

    from webui.pipelines.request import Task

    def cached_switch():
        model = manager.load("random-a")
        manager.pipeline(model, Task.TXT2IMG, model.components["scheduler"])

    # One untimed run of each warms imports and allocator; then the two alternate so that machine
    # noise (a shared VM) hits both alike.
    ours_cold()
    manager.cache.clear()
    diffusers_cold()
    ours_times, diff_times = [], []
    for _ in range(args.repeats):
        ours_times.append(median_seconds(ours_cold, 1))
        manager.cache.clear()
        diff_times.append(median_seconds(diffusers_cold, 1))
    t_ours, t_diff = statistics.median(ours_times), statistics.median(diff_times)
    ours_cold()
    manager.load("random-b")  # the current model is now b; a stays cached
    t_swap = median_seconds(lambda: (cached_switch(), manager.load("random-b")), args.repeats)
    print(f"our cold load:            {t_ours:7.3f} s (median of {args.repeats})")
    print(f"cached switch (+ pipeline): {t_swap:7.4f} s")
    print(f"diffusers from_single_file: {t_diff:7.3f} s")
    print(f"ratio cached/cold   = {t_swap / t_ours:.4f}  (target <= 0.05)")
    print(f"ratio ours/diffusers = {t_ours / t_diff:.3f}  (target <= 1.0)")
    ctx.close()


if __name__ == "__main__":
    main()
