"""The pipeline manager: one per process. It owns the checkpoint cache and the device, and hands
out pipelines for txt2img / img2img / inpainting built over one shared set of weights.

- RAM tier: a byte-budgeted LRU of loaded checkpoints (models/cache.py).
- Device tier: at most one checkpoint is placed on the accelerator; offload is planned per job.
- A job holds `use()` for its whole run, so nothing swaps the model out from under it, and
  jobs from several threads never interleave on one model.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .. import devices
from ..controlnet.files import default_controlnet_dirs
from ..controlnet.library import ControlNetLibrary
from ..errors import AtelierError
from ..models.cache import ModelCache
from ..models.detect import FROM_WEIGHTS
from ..models.embeddings import EmbeddingLibrary
from ..models.loader import (
    CheckpointLoadError,
    LoadedModel,
    detect_entry,
    detect_file,
    estimate_nbytes,
    load_checkpoint,
)
from ..models.lora import LoraLibrary, LoraPatcher, LoraUse, target_layers
from ..models.offload import MemoryNeeds, OffloadMode, OffloadPlan, choose_offload
from ..models.registry import CheckpointEntry, CheckpointRegistry
from ..models.vae import VaeFile, load_vae, resolve_vae
from ..upscalers import default_upscaler_dirs
from ..upscalers.library import UpscalerLibrary
from .previews import LatentPreviewer
from .request import Task

log = logging.getLogger(__name__)


def import_model_libraries() -> None:
    """Import diffusers' and transformers' lazily loaded classes once, up front, on one thread.

    Both libraries resolve names on first attribute access; two server threads doing that at the same
    moment (a job loading a model while the page counts tokens) can see a half-initialised module and
    fail with "cannot import name ...". Importing here, before the server starts, avoids the race.
    """
    import diffusers
    import transformers

    for name in ("AutoencoderKL", "UNet2DConditionModel", "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                 "StableDiffusionInpaintPipeline", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                 "StableDiffusionXLInpaintPipeline", "EulerAncestralDiscreteScheduler"):
        getattr(diffusers, name)
    for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer", "PreTrainedModel"):
        getattr(transformers, name)


class NoCheckpointError(AtelierError, LookupError):
    """No checkpoint is available or the requested one does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "checkpoint")


def _pipeline_classes(is_sdxl: bool) -> dict[Task, Any]:
    import diffusers

    if is_sdxl:
        return {
            Task.TXT2IMG: diffusers.StableDiffusionXLPipeline,
            Task.IMG2IMG: diffusers.StableDiffusionXLImg2ImgPipeline,
            Task.INPAINT: diffusers.StableDiffusionXLInpaintPipeline,
        }
    return {
        Task.TXT2IMG: diffusers.StableDiffusionPipeline,
        Task.IMG2IMG: diffusers.StableDiffusionImg2ImgPipeline,
        Task.INPAINT: diffusers.StableDiffusionInpaintPipeline,
    }


