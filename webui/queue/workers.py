"""Workers: what runs a job once the queue hands it out. All of them behind one small interface.

- ``LocalWorker``: a pipeline manager in this process (the default: one, on ``--device``; with
  ``--devices cuda:0,cuda:1`` or ``cpu,cpu`` one per device, each with its own manager, cache and lock).
- ``HeadWorker``: the head's own pipeline manager when every generation runs elsewhere (Ray): it takes only
  the jobs that must run on the head (Extras' upscaling).
- ``RayWorker`` (``ray_workers.py``): a Ray actor owning its own pipeline manager on one GPU or on CPU.

A worker's ``generate`` returns a finished GenerationResult: the head's hooks ran and its pictures are saved
in the head's outputs folder (``HeadSink``), whichever machine computed them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .dispatch import KINDS, FileFacts, Inventory

if TYPE_CHECKING:
    from ..config import Settings
    from ..jobs import JobControl
    from ..models.registry import CheckpointRegistry
    from ..outputs import OutputLayout
    from ..pipelines.generate import GenerationResult
    from ..pipelines.manager import PipelineManager
    from ..pipelines.request import GenerationRequest

log = logging.getLogger(__name__)


class WorkerLost(RuntimeError):
    """The worker went away during the job (its process was killed, its machine lost): the job did not end."""


@dataclass
class HeadSink:
    """What the head owns for finishing a job: the outputs folder, the file format, the extensions' hooks.
    Read when the job runs, so a settings change applies to jobs that start after it."""

    outputs: OutputLayout | None
    save_format: str = "png"
    hooks: Any = None


class Worker:
    """The interface the job service and the dispatcher use. A worker runs one job at a time."""

    name: str = "worker"
    hosts_head = False  # its pipeline manager is the head's own (Extras and listings use it)
    head_only = False  # takes only jobs that must run on the head

    def inventory(self) -> Inventory:
        """What it can run and has loaded: answered from memory, never over the network."""
        raise NotImplementedError

    def generate(self, request: GenerationRequest, control: JobControl, sink: HeadSink) -> GenerationResult:
        raise NotImplementedError

    def load(self, checkpoint: str) -> str:
        """Load a checkpoint (the top bar's switch); returns its display name."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Look at the model folders again (after files were added)."""

    def describe(self) -> str:
        return self.inventory().device

    def close(self) -> None:
        pass


def loaded_names(manager: PipelineManager) -> tuple[str, ...]:
    """The checkpoints a manager holds: the current one first, then the rest of its RAM cache."""
    names = list(manager.cache.keys())
    current = manager.current_name
    if current in names:
        names.remove(current)
        names.insert(0, current)
    return tuple(names)


def scan_inventory(manager: PipelineManager, device: str) -> Inventory:
    """Every file a manager can use, by name with its size and (when already computed) SHA-256."""
    from ..models.vae import list_vaes

    registry = manager.registry
    registry.refresh()
    hashes = registry.hash_cache

    def facts(key: str, path: Any) -> FileFacts:
        try:
            size = path.stat().st_size if path.is_file() else None
        except OSError:
            size = None
        return FileFacts(size, hashes.cached(key, path) if size is not None else None)

    files: dict[str, dict[str, FileFacts]] = {kind: {} for kind in KINDS}
    for entry in registry.entries():
        files["checkpoint"][entry.name] = facts(entry.name, entry.path)
    for vae in list_vaes(manager.vae_dir):
        files["vae"][vae.name] = facts(f"VAE/{vae.name}", vae.path)
    for name, path in manager.loras.files().items():
        files["lora"][name] = FileFacts(path.stat().st_size)  # LoRA hashes cover tensors only: size is enough
    for name, path in manager.embeddings.files().items():
        files["embedding"][name] = FileFacts(path.stat().st_size)
    return Inventory(files, loaded_names(manager), device)


def build_manager(settings: Settings, registry: CheckpointRegistry, device: str | None = None,
                  share: int = 1) -> PipelineManager:
    """A pipeline manager from the settings on one device (``device``: "cpu", "cuda:1"...; None: --device).
    ``share``: how many managers of this process split the RAM budget (each keeps its own copies)."""
    import torch

    from .. import devices
    from ..controlnet.files import BUILTIN_DIR as BUILTIN_CONTROLNET_DIR
    from ..pipelines.manager import PipelineManager
    from ..upscalers import BUILTIN_UPSCALER_DIR, default_upscaler_dirs

    chosen = torch.device(device) if device else devices.choose_device(settings.device)
    dtype = devices.choose_dtype(chosen, settings.precision)
    log.info("Device %s, precision %s", chosen, str(dtype).replace("torch.", ""))
    return PipelineManager(
        registry,
        device=chosen,
        dtype=dtype,
        ram_cache_bytes=settings.ram_cache_bytes // max(1, share),
        offload=settings.offload,
        default_checkpoint=settings.default_checkpoint,
        batch_mode=settings.batch_mode,
        vae_dir=settings.models_dir / "VAE",
        lora_dir=settings.loras_dir,
        embedding_dirs=settings.embedding_dirs,
        upscaler_dirs=default_upscaler_dirs(settings.models_dir),
        upscaler_builtin_dir=BUILTIN_UPSCALER_DIR if settings.include_builtin else None,
        upscaler_tile_size=settings.upscaler_tile_size,
        controlnet_builtin_dir=BUILTIN_CONTROLNET_DIR if settings.include_builtin else None,
        decode_method=settings.vae_decode_method,
    )


class LocalWorker(Worker):
    """A pipeline manager in this process. It reads the head's own folders, so it has every file the head has."""

    def __init__(self, name: str, manager: PipelineManager, hosts_head: bool = False) -> None:
        self.name = name
        self.manager = manager
        self.hosts_head = hosts_head

    def inventory(self) -> Inventory:
        return Inventory(loaded=loaded_names(self.manager), device=str(self.manager.device), shares_head_files=True)

    def generate(self, request: GenerationRequest, control: JobControl, sink: HeadSink) -> GenerationResult:
        from ..pipelines.generate import generate

        return generate(self.manager, request, sink.outputs, control, save_format=sink.save_format, hooks=sink.hooks)

    def load(self, checkpoint: str) -> str:
        return self.manager.load(checkpoint).display_name

    def close(self) -> None:
        if not self.hosts_head:  # the head's manager is shut down by the head
            self.manager.shutdown()


class HeadWorker(LocalWorker):
    """The head's manager beside remote workers: Extras only, never a generation."""

    head_only = True

    def __init__(self, manager: PipelineManager) -> None:
        super().__init__("head", manager, hosts_head=True)

    def inventory(self) -> Inventory:
        return Inventory(loaded=(), device=str(self.manager.device))


class Heartbeat:
    """Calls ``beat`` every ``seconds`` on a daemon thread until closed (pools watching their workers)."""

    def __init__(self, beat: Any, seconds: float, name: str) -> None:
        self._beat = beat
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._seconds):
            start = time.monotonic()
            try:
                self._beat()
            except Exception:  # a failed round is logged; the next one tries again
                log.exception("%s failed", self._thread.name)
            log.debug("%s took %.3f s", self._thread.name, time.monotonic() - start)

    def close(self) -> None:
        self._stop.set()
