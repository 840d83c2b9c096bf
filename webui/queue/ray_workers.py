"""Workers on Ray: each a Ray actor owning its own pipeline manager, on one GPU (``num_gpus=1``) or on CPU.

``--ray auto`` (or a cluster address) connects to a running Ray cluster (``ray start --head`` on this machine,
``ray start --address HEAD:6379`` on the others, see docs/scaling.md). ``RayPool`` keeps as many actors as
asked (``--ray-workers``; by default one per GPU in the cluster), adds each to the job queue once it has
started, removes the ones that die, and starts replacements, which join when the cluster has room for them:
workers join and leave while the studio serves.

The head never ships code or files to workers: each one loads the models under the same relative paths in
its own models folder (a shared network folder, or synced copies) and reports what it has. Requests go to
the actor as Python objects (Ray pickles them: the cluster must be a trusted, private network, as Ray
itself requires); pictures come back as PNG bytes (``remote.pack``) and the head saves them.

While a job runs, the head polls its actor for progress and the latest preview (a threaded actor answers
while it computes) and passes the page's Interrupt and Skip on to it; a dead actor raises ``WorkerLost``,
and the job service queues the job again on another worker.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AtelierError
from .dispatch import Inventory
from .remote import Failure, PackedResult, failure_of, finish, pack, raise_failure
from .workers import HeadSink, Heartbeat, Worker, WorkerLost, scan_inventory

if TYPE_CHECKING:
    from ..config import Settings
    from ..jobs import JobControl
    from ..pipelines.generate import GenerationResult
    from ..pipelines.request import GenerationRequest
    from .service import JobQueue

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often the head asks a running job's actor for progress (and passes Interrupt on)
WATCH_SECONDS = 5.0  # how often the pool checks its actors and the cluster's size
MAX_BACKOFF_SECONDS = 120.0  # actors that fail to start are tried again, less and less often
ACTOR_CONCURRENCY = 8  # one generation plus progress, interrupt, skip and inventory calls beside it
# The settings a worker takes from the head; paths are relative to the same install on each machine.
WORKER_SETTINGS = ("models_dir", "ckpt_dir", "lora_dir", "embeddings_dir", "precision", "offload", "ram_cache_bytes",
                   "batch_mode", "default_checkpoint", "include_builtin", "upscaler_tile_size")
MODELS_DIR_ENV = "ATELIER_WORKER_MODELS_DIR"  # set before `ray start` on a machine whose models are elsewhere


def worker_settings(settings: Settings) -> dict[str, Any]:
    values = {name: getattr(settings, name) for name in WORKER_SETTINGS}
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


@dataclass
class _Running:
    control: Any
    preview_seq: int = 0
    preview: Any = None


class GenerationActor:
    """Runs inside a Ray worker process: its own registry, pipeline manager and device."""

    def __init__(self, values: dict[str, Any], threads: int = 0, device: str | None = None) -> None:
        import torch

        from ..config import Settings
        from ..context import builtin_checkpoints
        from ..models.hashing import HashCache
        from ..models.registry import CheckpointRegistry
        from ..pipelines.manager import import_model_libraries
        from .workers import build_manager

        if threads > 0:
            torch.set_num_threads(threads)
        import_model_libraries()
        paths = {"models_dir", "ckpt_dir", "lora_dir", "embeddings_dir"}
        given = {k: (Path(v) if k in paths and v is not None else v) for k, v in values.items()}
        if os.environ.get(MODELS_DIR_ENV):
            given.update(models_dir=Path(os.environ[MODELS_DIR_ENV]), ckpt_dir=None, lora_dir=None,
                         embeddings_dir=None)
        settings = Settings().replace(**given)
        builtin = builtin_checkpoints() if settings.include_builtin else []
        registry = CheckpointRegistry(settings.checkpoints_dir, HashCache(settings.models_dir / ".hashes.json"),
                                      builtin=builtin)
        self.manager = build_manager(settings, registry, device)
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}

    def ready(self) -> dict[str, Any]:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname(), "device": str(self.manager.device),
                "inventory": self.inventory()}

    def ping(self) -> int:
        return os.getpid()

    def inventory(self) -> Inventory:
        return scan_inventory(self.manager, str(self.manager.device))

    def load(self, name: str) -> str:
        return self.manager.load(name).display_name

    def generate(self, job_id: str, request: Any, preview_every: int) -> tuple[str, Any]:
        """("ok", PackedResult) or ("error", Failure) for an error the user caused."""
        from ..jobs import JobControl
        from ..pipelines.generate import generate
        from .workers import loaded_names

        running = _Running(None)
        control = JobControl(job_id=job_id, preview_every=preview_every)

        def on_progress(progress: Any) -> None:
            if progress.preview is not None and progress.preview is not running.preview:
                running.preview, running.preview_seq = progress.preview, running.preview_seq + 1

        control.listener = on_progress
        running.control = control
        with self._lock:
            self._running[job_id] = running
        try:
            result = generate(self.manager, request, None, control)
            return "ok", pack(result, loaded_names(self.manager))
        except AtelierError as exc:
            return "error", failure_of(exc)
        finally:
            with self._lock:
                self._running.pop(job_id, None)

    def progress(self, job_id: str, seen_preview: int) -> dict[str, Any] | None:
        with self._lock:
            running = self._running.get(job_id)
        if running is None:
            return None
        p = running.control.progress
        state = {"state": p.state, "step": p.step, "steps": p.steps, "batch": p.batch, "batches": p.batches,
                 "preview_seq": running.preview_seq, "preview": None}
        if running.preview_seq > seen_preview and running.preview is not None:
            buffer = io.BytesIO()
            running.preview.save(buffer, format="PNG")
            state["preview"] = buffer.getvalue()
        return state

    def interrupt(self, job_id: str) -> None:
        with self._lock:
            running = self._running.get(job_id)
        if running is not None:
            running.control.interrupt()

    def skip(self, job_id: str) -> None:
        with self._lock:
            running = self._running.get(job_id)
        if running is not None:
            running.control.skip()


def _lost_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as rex

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
             "ObjectLostError", "OwnerDiedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


class RayWorker(Worker):
    """The head's handle on one actor."""

    def __init__(self, name: str, actor: Any, info: dict[str, Any]) -> None:
        self.name = name
        self.actor = actor
        self.pid = int(info["pid"])
        self.host = str(info["host"])
        self._inventory: Inventory = info["inventory"]
        self._lost = _lost_errors()

    def describe(self) -> str:
        return f"{self._inventory.device} on {self.host} (pid {self.pid})"

    def inventory(self) -> Inventory:
        return self._inventory

    def _get(self, ref: Any, timeout: float | None = None) -> Any:
        import ray

        try:
            return ray.get(ref, timeout=timeout)
        except self._lost as exc:
            raise WorkerLost(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        except ray.exceptions.RayTaskError as exc:  # a bug on the worker: raised here as what it was
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, Exception) else RuntimeError(str(exc))) from exc

    def refresh(self) -> None:
        self._inventory = self._get(self.actor.inventory.remote(), timeout=60)

    def load(self, checkpoint: str) -> str:
        shown = str(self._get(self.actor.load.remote(checkpoint)))
        self.refresh()
        return shown

    def generate(self, request: GenerationRequest, control: JobControl, sink: HeadSink) -> GenerationResult:
        import ray

        if sink.hooks is not None:  # the head's extensions run on the head
            request = sink.hooks.before_generate(request)
        job_id = control.job_id
        ref = self.actor.generate.remote(job_id, request, control.preview_every)
        relay = _Relay(self, control, sink)
        while not ray.wait([ref], timeout=POLL_SECONDS)[0]:
            relay.poll()
        status, payload = self._get(ref)
        if status == "error":
            assert isinstance(payload, Failure)
            raise_failure(payload)
        assert isinstance(payload, PackedResult)
        self._inventory = replace(self._inventory, loaded=payload.loaded)
        control.update(step=control.progress.steps, preview=None)
        result = finish(payload, request, sink)
        control.update(state="interrupted" if result.interrupted else "done")
        return result


