"""Extensions' HTTP routes, served at /extensions/<id>/... on the UI's server, behind the same sign-in:
a browser's Gradio session cookie or HTTP Basic credentials, whenever the UI has credentials."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from fastapi import Depends, HTTPException, Request
from starlette.requests import HTTPConnection

from ..auth import basic_credentials

if TYPE_CHECKING:
    from ..context import AppContext


def request_user(app: Any, credentials: Any, request: HTTPConnection) -> str | None:
    """Who signed in: a Gradio session cookie of ``app``, or valid HTTP Basic credentials; None if neither."""
    token = request.cookies.get(f"access-token-{app.cookie_id}") or \
        request.cookies.get(f"access-token-unsecure-{app.cookie_id}")
    user = app.tokens.get(token) if token else None
    if user is not None:
        return user
    basic = basic_credentials(request.headers.get("authorization", ""))
    if basic is not None and credentials.check(*basic):
        return basic[0]
    return None


def signed_in(app: Any, credentials: Any):
    """A FastAPI dependency that refuses (401) requests without a session or valid Basic credentials."""

    def check(request: Request) -> str | None:
        if credentials is None:
            return None
        user = request_user(app, credentials, request)
        if user is None:
            raise HTTPException(status_code=401, detail="Sign in first", headers={"WWW-Authenticate": "Basic"})
        return user

    return check


def mount_extension_routes(app: Any, ctx: AppContext, credentials: Any) -> list[str]:
    """Add every active extension's routes; an extension switched off later answers 503."""
    registry = ctx.hooks
    paths = []
    for route in registry.routes:
        if not registry.active(route.owner):
            continue
        path = f"/extensions/{route.owner}{route.path}"

        def endpoint_for(route: Any = route):
            async def call(request: Request) -> Any:
                if not registry.active(route.owner):
                    raise HTTPException(status_code=503, detail=f"extension {route.owner} is switched off")
                params = dict(request.query_params)
                if request.method in ("POST", "PUT", "PATCH") and request.headers.get("content-type", "").startswith(
                        "application/json"):
                    params["body"] = await request.json()
                wanted = inspect.signature(route.endpoint).parameters
                accepted = {k: v for k, v in params.items() if k in wanted}
                try:
                    result = route.endpoint(**accepted)
                    if inspect.isawaitable(result):
                        result = await result
                    return result
                except HTTPException:
                    raise
                except Exception as exc:
                    registry.switch_off(route.owner, f"its route {route.path} raised {type(exc).__name__}: {exc}")
                    raise HTTPException(status_code=500, detail=f"extension {route.owner} failed; switched off") \
                        from exc
            return call

        app.add_api_route(path, endpoint_for(), methods=list(route.methods),
                          dependencies=[Depends(signed_in(app, credentials))], name=f"extension:{route.owner}")
        paths.append(path)
    return paths
