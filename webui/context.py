"""AppContext: the one object that owns the settings, model registry, pipeline manager and outputs.

Everything that would otherwise be a module-level global lives here and is passed explicitly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .extensions.hooks import Registry
from .extensions.loader import ExtensionManager
from .extensions.store import ExtensionStore
from .fileio import remove_stale_temp_files
from .jobs import JobRegistry
from .models.hashing import HashCache
from .models.registry import CheckpointEntry, CheckpointRegistry
from .outputs import OutputLayout

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
    manager: object  # PipelineManager; typed loosely so importing the context never imports torch
    outputs: OutputLayout
    jobs: JobRegistry
    extensions: ExtensionManager
    shared: bool = False  # served through a public --share link (set by the server at launch)

    @classmethod
    def create(cls, settings: Settings) -> AppContext:
        from . import devices
        from .pipelines.manager import PipelineManager, import_model_libraries

        import_model_libraries()

        hashes = HashCache(settings.models_dir / ".hashes.json")
        builtin = builtin_checkpoints() if settings.include_builtin else []
        registry = CheckpointRegistry(settings.checkpoints_dir, hashes, builtin=builtin)
        device = devices.choose_device(settings.device)
        dtype = devices.choose_dtype(device, settings.precision)
        log.info("Device %s, precision %s", device, str(dtype).replace("torch.", ""))
        manager = PipelineManager(
            registry,
            device=device,
            dtype=dtype,
            ram_cache_bytes=settings.ram_cache_bytes,
            offload=settings.offload,
            default_checkpoint=settings.default_checkpoint,
            batch_mode=settings.batch_mode,
            vae_dir=settings.models_dir / "VAE",
            lora_dir=settings.loras_dir,
            embedding_dirs=settings.embedding_dirs,
        )
        outputs = OutputLayout(settings.outputs_dir, settings.filename_pattern)
        remove_stale_temp_files(settings.outputs_dir, settings.settings_file.parent)
        extensions = ExtensionManager(settings.extensions_dir,
                                      ExtensionStore(settings.settings_file.parent / "extension-settings.json"))
        extensions.load_all()
        return cls(settings, registry, manager, outputs, JobRegistry(), extensions)

    @property
    def hooks(self) -> Registry:
        """What extensions registered; handed to every generation."""
        return self.extensions.registry

    def apply_settings(self, settings: Settings) -> None:
        """Switch to settings saved in the Settings tab: what can change without a restart changes now.

        The output folder is the exception: the server may only serve files from the folder it started
        with, so a new one takes effect at the next start."""
        self.settings = settings.replace(outputs_dir=self.settings.outputs_dir)
        self.outputs = OutputLayout(self.settings.outputs_dir, settings.filename_pattern)
        manager = self.manager
        manager.cache.set_budget(settings.ram_cache_bytes)  # type: ignore[attr-defined]
        manager.offload_setting = settings.offload  # type: ignore[attr-defined]

    def close(self) -> None:
        self.extensions.close()
        shutdown = getattr(self.manager, "shutdown", None)
        if shutdown is not None:
            shutdown()
