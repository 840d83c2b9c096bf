"""AppContext: the one object that owns the settings, model registry, pipeline manager, outputs and the job
queue with its workers.

Everything that would otherwise be a module-level global lives here and is passed explicitly. Every job,
from every front end, goes through ``submit`` / ``run_job`` into the one queue (``webui.queue``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings
from .extensions.hooks import Registry
from .extensions.loader import ExtensionManager
from .extensions.store import ExtensionStore
from .fileio import remove_stale_temp_files
from .jobs import JobControl
from .models.hashing import HashCache
from .models.registry import CheckpointEntry, CheckpointRegistry
from .outputs import OutputLayout
from .pipelines.build import build_request
from .pipelines.request import GenerationRequest
from .queue.dispatch import Needs
from .queue.requests import checkpoint_ref, cost_of, label_of, needs_for
from .queue.service import LOCAL, Job, JobQueue, JobSpec, Owner
from .queue.workers import HeadSink, HeadWorker, LocalWorker, Worker, build_manager

if TYPE_CHECKING:  # importing the context never imports torch
    from .pipelines.generate import GenerationResult
    from .pipelines.manager import PipelineManager

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "models" / "builtin"
BUILTIN_LABEL = "Atelier demo model (built-in)"
# A prompt the demo model understands; shown in the prompt box.
EXAMPLE_PROMPT = "a red circle on a blue background"


def builtin_checkpoints() -> list[CheckpointEntry]:
    """Checkpoints shipped inside the package; listed after the user's own."""
    if not BUILTIN_DIR.is_dir():
        return []
    return [
        CheckpointEntry(f"builtin/{path.name}", path, "safetensors", builtin=True, label=BUILTIN_LABEL)
        for path in sorted(BUILTIN_DIR.glob("*.safetensors"))
    ]


