"""The extension API, version 1: the only module an extension imports from Atelier.

An extension's ``setup(api)`` receives an ``ExtensionAPI`` and registers what it needs::

    def setup(api):
        @api.before_generate
        def add_signature(request):
            return request.replace(prompt=request.prompt + ", signed")

Hooks: ``before_generate(request) -> request``; ``on_step(state)`` (read-only); ``after_image(image, info)``;
``before_save(image, info) -> info``. Registrations: ``add_script``, ``add_section``, ``add_tab``,
``add_route``, ``add_setting``. Everything an extension registers is switched off if it raises or hangs.

``on_step`` runs on the job's own thread after every denoising step and must return quickly (10 s at
most per call). One that overruns is switched off and its job interrupted, but a thread cannot be
killed safely, so a hook that never returns leaves its job's thread stuck until Atelier restarts.

Compatibility promise: within API major version 1, names here are only added, never changed or removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..pipelines.request import GenerationRequest, InpaintArea, MaskedContent, RequestError, ResizeMode, Task

if TYPE_CHECKING:
    from .hooks import Registry

__all__ = ["API_VERSION", "ExtensionAPI", "ExtensionError", "GenerationRequest", "ImageInfo", "InpaintArea",
           "MaskedContent", "RequestError", "ResizeMode", "Script", "Setting", "StepState", "Task"]

API_VERSION = "1.0"
CORE_TABS = frozenset({"txt2img", "img2img", "inpaint", "png info", "settings", "extensions"})


class ExtensionError(RuntimeError):
    """A registration that is not allowed (a core name taken, a bad path), or an extension that failed."""


@dataclass(frozen=True)
class StepState:
    """What ``on_step`` hooks see after each denoising step (copies: changing them changes nothing)."""

    job_id: str
    step: int  # 1-based, within the current batch
    steps: int
    batch: int
    latents: Any = None  # a torch tensor copy (batch, 4, h/8, w/8), or None


@dataclass
class ImageInfo:
    """One finished image's parameters. ``before_save`` may change ``infotext`` (what the PNG stores)."""

    infotext: str
    seed: int
    index: int  # position in the job's images
    request: GenerationRequest


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    label: str
    choices: tuple[Any, ...] | None = None


class Script:
    """A job taker, listed in the Script dropdown of txt2img / img2img (like A1111's scripts).

    ``ui(mode)`` builds its controls (Gradio components, inside the tab's layout) and returns them in a list;
    ``run(job, request, *values)`` gets the tab's request and those controls' values and returns what the page
    shows: ``job.finish(images, infotexts, paths)``. ``job.generate(request)`` runs one generation (hooks,
    interrupt and progress included); ``job.save(image, infotext, grid=True)`` saves a picture like outputs.
    """

    title: str = "Script"
    modes: tuple[str, ...] = ("txt2img", "img2img")

    def ui(self, mode: str) -> list[Any]:
        return []

    def run(self, job: Any, request: GenerationRequest, *values: Any) -> Any:
        raise NotImplementedError


@dataclass
class Section:
    owner: str
    title: str
    build: Callable[[str], dict[str, Any]]  # mode -> {name: component}; values land in request.extra[owner]


@dataclass
class Tab:
    owner: str
    title: str
    build: Callable[[], None]


@dataclass
class Route:
    owner: str
    path: str  # served at /extensions/<owner><path>
    endpoint: Callable[..., Any]
    methods: tuple[str, ...] = ("GET",)


@dataclass
class ExtensionAPI:
    """Handed to one extension's ``setup``; every registration is recorded under that extension's id."""

    id: str
    folder: Path | None
    registry: Registry
    version: str = API_VERSION
    log: logging.Logger = field(init=False)

    def __post_init__(self) -> None:
        self.log = logging.getLogger(f"atelier.extensions.{self.id}")

    # -- hooks (each usable as a decorator)
    def before_generate(self, fn: Callable[[GenerationRequest], GenerationRequest]) -> Callable:
        self.registry.add_hook("before_generate", self.id, fn)
        return fn

    def on_step(self, fn: Callable[[StepState], None]) -> Callable:
        """``fn(state)`` after every denoising step, on the job's thread: keep it quick. One that passes its
        deadline is switched off and the job interrupted; one that never returns keeps the job's thread stuck
        (a thread cannot be killed safely), so the job never finishes."""
        self.registry.add_hook("on_step", self.id, fn)
        return fn

    def after_image(self, fn: Callable[[Any, ImageInfo], None]) -> Callable:
        self.registry.add_hook("after_image", self.id, fn)
        return fn

    def before_save(self, fn: Callable[[Any, ImageInfo], ImageInfo]) -> Callable:
        self.registry.add_hook("before_save", self.id, fn)
        return fn

    # -- registrations
    def add_script(self, script: Script) -> None:
        self.registry.add_script(self.id, script)

    def add_section(self, title: str, build: Callable[[str], dict[str, Any]]) -> None:
        """A collapsible section in txt2img / img2img; ``build(mode)`` returns its components by name."""
        self.registry.add_section(Section(self.id, title, build))

    def add_tab(self, title: str, build: Callable[[], None]) -> None:
        if title.strip().lower() in CORE_TABS:
            raise ExtensionError(f"tab {title!r} is a core tab and cannot be replaced")
        self.registry.add_tab(Tab(self.id, title, build))

    def add_route(self, path: str, endpoint: Callable[..., Any], methods: tuple[str, ...] = ("GET",)) -> None:
        """An HTTP route at /extensions/<id><path>, behind the same sign-in as everything else."""
        if not path.startswith("/") or ".." in path or "//" in path:
            raise ExtensionError(f"route path {path!r} must start with '/' and stay under the extension's prefix")
        self.registry.add_route(Route(self.id, path, endpoint, tuple(m.upper() for m in methods)))

    def add_setting(self, key: str, default: Any, label: str, choices: tuple[Any, ...] | None = None) -> None:
        self.registry.add_setting(self.id, Setting(key, default, label, choices))

    def setting(self, key: str) -> Any:
        """The setting's saved value, or its default."""
        return self.registry.setting_value(self.id, key)
