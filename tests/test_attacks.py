"""Hostile requests against the running server (issue 8, items 3-5 and 7-10), sent the way an attacker would:
raw HTTP, forged payloads, other sites' origins. Expected results are in each test's name."""

from __future__ import annotations

import http.server
import io
import os
import re
import threading
import time

import httpx
import pytest
from PIL import Image, PngImagePlugin

from webui.auth import Credentials
from webui.outputs import OWNER_KEY

USER, PASSWORD = "ann", "correct horse"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The studio with sign-in on, a secret file beside its outputs and a symlink in them pointing out."""
    from webui.config import load_settings
    from webui.context import AppContext
    from webui.ui.app import launch

    root = tmp_path_factory.mktemp("attacks")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    outputs = root / "outputs"
    outputs.mkdir()
    mine = PngImagePlugin.PngInfo()
    mine.add_text(OWNER_KEY, USER)  # made by the signed-in user: theirs to fetch
    Image.new("RGB", (8, 8), "red").save(outputs / "mine.png", pnginfo=mine)
    (root / "secret.txt").write_text("SECRET")
    os.symlink(root / "secret.txt", outputs / "link.png")
    settings = load_settings({"settings_file": root / "settings.json", "models_dir": root / "models",
                              "outputs_dir": outputs, "extensions_dir": root / "extensions", "device": "cpu",
                              "precision": "fp32", "autolaunch": False, "port": 0}, env={})
    ctx = AppContext.create(settings)
    demo = launch(ctx, credentials=Credentials(((USER, PASSWORD),)), server_port=None, prevent_thread_lock=True,
                  quiet=True)
    yield ctx, demo, demo.local_url.rstrip("/"), root
    demo.close()
    ctx.close()


def signed_in(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    answer = client.post("/login", data={"username": USER, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return client


def test_the_file_route_serves_only_outputs(server):
    _, _, url, root = server
    client = signed_in(url)
    outputs = root / "outputs"
    assert client.get(f"/gradio_api/file={outputs}/mine.png").status_code == 200
    probes = [f"{root}/secret.txt", "/etc/passwd", f"{outputs}/../secret.txt", f"{outputs}/%2e%2e/secret.txt",
              f"{outputs}/%252e%252e/secret.txt", f"{outputs}\\..\\secret.txt", f"{str(outputs).upper()}/mine.png",
              f"{outputs}/link.png", "../../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd"]
    for probe in probes:
        for prefix in ("/gradio_api/file=", "/file=", "/gradio_api/file/"):
            answer = client.get(prefix + probe)
            assert answer.status_code in (403, 404), (prefix + probe, answer.status_code)
            assert "SECRET" not in answer.text and "root:" not in answer.text


def _call(client: httpx.Client, endpoint: str, data: list) -> str:
    """Run a Gradio endpoint through its REST form; returns the event stream's text."""
    answer = client.post(f"/gradio_api/call/{endpoint}", json={"data": data})
    if answer.status_code != 200:
        return f"HTTP {answer.status_code}: {answer.text}"
    event = answer.json()["event_id"]
    return client.get(f"/gradio_api/call/{endpoint}/{event}").text


def _img2img_data(client: httpx.Client, image: dict) -> list:
    info = client.get("/gradio_api/info").json()["named_endpoints"]["/img2img"]["parameters"]
    data = [p.get("parameter_default") for p in info]
    names = [p["label"] for p in info]
    data[names.index("Image for img2img")] = image
    data[names.index("Prompt")] = "a red circle on a blue background"
    return data


def test_a_forged_file_path_in_a_payload_is_rejected(server):
    _, _, url, root = server
    client = signed_in(url)
    for path in ("/etc/passwd", str(root / "secret.txt"), str(root / "outputs" / "link.png")):
        stream = _call(client, "img2img", _img2img_data(client, {"path": path, "meta": {"_type": "gradio.FileData"}}))
        assert "event: error" in stream or stream.startswith("HTTP 4"), stream[:300]
        assert "SECRET" not in stream and "root:" not in stream