class _Relay:
    """Progress from a running actor to the head's control; Interrupt and Skip the other way."""

    def __init__(self, worker: RayWorker, control: JobControl, sink: HeadSink) -> None:
        self.worker, self.control, self.sink = worker, control, sink
        self.seen_preview = 0
        self.interrupt_sent = False
        self.last_step = (-1, -1)

    def poll(self) -> None:
        from PIL import Image

        from ..extensions.api import StepState

        control, actor, job_id = self.control, self.worker.actor, self.control.job_id
        if control.interrupted and not self.interrupt_sent:
            actor.interrupt.remote(job_id)
            self.interrupt_sent = True
        if control.skipped:
            actor.skip.remote(job_id)
            control.clear_skip()
        state = self.worker._get(actor.progress.remote(job_id, self.seen_preview))
        if state is None:
            return
        changes: dict[str, Any] = {k: state[k] for k in ("step", "steps", "batch", "batches")}
        if state["state"] != control.progress.state:
            changes["state"] = state["state"]
            if state["state"] == "running" and control.progress.started is None:
                changes["started"] = time.monotonic()
        if state["preview"] is not None:
            self.seen_preview = state["preview_seq"]
            with Image.open(io.BytesIO(state["preview"])) as preview:
                changes["preview"] = preview.convert("RGB")
        control.update(**changes)
        hooks = self.sink.hooks
        step = (state["batch"], state["step"])
        if hooks is not None and step != self.last_step and state["step"] > 0 and hooks.has("on_step"):
            hooks.on_step(StepState(job_id, state["step"], state["steps"], state["batch"], None), control)
        self.last_step = step


