"""A random id per browser, in a cookie, so a job belongs to the browser that asked for it (without a sign-in)
rather than to one page: after a reload the page finds its running job, and two people behind one address
(or one machine) do not stop each other's jobs.

The id says nothing about anyone and grants nothing: it only groups one browser's jobs. With a sign-in, jobs
belong to the user name instead (``runner.owner_of``).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from .runner import BROWSER_COOKIE

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_AGE = 400 * 24 * 3600  # the longest browsers keep a cookie


def _has_cookie(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name.lower() == b"cookie" and f"{BROWSER_COOKIE}=".encode() in value:
            return True
    return False


class BrowserIdMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or _has_cookie(scope):
            await self.app(scope, receive, send)
            return
        cookie = (f"{BROWSER_COOKIE}={secrets.token_hex(16)}; Path=/; Max-Age={MAX_AGE}; SameSite=Lax; "
                  "HttpOnly").encode()

        async def with_cookie(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        await self.app(scope, receive, with_cookie)
