"""What extensions registered, and calling their hooks in isolation.

An extension whose hook raises or runs past its time limit is switched off for the rest of the
session (everything it registered stops being used); the job it broke ends with an
``ExtensionFailure`` naming it, and later jobs run without it. Events without hooks cost nothing.

Per-job hooks (before_generate, after_image, before_save) run on a worker thread, so a hung one is
abandoned at its deadline, and the memory each call leaves behind is counted: an extension whose hooks
keep more than ``LEAK_LIMIT_BYTES`` is switched off after the job (which still completes).

``on_step`` runs on the job's own thread: handing every step to another thread costs milliseconds
on a busy CPU (measured: +31% per step with 10 hooks), and its memory is not counted. A watchdog thread
raises ``HookTimeout`` inside a step hook that passes its deadline; it lands as soon as the hook runs
Python code again (a hook blocked inside one C call ends that call first).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from .api import ExtensionError, ImageInfo, Route, Script, Section, Setting, StepState, Tab
from .store import ExtensionStore

log = logging.getLogger(__name__)

HOOKS = ("before_generate", "on_step", "after_image", "before_save")
HOOK_SECONDS = 30.0  # before_generate / after_image / before_save
# Memory an extension's per-job hooks may keep across a session (RSS they add and never give back)
LEAK_LIMIT_BYTES = 1 << 30
STEP_HOOK_SECONDS = 10.0  # on_step, all extensions together


class ExtensionFailure(RuntimeError):
    """An extension's hook raised or hung; the message names the extension and says it was switched off."""

    def __init__(self, ext_id: str, message: str) -> None:
        super().__init__(message)
        self.ext_id = ext_id


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class HookTimeout(BaseException):
    """Raised inside a step hook past its deadline (a BaseException, so hooks' ``except Exception`` miss it)."""


class _Watchdog:
    """Raises HookTimeout in a thread whose armed call outlives its deadline. Arming costs a lock, no wake-up."""

    POLL_SECONDS = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: tuple[int, float, int] | None = None  # (token, deadline, thread id)
        self._token = 0
        self.fired: set[int] = set()
        threading.Thread(target=self._run, name="extension-watchdog", daemon=True).start()

    def arm(self, seconds: float) -> int:
        with self._lock:
            self._token += 1
            self._armed = (self._token, time.monotonic() + seconds, threading.get_ident())
            return self._token

    def disarm(self, token: int) -> bool:
        """True if the call timed out (any HookTimeout still on its way is withdrawn)."""
        with self._lock:
            self._armed = None
            fired = token in self.fired
            if fired:
                self.fired.discard(token)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), None)
            return fired

    def _run(self) -> None:
        while True:
            time.sleep(self.POLL_SECONDS)
            with self._lock:
                armed = self._armed
                if armed is None or time.monotonic() < armed[1]:
                    continue
                token, _, thread = armed
                self._armed = None
                self.fired.add(token)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(HookTimeout))


