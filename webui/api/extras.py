"""/sdapi/v1/extra-single-image and /extra-batch-images: A1111's request -> an Extras job, checked before it
waits in the queue, and its results -> A1111's response. The work itself is ``webui.upscalers.extras``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import AtelierError
from ..upscalers.extras import (
    MAX_BATCH_PIXELS,
    ExtrasOptions,
    ExtrasOutput,
    ExtrasPicture,
    check_batch,
    check_options,
    html_info,
    run_pictures,
)
from .convert import engine_error
from .errors import invalid, too_large
from .images import decode_image, encode_png
from .schemas import ExtrasBaseRequest, ExtrasBatchImagesRequest, ExtrasSingleImageRequest

if TYPE_CHECKING:
    from ..context import AppContext


@dataclass
class ExtrasJob:
    pictures: list[ExtrasPicture]
    options: ExtrasOptions
    save: bool
    notes: list[str] = field(default_factory=list)
    user: str | None = None  # the signed-in caller, recorded in the saved pictures (None: the host)


def single_job(body: ExtrasSingleImageRequest, ctx: AppContext) -> ExtrasJob:
    return _job(body, ctx, [ExtrasPicture(decode_image(body.image, "image"))], "image")


def batch_job(body: ExtrasBatchImagesRequest, ctx: AppContext) -> ExtrasJob:
    if not body.imageList:
        raise invalid("imageList", "send at least one picture: [{\"data\": base64, \"name\": \"a.png\"}]")
    pictures, pixels = [], 0
    for item in body.imageList:
        image = decode_image(item.data, "imageList")
        pixels += image.width * image.height
        if pixels > MAX_BATCH_PIXELS:  # stop decoding at once: a batch must not fill the memory
            raise too_large("imageList", f"the pictures hold more than {MAX_BATCH_PIXELS // 2**20} million pixels "
                                         "together; send them in smaller batches")
        pictures.append(ExtrasPicture(image, item.name or None))
    return _job(body, ctx, pictures, "imageList")


def _job(body: ExtrasBaseRequest, ctx: AppContext, pictures: list[ExtrasPicture], images_field: str) -> ExtrasJob:
    library = ctx.manager.upscalers
    given = ExtrasOptions(body.resize_mode, body.upscaling_resize, body.upscaling_resize_w, body.upscaling_resize_h,
                          body.upscaling_crop, body.upscaler_1 or "None", body.upscaler_2 or "None",
                          body.extras_upscaler_2_visibility)
    try:
        options = check_options(given, library.find, library.names)
        check_batch([p.image.size for p in pictures], options, images_field)
    except AtelierError as exc:
        raise engine_error(exc) from exc
    notes = []
    if body.gfpgan_visibility > 0 or body.codeformer_visibility > 0:
        notes.append("face restoration (GFPGAN, CodeFormer) is not available in Atelier: it was not applied")
    return ExtrasJob(pictures, options, body.save_images, notes)


def run(job: ExtrasJob, ctx: AppContext) -> list[ExtrasOutput]:
    """In the queue's turn. Raises AtelierError (UpscalerError, ExtrasSaveError)."""
    outputs = ctx.outputs if job.save else None
    return run_pictures(ctx.manager.upscalers, job.pictures, job.options, outputs, ctx.settings.save_format,
                        job.user)


def single_response(job: ExtrasJob, done: list[ExtrasOutput]) -> dict[str, Any]:
    return {"html_info": html_info(done[-1].info, job.notes), "image": encode_png(done[0].image, done[0].infotext)}


def batch_response(job: ExtrasJob, done: list[ExtrasOutput]) -> dict[str, Any]:
    return {"html_info": html_info(done[-1].info if done else {}, job.notes),
            "images": [encode_png(out.image, out.infotext) for out in done]}
