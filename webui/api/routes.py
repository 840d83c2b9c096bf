"""The /sdapi/v1 routes: thin handlers over ``convert``, ``service``, ``options`` and ``listings``.

Every route goes through ``ApiRoute``: credentials are checked first (before a body is read), a body
over the size limit gets 413, and errors become JSON naming the field, so one bad request never
disturbs the server or the next request.
"""

# No "from __future__ import annotations": FastAPI reads these handlers' annotations at runtime, and the
# dependency they name is local to build_router.
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from ..errors import AtelierError
from ..infotext import parse_infotext
from ..outputs import read_infotext
from ..styles import StyleStore
from . import convert, extras, listings, options
from .auth import Caller
from .errors import ApiError
from .images import MAX_IMAGE_BYTES, decode_image
from .schemas import (
    EmbeddingsResponse,
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    GenerationResponse,
    Img2ImgRequest,
    InterruptRequest,
    LoraItem,
    MemoryResponse,
    PngInfoRequest,
    PngInfoResponse,
    ProgressResponse,
    PromptStyleItem,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    SDVaeItem,
    Txt2ImgRequest,
    UpscalerItem,
)
from .service import ApiService

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"
# An init image and a mask at the image limit, base64-encoded (4/3), with room for the other fields.
MAX_BODY_BYTES = 3 * MAX_IMAGE_BYTES
# PNG chunks that are file format details, not information a user wrote (as A1111 leaves them out).
_FORMAT_KEYS = {"parameters", "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
                "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop",
                "transparency", "gamma", "srgb", "aspect"}


