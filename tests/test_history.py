"""The History tab's logic on real files: who sees which pictures, filters, pages, re-indexing, favourites, the
trash, thumbnails, and pictures recording their maker when they are saved."""

from __future__ import annotations

import os
import time

import pytest
from PIL import Image, PngImagePlugin

from webui.history.index import Filters
from webui.history.library import History, HistoryError
from webui.history.metadata import read_picture
from webui.outputs import OutputLayout, read_owner, save_image

A1111_TEXT = ("a castle on a hill, (sunset:1.2)\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M, "
              "Schedule type: Karras, CFG scale: 7, Seed: 424242, Size: 64x64, Model hash: 6ce0161689, "
              "Model: v1-5-pruned-emaonly, Version: v1.10.1")


def infotext(prompt: str, seed: int, model: str = "dreamy") -> str:
    return f"{prompt}\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: 64x64, " \
           f"Model hash: abcdef1234, Model: {model}, Version: atelier-0.1.0"


def picture(colour: str = "red") -> Image.Image:
    return Image.new("RGB", (64, 64), colour)


def make(root, day: str, prompt: str, seed: int, owner: str | None = None, model: str = "dreamy", fmt: str = "png",
         when: float | None = None):
    path = save_image(picture(), root / "txt2img-images" / day, seed, infotext(prompt, seed, model), fmt,
                      owner=owner)
    if when is not None:
        os.utime(path, (when, when))
        os.utime(path.parent, None)  # a new file in a folder changes the folder's time, as a real save does
    return path


@pytest.fixture
def outputs(tmp_path):
    root = tmp_path / "outputs"
    base = time.time() - 3600
    make(root, "2024-05-30", "a red fox in the snow", 1, owner="alice", when=base)
    make(root, "2024-05-30", "a blue whale", 2, owner="bob", when=base + 10)
    make(root, "2024-05-31", "a red car", 3, owner=None, model="other", when=base + 20)  # the CLI: the host's
    make(root, "2024-05-31", "a red kite", 4, owner="alice", fmt="jpg", when=base + 30)
    a1111 = root / "txt2img-images" / "2024-06-01" / "00000-424242.png"  # written by A1111, no owner
    a1111.parent.mkdir(parents=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_TEXT)
    picture("green").save(a1111, pnginfo=info)
    os.utime(a1111, (base + 40, base + 40))
    picture("white").save(root / "txt2img-images" / "2024-06-01" / "notes.png")  # no parameters at all
    old = base - 3 * 86400
    os.utime(root / "txt2img-images" / "2024-06-01" / "notes.png", (old, old))
    return root


def admins(names: str = "host-user"):
    return lambda: names


def test_pictures_tell_who_made_them_and_what_they_are(outputs):
    fox = next(outputs.rglob("*-1.png"))
    assert read_owner(fox) == "alice"
    info = read_picture(fox)
    assert info is not None and (info.owner, info.seed, info.model, info.width) == ("alice", 1, "dreamy", 64)
    kite = next(outputs.rglob("*-4.jpg"))
    assert read_picture(kite).owner == "alice", "JPEG keeps its maker in EXIF Artist"
    a1111 = read_picture(outputs / "txt2img-images" / "2024-06-01" / "00000-424242.png")
    assert a1111 is not None and (a1111.owner, a1111.seed, a1111.model) == ("", 424242, "v1-5-pruned-emaonly")
    assert a1111.prompt == "a castle on a hill, (sunset:1.2)"


def test_friends_see_their_own_pictures_and_the_host_sees_all_newest_first(outputs):
    history = History(outputs, admins())
    everyone = history.show(None).page  # no sign-in: the host
    assert [e.seed for e in everyone.entries] == [424242, 4, 3, 2, 1, None]
    assert everyone.total == 6
    alice = history.show("alice").page
    assert [e.seed for e in alice.entries] == [4, 1]
    assert [e.seed for e in history.show("bob").page.entries] == [2]
    assert history.show("carol").page.total == 0
    assert history.show("host-user").page.total == 6, "an admin user is the host"
    with pytest.raises(HistoryError):
        history.picture("bob", alice.entries[0].path)
    history.close()


def test_filters_and_pages(outputs):
    history = History(outputs, admins())
    seeds = [e.seed for e in history.show(None, Filters(text="RED")).page.entries]
    assert seeds == [4, 3, 1]
    assert [e.seed for e in history.show(None, Filters(checkpoint="other")).page.entries] == [3]
    assert [e.seed for e in history.show(None, Filters(checkpoint="v1-5")).page.entries] == [424242]
    assert [e.seed for e in history.show(None, Filters(seed=2)).page.entries] == [2]
    today = time.strftime("%Y-%m-%d")
    assert history.show(None, Filters(date_from=today, date_to=today)).page.total == 5  # notes.png is older
    assert history.show(None, Filters(text="red"), number=2, per_page=2).page.entries[0].seed == 1
    last = history.show(None, number=99, per_page=4).page
    assert (last.number, last.pages, len(last.entries)) == (2, 2, 2), "a page past the end shows the last one"
    assert history.index.checkpoints("alice") == ["dreamy"]
    history.close()


