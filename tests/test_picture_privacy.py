"""On a shared studio friends see only their own pictures (issue 18): Gradio's file route answers a file of the
outputs folder, picture or History thumbnail, only to the user it records as its maker, or to the host (an
admin user); anyone else gets 404, as for a name never used. The page's own galleries keep working (they show
copies in Gradio's cache), Extras records who made its pictures, and a studio without sign-in is as before."""

from __future__ import annotations

import base64
import io
import json
import re

import gradio as gr
import httpx
import pytest
from PIL import Image

from tests.conftest import make_models_dir
from webui.auth import Credentials
from webui.history.library import History
from webui.outputs import OutputLayout, read_owner, save_image

USERS = (("ann", "ann-pass-1"), ("bob", "bob-pass-2"), ("cat", "cat-pass-3"))  # cat is an admin user
TEXT = "a red circle\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: {seed}, Size: 64x64, Model: sd1"


def _picture(root, user: str | None, seed: int):
    layout = OutputLayout(root, per_user=True)
    return save_image(Image.new("RGB", (64, 64), "red"), layout.folder_for("txt2img", user=user), seed,
                      TEXT.format(seed=seed), owner=user)


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_files):
    from webui.config import load_settings
    from webui.context import AppContext
    from webui.ui.app import launch

    root = tmp_path_factory.mktemp("privacy")
    settings = load_settings({"settings_file": root / "settings.json", "models_dir": make_models_dir(root, tiny_files,
                              ["sd1"]), "outputs_dir": root / "outputs", "device": "cpu", "precision": "fp32",
                              "include_builtin": False, "autolaunch": False, "port": 0, "admin_users": "cat",
                              "save_per_user_folders": True}, env={})
    ctx = AppContext.create(settings)
    demo = launch(ctx, api=True, credentials=Credentials(USERS), server_port=None, prevent_thread_lock=True,
                  quiet=True)
    yield ctx, demo.local_url.rstrip("/")
    demo.close()
    ctx.close()


def _client(url: str, user: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=120)
    assert client.post("/login", data={"username": user, "password": dict(USERS)[user]}).status_code == 200
    return client


def _generate(client: httpx.Client) -> str:
    """txt2img as the page's Generate button runs it; the gallery's first picture's URL."""
    info = client.get("/gradio_api/info").json()["named_endpoints"]["/txt2img"]["parameters"]
    data = [p.get("parameter_default") for p in info]
    labels = [p["label"] for p in info]
    for label, value in (("Prompt", "a red circle"), ("Sampling steps", 2), ("Width", 64), ("Height", 64)):
        data[labels.index(label)] = value
    event = client.post("/gradio_api/call/txt2img", json={"data": data}).json()["event_id"]
    stream = client.get(f"/gradio_api/call/txt2img/{event}").text
    assert "event: complete" in stream, stream[-500:]
    outputs = json.loads(stream.split("event: complete\ndata:", 1)[1].split("\n", 1)[0])
    return outputs[0][0]["image"]["url"]


def _status(client: httpx.Client, path) -> int:
    return client.get(f"/gradio_api/file={path}").status_code


@pytest.mark.slow
def test_a_friend_fetches_only_their_own_pictures_and_thumbnails(studio):
    ctx, url = studio
    outputs = ctx.settings.outputs_dir
    ann, bob, cat = (_client(url, name) for name, _ in USERS)
    shown = _generate(ann)
    assert str(outputs) not in shown, "the page shows a copy in Gradio's cache, under a name nobody can guess"
    fetched = ann.get(shown)
    assert fetched.status_code == 200 and Image.open(io.BytesIO(fetched.content)).size == (64, 64), \
        "the picture shows in the gallery of the friend who made it"
    made = next((outputs / "ann").rglob("*.png"))
    assert read_owner(made) == "ann"
    bobs, hosts = _picture(outputs, "bob", 5), _picture(outputs, None, 6)
    history = History(outputs, lambda: "cat")
    found = history.show("cat")
    history.close()
    thumbs = {entry.owner: thumb for entry, thumb in zip(found.page.entries, found.images, strict=True)}
    assert set(thumbs) == {"ann", "bob", ""} and all(".atelier" in p.parts for p in thumbs.values())
    assert [_status(ann, p) for p in (made, thumbs["ann"], bobs, thumbs["bob"], hosts)] == [200, 200, 404, 404, 404]
    assert [_status(bob, p) for p in (made, thumbs["ann"], bobs, thumbs["bob"], hosts)] == [404, 404, 200, 200, 404]
    assert [_status(cat, p) for p in (made, thumbs["ann"], bobs, thumbs["bob"], hosts)] == [200] * 5, "the admin"
    # Another spelling of the same file, a name never used, HTTP Basic sign-in: the same answer.
    assert _status(bob, f"{made.parent}/./../{made.parent.name}/{made.name}") == 404
    assert _status(bob, made.with_name("99999-1.png")) == _status(bob, made) == 404
    basic = httpx.get(f"{url}/gradio_api/file={made}", auth=("bob", "bob-pass-2"))
    assert basic.status_code == 404 and b"PNG" not in basic.content
    assert ann.get(shown).status_code == 200, "the friend's gallery still shows it"


@pytest.mark.slow
def test_extras_pictures_from_the_api_record_their_user(studio):
    ctx, url = studio
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "blue").save(buffer, "PNG")
    reply = httpx.post(f"{url}/sdapi/v1/extra-single-image", auth=("bob", "bob-pass-2"), timeout=120,
                       json={"image": base64.b64encode(buffer.getvalue()).decode(), "upscaler_1": "Lanczos",
                             "upscaling_resize": 2, "save_images": True})
    assert reply.status_code == 200, reply.text
    saved = list((ctx.settings.outputs_dir / "bob" / "extras-images").rglob("*.png"))
    assert len(saved) == 1 and read_owner(saved[0]) == "bob"


def test_the_extras_tab_reads_and_saves_only_the_users_own_pictures(make_context):
    from webui.ui import extras_tab

    ctx = make_context([], admin_users="cat", save_per_user_folders=True)
    outputs = ctx.settings.outputs_dir
    anns = _picture(outputs, "ann", 1)
    with gr.Blocks() as demo:
        extras_tab.build(ctx)
    run = next(block.fn for block in demo.fns.values() if getattr(block.fn, "__name__", "") == "on_run")
    folder = str(anns.parent.relative_to(outputs))

    def upscale(user: str, source: str = "folder", image=None, where: str = folder):
        return run(source, image, None, where, 1, 2, 64, 64, True, "Lanczos", "None", 0,
                   request=gr.Request(username=user))

    with pytest.raises(gr.Error, match="no PNG, JPEG or WebP pictures"):
        upscale("bob")
    with pytest.raises(gr.Error, match="not a folder"):
        upscale("cat", where=".atelier")
    for user in ("ann", "cat"):
        shown, _ = upscale(user)
        assert len(shown) == 1 and read_owner(shown[0]) == user
        assert re.search(rf"/{user}/extras-images/", shown[0]), shown[0]
    shown, _ = upscale("bob", "single", Image.new("RGB", (20, 20)))
    assert read_owner(shown[0]) == "bob"


@pytest.mark.slow
def test_a_studio_without_sign_in_serves_every_picture_as_before(make_context):
    from webui.ui.app import launch

    ctx = make_context([], port=0, autolaunch=False)
    anns = _picture(ctx.settings.outputs_dir, "ann", 1)
    demo = launch(ctx, server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        assert httpx.get(f"{demo.local_url.rstrip('/')}/gradio_api/file={anns}").status_code == 200
    finally:
        demo.close()