@dataclass
class AppContext:
    settings: Settings
    registry: CheckpointRegistry
    manager: PipelineManager  # the head's own: listings, Extras, and the in-process worker's engine
    outputs: OutputLayout
    jobs: JobQueue
    extensions: ExtensionManager
    shared: bool = False  # served through a public --share link (set by the server at launch)
    pools: list[Any] = field(default_factory=list)  # what adds and removes workers (Ray), closed with the context

    @classmethod
    def create(cls, settings: Settings) -> AppContext:
        from .pipelines.manager import import_model_libraries

        import_model_libraries()

        hashes = HashCache(settings.models_dir / ".hashes.json")
        builtin = builtin_checkpoints() if settings.include_builtin else []
        registry = CheckpointRegistry(settings.checkpoints_dir, hashes, builtin=builtin)
        devices = [d.strip() for d in settings.devices.split(",") if d.strip()]
        manager = build_manager(settings, registry, devices[0] if devices else None, share=max(1, len(devices)))
        outputs = OutputLayout(settings.outputs_dir, settings.filename_pattern, settings.save_per_user_folders)
        remove_stale_temp_files(settings.outputs_dir, settings.settings_file.parent)
        extensions = ExtensionManager(settings.extensions_dir,
                                      ExtensionStore(settings.settings_file.parent / "extension-settings.json"))
        extensions.load_all()
        ctx = cls(settings, registry, manager, outputs, JobQueue(), extensions)
        ctx._start_workers(devices)
        return ctx

    def _start_workers(self, devices: list[str]) -> None:
        """In-process by default; one worker per ``--devices`` entry; Ray actors with ``--ray``."""
        if self.settings.ray:
            from .queue.ray_workers import RayPool

            self.jobs.add_worker(HeadWorker(self.manager))
            self.pools.append(RayPool.start(self.settings, self.jobs))
            return
        if len(devices) <= 1:
            self.jobs.add_worker(LocalWorker("local", self.manager, hosts_head=True))
            return
        for index, device in enumerate(devices):
            manager = self.manager if index == 0 else build_manager(self.settings, self.registry, device,
                                                                    share=len(devices))
            self.jobs.add_worker(LocalWorker(f"{device}#{index}", manager, hosts_head=index == 0))

    @property
    def hooks(self) -> Registry:
        """What extensions registered; handed to every generation."""
        return self.extensions.registry

    def new_request(self, given: Mapping[str, Any]) -> GenerationRequest:
        """The request a front end asks for (GenerationRequest field names; missing or None = the default,
        which comes from the settings). Raises RequestError / UnknownSamplerError naming the field."""
        return build_request(self.settings, given, lambda: self.manager.native_size(given.get("checkpoint")))

    def sink(self) -> HeadSink:
        """Where a job's pictures go and which hooks see them: read when the job runs."""
        return HeadSink(self.outputs, self.settings.save_format, self.hooks)

    def submit(self, request: GenerationRequest, owner: Owner = LOCAL, control: JobControl | None = None,
               work: Callable[[JobControl], GenerationResult] | None = None, mode: str | None = None) -> Job:
        """Queue one generation job (or ``work``, a script's job, which runs its generations through
        ``run_job`` with the same control) and return it at once. The checkpoint is resolved now (a job
        without one gets the current model), so every worker runs the same model; an unknown checkpoint or
        VAE raises here, before the job waits."""
        entry = self.manager.resolve(request.checkpoint)
        if request.checkpoint != entry.name:
            request = request.replace(checkpoint=entry.name)
        needs = needs_for(request, entry, self.manager.vae_dir, self.manager.loras.files(), self.registry.hash_cache)

        def run(worker: Worker, job_control: JobControl) -> GenerationResult:
            if work is not None:
                return work(job_control)
            return worker.generate(request, job_control, self.sink())

        def cancelled() -> GenerationResult:
            from .pipelines.generate import GenerationResult

            return GenerationResult(request, interrupted=True, warnings=["Cancelled before it started."])

        control = control or JobControl(preview_every=self.settings.preview_every_n_steps)
        return self.jobs.submit(JobSpec(run, owner, needs, label_of(request), "generate",
                                        mode or request.task.value, cost_of(request), control, cancelled))

    def run_job(self, request: GenerationRequest, control: JobControl | None = None,
                owner: Owner = LOCAL) -> GenerationResult:
        """Run one generation job and wait for it: the one entry the page, the REST API, the CLI and
        extension scripts all use, so every job gets the same queue, hooks, output folder and file format.
        Called from inside a running job with its control (a script's generations), it runs at once on
        that job's worker instead of queueing behind itself."""
        worker = self.jobs.worker_of(control)
        if worker is not None and control is not None:
            return worker.generate(request, control, self.sink())
        return self.submit(request, owner, control).result()

    def submit_load(self, query: str | None, owner: Owner = LOCAL) -> Job:
        """Make a checkpoint the current one (the top bar, the API's options) in the queue's turn, so a running
        job keeps its model: a worker that has the file loads it (later jobs for it go there), then it is the
        head's current model. The job's result is its display name."""
        entry = self.manager.resolve(query)

        def run(worker: Worker, control: JobControl) -> str:
            shown = worker.load(entry.name)
            self.manager.select(entry.name)
            return shown

        return self.jobs.submit(JobSpec(run, owner, Needs((checkpoint_ref(entry),), checkpoint=entry.name),
                                        f"load {entry.label or entry.name}", kind="load"))

    def load_checkpoint(self, query: str | None, owner: Owner = LOCAL) -> str:
        return str(self.submit_load(query, owner).result())

    def submit_on_head(self, work: Callable[[], Any], owner: Owner = LOCAL, label: str = "") -> Job:
        """Queue ``work`` to run in the queue's turn on the head's own engine (Extras' upscalers use its
        device, so they never run beside a generation there)."""
        return self.jobs.submit(JobSpec(lambda worker, control: work(), owner, Needs(on_head=True), label,
                                        kind="extras"))

    def run_on_head(self, work: Callable[[], Any], owner: Owner = LOCAL, label: str = "") -> Any:
        return self.submit_on_head(work, owner, label).result()

    def refresh_models(self) -> None:
        """Look at the model folders again, on the head and on every worker."""
        self.registry.refresh()
        self.jobs.refresh()

    def apply_settings(self, settings: Settings) -> None:
        """Switch to settings saved in the Settings tab: what can change without a restart changes now.

        The output folder is the exception: the server may only serve files from the folder it started
        with, so a new one takes effect at the next start."""
        self.settings = settings.replace(outputs_dir=self.settings.outputs_dir)
        self.outputs = OutputLayout(self.settings.outputs_dir, settings.filename_pattern,
                                    settings.save_per_user_folders)
        managers = [w.manager for w in self._local_workers()] or [self.manager]
        for manager in managers:  # the RAM budget is shared between the workers of this process
            manager.cache.set_budget(settings.ram_cache_bytes // len(managers))
            manager.offload_setting = settings.offload
            manager.decode_method = settings.vae_decode_method
            manager.upscalers.tile_size = settings.upscaler_tile_size
        if self.manager not in managers:
            self.manager.upscalers.tile_size = settings.upscaler_tile_size

    def _local_workers(self) -> list[LocalWorker]:
        found = [self.jobs.worker(view.name) for view in self.jobs.workers()]
        return [w for w in found if isinstance(w, LocalWorker) and not w.head_only]

    def close(self) -> None:
        self.jobs.close()
        for pool in self.pools:
            pool.close()
        for view in self.jobs.workers():
            worker = self.jobs.remove_worker(view.name)
            if worker is not None:
                worker.close()
        self.extensions.close()
        self.manager.shutdown()
