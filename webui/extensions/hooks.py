"""What extensions registered, and calling their hooks in isolation.

An extension whose hook raises or runs past its time limit is switched off for the rest of the
session (everything it registered stops being used); the job it broke ends with an
``ExtensionFailure`` naming it, and later jobs run without it. Events without hooks cost nothing.

Per-job hooks (before_generate, after_image, before_save) run on a worker thread, so a hung one is
abandoned at its deadline. Each of their calls runs under ``tracemalloc``: Python memory allocated during
the call, still alive after it, and allocated below the extension's own code (a traceback frame in its
package's files) is the extension's; other threads' allocations never pass through its code. An
extension is switched off after a job (which still completes) when what its hooks kept that way passes
``LEAK_LIMIT_BYTES`` and the process's RSS grew as much during its calls (so a cache it refills in place
is not counted twice). RSS growth alone is only a note shown in the Extensions tab: another thread (an
upload being decoded, the hash worker) may have allocated at the same moment, and memory outside
Python's allocator (torch tensors) is not traced.

``on_step`` runs on the job's own thread: handing every step to another thread costs milliseconds on a
busy CPU (measured: +31% per step with 10 hooks), and its memory is not counted. Each extension's call
is timed; one that returns after ``STEP_HOOK_SECONDS`` is switched off and its job ends with an
``ExtensionFailure``. For a call that does not return, a watchdog thread switches the extension off at the
deadline and interrupts the job through its ``JobControl``; the job ends with the ``ExtensionFailure``
once the hook returns. Python cannot stop a thread safely (an exception raised into it could land inside
torch or diffusers and leave them half-updated), so a step hook that never returns leaves its job's thread
stuck there, holding the model, until Atelier restarts: ``on_step`` hooks must return quickly.
"""

from __future__ import annotations

import functools
import glob
import inspect
import logging
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from ..errors import AtelierError, Cause
from .api import ExtensionError, ImageInfo, Route, Script, Section, Setting, StepState, Tab
from .store import ExtensionStore

log = logging.getLogger(__name__)

HOOKS = ("before_generate", "on_step", "after_image", "before_save")
HOOK_SECONDS = 30.0  # before_generate / after_image / before_save
# Memory an extension's per-job hooks may keep across a session (Python memory they allocate and never free)
LEAK_LIMIT_BYTES = 1 << 30
STEP_HOOK_SECONDS = 10.0  # on_step, each extension's call
TRACE_FRAMES = 32  # deep enough to reach the hook's frame from an allocation inside the libraries it calls
MB = 2**20


class ExtensionFailure(AtelierError, RuntimeError):
    """An extension's hook raised or hung; the message names the extension and says it was switched off."""

    cause = Cause.EXTENSION

    def __init__(self, ext_id: str, message: str) -> None:
        super().__init__(message)
        self.ext_id = ext_id


def _failure(owner: str, why: str) -> ExtensionFailure:
    return ExtensionFailure(owner, f"Extension {owner} failed: {why}; it has been switched off")


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


# ---------------------------------------------------------------------- memory attribution

def _code_roots(fn: Callable) -> set[str]:
    """Path prefixes of the package that defines ``fn`` (an extension's folder, or its installed package)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = inspect.unwrap(getattr(fn, "__func__", fn))
    module_name = getattr(fn, "__module__", None) or type(fn).__module__
    top_name = module_name.partition(".")[0]
    top = sys.modules.get(top_name)
    if top is None or top_name in sys.stdlib_module_names:  # a builtin such as print: nothing of its own
        return set()
    folders = list(getattr(top, "__path__", None) or [])
    if folders:
        return {os.path.join(folder, "") for folder in folders}  # with the separator: "ext" never matches "ext2"
    file = getattr(top, "__file__", None)
    return {file} if file else set()


class _Tracing:
    """tracemalloc on while at least one hook call is measured, and left alone if someone else started it. Each
    call holds a token; an abandoned (hung) call's token is handed back for it, so tracing never stays on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: set[object] = set()
        self._ours = False

    def start(self) -> object:
        token = object()
        with self._lock:
            if not self._users and not tracemalloc.is_tracing():
                tracemalloc.start(TRACE_FRAMES)
                self._ours = True
            self._users.add(token)
        return token

    def stop(self, token: object) -> None:
        with self._lock:
            if token not in self._users:
                return
            self._users.discard(token)
            if not self._users and self._ours:
                tracemalloc.stop()  # tracing slows every allocation in the process; only while hooks run
                self._ours = False


_TRACING = _Tracing()


