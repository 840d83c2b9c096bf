"""One ASGI middleware in front of every route (Gradio's, the REST API's, extensions'):

- **Cross-site requests are refused.** A page on another site can make the user's browser send requests to
  a studio it can reach (localhost, the LAN); those carry an ``Origin`` (or ``Sec-Fetch-Site: cross-site``)
  header that names the other site, or ``Origin: null`` from sandboxed frames and files. Requests that
  change something (POST, PUT, PATCH, DELETE, websockets) from another origin get 403. Clients that are
  not browsers (scripts, A1111 tools) send no Origin and pass, behind the sign-in as always.
- **Responses are never sniffed or framed**: ``X-Content-Type-Options: nosniff`` (an uploaded HTML file
  posing as a PNG stays an image) and ``X-Frame-Options: SAMEORIGIN`` (no clickjacking from other sites).
- **One sign-in gate for every route.** When the studio has a sign-in, a request without a session
  cookie or valid Basic credentials reaches only what the sign-in page needs (the page shell, its assets,
  the login route); everything else, Gradio's routes, FastAPI's docs and extensions' routes included,
  gets 401. The REST API (``/sdapi``) checks its own credentials (``--api-auth`` may differ). The sign-in
  page carries no API description (Gradio embeds one listing every endpoint with its choices: the names
  of the user's checkpoints, VAEs and styles).
- **A friend fetches only their own pictures.** On a signed-in studio, a request to Gradio's file route for a
  file in the outputs folder is answered only when the signed-in user may see it (``hidden_file``: the picture
  records them as its maker, or they are the host); otherwise 404, as for a file that does not exist.
- **Repeated sign-in failures are slowed down.** After 5 failed sign-ins (Gradio's login form, or a 401 to
  Basic credentials) from one address within 10 minutes, that address's sign-in attempts get 429 with a
  Retry-After that doubles with each further failure (1 s, 2 s, ... up to 5 minutes).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FREE_FAILURES = 5
WINDOW_SECONDS = 600.0
MAX_LOCKOUT_SECONDS = 300.0


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def cross_site(headers: dict[str, str], allowed_origins: frozenset[str] = frozenset()) -> bool:
    """True when a browser sent this request on behalf of another site."""
    origin = headers.get("origin")
    if origin is None:
        return headers.get("sec-fetch-site") == "cross-site"
    if origin == "null":
        return True
    if origin.rstrip("/") in allowed_origins:
        return False
    parts = urlsplit(origin)
    return not parts.netloc or parts.netloc.lower() != headers.get("host", "").lower()


class FailureLimiter:
    """Failed sign-ins per client address, and how long that address must wait."""

    def __init__(self, free_failures: int = FREE_FAILURES, clock: Callable[[], float] = time.monotonic) -> None:
        self.free_failures = free_failures  # 0: never wait
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, time of the last failure)

    def wait_seconds(self, address: str) -> float:
        with self._lock:
            count, last = self._failures.get(address, (0, 0.0))
        now = self._clock()
        if self.free_failures <= 0 or count < self.free_failures or now - last > WINDOW_SECONDS:
            return 0.0
        lockout = min(2.0 ** (count - self.free_failures), MAX_LOCKOUT_SECONDS)
        return max(0.0, last + lockout - now)

    def failed(self, address: str) -> None:
        now = self._clock()
        with self._lock:
            count, last = self._failures.get(address, (0, 0.0))
            count = 0 if now - last > WINDOW_SECONDS else count
            self._failures[address] = (count + 1, now)
            if len(self._failures) > 10_000:  # a flood of addresses: forget the oldest
                for key, _ in sorted(self._failures.items(), key=lambda item: item[1][1])[:5_000]:
                    del self._failures[key]

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)


SAFETY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"SAMEORIGIN"))


def _with_safety_headers(send: Send) -> Send:
    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(name, value) for name, value in SAFETY_HEADERS if name not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)
    return wrapped


EMPTY_API_INFO = b'<script>window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};</script>'
API_INFO_SCRIPT = re.compile(rb"<script>\s*window\.gradio_api_info\s*=.*?</script>", re.DOTALL)


def _without_api_info(send: Send) -> Send:
    """Buffer an HTML page and drop Gradio's embedded API description from it."""
    start: dict[str, Any] = {}
    body = bytearray()

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            received = dict(message.get("headers", []))
            if not received.get(b"content-type", b"").startswith(b"text/html"):
                start["passthrough"] = True
                await send(message)
                return
            start.update(message)
            return
        if start.get("passthrough") or message["type"] != "http.response.body":
            await send(message)
            return
        body.extend(message.get("body", b""))
        if message.get("more_body"):
            return
        cleaned = API_INFO_SCRIPT.sub(EMPTY_API_INFO, bytes(body))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(cleaned)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": cleaned})
    return wrapped