class _Secret(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        type(self).hits += 1
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/image.png")
            self.end_headers()
            return
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), "white").save(buffer, "PNG")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(buffer.getvalue())

    def log_message(self, *args):
        pass


def test_image_inputs_given_as_urls_to_private_addresses_are_refused(server):
    _, _, url, _ = server
    internal = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Secret)
    threading.Thread(target=internal.serve_forever, daemon=True).start()
    try:
        port = internal.server_address[1]
        client = signed_in(url)
        for target in (f"http://127.0.0.1:{port}/image.png", f"http://localhost:{port}/redirect",
                       "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/image.png",
                       f"http://[::1]:{port}/image.png"):
            data = _img2img_data(client, {"path": target, "url": target, "meta": {"_type": "gradio.FileData"}})
            stream = _call(client, "img2img", data)
            assert "event: error" in stream or stream.startswith("HTTP 4"), (target, stream[:300])
        assert _Secret.hits == 0, "the server never fetched an internal address"
    finally:
        internal.shutdown()


def test_cross_site_posts_are_refused_including_origin_null(server):
    _, _, url, _ = server
    client = signed_in(url)
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
        headers = {"Origin": origin}
        for path, kwargs in (("/gradio_api/call/txt2img", {"json": {"data": []}}),
                             ("/gradio_api/queue/join", {"json": {"data": [], "fn_index": 0, "session_hash": "x"}}),
                             ("/gradio_api/upload", {"files": {"files": ("a.png", b"x")}}),
                             ("/login", {"data": {"username": USER, "password": PASSWORD}}),
                             ("/extensions/any/route", {"json": {}})):
            answer = client.post(path, headers=headers, **kwargs)
            assert answer.status_code == 403, (origin, path, answer.status_code)
    fetch_headers = {"Sec-Fetch-Site": "cross-site"}
    assert client.post("/gradio_api/call/txt2img", headers=fetch_headers, json={"data": []}).status_code == 403
    same = client.post("/gradio_api/upload", headers={"Origin": url}, files={"files": ("a.png", b"x")})
    assert same.status_code == 200, "the studio's own page keeps working"


