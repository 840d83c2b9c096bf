"""The Gradio app: a top bar (checkpoint, clip skip), the txt2img / img2img / Inpaint / PNG Info / Extras /
Settings tabs, the buttons that carry pictures and parameters between them, and the launch with one auth check."""

from __future__ import annotations

import html
import logging
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from starlette.middleware import Middleware

from ..config import PROJECT_ROOT
from ..errors import AtelierError
from ..history.access import may_read
from ..history.library import private_folders
from ..models.vae import AUTOMATIC, NONE, list_vaes
from ..styles import StyleStore
from . import (
    extensions_tab,
    extras_tab,
    forms,
    generation_tab,
    history_tab,
    page_script,
    phone_layout,
    png_info,
    queue_tab,
    settings_tab,
)
from .browser_id import BrowserIdMiddleware
from .common import (
    checkpoint_choices,
    checkpoint_description,
    default_checkpoint_title,
    native_size_of,
    no_checkpoint_message,
)
from .extension_routes import mount_extension_routes, request_user
from .generation_tab import ModeTab, TopBar, fill_targets, fill_updates
from .runner import follow, owner_of, reconnect, show_updates
from .security import FailureLimiter, GuardMiddleware

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

TITLE = "Atelier"
MAX_UPLOAD = "50mb"  # an init image or PNG; nothing a user sends needs more
CSS = """
.atelier-progress { position: relative; height: 22px; border-radius: 6px; background: var(--neutral-200);
  overflow: hidden; }
.atelier-progress-fill { position: absolute; inset: 0 auto 0 0; background: var(--color-accent); opacity: .6; }
.atelier-progress span { position: relative; padding-left: 8px; font-size: 13px; }
.atelier-warning, .atelier-error { color: var(--error-text-color, #b91c1c); }
.atelier-queue td, .atelier-workers td, .atelier-queue th, .atelier-workers th { padding: 2px 10px; text-align: left; }
.atelier-cards .caption-label { font-size: 12px; }
"""


