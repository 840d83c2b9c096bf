"""HTTP Basic sign-in, read once (webui.auth.basic_credentials) for the API, extension routes and the page."""

from __future__ import annotations

import base64

import pytest

from tests.support.probe_extension import write_extension
from webui.auth import basic_credentials


def header(user: str, password: str, encoding: str = "utf-8") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode(encoding)).decode("ascii")


@pytest.mark.parametrize("value, expected", [
    (header("ann", "s3cret"), ("ann", "s3cret")),
    (header("zoë", "pässwört"), ("zoë", "pässwört")),
    (header("zoë", "pässwört", "latin-1"), ("zoë", "pässwört")),  # older clients send latin-1
    (header("ann", "a:b:c"), ("ann", "a:b:c")),  # only the first colon separates
    (header("ann", ""), ("ann", "")),
    ("basic " + base64.b64encode(b"ann:x").decode() + "  ", ("ann", "x")),
    ("Basic " + base64.b64encode(b"no colon").decode(), None),
    ("Basic !!!", None),
    ("Basic ", None),
    ("Bearer " + base64.b64encode(b"ann:x").decode(), None),
    ("", None),
])
def test_basic_header_values(value, expected):
    assert basic_credentials(value) == expected


def test_a_latin1_password_signs_in_to_the_api_and_extension_routes(make_context, tmp_path):
    import httpx

    from webui.auth import Credentials
    from webui.ui.app import launch

    write_extension(tmp_path / "extensions" / "probe")
    ctx = make_context(["sd1"], port=0, autolaunch=False)
    demo = launch(ctx, api=True, credentials=Credentials((("zoë", "pässwört"),)), server_port=None,
                  prevent_thread_lock=True, quiet=True)
    base = demo.local_url.rstrip("/")
    try:
        for path in ("/sdapi/v1/sd-models", "/extensions/probe/ping"):
            for encoding in ("latin-1", "utf-8"):
                reply = httpx.get(base + path, headers={"Authorization": header("zoë", "pässwört", encoding)})
                assert reply.status_code == 200, (path, encoding)
            wrong = httpx.get(base + path, headers={"Authorization": header("zoë", "passwort", "latin-1")})
            assert wrong.status_code == 401, path
    finally:
        demo.close()