class PipelineManager:
    def __init__(
        self,
        registry: CheckpointRegistry,
        *,
        device: torch.device,
        dtype: torch.dtype,
        ram_cache_bytes: int,
        offload: str = "auto",
        default_checkpoint: str | None = None,
        batch_mode: str = "auto",
        vae_dir: Path | None = None,
        lora_dir: Path | None = None,
        embedding_dirs: list[Path] | None = None,
        upscaler_dirs: list[Path] | None = None,
        upscaler_builtin_dir: Path | None = None,
        upscaler_tile_size: int = 192,
        controlnet_dirs: list[Path] | None = None,
        controlnet_builtin_dir: Path | None = None,
        decode_method: str = "Full",
    ) -> None:
        self.registry = registry
        models_dir = registry.checkpoints_dir.parent
        self.vae_dir = vae_dir or models_dir / "VAE"
        self.loras = LoraLibrary(lora_dir or models_dir / "Lora", registry.hash_cache)
        self.embeddings = EmbeddingLibrary(embedding_dirs or [models_dir / "embeddings"], registry.hash_cache)
        # Per loaded model: which LoRAs its weights carry, and the originals to restore (dropped on eviction).
        self._lora_patchers: dict[str, LoraPatcher] = {}
        self.device = device
        self.dtype = dtype
        # Live previews fitted to each VAE (cached beside the hash cache) and TAESD decoders from A1111's folder.
        self.previews = LatentPreviewer(models_dir / ".preview-colours.json", models_dir / "VAE-approx", device)
        # Upscalers for hires fix and the Extras tab; their models are not in the checkpoint cache's budget.
        self.upscalers = UpscalerLibrary(upscaler_dirs or default_upscaler_dirs(models_dir), upscaler_builtin_dir,
                                         device, dtype, tile_size=upscaler_tile_size)
        self.offload_setting = offload
        self.decode_method = decode_method  # "Full" | "TAESD": how final pictures leave latent space
        self.default_checkpoint = default_checkpoint
        # "exact": image i of a batch is pixel-identical to a single run with seed + i (images denoised one
        # by one; on a CPU batching gains little). "fast": one batched call, which GPUs run much faster but
        # whose kernels round slightly differently per batch size. "auto": exact on CPU, fast on GPUs.
        self.exact_batches = batch_mode == "exact" or (batch_mode == "auto" and device.type == "cpu")
        self.cache: ModelCache[LoadedModel] = ModelCache(ram_cache_bytes, on_evict=self._on_evict)
        # ControlNets share the checkpoints' cache and its byte budget (under "ControlNet/..." keys).
        self.controlnets = ControlNetLibrary(controlnet_dirs or default_controlnet_dirs(models_dir),
                                             controlnet_builtin_dir, self.cache, models_dir / "ControlNetAnnotators",
                                             device)
        # One job at a time on the model and the device; waiting jobs queue on this lock.
        self._run_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._on_device: str | None = None
        self._current: str | None = None
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash")
        self._hash_jobs: dict[str, Future] = {}
        # Separate VAEs are small (about 160 MB in fp16); the last two used stay loaded.
        self._vaes: OrderedDict[tuple[str, int, str, str], Any] = OrderedDict()

    # ------------------------------------------------------------------ model selection
    @property
    def current_name(self) -> str | None:
        """The checkpoint most recently used (what the UI shows as selected)."""
        return self._current

    def resolve(self, query: str | None) -> CheckpointEntry:
        if query:
            entry = self.registry.find(query)
            if entry is None:
                self.registry.refresh()
                entry = self.registry.find(query)
            if entry is None:
                raise NoCheckpointError(f"Checkpoint not found: {query!r}")
            return entry
        for preferred in (self._current, self.default_checkpoint):
            entry = self.registry.find(preferred) if preferred else None
            if entry is not None:
                return entry
        entry = self.registry.default()
        if entry is None:
            raise NoCheckpointError(
                f"No checkpoint found. Put a Stable Diffusion .safetensors file (SD 1.x, 2.x or SDXL) "
                f"into {self.registry.checkpoints_dir} and press refresh."
            )
        return entry

    def load(self, query: str | None = None) -> LoadedModel:
        """Make `query` (or the default) the current model, loading it if it is not cached.

        On failure the error names the file and the reason; the previous model stays cached and current.
        """
        entry = self.resolve(query)
        with self._load_lock:
            model = self._cached_or_loaded(entry)
            self._current = entry.name
        return model

    def _cached_or_loaded(self, entry: CheckpointEntry) -> LoadedModel:
        """The cached model if its file is unchanged, else a fresh load. Call it holding the load lock."""
        model = self.cache.get(entry.name)
        if model is not None and not self._is_stale(entry, model):
            return model
        return self._load_into_cache(entry)

    def _is_stale(self, entry: CheckpointEntry, model: LoadedModel) -> bool:
        """True (and the old copy dropped) when the file was replaced or rewritten since it was loaded.

        A missing file keeps the cached copy serving: the weights live in process memory. A model a job
        is using is never pulled out from under it; it is checked again before the next job."""
        now = entry.identity()
        if now is None or now == model.identity or not self.cache.evict(entry.name):
            return False
        log.info("%s changed on disk since it was loaded; loading it again", entry.name)
        return True

    def native_size(self, query: str | None = None) -> int:
        """The side a checkpoint was trained at, without loading it when its files tell (header or config)."""
        entry = self.resolve(query)
        model = self.cache.peek(entry.name)
        if model is not None:
            return model.native_size
        if entry.kind == "diffusers":
            config = json.loads((entry.path / "unet" / "config.json").read_text(encoding="utf-8"))
            return int(config.get("sample_size") or 64) * 8
        try:
            detection = detect_entry(entry)
        except Exception as exc:
            raise CheckpointLoadError(str(exc)) from exc
        return detection.native_size if detection is not None else self.load(query).native_size

    def select(self, name: str | None) -> None:
        """Make ``name`` (a registry name, or None) current again without loading it: a request that used
        another model for itself only (A1111's override_settings) leaves the current model as it was."""
        with self._load_lock:
            self._current = name

    def _load_into_cache(self, entry: CheckpointEntry) -> LoadedModel:
        try:
            detect_file(entry.path)  # header checks first, so a bad file evicts nothing
        except Exception as exc:
            raise CheckpointLoadError(str(exc)) from exc
        expected = estimate_nbytes(entry, self.dtype)
        if expected:
            self.cache.make_room(expected)
        model = load_checkpoint(entry, self.dtype)
        if model.detection.prediction_from == FROM_WEIGHTS:  # the model list shows it before the next load
            entry.remember_prediction(model.detection.prediction_type)
        self.previews.prepare(model.components["vae"])
        self.cache.put(entry.name, model, model.nbytes)
        devices.release_memory(self.device)  # the conversion's temporaries, and anything just evicted
        self._start_hashing(entry, model)
        return model

    def _start_hashing(self, entry: CheckpointEntry, model: LoadedModel) -> None:
        """Hash in the background: the first job's generation usually outlasts it."""
        model.sha256 = entry.sha256
        if model.sha256 is None and entry.kind != "diffusers":
            self._hash_jobs[entry.name] = self._hasher.submit(entry.compute_sha256)

    def short_hash(self, model: LoadedModel, wait: float = 120.0) -> str | None:
        if model.sha256 is None:
            job = self._hash_jobs.get(model.name)
            if job is not None:
                try:
                    model.sha256 = job.result(timeout=wait)
                except Exception as exc:  # a hash is nice to have, never worth failing a job
                    log.warning("Could not hash %s: %s", model.name, exc)
        return model.sha256[:10] if model.sha256 else None

    def _on_evict(self, name: str, model: LoadedModel) -> None:
        if not isinstance(model, LoadedModel):  # a ControlNet: nothing of it is kept elsewhere
            return
        self._lora_patchers.pop(name, None)
        if self._on_device == name:
            self._on_device = None
        for pipe in model.pipelines.values():
            if hasattr(pipe, "remove_all_hooks"):
                pipe.remove_all_hooks()
        model.pipelines.clear()
        model.components.clear()
        devices.release_memory(self.device)

    # ------------------------------------------------------------------ running jobs
    @contextmanager
    def use(self, query: str | None = None) -> Iterator[LoadedModel]:
        """Hold the model (loaded if needed) and the device for one job."""
        with self._run_lock:
            model = self.load(query)
            with self.cache.use(model.name) as pinned:
                yield pinned

    @contextmanager
    def hold(self, query: str) -> Iterator[LoadedModel]:
        """A second checkpoint for the job holding ``use()`` (a refiner, a hires checkpoint): loaded into the RAM
        cache if needed and pinned for the job, without becoming the current model. Both may be over the cache's
        budget for the job; the budget applies again at the next load."""
        entry = self.resolve(query)
        with self._load_lock:
            model = self._cached_or_loaded(entry)
        with self.cache.use(model.name) as pinned:
            yield pinned

    def vae_for(self, model: LoadedModel, choice: str | None) -> tuple[Any, VaeFile | None]:
        """The VAE module a job with this choice uses, and its file (None: the checkpoint's own VAE).

        Call it while holding `use()`. Switching VAE never reloads the checkpoint.
        """
        vae_file = resolve_vae(choice, self.vae_dir, model.source)
        if vae_file is None:
            return model.components["vae"], None
        stat = vae_file.path.stat()
        config = dict(model.components["vae"].config)
        key = (str(vae_file.path), stat.st_mtime_ns, str(model.dtype), json.dumps(config, sort_keys=True, default=str))
        module = self._vaes.get(key)
        if module is None:
            module = load_vae(vae_file, config, model.dtype)
            self.previews.prepare(module)
            self._vaes[key] = module
            while len(self._vaes) > 2:
                self._vaes.popitem(last=False)
        self._vaes.move_to_end(key)
        return module, vae_file

    def vae_hash(self, vae_file: VaeFile) -> str:
        """A1111's "VAE hash": the first 10 hex digits of the file's SHA-256 (cached by size and mtime)."""
        return self.registry.hash_cache.sha256(f"VAE/{vae_file.name}", vae_file.path)[:10]

    def pipeline(self, model: LoadedModel, task: Task, scheduler: Any, vae: Any = None) -> Any:
        """A pipeline for `task` over the model's shared weights, with this job's own scheduler (and VAE).

        Call it while holding `use()`: the pipeline object is reused by the next job of the same task.
        """
        classes = _pipeline_classes(model.is_sdxl)
        base = model.pipelines.get("base")
        if base is None:
            comps = dict(model.components)
            extra: dict[str, Any] = {"feature_extractor": None, "image_encoder": None}
            if not model.is_sdxl:
                extra.update(safety_checker=None, requires_safety_checker=False)
            base = classes[Task.TXT2IMG](**comps, **extra)
            base.set_progress_bar_config(disable=True)
            model.pipelines["base"] = base
        pipe = model.pipelines.get(task.value)
        if pipe is None:
            # from_pipe shares every module with the base pipeline; built once per task (it costs ~40 ms).
            # from_pipe casts every shared module to fp32 unless told the dtype: that would double the RAM.
            pipe = base if task is Task.TXT2IMG else classes[task].from_pipe(base, torch_dtype=model.dtype)
            pipe.set_progress_bar_config(disable=True)
            model.pipelines[task.value] = pipe
        # Jobs hold the run lock, so swapping in this job's own scheduler and VAE cannot race another job.
        pipe.register_modules(scheduler=scheduler, vae=vae if vae is not None else model.components["vae"])
        return pipe

    def final_decoder(self, vae: Any, is_sdxl: bool) -> Any | None:
        """The TAESD decoder that decodes this VAE's final pictures when the decode method is "TAESD" and
        models/VAE-approx has one for its latent space; None: the VAE decodes them."""
        if self.decode_method != "TAESD":
            return None
        return self.previews.taesd_decoder(vae, is_sdxl)

    def plan_offload(self, model: LoadedModel, width: int, height: int, batch_size: int) -> OffloadPlan:
        unet_bytes = sum(t.numel() * t.element_size() for t in model.components["unet"].parameters())
        # The job's ControlNets run beside the UNet every step: they count with the model.
        needs = MemoryNeeds(model.nbytes + self.controlnets.in_use_nbytes(), unet_bytes, width, height, batch_size)
        free = devices.free_vram(self.device)
        if free is not None:
            # What this job's own model already occupies on the device is available to it.
            free += sum(
                t.numel() * t.element_size()
                for m in model.components.values() if isinstance(m, torch.nn.Module)
                for t in m.parameters() if t.device.type != "cpu"
            )
        return choose_offload(needs, free, self.offload_setting)

    def apply_loras(self, model: LoadedModel, uses: list[LoraUse]) -> list[str]:
        """Make the model's weights carry exactly these LoRAs (none: the exact base weights). Returns warnings.

        Call it while holding `use()`, with no offload hooks on the model (``place`` does so)."""
        patcher = self._lora_patchers.get(model.name)
        if patcher is None:
            if not uses:
                return []
            patcher = self._lora_patchers[model.name] = LoraPatcher(target_layers(model.components))
        return patcher.apply(uses)

    def place(self, model: LoadedModel, pipe: Any, plan: OffloadPlan, loras: list[LoraUse] | None = None) -> list[str]:
        """Put the job's pipeline on the device according to the plan (CPU: nothing to move), with the
        job's LoRAs patched in. Returns warnings about LoRAs."""
        vae = pipe.vae
        if vae.dtype != model.dtype:
            # SDXL pipelines upcast the VAE for decoding and only cast it back on success.
            vae.to(model.dtype)
        if plan.vae_tiling:
            vae.enable_tiling()
        else:
            vae.disable_tiling()
        if self.device.type == "cpu":
            return self.apply_loras(model, loras or [])
        if self._on_device not in (None, model.name):
            previous = self.cache.peek(self._on_device)
            if previous is not None and "base" in previous.pipelines:
                previous.pipelines["base"].remove_all_hooks()
                previous.pipelines["base"].to("cpu")
            devices.release_memory(self.device)
        pipe.remove_all_hooks()
        # Patched between removing the offload hooks and adding them again: sequential offload keeps
        # weights outside the modules while its hooks are on.
        warnings = self.apply_loras(model, loras or [])
        for other in [model.components["vae"], *self._vaes.values()]:
            if other is not vae and next(other.parameters()).device.type != "cpu":
                other.to("cpu")  # the VAE this job does not use leaves the device
        if plan.mode is OffloadMode.NONE:
            pipe.to(self.device)
        elif plan.mode is OffloadMode.MODEL:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.enable_sequential_cpu_offload(device=self.device)
        self._on_device = model.name
        return warnings

    @property
    def execution_device(self) -> torch.device:
        return self.device

    def shutdown(self) -> None:
        self._hasher.shutdown(wait=False, cancel_futures=True)