def _validation_body(exc: RequestValidationError) -> dict[str, Any]:
    details = []
    for error in exc.errors():
        item = {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
        value = error.get("input")
        if value is not None and len(repr(value)) <= 200:  # never echo a whole base64 image back
            item["input"] = value
        details.append(item)
    field = None
    if details:
        loc = details[0]["loc"]
        if len(loc) > 1 and loc[0] in ("body", "query") and isinstance(loc[1], str):
            field = loc[1]
    return jsonable_encoder({"error": "RequestValidationError", "field": field, "detail": details})


def api_route_class(check: Callable[[Request], Caller]) -> type[APIRoute]:
    class ApiRoute(APIRoute):
        def get_route_handler(self) -> Callable:
            handler = super().get_route_handler()

            async def run(request: Request) -> Any:
                request.state.atelier_caller = check(request)  # 401 before anything is read
                try:
                    length = request.headers.get("content-length", "")
                    if length.isdigit() and int(length) > MAX_BODY_BYTES:
                        raise ApiError(413, None, f"request body larger than {MAX_BODY_BYTES // 2**20} MB",
                                       "too_large")
                    return await handler(request)
                except ApiError as exc:
                    return JSONResponse(exc.body(), status_code=exc.status)
                except RequestValidationError as exc:
                    return JSONResponse(_validation_body(exc), status_code=422)

            return run

    return ApiRoute


def build_router(ctx: "AppContext", service: ApiService, check: Callable[[Request], Caller],
                 flags: dict[str, Any] | None = None) -> APIRouter:
    """All /sdapi/v1 routes; ``check`` authenticates the caller (the one dependency every route has)."""
    styles = StyleStore(ctx.settings.settings_file.parent / "styles.csv")

    def caller(request: Request) -> Caller:
        known = getattr(request.state, "atelier_caller", None)
        return known if known is not None else check(request)

    Who = Annotated[Caller, Depends(caller)]
    router = APIRouter(prefix=PREFIX, tags=["sdapi"], dependencies=[Depends(caller)],
                       route_class=api_route_class(check))

    async def run_job(job: convert.ApiJob, who: Caller) -> dict[str, Any]:
        job.request.user = who.user  # saved pictures record their maker (History)
        try:
            result = await service.generate(job, who)
        except AtelierError as exc:
            raise convert.engine_error(exc) from exc
        except Exception as exc:
            log.error("API generation failed", exc_info=exc)
            raise ApiError(500, None, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from exc
        return await run_in_threadpool(convert.response, job, result)

    @router.post("/txt2img", response_model=GenerationResponse)
    async def txt2img(body: Txt2ImgRequest, request: Request, who: Who) -> Any:
        job = await run_in_threadpool(convert.txt2img_job, body, ctx, styles)
        return await run_job(job, who)

    @router.post("/img2img", response_model=GenerationResponse)
    async def img2img(body: Img2ImgRequest, request: Request, who: Who) -> Any:
        job = await run_in_threadpool(convert.img2img_job, body, ctx, styles)
        return await run_job(job, who)

    async def run_extras(job: extras.ExtrasJob, who: Caller) -> list[Any]:
        """An Extras job in the queue's turn, like a generation."""
        job.user = who.user  # saved pictures record their maker (History), as generations do
        try:
            return await service.in_queue(lambda: extras.run(job, ctx), who, "extras")
        except AtelierError as exc:
            raise convert.engine_error(exc) from exc
        except Exception as exc:
            log.error("API extras job failed", exc_info=exc)
            raise ApiError(500, None, f"upscaling failed: {type(exc).__name__}: {exc}", "server_error") from exc

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    async def extra_single_image(body: ExtrasSingleImageRequest, who: Who) -> Any:
        """Upscale one picture (upscaler_1, blended with upscaler_2), as A1111's Extras tab does."""
        job = await run_in_threadpool(extras.single_job, body, ctx)
        done = await run_extras(job, who)
        return await run_in_threadpool(extras.single_response, job, done)

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    async def extra_batch_images(body: ExtrasBatchImagesRequest, who: Who) -> Any:
        job = await run_in_threadpool(extras.batch_job, body, ctx)
        done = await run_extras(job, who)
        return await run_in_threadpool(extras.batch_response, job, done)

    @router.get("/progress", response_model=ProgressResponse)
    def progress(who: Who, skip_current_image: bool = False,
                 task_id: Annotated[str | None, Query(alias="id_task")] = None) -> Any:
        """The caller's own job (the running one, else the first waiting); zeros when there is none."""
        return service.progress(who, skip_current_image, task_id)

    @router.post("/interrupt")
    def interrupt(who: Who, body: InterruptRequest | None = None) -> Any:
        """Stop the caller's jobs (or only the one with this task id), queued ones included."""
        service.interrupt(who, _task(body))
        return {}

    @router.post("/skip")
    def skip(who: Who, body: InterruptRequest | None = None) -> Any:
        """End the current batch of the caller's running job; the next batch goes on."""
        service.skip(who, _task(body))
        return {}

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        return options.get_options(ctx)

    @router.post("/options")
    async def set_options(body: dict[str, Any], who: Who) -> Any:
        """sd_model_checkpoint loads that model (in the job queue's turn); other options are saved."""
        changes = await run_in_threadpool(options.plan_changes, ctx, body)
        await run_in_threadpool(options.save_changes, ctx, changes)
        if changes.checkpoint is not None:
            try:
                await service.load_checkpoint(changes.checkpoint, who)
            except AtelierError as exc:
                raise convert.engine_error(exc) from exc
        return None

    @router.get("/sd-models", response_model=list[SDModelItem])
    def sd_models() -> Any:
        return listings.sd_models(ctx)

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> Any:
        ctx.refresh_models()
        return None

    @router.get("/sd-vae", response_model=list[SDVaeItem])
    def sd_vae() -> Any:
        return listings.sd_vaes(ctx)

    @router.get("/samplers", response_model=list[SamplerItem])
    def samplers() -> Any:
        return listings.samplers()

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def schedulers() -> Any:
        return listings.schedulers()

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers() -> Any:
        return listings.upscalers(ctx)

    @router.get("/loras", response_model=list[LoraItem])
    def loras() -> Any:
        return listings.loras(ctx)

    @router.post("/refresh-loras")
    def refresh_loras() -> Any:
        """The LoRA list is read from the folder on every call; nothing is cached to refresh."""
        return None

    @router.get("/embeddings", response_model=EmbeddingsResponse)
    def embeddings() -> Any:
        return listings.embeddings(ctx)

    @router.get("/prompt-styles", response_model=list[PromptStyleItem])
    def prompt_styles() -> Any:
        return listings.prompt_styles(styles)

    @router.post("/png-info", response_model=PngInfoResponse)
    def png_info(body: PngInfoRequest) -> Any:
        image = decode_image(body.image, "image")
        text = read_infotext(image) or ""
        items = {k: v for k, v in image.info.items()
                 if isinstance(k, str) and k.lower() not in _FORMAT_KEYS and isinstance(v, (str, int, float, bool))}
        return {"info": text, "items": items, "parameters": parse_infotext(text) if text else {}}

    @router.get("/memory", response_model=MemoryResponse)
    def memory() -> Any:
        return listings.memory(ctx)

    @router.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        """The server's command-line flags; credentials show as <redacted>."""
        return listings.cmd_flags(flags or {})

    return router


def _task(body: InterruptRequest | None) -> str | None:
    return (body.id_task or body.task_id) if body is not None else None