class LazyTokenizer:
    """The CLIP tokenizer for the token counter, loaded on first use (not while the page is built)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokenizer: Any = None

    def get(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                from ..models.configs import load_clip_tokenizer

                self._tokenizer = load_clip_tokenizer()
            return self._tokenizer


def vae_choices(ctx: AppContext) -> list[str]:
    return [AUTOMATIC, NONE] + [f.name for f in list_vaes(ctx.settings.models_dir / "VAE")]


def _image_value(mode: str, path_or_image: Any) -> Any:
    if mode == "inpaint":
        return {"background": path_or_image, "layers": [], "composite": path_or_image}
    return path_or_image


def build(ctx: AppContext) -> gr.Blocks:
    styles = StyleStore(ctx.settings.settings_file.parent / "styles.csv")
    tokenizer = LazyTokenizer()
    current = default_checkpoint_title(ctx)
    size = ctx.settings.default_size or native_size_of(ctx, current)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        empty_notice = gr.Markdown(no_checkpoint_message(ctx), visible=not ctx.registry.entries(),
                                   elem_id="no-checkpoint")
        with gr.Row(equal_height=True):
            checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", choices=checkpoint_choices(ctx),
                                     value=current, elem_id="checkpoint", scale=4,
                                     info=checkpoint_description(ctx, current) or None)
            refresh = gr.Button("🔄 Refresh", elem_id="refresh-checkpoints", scale=0, min_width=48)
            vaes = vae_choices(ctx)
            vae = gr.Dropdown(label="SD VAE", choices=vaes, elem_id="sd-vae", scale=2,
                              value=ctx.settings.default_vae if ctx.settings.default_vae in vaes else AUTOMATIC)
            clip_skip = gr.Slider(1, 12, value=ctx.settings.default_clip_skip, step=1, label="Clip skip",
                                  elem_id="clip-skip", scale=2)
            status = gr.Markdown("", elem_id="checkpoint-status")
        top = TopBar(checkpoint, refresh, clip_skip, vae, status)
        tabs_by_mode: dict[str, ModeTab] = {}
        # Tabs that do not fit (a phone) wrap onto a second row, so History and the rest are one tap away.
        with gr.Tabs(elem_id="tabs", overflow_behavior="wrap") as tabs:
            for mode in ("txt2img", "img2img", "inpaint"):
                with gr.Tab(generation_tab.TITLES[mode], id=mode, elem_id=f"tab-{mode}"):
                    tabs_by_mode[mode] = generation_tab.build_mode_tab(ctx, mode, top, size, styles, tokenizer)
            with gr.Tab("History", id="history", elem_id="tab-history") as history_item:
                history = history_tab.build(ctx, history_item)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab-pnginfo"):
                info_tab = png_info.build()
            with gr.Tab("Extras", id="extras", elem_id="tab-extras"):
                extras = extras_tab.build(ctx)
            with gr.Tab("Queue", id="queue", elem_id="tab-queue"):
                queue = queue_tab.build(ctx)
            with gr.Tab("Settings", id="settings", elem_id="tab-settings"):
                settings_tab.build(ctx, allow_folder_changes=extensions_tab.admin_refusal(ctx) is None)
                extensions_tab.build_extension_settings(ctx)
            with gr.Tab("Extensions", id="extensions", elem_id="tab-extensions"):
                extensions_tab.build(ctx)
            extensions_tab.build_extension_tabs(ctx)
        _wire_top_bar(ctx, top, empty_notice, tabs_by_mode)
        _wire_transfers(ctx, top, tabs, tabs_by_mode, info_tab, history)
        history.connect_extras(tabs, extras.image)
        for tab in tabs_by_mode.values():
            _wire_reconnect(demo, ctx, tab)
        queue_tab.wire_load(demo, ctx, queue)
    return demo


def _wire_reconnect(demo: gr.Blocks, ctx: AppContext, tab: ModeTab) -> None:
    """A page that loads shows its owner's running job from this tab (its place in line, progress, preview and
    then its pictures), or the pictures of one that ended while no page was there."""

    def on_load(request: gr.Request):
        job = reconnect(ctx, owner_of(request), tab.mode)
        if job is None:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        yield from show_updates(follow(ctx, job), log)

    demo.load(on_load, None, [tab.gallery, tab.info, tab.preview, tab.progress, tab.results],
              api_visibility="private", concurrency_limit=None, show_progress="hidden")


def _wire_top_bar(ctx: AppContext, top: TopBar, empty_notice: gr.Markdown, tabs: dict[str, ModeTab]) -> None:
    sizes = [c for tab in tabs.values() for c in (tab.fields["width"], tab.fields["height"])]

    def on_refresh(current: str | None, current_vae: str | None):
        ctx.refresh_models()
        choices = checkpoint_choices(ctx)
        value = current if current in choices else default_checkpoint_title(ctx)
        vaes = vae_choices(ctx)
        return (gr.update(choices=choices, value=value), gr.update(visible=not choices),
                gr.update(choices=vaes, value=current_vae if current_vae in vaes else AUTOMATIC))

    top.refresh.click(on_refresh, [top.checkpoint, top.vae], [top.checkpoint, empty_notice, top.vae],
                      api_name="refresh_checkpoints", queue=False)

    def on_switch(request: gr.Request, title: str | None):
        # Loads in the job queue's turn (the user's), so a job that is running keeps its model. Every job
        # names its own checkpoint, so this only warms a worker for the next one.
        if not title:
            return ""
        try:
            shown = ctx.load_checkpoint(title, owner_of(request))
        except AtelierError as exc:
            raise gr.Error(str(exc)) from exc
        return f"Loaded **{shown}** ({html.escape(checkpoint_description(ctx, title))})"

    top.checkpoint.input(lambda title: "⏳ Loading…", [top.checkpoint], [top.status], queue=False,
                         api_visibility="private") \
        .then(on_switch, [top.checkpoint], [top.status], concurrency_limit=None, api_name="switch_checkpoint")

    def on_sizes(title: str | None):
        side = ctx.settings.default_size or native_size_of(ctx, title)
        return [gr.update(value=side)] * len(sizes)

    top.checkpoint.change(on_sizes, [top.checkpoint], sizes, queue=False, api_visibility="private")


def _wire_transfers(ctx: AppContext, top: TopBar, tabs: gr.Tabs, by_mode: dict[str, ModeTab], info_tab: Any,
                    history: Any = None) -> None:
    """Send to img2img / inpaint / txt2img from every gallery, PNG Info and History; read pasted infotext."""

    def find_checkpoint(name: str) -> Any:
        entry = ctx.registry.find(name)
        return entry.title if entry is not None else None

    def find_vae(name: str) -> Any:
        return name if name in vae_choices(ctx) else None

    def second_checkpoint(none: str) -> Any:
        """A refiner or hires checkpoint named by an infotext: its title here, else ``none`` (not available)."""
        return lambda name: none if name == none else (find_checkpoint(name) or none)

    def find_controlnet(name: str) -> Any:
        """An installed ControlNet's title for an infotext's "name [hash]" (its hash or name), else None."""
        try:
            entry = ctx.manager.controlnets.find(name)
        except OSError:
            return None
        return entry.title if entry is not None else None

    setting_names = {"emphasis": "emphasis", "rng": "randn_source", "eta_noise_seed_delta": "eta_noise_seed_delta"}
    resolvers = {"checkpoint": find_checkpoint, "vae": find_vae,
                 "refiner_checkpoint": second_checkpoint(forms.NO_REFINER),
                 "hr_checkpoint": second_checkpoint(forms.SAME_CHECKPOINT),
                 "controlnet_model": find_controlnet,
                 "settings": lambda name: getattr(ctx.settings, setting_names[name], None)}

    def transfer(target_mode: str, with_image: bool):
        target = by_mode[target_mode]
        image_component = target.fields["init_image" if target_mode == "img2img" else "mask_editor"] \
            if with_image else None

        def outputs() -> list[Any]:
            return [tabs] + ([image_component] if image_component is not None else []) + fill_targets(target, top)

        def from_values(image: Any, text: str, *held: Any) -> list[Any]:
            if with_image and image is None:
                raise gr.Error("Generate or drop a picture first.")
            values = forms.values_from_infotext(text) if text else {}
            head = [gr.Tabs(selected=target_mode)]
            if image_component is not None:
                head.append(_image_value(target_mode, image))
            return head + fill_updates(target, top, values, resolvers, held)

        return outputs, from_values, target.controlnet.held

    for source in by_mode.values():
        for target_mode, button in source.send.items():
            outputs, from_values, held = transfer(target_mode, with_image=target_mode != "txt2img")

            def from_gallery(results: dict, *pictures: Any, _from_values=from_values):
                paths, texts = results.get("paths") or [], results.get("infotexts") or []
                index = min(int(results.get("selected", 0)), len(paths) - 1) if paths else -1
                if index < 0:
                    raise gr.Error("Generate a picture first.")
                return _from_values(paths[index], texts[index] if index < len(texts) else "", *pictures)

            button.click(from_gallery, [source.results, *held], outputs(), queue=False, api_visibility="private")

    for panel in (info_tab, history) if history is not None else (info_tab,):
        for target_mode, button in panel.send.items():
            outputs, from_values, held = transfer(target_mode, with_image=target_mode != "txt2img")
            button.click(from_values, [panel.image, panel.text, *held], outputs(), queue=False,
                         api_visibility="private")

    for tab in by_mode.values():
        outputs, _, held = transfer(tab.mode, with_image=False)

        def read_params(prompt: str, results: dict, *pictures: Any, _tab: ModeTab = tab):
            # A1111's ↙️: the prompt box holds pasted parameters; an empty box reads the last generation's.
            text = prompt or ""
            if not text.strip():
                texts = results.get("infotexts") or []
                text = texts[min(int(results.get("selected", 0)), len(texts) - 1)] if texts else ""
            if not text.strip():
                raise gr.Error("Paste generation parameters into the prompt box first.")
            return fill_updates(_tab, top, forms.values_from_infotext(text), resolvers, pictures)

        tab.read_params.click(read_params, [tab.fields["prompt"], tab.results, *held], outputs()[1:], queue=False,
                              api_visibility="private")


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def lan_address() -> str:
    """This machine's address on the LAN, for the link to hand to friends (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


