"""AUTOMATIC1111's REST API (/sdapi/v1) on the UI's server, for the tools artists already use.

    schemas   request/response bodies with A1111's field names and defaults
    convert   A1111 request -> GenerationRequest (checked), result -> A1111 response
    images    base64 images in and out, with size limits
    auth      HTTP Basic, one dependency for every route; the caller's job owner key
    service   jobs in Atelier's queue, per-caller progress, interrupt and skip
    options   A1111 option names over Atelier's settings
    listings  models, VAEs, samplers, LoRAs, embeddings, styles, memory, flags
    routes    the thin route handlers
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..auth import Credentials
from .auth import caller_dependency
from .controlnet_routes import build_controlnet_router
from .routes import PREFIX, build_router
from .service import ApiService

if TYPE_CHECKING:
    from ..context import AppContext

__all__ = ["PREFIX", "mount_api"]


def mount_api(app: Any, ctx: AppContext, credentials: Credentials | None = None,
              flags: dict[str, Any] | None = None) -> ApiService:
    """Add the /sdapi/v1 and /controlnet routes to ``app`` (a FastAPI app, e.g. Gradio's). Jobs wait in the
    app's job queue with the page's."""
    service = ApiService(ctx)
    check = caller_dependency(credentials)
    app.include_router(build_router(ctx, service, check, flags))
    app.include_router(build_controlnet_router(ctx, check))
    app.openapi_schema = None  # /docs is rebuilt with the new routes
    return service