def test_uploads_are_limited_and_never_served_back_as_pages(server):
    _, _, url, _ = server
    client = signed_in(url)

    def huge():
        chunk = b"\0" * 2**20
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'
        for _ in range(500):
            yield chunk
        yield b"\r\n--b--\r\n"

    answer = client.post("/gradio_api/upload", content=huge(),
                         headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 413
    page = client.post("/gradio_api/upload", files={"files": ("pic.png", b"<html><script>alert(1)</script>")})
    served = client.get("/gradio_api/file=" + page.json()[0])
    assert served.headers["content-type"] != "text/html" and served.headers["x-content-type-options"] == "nosniff"
    svg = client.post("/gradio_api/upload", files={"files": ("pic.svg", b"<svg xmlns='http://www.w3.org/2000/svg'>"
                                                                       b"<script>alert(1)</script></svg>")})
    served = client.get("/gradio_api/file=" + svg.json()[0])
    assert "svg" not in served.headers["content-type"] or "attachment" in served.headers.get("content-disposition", "")


def test_a_decompression_bomb_gets_a_clear_error(server):
    _, _, url, _ = server
    client = signed_in(url)
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, "PNG")  # 400 million pixels in a ~50 KB file
    upload = client.post("/gradio_api/upload", files={"files": ("bomb.png", buffer.getvalue())})
    assert upload.status_code == 200
    data = _img2img_data(client, {"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}})
    stream = _call(client, "img2img", data)
    assert "event: error" in stream
    assert client.get("/gradio_api/info").status_code == 200, "the server goes on"


def all_routes(app) -> list:
    """Every route, including those FastAPI keeps inside included routers (Gradio's /gradio_api/...)."""
    out = []
    for route in app.routes:
        inner = getattr(route, "original_router", None)
        if inner is None:
            out.append((getattr(route, "path", ""), route))
        else:
            prefix = route.include_context.prefix
            out.extend((prefix + getattr(sub, "path", ""), sub) for sub in inner.routes)
    return out


# Routes a signed-out browser needs to show the sign-in form (no data of the studio behind them).
PUBLIC = {"/login", "/login/", "/logout", "/", "/favicon.ico", "/manifest.json", "/theme.css", "/robots.txt",
          "/svelte/{path:path}", "/static/{path:path}", "/assets/{path:path}", "/pwa_icon", "/pwa_icon/{size}",
          "/gradio_api/login_check", "/gradio_api/login_check/", "/gradio_api/theme.css",
          "/gradio_api/startup-events", "/config", "/config/", "/gradio_api/user", "/gradio_api/user/",
          "/gradio_api/app_id", "/gradio_api/app_id/", "/gradio_api/token", "/gradio_api/token/"}


def test_every_route_needs_sign_in(server):
    _, demo, url, root = server
    anonymous = httpx.Client(base_url=url, timeout=30)
    checked = []
    for path, route in all_routes(demo.app):
        if not path or path in PUBLIC:
            continue
        concrete = path.replace("{path:path}", f"{root}/outputs/mine.png") \
            .replace("{path_or_url:path}", f"{root}/outputs/mine.png").replace("{url_path:path}", "x")
        concrete = re.sub(r"\{[^}]*\}", "x", concrete)
        methods = getattr(route, "methods", None) or {"GET"}
        method = "GET" if "GET" in methods else sorted(methods)[0]
        answer = anonymous.request(method, concrete)
        if answer.status_code == 200:  # only the sign-in page's shell, with nothing of the studio in it
            assert "txt2img" not in answer.text and str(root) not in answer.text, (method, path, answer.text[:200])
        else:
            assert answer.status_code in (401, 403, 404, 405, 422), (method, path, answer.status_code, answer.text[:99])
        checked.append(path)
    assert len(checked) > 30 and "/gradio_api/upload" in checked and "/gradio_api/queue/join" in checked
    for path in ("/gradio_api/info", "/gradio_api/upload", f"/gradio_api/file={root}/outputs/mine.png"):
        method = "POST" if path.endswith("upload") else "GET"
        assert anonymous.request(method, path).status_code == 401, path
    config = anonymous.get("/config")
    assert "txt2img-generate" not in config.text, "a signed-out visitor sees the sign-in form, not the studio"


def test_repeated_sign_in_failures_are_slowed_down(server):
    _, _, url, _ = server
    client = httpx.Client(base_url=url, timeout=30)
    codes = [client.post("/login", data={"username": USER, "password": f"guess {i}"}).status_code for i in range(7)]
    assert codes[:5] == [400] * 5
    assert 429 in codes[5:]
    locked = client.post("/login", data={"username": USER, "password": PASSWORD})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    time.sleep(int(locked.headers["retry-after"]) + 0.5)
    assert client.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200


def test_folders_and_file_names_cannot_be_changed_from_the_lan(make_context, tmp_path):
    """A forged Settings save on a --listen server (the field is read-only in its page) changes nothing."""
    from webui.ui.app import build

    ctx = make_context(["sd1"], host="0.0.0.0")
    demo = build(ctx)
    save = next(block.fn for block in demo.fns.values() if getattr(block.fn, "__name__", "") == "on_save")
    settings = ctx.settings
    for folder, pattern in (("/tmp/elsewhere", settings.filename_pattern),
                            (str(settings.outputs_dir), "../../[seed]")):
        message, _ = save(folder, pattern, "png", 1.0, "auto", 5, "Euler a", 20, 0)
        assert "Refused" in message
        assert not settings.settings_file.exists(), "nothing was saved"
    message, _ = save(str(settings.outputs_dir), settings.filename_pattern, "webp", 1.0, "auto", 5, "Euler a", 20, 0)
    assert "Saved" in message and ctx.settings.save_format == "webp", "other settings still save"
    allowed = make_context(["sd1"], host="0.0.0.0", enable_insecure_extension_access=True)
    save = next(block.fn for block in build(allowed).fns.values() if getattr(block.fn, "__name__", "") == "on_save")
    assert "Saved" in save(str(allowed.settings.outputs_dir), "[seed]-[date]", "png", 1.0, "auto", 5, "Euler a", 20,
                           0)[0]