def _sign_in_check(demo: gr.Blocks, credentials: Any) -> Any:
    """For the guard middleware: whether a raw request is signed in (None when the studio has no sign-in)."""
    if credentials is None:
        return None
    from starlette.requests import HTTPConnection

    return lambda scope: request_user(demo.app, credentials, HTTPConnection(scope)) is not None


def _hidden_file_check(demo: gr.Blocks, ctx: AppContext, credentials: Any) -> Any:
    """For the guard middleware: whether a signed-in request may not have a file of the outputs folder (a
    friend's own pictures and thumbnails only; everything for an admin). None when the studio has no sign-in."""
    if credentials is None:
        return None
    from starlette.requests import HTTPConnection

    def hidden(scope: Any, file: str) -> bool:
        user = request_user(demo.app, credentials, HTTPConnection(scope))
        return user is None or not may_read(ctx.settings.outputs_dir, file, user, ctx.settings.admin_users)

    return hidden


def launch(ctx: AppContext, demo: gr.Blocks | None = None, credentials: Any = None, share: bool = False,
           api: bool = False, api_credentials: Any = None, flags: dict[str, Any] | None = None,
           **overrides: Any) -> gr.Blocks:
    """Start serving; returns the running Blocks (tests pass prevent_thread_lock=True).

    ``api``: also serve A1111's REST API at /sdapi/v1 (documented at /docs), behind ``api_credentials``,
    or the UI's own ``credentials`` when none are given; its jobs wait in Atelier's job queue with the page's."""
    ctx.shared = share  # before the page is built: extension admin actions depend on it
    demo = demo or build(ctx)
    settings = ctx.settings
    options: dict[str, Any] = {
        "server_name": settings.host,
        "server_port": settings.port,
        "inbrowser": settings.autolaunch,
        # Only generated images may be served from disk: the outputs folder (and Gradio's own temp folder), a
        # friend's own only (the guard's hidden_file). What the page shows goes through Gradio's cache instead.
        "allowed_paths": [str(settings.outputs_dir)],
        # ...except the History index (everyone's prompts) and its trash.
        "blocked_paths": [str(p) for p in private_folders(settings.outputs_dir)],
        "show_error": True,
        "max_file_size": MAX_UPLOAD,
        "css": CSS + phone_layout.CSS,
        # Button names and tooltips, progress in the tab title, a notification when pictures arrive.
        "head": page_script.head_html(page_script.sound_file([PROJECT_ROOT, settings.settings_file.parent])),
        "share": share,
        # Every route, Gradio's included, sits behind the cross-site and sign-in-throttling guard.
        "app_kwargs": {"middleware": [Middleware(
            GuardMiddleware, is_signed_in=_sign_in_check(demo, credentials),
            hidden_file=_hidden_file_check(demo, ctx, credentials),
            limiter=FailureLimiter(settings.signin_failures_before_lockout)), Middleware(BrowserIdMiddleware)]},
    }
    if credentials is not None:
        options["auth"] = credentials.check
        options["auth_message"] = "Atelier: sign in with the user name and password you were given."
    if api:
        options["app_kwargs"].update(docs_url="/docs", redoc_url="/redoc")
    options.update(overrides)
    demo.queue(default_concurrency_limit=4)
    demo.launch(**options)
    mount_extension_routes(demo.app, ctx, credentials)
    if api:
        from ..api import mount_api

        mount_api(demo.app, ctx, api_credentials or credentials, flags)
    return demo


