"""Saving images the A1111 way: folders, counters, embedded infotext, atomic no-overwrite writes."""

from __future__ import annotations

import datetime
import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from webui import outputs
from webui.outputs import OutputLayout, next_counter, read_infotext, save_image
from webui.pipelines.request import Task

BODY = "a red fox in the snow\nSteps: 20, Seed: 1, Size: 8x8"
TEXT = "ein Fuchs im Schnee — 雪の狐, «soft light»\nNegative prompt: blurry\nSteps: 20, Seed: 5, Size: 8x8"
ROOT = Path(__file__).resolve().parents[1]


def _image(color=(200, 30, 30), mode="RGB") -> Image.Image:
    return Image.new(mode, (8, 8), color)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_module_imports_no_torch():
    code = "import sys, webui.outputs\nprint([m for m in ('torch', 'diffusers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_folders(tmp_path):
    layout = OutputLayout(tmp_path / "outputs")
    day = datetime.date(2024, 5, 31)
    assert layout.folder_for("txt2img", day) == tmp_path / "outputs" / "txt2img-images" / "2024-05-31"
    assert layout.folder_for("img2img", day) == tmp_path / "outputs" / "img2img-images" / "2024-05-31"
    assert layout.folder_for(Task.INPAINT, day) == layout.folder_for("img2img", day)
    grids = layout.folder_for("inpaint", day, grid=True)
    assert grids == tmp_path / "outputs" / "img2img-grids" / "2024-05-31"
    assert layout.folder_for("txt2img", grid=True).name == datetime.date.today().isoformat()
    assert layout.folder_for("extras", day) == tmp_path / "outputs" / "extras-images" / "2024-05-31"
    with pytest.raises(ValueError):
        layout.folder_for("upscale")


def test_first_file_and_counter_continuing_after_existing_files(tmp_path):
    assert save_image(_image(), tmp_path / "new", 7, TEXT).name == "00000-7.png"
    folder = tmp_path / "day"
    folder.mkdir()
    for name in ("00041-5.png", "00007-123.jpg", "notes.txt", "grid-0099.png"):
        (folder / name).write_bytes(b"x")
    assert next_counter(folder) == 42
    assert save_image(_image(), folder, 1234, TEXT).name == "00042-1234.png"
    assert save_image(_image(), folder, 1235, TEXT).name == "00043-1235.png"
    (folder / "123-anything.webp").write_bytes(b"x")  # any leading number counts
    assert save_image(_image(), folder, 9, TEXT, "jpg").name == "00124-9.jpg"


def test_existing_file_is_never_overwritten(tmp_path, monkeypatch):
    (tmp_path / "00003-7.png").write_bytes(b"precious")
    # As if another process took the name between our scan and our link.
    monkeypatch.setattr(outputs, "next_counter", lambda folder: 3)
    path = save_image(_image(), tmp_path, 7, TEXT)
    assert path.name == "00004-7.png"
    assert (tmp_path / "00003-7.png").read_bytes() == b"precious"
    assert read_infotext(path) == TEXT and _leftovers(tmp_path) == []


def test_without_hard_links_still_never_overwrites(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError("no hard links here")

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(outputs, "next_counter", lambda folder: 0)
    (tmp_path / "00000-1.png").write_bytes(b"precious")
    path = save_image(_image(), tmp_path, 1, TEXT)
    assert path.name == "00001-1.png" and read_infotext(path) == TEXT
    assert (tmp_path / "00000-1.png").read_bytes() == b"precious" and _leftovers(tmp_path) == []


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, "disk full")

    monkeypatch.setattr(os, "fsync", disk_full)  # the disk fills up while the picture is written
    with pytest.raises(OSError, match="disk full"):
        save_image(_image(), tmp_path, 1, TEXT)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unsupported"):
        save_image(_image(), tmp_path, 1, TEXT, "gif")


def test_twenty_threads_save_twenty_files(tmp_path):
    folder = tmp_path / "busy"
    barrier = threading.Barrier(20)
    paths: dict[int, Path] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            # One seed for all, so the names differ only by counter: every save competes for the same name.
            paths[i] = save_image(_image((i * 10, 0, 0)), folder, 5, f"{TEXT}, Job: {i}")
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in folder.iterdir()) == [f"{n:05d}-5.png" for n in range(20)]
    for i, path in paths.items():
        assert read_infotext(path) == f"{TEXT}, Job: {i}"  # each file holds its own job's image
        with Image.open(path) as im:
            assert im.getpixel((0, 0))[0] == i * 10


def test_processes_saving_at_once_never_collide(tmp_path):
    folder = tmp_path / "shared"
    # All start saving at the same moment, with one seed, so they race for the same names.
    script = textwrap.dedent(f"""
        import sys, time
        from PIL import ExifTags, Image
        from webui.outputs import save_image
        while time.time() < float(sys.argv[2]):
            time.sleep(0.001)
        for i in range(8):
            save_image(Image.new("RGB", (8, 8)), {str(folder)!r}, 1, "p" + sys.argv[1] + "-" + str(i))
    """)
    start = str(time.time() + 1.5)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n), start], cwd=ROOT) for n in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    files = sorted(folder.iterdir())
    assert len(files) == 24 and _leftovers(folder) == []
    assert sorted(read_infotext(f) for f in files) == sorted(f"p{n}-{i}" for n in range(3) for i in range(8))


@pytest.mark.parametrize("fmt, ext", [("png", "png"), ("jpg", "jpg"), ("JPEG", "jpg"), ("webp", "webp")])
def test_infotext_round_trip(tmp_path, fmt, ext):
    path = save_image(_image(mode="RGBA"), tmp_path, 99, TEXT, fmt)
    assert path.suffix == f".{ext}"
    assert read_infotext(path) == TEXT
    with Image.open(path) as im:
        assert read_infotext(im) == TEXT
    assert _leftovers(tmp_path) == []


def test_png_uses_text_chunk_for_latin1_and_itxt_otherwise(tmp_path):
    plain = save_image(_image(), tmp_path, 1, "a café\nSteps: 20, Seed: 1, Size: 8x8")
    assert b"tEXtparameters" in plain.read_bytes()
    wide = save_image(_image(), tmp_path, 2, TEXT)
    assert b"iTXtparameters" in wide.read_bytes()
    assert read_infotext(plain) == "a café\nSteps: 20, Seed: 1, Size: 8x8"


def test_read_infotext_without_text(tmp_path):
    path = tmp_path / "plain.png"
    _image().save(path)
    assert read_infotext(path) is None
    assert read_infotext(_image()) is None


@pytest.mark.parametrize("comment", [b"UNICODE\0" + BODY.encode("utf-16-be"),  # what A1111 writes
                                     b"UNICODE\0" + BODY.encode("utf-16-le"),  # some other writers
                                     b"ASCII\0\0\0" + BODY.encode()])
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_infotext_is_read_from_user_comments_other_programs_write(tmp_path, comment, fmt):
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = comment
    path = tmp_path / f"other.{fmt.lower()}"
    _image().save(path, format=fmt, exif=exif.tobytes())
    assert read_infotext(path) == BODY