def test_reindexing_reads_only_what_changed(outputs):
    history = History(outputs, admins())
    first = history.index.refresh()
    assert first.added == 6
    again = history.index.refresh()
    assert (again.added, again.updated, again.removed, again.folders_listed) == (0, 0, 0, 0)
    new = make(outputs, "2024-06-02", "a new one", 5, owner="bob")
    next(outputs.rglob("*-2.png")).unlink()
    report = history.index.refresh()
    assert (report.added, report.removed) == (1, 1) and report.folders_listed == 3  # root, new day, changed day
    assert [e.seed for e in history.show("bob").page.entries] == [5]
    assert new.exists()
    history.close()


def test_favourites_are_each_viewers_own(outputs):
    history = History(outputs, admins())
    fox = history.show("alice").page.entries[1]
    history.favourite("alice", fox.path, True)
    assert [e.seed for e in history.show("alice", Filters(favourites=True)).page.entries] == [1]
    assert history.show(None, Filters(favourites=True)).page.total == 0, "the host's favourites are their own"
    assert history.show("alice").page.entries[1].favourite
    history.favourite("alice", fox.path, False)
    assert history.show("alice", Filters(favourites=True)).page.total == 0
    history.close()


def test_delete_to_the_trash_and_restore(outputs):
    history = History(outputs, admins())
    fox = history.show("alice").page.entries[1]
    with pytest.raises(HistoryError):
        history.delete("bob", fox.path)  # not his
    item = history.delete("alice", fox.path)
    assert not (outputs / fox.path).exists() and item.file.exists()
    assert [e.seed for e in history.show("alice").page.entries] == [4]
    assert [i.path for i, _ in history.trashed("alice")] == [fox.path]
    assert history.trashed("bob") == [] and len(history.trashed(None)) == 1
    with pytest.raises(HistoryError):
        history.restore("bob", item.token)
    # A picture saved under the same name meanwhile is kept; the restored one gets a new name.
    picture("black").save(outputs / fox.path)
    restored = history.restore("alice", item.token)
    assert restored != fox.path and (outputs / restored).exists() and (outputs / fox.path).exists()
    assert history.trashed(None) == []
    assert fox.seed in [e.seed for e in history.show("alice").page.entries]
    history.close()


def test_thumbnails_are_made_once(outputs):
    history = History(outputs, admins())
    shown = history.show(None)
    thumb = shown.images[0]
    assert thumb.suffix == ".jpg" and ".atelier" in thumb.parts and max(Image.open(thumb).size) <= 256
    made = thumb.stat().st_mtime_ns
    time.sleep(0.01)
    assert history.show(None).images[0] == thumb and thumb.stat().st_mtime_ns == made
    history.close()


def test_saved_pictures_go_to_their_users_folder(tmp_path):
    layout = OutputLayout(tmp_path, per_user=True)
    assert layout.folder_for("txt2img", user="ann smith").relative_to(tmp_path).parts[0] == "ann_smith"
    assert layout.folder_for("txt2img").relative_to(tmp_path).parts[0] == "txt2img-images", "the host's stay put"
    assert OutputLayout(tmp_path).folder_for("txt2img", user="ann").relative_to(tmp_path).parts[0] == \
        "txt2img-images"


def test_a_job_records_its_user(make_context):
    from webui.pipelines.generate import generate
    from webui.pipelines.request import GenerationRequest

    ctx = make_context(["sd1"], save_per_user_folders=True)
    request = GenerationRequest(prompt="a red circle", steps=2, width=64, height=64, seed=7, user="dana")
    path = generate(ctx.manager, request, ctx.outputs).paths[0]
    assert read_owner(path) == "dana" and path.relative_to(ctx.settings.outputs_dir).parts[0] == "dana"
    history = History(ctx.settings.outputs_dir, admins(""))
    assert [e.seed for e in history.show("dana").page.entries] == [7]
    assert history.show("erin").page.total == 0
    history.close()


def test_a_picture_a_worker_made_records_its_user_on_the_head(tmp_path):
    from webui.pipelines.generate import GenerationResult
    from webui.pipelines.request import GenerationRequest
    from webui.queue.remote import finish, pack
    from webui.queue.workers import HeadSink

    request = GenerationRequest(prompt="a red circle", seed=9, user="dana")
    made = GenerationResult(request, [picture()], [9], [9], [infotext("a red circle", 9)])
    sink = HeadSink(OutputLayout(tmp_path, per_user=True))
    path = finish(pack(made), request, sink).paths[0]  # the worker's PNG bytes, written as they came
    assert read_owner(path) == "dana" and path.relative_to(tmp_path).parts[0] == "dana"
    assert [e.seed for e in History(tmp_path, admins("")).show("dana").page.entries] == [9]