class Registry:
    def __init__(self, store: ExtensionStore | None = None, hook_seconds: float = HOOK_SECONDS,
                 step_hook_seconds: float = STEP_HOOK_SECONDS, leak_limit_bytes: int = LEAK_LIMIT_BYTES) -> None:
        self.store = store
        self.leak_limit_bytes = leak_limit_bytes
        self.kept_bytes: dict[str, int] = {}  # per extension: RSS its per-job hooks added, net
        self.hook_seconds = hook_seconds
        self.step_hook_seconds = step_hook_seconds
        self._lock = threading.Lock()
        self.hooks: dict[str, list[tuple[str, Callable]]] = {name: [] for name in HOOKS}
        self.scripts: list[tuple[str, Script]] = []
        self.sections: list[Section] = []
        self.tabs: list[Tab] = []
        self.routes: list[Route] = []
        self.settings: dict[str, list[Setting]] = {}
        self.failed: dict[str, str] = {}  # extension id -> why it was switched off
        self.on_failure: Callable[[str, str], None] | None = None
        self._worker = self._new_worker()
        self._watchdog: _Watchdog | None = None

    # ------------------------------------------------------------------ registration
    def add_hook(self, name: str, owner: str, fn: Callable) -> None:
        if not callable(fn):
            raise ExtensionError(f"{name} needs a function")
        self.hooks[name].append((owner, fn))

    def add_script(self, owner: str, script: Script) -> None:
        title = str(getattr(script, "title", "")).strip()
        if not title or title.lower() == "none":
            raise ExtensionError("a script needs a title other than 'None'")
        if any(s.title == title for _, s in self.scripts):
            raise ExtensionError(f"a script titled {title!r} already exists")
        self.scripts.append((owner, script))

    def add_section(self, section: Section) -> None:
        self.sections.append(section)

    def add_tab(self, tab: Tab) -> None:
        if any(t.title.lower() == tab.title.lower() for t in self.tabs):
            raise ExtensionError(f"a tab titled {tab.title!r} already exists")
        self.tabs.append(tab)

    def add_route(self, route: Route) -> None:
        self.routes.append(route)

    def add_setting(self, owner: str, setting: Setting) -> None:
        if any(s.key == setting.key for s in self.settings.get(owner, [])):
            raise ExtensionError(f"setting {setting.key!r} registered twice")
        self.settings.setdefault(owner, []).append(setting)

    def setting_value(self, owner: str, key: str) -> Any:
        setting = next((s for s in self.settings.get(owner, []) if s.key == key), None)
        default = setting.default if setting else None
        return self.store.value(owner, key, default) if self.store else default

    def forget(self, owner: str) -> None:
        """Drop what an extension registered (its setup failed half-way)."""
        with self._lock:
            for name in HOOKS:
                self.hooks[name] = [(o, f) for o, f in self.hooks[name] if o != owner]
            self.scripts = [(o, s) for o, s in self.scripts if o != owner]
            self.sections = [s for s in self.sections if s.owner != owner]
            self.tabs = [t for t in self.tabs if t.owner != owner]
            self.routes = [r for r in self.routes if r.owner != owner]
            self.settings.pop(owner, None)

    # ------------------------------------------------------------------ switching off
    def active(self, owner: str) -> bool:
        return owner not in self.failed

    def switch_off(self, owner: str, why: str) -> None:
        with self._lock:
            if owner in self.failed:
                return
            self.failed[owner] = why
        log.error("Extension %s switched off: %s", owner, why)
        if self.on_failure is not None:
            self.on_failure(owner, why)

    def active_scripts(self, mode: str) -> list[tuple[str, Script]]:
        return [(o, s) for o, s in self.scripts if self.active(o) and mode in getattr(s, "modes", ())]

    # ------------------------------------------------------------------ calling hooks
    @staticmethod
    def _new_worker() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="extension-hooks")

    def _isolated(self, hook: str, calls: list[tuple[str, Callable[[], Any]]], seconds: float) -> list[Any]:
        """Run each (owner, call) in order on the worker thread; one hand-off for the whole event."""
        current: list[str] = [""]

        def body() -> list[Any]:
            out = []
            for owner, call in calls:
                current[0] = owner
                before = _rss()
                out.append(call())
                # Jobs run one at a time, so what RSS gained during this call is the hook's.
                self.kept_bytes[owner] = self.kept_bytes.get(owner, 0) + _rss() - before
            return out

        future = self._worker.submit(body)
        try:
            result = future.result(timeout=seconds)
            for owner, _ in calls:
                kept = self.kept_bytes.get(owner, 0)
                if kept > self.leak_limit_bytes and self.active(owner):
                    # The job it ran in finished normally; later jobs run without the extension.
                    self.switch_off(owner, f"its {hook} hooks kept {kept / 2**20:.0f} MB of memory "
                                           f"(more than {self.leak_limit_bytes / 2**20:.0f} MB)")
            return result
        except FutureTimeout:
            owner = current[0]
            # The stuck thread cannot be stopped; it is left behind and a fresh worker serves the next calls.
            self._worker.shutdown(wait=False)
            self._worker = self._new_worker()
            why = f"its {hook} hook did not return within {seconds:g} s"
            self.switch_off(owner, why)
            raise ExtensionFailure(owner, f"Extension {owner} failed: {why}; it has been switched off") from None
        except ExtensionFailure:
            raise
        except Exception as exc:
            owner = current[0]
            why = f"its {hook} hook raised {type(exc).__name__}: {exc}"
            self.switch_off(owner, why)
            log.debug("Extension hook traceback", exc_info=exc)
            raise ExtensionFailure(owner, f"Extension {owner} failed: {why}; it has been switched off") from exc

    def _live(self, hook: str) -> list[tuple[str, Callable]]:
        return [(o, f) for o, f in self.hooks[hook] if self.active(o)]

    def has(self, hook: str) -> bool:
        return bool(self._live(hook))

    def before_generate(self, request: Any) -> Any:
        for owner, fn in self._live("before_generate"):
            changed = self._isolated("before_generate", [(owner, lambda fn=fn, r=request: fn(r))],
                                     self.hook_seconds)[0]
            if type(changed) is not type(request):
                why = "its before_generate hook did not return the request"
                self.switch_off(owner, why)
                raise ExtensionFailure(owner, f"Extension {owner} failed: {why}; it has been switched off")
            request = changed
        return request

    def on_step(self, state: StepState) -> None:
        live = self._live("on_step")
        if not live:
            return
        if self._watchdog is None:
            self._watchdog = _Watchdog()
        owner = ""
        token = self._watchdog.arm(self.step_hook_seconds)
        timed_out = False
        try:
            try:
                for owner, fn in live:  # noqa: B007 (the owner is named if its hook fails)
                    fn(state)
            except HookTimeout:
                timed_out = True
            except Exception as exc:
                self._watchdog.disarm(token)
                why = f"its on_step hook raised {type(exc).__name__}: {exc}"
                self.switch_off(owner, why)
                raise ExtensionFailure(owner, f"Extension {owner} failed: {why}; it has been switched off") from exc
            finally:
                timed_out = self._watchdog.disarm(token) or timed_out
        except HookTimeout:  # delivered in the instant between the hook's return and the disarm
            timed_out = True
        if timed_out:
            why = f"its on_step hook did not return within {self.step_hook_seconds:g} s"
            self.switch_off(owner, why)
            raise ExtensionFailure(owner, f"Extension {owner} failed: {why}; it has been switched off")

    def after_image(self, image: Any, info: ImageInfo) -> None:
        live = self._live("after_image")
        if live:
            self._isolated("after_image", [(owner, lambda fn=fn: fn(image, info)) for owner, fn in live],
                           self.hook_seconds)

    def before_save(self, image: Any, info: ImageInfo) -> ImageInfo:
        for owner, fn in self._live("before_save"):
            changed = self._isolated("before_save", [(owner, lambda fn=fn, i=info: fn(image, i))],
                                     self.hook_seconds)[0]
            if not isinstance(changed, ImageInfo):
                why = "its before_save hook did not return the ImageInfo"
                self.switch_off(owner, why)
                raise ExtensionFailure(owner, f"Extension {owner} failed: {why}; it has been switched off")
            info = changed
        return info

    def close(self) -> None:
        self._worker.shutdown(wait=False)