class RayPool:
    """Keeps the wanted number of actors, adds them to the queue when they are up, removes dead ones."""

    def __init__(self, settings: Settings, jobs: JobQueue, started_ray: bool) -> None:
        self.settings = settings
        self.jobs = jobs
        self._started_ray = started_ray
        self._names = itertools.count()
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[Any, Any]] = {}  # name -> (actor, its ready() reference)
        self._live: dict[str, RayWorker] = {}
        self._heartbeat: Heartbeat | None = None
        self._failures = 0  # actor starts that failed in a row
        self._retry_at = 0.0

    @classmethod
    def start(cls, settings: Settings, jobs: JobQueue) -> RayPool:
        """Connect to the cluster (``settings.ray``: "auto" or an address; an already connected process, such
        as a test that started its own local cluster, is used as it is) and start the actors."""
        try:
            import ray
        except ImportError as exc:
            raise AtelierError("--ray needs Ray: pip install -e .[cluster] (Linux, or WSL2 on Windows)") from exc
        started = False
        if not ray.is_initialized():
            try:
                ray.init(address=settings.ray, namespace="atelier", log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise AtelierError(f"No Ray cluster at {settings.ray!r} ({exc}). Start one first: `ray start --head` "
                                   "on this machine (and `ray start --address HEAD:6379` on the others); see "
                                   "docs/scaling.md.") from exc
            started = True
        pool = cls(settings, jobs, started)
        pool.watch()
        pool._heartbeat = Heartbeat(pool.watch, WATCH_SECONDS, "ray-pool")
        return pool

    def wanted(self) -> int:
        import ray

        if self.settings.ray_workers > 0:
            return self.settings.ray_workers
        return int(ray.cluster_resources().get("GPU", 0)) or 1

    def _new_actor(self) -> None:
        import ray

        use_gpu = self.settings.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0
        options: dict[str, Any] = {"num_cpus": 1, "max_concurrency": ACTOR_CONCURRENCY, "max_restarts": 0}
        if use_gpu:
            options["num_gpus"] = 1
        device = None if use_gpu else "cpu"
        actor_class: Any = ray.remote(GenerationActor)
        actor = actor_class.options(**options).remote(worker_settings(self.settings), self.settings.worker_threads,
                                                      device)
        name = f"ray-{next(self._names)}"
        self._pending[name] = (actor, actor.ready.remote())
        log.info("Starting Ray worker %s (%s)", name, "1 GPU" if use_gpu else "CPU")

    def watch(self) -> None:
        """One round: workers that came up join, dead ones leave, missing ones are started."""
        import ray

        failed: tuple[type[BaseException], ...] = (ray.exceptions.RayTaskError, *_lost_errors())
        lost = _lost_errors()
        with self._lock:
            for name, (actor, ready) in list(self._pending.items()):
                done, _ = ray.wait([ready], timeout=0)
                if not done:
                    continue
                del self._pending[name]
                try:
                    info = ray.get(ready)
                except failed as exc:
                    self._start_failed(name, exc)
                    continue
                self._failures = 0
                self.jobs.notice = ""
                worker = RayWorker(name, actor, info)
                self._live[name] = worker
                self.jobs.add_worker(worker)
            for name, worker in list(self._live.items()):
                if self.jobs.worker(name) is None:  # the queue saw it die during a job
                    del self._live[name]
                    continue
                try:
                    ray.get(worker.actor.ping.remote(), timeout=10)
                except lost as exc:
                    log.warning("Ray worker %s is gone: %s", name, exc)
                    del self._live[name]
                    self.jobs.remove_worker(name)
                except ray.exceptions.GetTimeoutError:
                    pass  # busy or slow, not known dead: the next round asks again
            if time.monotonic() >= self._retry_at:
                for _ in range(self.wanted() - len(self._live) - len(self._pending)):
                    self._new_actor()

    def _start_failed(self, name: str, exc: BaseException) -> None:
        """An actor did not start (Atelier missing or different on that machine, no memory): say so, wait longer
        before the next try."""
        self._failures += 1
        wait = min(MAX_BACKOFF_SECONDS, WATCH_SECONDS * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + wait
        first = next((line for line in str(exc).splitlines() if "Error" in line), str(exc).splitlines()[0])
        log.error("Ray worker %s failed to start (%s); trying again in %.0f s. Every machine needs the same Atelier "
                  "install: pip install -e .[cluster]", name, first.strip(), wait)
        self.jobs.notice = f"a Ray worker failed to start: {first.strip()[:160]}"

    def close(self) -> None:
        import ray

        if self._heartbeat is not None:
            self._heartbeat.close()
        with self._lock:
            actors = [w.actor for w in self._live.values()] + [a for a, _ in self._pending.values()]
            self._live.clear()
            self._pending.clear()
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception as exc:  # already gone
                log.debug("ray.kill: %s", exc)
        if self._started_ray:
            ray.shutdown()
