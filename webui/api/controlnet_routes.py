"""sd-webui-controlnet's own routes (/controlnet/...), so clients written for A1111 with the ControlNet extension
work unchanged. They sit outside /sdapi/v1 as in A1111, behind the same credential check as the REST API."""

# No "from __future__ import annotations": FastAPI reads the handlers' annotations at runtime.
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..controlnet import EXTENSION_API_VERSION, catalog
from ..controlnet.preprocess import detect_map
from ..errors import AtelierError
from .auth import Caller
from .convert import engine_error
from .errors import ApiError
from .images import decode_image, encode_png
from .routes import api_route_class

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..context import AppContext

PREFIX = "/controlnet"
MAX_DETECT_IMAGES = 16
UNIT_COUNT = 3  # units the page shows, what /controlnet/settings tells clients


class DetectRequest(BaseModel):
    """The extension's POST /controlnet/detect body (low_vram is accepted and not needed here). A mask, one per
    image, is the inpaint preprocessors' mask and, for the others, their input (see webui/controlnet/inpaint.py)."""

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_processor_res: float = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    controlnet_masks: list[str] = Field(default_factory=list)
    low_vram: bool = False


def build_controlnet_router(ctx: "AppContext", check: "Callable[[Request], Caller]") -> APIRouter:
    def caller(request: Request) -> Caller:
        known = getattr(request.state, "atelier_caller", None)
        return known if known is not None else check(request)

    router = APIRouter(prefix=PREFIX, tags=["controlnet"], dependencies=[Depends(caller)],
                       route_class=api_route_class(check))

    @router.get("/version")
    def version() -> dict[str, Any]:
        return {"version": EXTENSION_API_VERSION}

    @router.get("/model_list")
    def model_list(update: bool = True) -> dict[str, Any]:
        return {"model_list": ctx.manager.controlnets.titles()}

    @router.get("/module_list")
    def module_list(alias_names: bool = False) -> dict[str, Any]:
        return {"module_list": catalog.module_list(alias_names), "module_detail": catalog.module_detail(alias_names)}

    @router.get("/settings")
    def settings() -> dict[str, Any]:
        return {"control_net_unit_count": UNIT_COUNT}

    @router.post("/detect")
    async def detect(body: DetectRequest) -> dict[str, Any]:
        controlnet_input_images = body.controlnet_input_images
        if not controlnet_input_images:
            raise ApiError(422, "controlnet_input_images", "no image given", "invalid")
        if len(controlnet_input_images) > MAX_DETECT_IMAGES:
            raise ApiError(422, "controlnet_input_images", f"at most {MAX_DETECT_IMAGES} images at once", "invalid")
        pictures = [decode_image(text, f"controlnet_input_images[{i}]")
                    for i, text in enumerate(controlnet_input_images)]
        if len(body.controlnet_masks) > len(pictures):
            raise ApiError(422, "controlnet_masks", "more masks than images", "invalid")
        masks = [decode_image(text, f"controlnet_masks[{i}]") if text else None
                 for i, text in enumerate(body.controlnet_masks)]
        masks += [None] * (len(pictures) - len(masks))

        def run() -> list[str]:
            return [encode_png(detect_map(body.controlnet_module, picture, body.controlnet_processor_res,
                                          body.controlnet_threshold_a, body.controlnet_threshold_b,
                                          annotators_dir=ctx.manager.controlnets.annotators,
                                          field="controlnet_module", mask=mask))
                    for picture, mask in zip(pictures, masks, strict=True)]

        try:
            images = await run_in_threadpool(run)
        except AtelierError as exc:
            raise engine_error(exc) from exc
        return {"images": images, "info": "Success"}

    return router
