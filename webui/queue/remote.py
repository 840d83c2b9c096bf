"""A generation computed on another process or machine, and finished on the head.

The worker runs the engine without hooks and without saving, and sends back each picture as PNG bytes with
its infotext inside (``pack``). The head then does what ``generate``'s last step does in-process: the
extensions' ``after_image`` / ``before_save`` hooks, and saving into its own outputs folder (``finish``).
A PNG whose infotext no hook changed is written exactly as it came, without encoding it again. Because only
the head saves, and only once a worker's run has completed, a worker lost mid-job leaves no file behind.

Errors a user caused travel as plain values (``Failure``) and are raised again on the head with the same
message, field and cause, so the page and the REST API report them as they do for in-process jobs.
"""

from __future__ import annotations

import datetime
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..errors import AtelierError, Cause
from ..extensions.api import ImageInfo
from ..outputs import encode_image, prompt_words, save_encoded, save_image

if TYPE_CHECKING:
    from ..pipelines.generate import GenerationResult
    from ..pipelines.request import GenerationRequest
    from .workers import HeadSink

RESOLVED = ("seed", "subseed", "sampler", "schedule_type", "width", "height")  # what the worker decided


@dataclass
class PackedResult:
    pngs: list[bytes]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    resolved: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    model_name: str = ""
    model_hash: str | None = None
    seconds: float = 0.0
    loaded: tuple[str, ...] = ()  # the worker's loaded checkpoints after the job (for model affinity)

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.pngs)


@dataclass(frozen=True)
class Failure:
    """An AtelierError raised on a worker, as plain values."""

    kind: str  # the error's class name
    text: str  # str(error)
    message: str
    field: str | None
    cause: str


class RemoteJobError(AtelierError):
    """An error a worker's job raised, with the original's message, field and cause."""

    def __init__(self, message: str, field: str | None, cause: Cause) -> None:
        super().__init__(message, field)
        self.cause = cause


def pack(result: GenerationResult, loaded: tuple[str, ...] = ()) -> PackedResult:
    """On the worker: the result as PNG bytes (infotext inside) and the values the head needs."""
    request = result.request
    return PackedResult(
        [encode_image(image, text, "png", owner=request.user)
         for image, text in zip(result.images, result.infotexts, strict=True)],
        list(result.infotexts), list(result.seeds), list(result.subseeds),
        {name: getattr(request, name) for name in RESOLVED}, list(result.warnings), result.interrupted,
        result.model_name, result.model_hash, result.seconds, loaded)


def failure_of(exc: AtelierError) -> Failure:
    return Failure(type(exc).__name__, str(exc), exc.message, exc.field, exc.cause.value)


def raise_failure(failure: Failure) -> None:
    from ..pipelines.request import RequestError

    if failure.kind == "RequestError" and failure.field:
        raise RequestError(failure.field, failure.message)
    raise RemoteJobError(failure.text, failure.field, Cause(failure.cause))


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy() if image.mode == "RGB" else image.convert("RGB")


def finish(packed: PackedResult, request: GenerationRequest, sink: HeadSink) -> GenerationResult:
    """On the head: the pictures, through the hooks, saved in the head's outputs folder."""
    from ..pipelines.generate import GenerationResult, SaveError

    req = request.replace(**packed.resolved)
    result = GenerationResult(req, [_decode(png) for png in packed.pngs], list(packed.seeds), list(packed.subseeds),
                              [], [], list(packed.warnings), packed.interrupted, packed.model_name, packed.model_hash,
                              packed.seconds)
    hooks, outputs = sink.hooks, sink.outputs if req.save_images else None
    for index, (image, seed, data) in enumerate(zip(result.images, result.seeds, packed.pngs, strict=True)):
        sent = packed.infotexts[index]
        text = sent
        if hooks is not None:
            info = ImageInfo(text, seed, index, req)
            hooks.after_image(image, info)
            if outputs is not None:
                text = hooks.before_save(image, info).infotext
        result.infotexts.append(text)
        if outputs is None:
            continue
        folder = outputs.folder_for(req.task.value, user=req.user)
        fields = {"prompt_words": prompt_words(req.prompt), "model_name": result.model_name,
                  "date": datetime.date.today().isoformat()}
        try:
            if sink.save_format == "png" and text == sent:
                path = save_encoded(data, folder, seed, "png", outputs.pattern, fields)
            else:
                path = save_image(image, folder, seed, text, sink.save_format, outputs.pattern, fields,
                                  owner=req.user)
        except OSError as exc:
            raise SaveError(f"Could not save the picture in {folder}: {exc.strerror or exc}. Nothing was "
                            "written there; free some space or choose another output folder.") from exc
        result.paths.append(path)
    return result
