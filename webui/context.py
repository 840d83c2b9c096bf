"""AppContext: the one object that owns the settings, model registry, pipeline manager and outputs.

Everything that would otherwise be a module-level global lives here and is passed explicitly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings
from .extensions.hooks import Registry
from .extensions.loader import ExtensionManager
from .extensions.store import ExtensionStore
from .fileio import remove_stale_temp_files
from .jobs import JobRegistry
from .models.hashing import HashCache
from .models.registry import CheckpointEntry, CheckpointRegistry
from .outputs import OutputLayout
from .pipelines.build import build_request
from .pipelines.request import GenerationRequest

if TYPE_CHECKING:  # importing the context never imports torch
    from .jobs import JobControl
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
    manager: PipelineManager
    outputs: OutputLayout
    jobs: JobRegistry
    extensions: ExtensionManager
    shared: bool = False  # served through a public --share link (set by the server at launch)

    @classmethod
    def create(cls, settings: Settings) -> AppContext:
        from . import devices
        from .controlnet.files import BUILTIN_DIR as BUILTIN_CONTROLNET_DIR
        from .pipelines.manager import PipelineManager, import_model_libraries
        from .upscalers import BUILTIN_UPSCALER_DIR, default_upscaler_dirs

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
            upscaler_dirs=default_upscaler_dirs(settings.models_dir),
            upscaler_builtin_dir=BUILTIN_UPSCALER_DIR if settings.include_builtin else None,
            upscaler_tile_size=settings.upscaler_tile_size,
            controlnet_builtin_dir=BUILTIN_CONTROLNET_DIR if settings.include_builtin else None,
        )
        outputs = OutputLayout(settings.outputs_dir, settings.filename_pattern, settings.save_per_user_folders)
        remove_stale_temp_files(settings.outputs_dir, settings.settings_file.parent)
        extensions = ExtensionManager(settings.extensions_dir,
                                      ExtensionStore(settings.settings_file.parent / "extension-settings.json"))
        extensions.load_all()
        return cls(settings, registry, manager, outputs, JobRegistry(), extensions)

    @property
    def hooks(self) -> Registry:
        """What extensions registered; handed to every generation."""
        return self.extensions.registry

    def new_request(self, given: Mapping[str, Any]) -> GenerationRequest:
        """The request a front end asks for (GenerationRequest field names; missing or None = the default,
        which comes from the settings). Raises RequestError / UnknownSamplerError naming the field."""
        return build_request(self.settings, given, lambda: self.manager.native_size(given.get("checkpoint")))

    def run_job(self, request: GenerationRequest, control: JobControl | None = None) -> GenerationResult:
        """Run one generation job in this thread: the one entry the page, the REST API, the CLI and
        extension scripts all use, so every job gets the same hooks, output folder and file format."""
        from .pipelines.generate import generate

        return generate(self.manager, request, self.outputs, control, save_format=self.settings.save_format,
                        hooks=self.hooks)

    def apply_settings(self, settings: Settings) -> None:
        """Switch to settings saved in the Settings tab: what can change without a restart changes now.

        The output folder is the exception: the server may only serve files from the folder it started
        with, so a new one takes effect at the next start."""
        self.settings = settings.replace(outputs_dir=self.settings.outputs_dir)
        self.outputs = OutputLayout(self.settings.outputs_dir, settings.filename_pattern,
                                    settings.save_per_user_folders)
        self.manager.cache.set_budget(settings.ram_cache_bytes)
        self.manager.offload_setting = settings.offload
        self.manager.upscalers.tile_size = settings.upscaler_tile_size

    def close(self) -> None:
        self.extensions.close()
        self.manager.shutdown()