def _traced_bytes(roots: set[str]) -> int:
    """Python memory alive now that was allocated (since tracing began) below code under ``roots``."""
    if not roots or not tracemalloc.is_tracing():
        return 0
    filters = [tracemalloc.Filter(True, glob.escape(root) + "*", all_frames=True) for root in roots]
    return sum(trace.size for trace in tracemalloc.take_snapshot().filter_traces(filters).traces)


# ---------------------------------------------------------------------- the on_step watchdog

@dataclass
class _StepCall:
    owner: str
    deadline: float
    control: Any  # the job's JobControl, or None
    fired: bool = False


class _Watchdog:
    """Notices a step hook call past its deadline and hands it to ``on_late`` (on the watchdog's thread). It
    never touches the job's thread: arming and disarming cost a lock, no wake-up."""

    POLL_SECONDS = 0.05

    def __init__(self, on_late: Callable[[_StepCall], None]) -> None:
        self._on_late = on_late
        self._lock = threading.Lock()
        self._calls: dict[int, _StepCall] = {}  # job thread -> its step hook call in progress
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="extension-watchdog", daemon=True).start()

    def arm(self, call: _StepCall) -> None:
        with self._lock:
            self._calls[threading.get_ident()] = call

    def disarm(self) -> bool:
        """True if the watchdog already found this thread's call late."""
        with self._lock:
            call = self._calls.pop(threading.get_ident(), None)
        return call is not None and call.fired

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            now = time.monotonic()
            with self._lock:
                late = [c for c in self._calls.values() if not c.fired and now >= c.deadline]
                for call in late:
                    call.fired = True
            for call in late:
                try:
                    self._on_late(call)
                except Exception:  # the watchdog must outlive any one report
                    log.exception("Reporting a hung step hook failed")