def serve(ctx: AppContext, credentials: Any = None, share: bool = False, password_file: Path | None = None,
          api: bool = False, api_credentials: Any = None, flags: dict[str, Any] | None = None) -> None:
    if not _is_loopback(ctx.settings.host):
        address = lan_address() if ctx.settings.host in ("0.0.0.0", "::") else ctx.settings.host
        print(f"Atelier is reachable on your network at http://{address}:{ctx.settings.port}/", flush=True)
        if credentials is not None and credentials.generated:
            user, password = credentials.pairs[0]
            print(f"Sign in as user {user!r} with password {password!r} (kept in {password_file}; "
                  "--auth sets your own, --no-auth turns sign-in off).", flush=True)
    demo = launch(ctx, credentials=credentials, share=share, api=api, api_credentials=api_credentials, flags=flags,
                  prevent_thread_lock=True)
    if api:
        print(f"REST API at {(demo.local_url or '').rstrip('/')}/sdapi/v1 (documentation at /docs)"
              + (", HTTP Basic sign-in required" if (api_credentials or credentials) is not None else ""), flush=True)
    if share and not getattr(demo, "share_url", None):
        print("No public link: it needs an internet connection to Gradio's share server, which this machine "
              f"cannot reach. Still serving at {demo.local_url}", flush=True)
    demo.block_thread()
