"""The History tab over a big outputs folder: 10,000 PNGs (A1111's layout and infotext, three users and the host),
then the first page as the tab shows it (goal: at most 300 ms once the index exists), and re-indexing after 100
new pictures.

    .venv/bin/python -m benchmarks.history_index [--pictures 10000] [--side 64]

Steps timed: the first index (reads every file's text chunks), the first page on a fresh index object (a server
restart: query, 24 thumbnails made), the same page again (thumbnails cached), a friend's page with a prompt
filter, page 200, and a refresh after 100 new pictures. The pictures are small (``--side``) so that writing
10,000 of them takes a minute, not an hour; reading a PNG's text chunks costs the same at any size, thumbnails
of bigger pictures cost more (shown for 512 px pictures in a separate line).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from benchmarks.common import work_dir
from webui.history.index import Filters
from webui.history.library import History

USERS = ["", "alice", "bob", "carol"]
WORDS = "red green blue cat dog castle forest river sunset portrait city night rain snow".split()


def infotext(i: int) -> str:
    prompt = " ".join(WORDS[(i * k) % len(WORDS)] for k in (1, 3, 7)) + ", masterpiece, best quality"
    return (f"{prompt}\nNegative prompt: lowres, blurry\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, "
            f"CFG scale: 7, Seed: {1000 + i}, Size: 512x512, Model hash: 6ce0161689, "
            f"Model: {'dreamy' if i % 3 else 'v1-5-pruned-emaonly'}, Version: v1.10.1")


def write_pictures(root: Path, count: int, side: int, start: int = 0, day_span: int = 20) -> None:
    rng = np.random.default_rng(start)
    base = time.time() - 86400 * day_span
    for i in range(start, start + count):
        day = time.strftime("%Y-%m-%d", time.localtime(base + 86400 * (i * day_span // max(1, start + count))))
        folder = root / "txt2img-images" / day
        folder.mkdir(parents=True, exist_ok=True)
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", infotext(i))
        if USERS[i % len(USERS)]:
            info.add_text("atelier-user", USERS[i % len(USERS)])
        pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        path = folder / f"{i:05d}-{1000 + i}.png"
        Image.fromarray(pixels).save(path, pnginfo=info, compress_level=1)
        stamp = base + i  # newest last, as saving in order makes them
        os.utime(path, (stamp, stamp))


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=10_000)
    parser.add_argument("--side", type=int, default=64)
    args = parser.parse_args()
    root = work_dir("history") / "outputs"
    shutil.rmtree(root, ignore_errors=True)
    _, seconds = timed(lambda: write_pictures(root, args.pictures, args.side))
    print(f"wrote {args.pictures} PNGs ({args.side}x{args.side}) in {seconds:.1f} s")

    history = History(root, lambda: "")
    report, seconds = timed(history.index.refresh)
    print(f"first index: {report.added} pictures in {seconds * 1000:.0f} ms "
          f"({seconds / max(1, report.added) * 1e6:.0f} us a picture)")
    history.close()

    # A restart: a new index object over the same file; the tab's first page (refresh + query + thumbnails).
    history = History(root, lambda: "")
    shown, seconds = timed(lambda: history.show(None))
    print(f"first page after a restart (24 thumbnails made): {seconds * 1000:.0f} ms, {shown.page.total} pictures, "
          f"goal <= 300 ms")
    repeats = []
    for _ in range(5):
        _, seconds = timed(lambda: history.show(None))
        repeats.append(seconds)
    print(f"first page again (thumbnails cached): median {statistics.median(repeats) * 1000:.1f} ms")
    _, seconds = timed(lambda: history.show("alice", Filters(text="castle", checkpoint="dreamy")))
    print(f"a friend's first page with prompt and checkpoint filters: {seconds * 1000:.1f} ms")
    _, seconds = timed(lambda: history.show(None, number=200))
    print(f"page 200 (24 thumbnails made): {seconds * 1000:.0f} ms")

    write_pictures(root, 100, args.side, start=args.pictures, day_span=0)
    report, seconds = timed(history.index.refresh)
    print(f"re-index after 100 new pictures: {seconds * 1000:.0f} ms ({report.added} added, "
          f"{report.folders_listed} folders listed)")
    report, seconds = timed(history.index.refresh)
    print(f"re-index with nothing new: {seconds * 1000:.1f} ms")
    history.close()

    big = work_dir("history") / "big"
    shutil.rmtree(big, ignore_errors=True)
    write_pictures(big, 24, 512)
    history = History(big, lambda: "")
    history.index.refresh()
    _, seconds = timed(lambda: history.show(None))
    print(f"for comparison, 24 thumbnails of 512x512 pictures made: {seconds * 1000:.0f} ms")
    history.close()


if __name__ == "__main__":
    main()
