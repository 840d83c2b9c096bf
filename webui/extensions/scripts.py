"""What a script gets while it runs a job: generations through the normal engine (hooks, interrupt,
progress, saving), saving extra pictures such as grids, and the result the page shows."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AtelierError
from ..jobs import JobControl
from ..outputs import prompt_words, save_image
from ..pipelines.generate import GenerationResult
from ..pipelines.request import GenerationRequest
from .api import Script
from .hooks import ExtensionFailure

if TYPE_CHECKING:
    from ..context import AppContext


class ScriptJob:
    def __init__(self, ctx: AppContext, control: JobControl, request: GenerationRequest) -> None:
        self._ctx = ctx
        self.control = control
        self.request = request
        self.warnings: list[str] = []

    @property
    def interrupted(self) -> bool:
        return self.control.interrupted

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """One generation as the Generate button would run it (saved when ``request.save_images``)."""
        result = self._ctx.run_job(request, self.control)
        self.warnings.extend(w for w in result.warnings if w not in self.warnings)
        return result

    def save(self, image: Any, infotext: str, seed: int, grid: bool = False) -> Path:
        ctx = self._ctx
        folder = ctx.outputs.folder_for(self.request.task.value, grid=grid, user=self.request.user)
        fields = {"prompt_words": prompt_words(self.request.prompt), "model_name": "",
                  "date": datetime.date.today().isoformat()}
        return save_image(image, folder, seed, infotext, ctx.settings.save_format, ctx.outputs.pattern, fields,
                          owner=self.request.user)

    def finish(self, images: list[Any], infotexts: list[str], paths: list[Path] | None = None,
               seeds: list[int] | None = None) -> GenerationResult:
        result = GenerationResult(self.request, images=list(images), infotexts=list(infotexts),
                                  paths=list(paths or []), seeds=list(seeds or []), warnings=list(self.warnings),
                                  interrupted=self.interrupted)
        return result


def run_script(ctx: AppContext, owner: str, script: Script, control: JobControl, request: GenerationRequest,
               values: list[Any]) -> GenerationResult:
    """Run a script's job; a script that raises is switched off like a failing hook (the job reports it)."""
    job = ScriptJob(ctx, control, request)
    try:
        result = script.run(job, request, *values)
    except ExtensionFailure:
        raise
    except Exception as exc:
        # Errors a generation reports to the user (a bad size, say) are the user's, not the script's fault.
        if isinstance(exc, AtelierError):
            raise
        why = f"its script {script.title!r} raised {type(exc).__name__}: {exc}"
        ctx.hooks.switch_off(owner, why)
        raise ExtensionFailure(owner, f"Extension {owner} failed: {why}; it has been switched off") from exc
    if not isinstance(result, GenerationResult):
        raise ExtensionFailure(owner, f"Extension {owner}: script {script.title!r} returned no result")
    return result