class Registry:
    def __init__(self, store: ExtensionStore | None = None, hook_seconds: float = HOOK_SECONDS,
                 step_hook_seconds: float = STEP_HOOK_SECONDS, leak_limit_bytes: int = LEAK_LIMIT_BYTES) -> None:
        self.store = store
        self.leak_limit_bytes = leak_limit_bytes
        # Per extension, across the session: Python memory its per-job hooks kept (attributed to its code),
        # and what the process's RSS gained during those calls (anyone's).
        self.kept_bytes: dict[str, int] = {}
        self.rss_growth: dict[str, int] = {}
        self.memory_notes: dict[str, str] = {}  # extension id -> a warning the Extensions tab shows
        self.hook_seconds = hook_seconds
        self.step_hook_seconds = step_hook_seconds
        self._lock = threading.Lock()
        self.hooks: dict[str, list[tuple[str, Callable]]] = {name: [] for name in HOOKS}
        self._roots: dict[str, set[str]] = {}  # extension id -> path prefixes of its code
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
        self._roots.setdefault(owner, set()).update(_code_roots(fn))

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
            self._roots.pop(owner, None)
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

    # ------------------------------------------------------------------ per-job hooks
    @staticmethod
    def _new_worker() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="extension-hooks")

    def _measured(self, owner: str, call: Callable[[], Any], held: list[object]) -> Any:
        """Run one hook call, counting what it keeps: Python memory below the extension's code, and RSS (anyone's).
        ``held`` gets the call's tracing token, for handing back if the call is abandoned."""
        roots = self._roots.get(owner, set())
        token = _TRACING.start()
        held[:] = [token]
        try:
            rss, traced = _rss(), _traced_bytes(roots)
            result = call()
            kept = _traced_bytes(roots) - traced
        finally:
            _TRACING.stop(token)
        self.kept_bytes[owner] = self.kept_bytes.get(owner, 0) + kept
        self.rss_growth[owner] = self.rss_growth.get(owner, 0) + _rss() - rss
        return result

    def _judge_memory(self, owner: str, hook: str) -> None:
        kept, grown, limit = self.kept_bytes.get(owner, 0), self.rss_growth.get(owner, 0), self.leak_limit_bytes
        if not self.active(owner) or grown <= limit:
            return
        if kept > limit:
            # The job it ran in finished normally; later jobs run without the extension.
            self.switch_off(owner, f"its {hook} hooks kept {kept / MB:.0f} MB of memory "
                                   f"(more than {limit / MB:.0f} MB)")
        elif owner not in self.memory_notes:
            note = (f"the process grew by {grown / MB:.0f} MB while its hooks ran, but its own code kept only "
                    f"{max(kept, 0) / MB:.0f} MB (other work was allocating at the same time); it stays on")
            self.memory_notes[owner] = note
            log.warning("Extension %s: %s", owner, note)

    def _isolated(self, hook: str, calls: list[tuple[str, Callable[[], Any]]], seconds: float) -> list[Any]:
        """Run each (owner, call) in order on the worker thread; one hand-off for the whole event."""
        current: list[str] = [""]
        tracing: list[object] = []

        def body() -> list[Any]:
            out = []
            for owner, call in calls:
                current[0] = owner
                out.append(self._measured(owner, call, tracing))
            return out

        future = self._worker.submit(body)
        try:
            result = future.result(timeout=seconds)
            for owner in dict.fromkeys(owner for owner, _ in calls):
                self._judge_memory(owner, hook)
            return result
        except FutureTimeout:
            owner = current[0]
            # The stuck thread cannot be stopped; it is left behind and a fresh worker serves the next calls.
            self._worker.shutdown(wait=False)
            self._worker = self._new_worker()
            for token in tracing:
                _TRACING.stop(token)
            why = f"its {hook} hook did not return within {seconds:g} s"
            self.switch_off(owner, why)
            raise _failure(owner, why) from None
        except ExtensionFailure:
            raise
        except Exception as exc:
            owner = current[0]
            why = f"its {hook} hook raised {type(exc).__name__}: {exc}"
            self.switch_off(owner, why)
            log.debug("Extension hook traceback", exc_info=exc)
            raise _failure(owner, why) from exc

    def _live(self, hook: str) -> list[tuple[str, Callable]]:
        return [(o, f) for o, f in self.hooks[hook] if self.active(o)]

    def has(self, hook: str) -> bool:
        return bool(self._live(hook))

    def before_generate(self, request: Any) -> Any:
        for owner, fn in self._live("before_generate"):
            changed = self._isolated("before_generate", [(owner, functools.partial(fn, request))],
                                     self.hook_seconds)[0]
            if type(changed) is not type(request):
                why = "its before_generate hook did not return the request"
                self.switch_off(owner, why)
                raise _failure(owner, why)
            request = changed
        return request

    def after_image(self, image: Any, info: ImageInfo) -> None:
        live = self._live("after_image")
        if live:
            self._isolated("after_image", [(owner, functools.partial(fn, image, info)) for owner, fn in live],
                           self.hook_seconds)

    def before_save(self, image: Any, info: ImageInfo) -> ImageInfo:
        for owner, fn in self._live("before_save"):
            changed = self._isolated("before_save", [(owner, functools.partial(fn, image, info))],
                                     self.hook_seconds)[0]
            if not isinstance(changed, ImageInfo):
                why = "its before_save hook did not return the ImageInfo"
                self.switch_off(owner, why)
                raise _failure(owner, why)
            info = changed
        return info

    # ------------------------------------------------------------------ on_step
    def _late_why(self) -> str:
        return f"its on_step hook did not return within {self.step_hook_seconds:g} s"

    def _step_hook_hung(self, call: _StepCall) -> None:
        """On the watchdog's thread: the hook is still running past its deadline."""
        self.switch_off(call.owner, self._late_why())
        if call.control is not None:
            call.control.interrupt()
        log.error("Extension %s: its on_step hook is still running after %g s; it is switched off and job %s is "
                  "interrupted. A thread cannot be stopped safely, so the job's thread stays inside the hook "
                  "until it returns (restart Atelier if it never does).", call.owner, self.step_hook_seconds,
                  getattr(call.control, "job_id", "?"))

    def on_step(self, state: StepState, control: Any = None) -> None:
        """Call each extension's on_step on this (the job's) thread. ``control``: the job's JobControl, which the
        watchdog interrupts when a hook does not return by its deadline."""
        live = self._live("on_step")
        if not live:
            return
        with self._lock:
            if self._watchdog is None:
                self._watchdog = _Watchdog(self._step_hook_hung)
        watchdog, seconds = self._watchdog, self.step_hook_seconds
        for owner, fn in live:
            start = time.monotonic()
            watchdog.arm(_StepCall(owner, start + seconds, control))
            error: Exception | None = None
            try:
                fn(state)
            except Exception as exc:
                error = exc
            finally:
                late = watchdog.disarm() or time.monotonic() - start > seconds
            if late:
                self.switch_off(owner, self._late_why())
                raise _failure(owner, self.failed.get(owner, self._late_why())) from error
            if error is not None:
                why = f"its on_step hook raised {type(error).__name__}: {error}"
                self.switch_off(owner, why)
                raise _failure(owner, why) from error

    def close(self) -> None:
        self._worker.shutdown(wait=False)
        if self._watchdog is not None:
            self._watchdog.close()