# What a signed-out browser may fetch: the sign-in page and what it loads. Nothing here returns studio data.
PUBLIC_PATHS = frozenset({
    "/", "/login", "/logout", "/config", "/favicon.ico", "/manifest.json", "/theme.css", "/robots.txt",
    "/pwa_icon", "/gradio_api/login_check", "/gradio_api/theme.css", "/gradio_api/startup-events",
    "/gradio_api/user", "/gradio_api/token", "/gradio_api/app_id",
})
# /sdapi and /controlnet (the REST API) check their own credentials.
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/", "/sdapi/", "/controlnet/")


# Gradio's routes that serve a file by its path (with the older spellings it still answers).
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/", "/file=", "/file/")


def requested_file(path: str) -> str | None:
    """The file path a request to one of Gradio's file routes names; None for any other route."""
    for prefix in FILE_ROUTES:
        if path.startswith(prefix):
            return path[len(prefix):]
    return None


def public(path: str) -> bool:
    return path.rstrip("/") in PUBLIC_PATHS or path == "/" or path.startswith(PUBLIC_PREFIXES)


class GuardMiddleware:
    def __init__(self, app: Any, allowed_origins: tuple[str, ...] = (), limiter: FailureLimiter | None = None,
                 is_signed_in: Callable[[Scope], bool] | None = None,
                 hidden_file: Callable[[Scope, str], bool] | None = None):
        """``is_signed_in(scope)``: whether a request carries a valid sign-in (None: the studio has no sign-in).
        ``hidden_file(scope, file)``: whether a signed-in request must not get that file (it may read the disk:
        called off the event loop)."""
        self.app = app
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)
        self.limiter = limiter or FailureLimiter()
        self.is_signed_in = is_signed_in
        self.hidden_file = hidden_file

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        if (method in UNSAFE_METHODS or method == "WEBSOCKET") and cross_site(headers, self.allowed_origins):
            return await self._refuse(scope, send, 403, "Cross-site request refused: open Atelier's own page "
                                                         "instead of sending requests from another site.")
        if scope["type"] == "http":
            send = _with_safety_headers(send)
        address = (scope.get("client") or ("unknown", 0))[0]
        path = scope.get("path", "")
        signing_in = path.rstrip("/").endswith("/login") or "authorization" in headers
        if signing_in:
            wait = self.limiter.wait_seconds(address)
            if wait > 0:
                return await self._refuse(scope, send, 429, "Too many failed sign-ins; try again later.",
                                          retry_after=wait)
        if self.is_signed_in is not None and not self.is_signed_in(scope):
            if not public(path):
                if "authorization" in headers:
                    self.limiter.failed(address)
                return await self._refuse(scope, send, 401, "Sign in first", basic=True)
            if method == "GET":
                send = _without_api_info(send)
        elif self.hidden_file is not None and scope["type"] == "http":
            root = scope.get("root_path", "")  # behind a proxy's sub-path, routes are matched without it
            file = requested_file(path[len(root):] if root and path.startswith(root) else path)
            if file is not None and await run_in_threadpool(self.hidden_file, scope, file):
                return await self._refuse(scope, send, 404, "Not Found")
        if not signing_in:
            return await self.app(scope, receive, send)
        is_login_form = scope.get("path", "").rstrip("/").endswith("/login") and method == "POST"

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 401 or (is_login_form and status in (400, 401)):
                    self.limiter.failed(address)
                elif status < 400 and is_login_form:
                    self.limiter.succeeded(address)
            await send(message)

        await self.app(scope, receive, watch)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, detail: str, retry_after: float | None = None,
                      basic: bool = False) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry_after is not None:
            headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
        if basic:
            headers.append((b"www-authenticate", b'Basic realm="Atelier"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
