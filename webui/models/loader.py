"""Checkpoint file -> ready diffusers components, offline. No caching here (see cache.py).

Single files in the original SD layout are converted with diffusers' own key converters
and built on the meta device (no random initialisation), with configs and tokenizers
that ship inside the package. Pickled .ckpt files are opened only with
`torch.load(weights_only=True)`, which refuses anything that would run code.
"""

from __future__ import annotations

import functools
import json
import logging
import pickle
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import AtelierError
from . import configs
from .detect import FROM_WEIGHTS, Detection, UnknownArchitectureError, detect_architecture
from .header import CorruptCheckpointError, read_header
from .open_clip_keys import open_clip_to_hf
from .parameterization import probe_prediction
from .registry import CheckpointEntry, Identity
from .tensor_reader import read_safetensors

log = logging.getLogger(__name__)

TEXT_ENCODER_PREFIXES = {
    "sd1": ("clip", "cond_stage_model.transformer."),
    "sd2": ("open_clip", "cond_stage_model.model."),
    "sdxl": ("clip", "conditioner.embedders.0.transformer."),
    "sdxl_2": ("open_clip", "conditioner.embedders.1.model."),
}


class CheckpointLoadError(AtelierError, RuntimeError):
    """A checkpoint (or LoRA, VAE, embedding file) could not be loaded; the message names the file and says why."""

    def __init__(self, message: str, field: str | None = "checkpoint") -> None:
        super().__init__(message, field)


class UnsafeCheckpointError(CheckpointLoadError):
    """A pickled checkpoint asked to run code or build arbitrary objects; it was not opened."""


@dataclass
class LoadedModel:
    """The components of one checkpoint, shared by txt2img, img2img and inpainting."""

    name: str
    arch: str
    detection: Detection
    components: dict[str, Any]
    dtype: torch.dtype
    source: Path
    load_seconds: float = 0.0
    sha256: str | None = None
    # The file(s) as they were when read (CheckpointEntry.identity); a different one now means stale.
    identity: tuple[Identity, ...] | None = None
    # Pipelines built over these components, per pipeline class (see pipelines/manager.py).
    pipelines: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_sdxl(self) -> bool:
        return self.detection.is_sdxl

    @property
    def display_name(self) -> str:
        """A1111's "Model" in infotext: the file name without folder or extension."""
        base = self.name.rsplit("/", 1)[-1]
        return base if self.source.is_dir() else base.rsplit(".", 1)[0]

    @property
    def native_size(self) -> int:
        return self.detection.native_size

    @property
    def nbytes(self) -> int:
        return modules_nbytes(self.components.values())


def modules_nbytes(objects: Any) -> int:
    total = 0
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in obj.parameters())
            total += sum(t.numel() * t.element_size() for t in obj.buffers())
    return total


# --------------------------------------------------------------------------- reading files


# Training leftovers that inference never uses; skipping them saves RAM and time.
_SKIPPED_PREFIXES = ("model_ema.", "optimizer.", "loss.", "lora_")


def read_checkpoint_file(
    path: Path, dtype: torch.dtype | None = None, skip: tuple[str, ...] = _SKIPPED_PREFIXES
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a .safetensors / .ckpt / .pt file, with clear errors.

    Floating-point tensors are cast to `dtype` one at a time as they are read, so peak
    memory stays near one copy of the model instead of the file plus the converted copy.
    Every tensor returned lives in process memory, never in pages of the file: a file
    replaced or truncated later cannot change or crash a model built from them.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointLoadError(f"{path.name}: file not found ({path})")
    if path.suffix.lower() == ".safetensors":
        return read_safetensors(path, dtype, skip)
    raw, metadata = _read_pickled(path)
    tensors: dict[str, torch.Tensor] = {}
    for key in list(raw):
        value = raw.pop(key)
        if not key.startswith(skip):
            # Copy so the cache holds process memory, not pages of a file that may change on disk.
            tensors[key] = _to_dtype(value, dtype, copy=True)
    return tensors, metadata


def _to_dtype(tensor: torch.Tensor, dtype: torch.dtype | None, copy: bool = False) -> torch.Tensor:
    if dtype is not None and tensor.is_floating_point():
        return tensor.to(dtype, copy=copy)
    return tensor.clone() if copy else tensor


def _read_pickled(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors of a pickled checkpoint plus string metadata kept under a top-level "__metadata__" dict."""
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # old non-zip format
    except pickle.UnpicklingError as exc:
        reason = str(exc).split("\n")[0][:300]
        if "global" not in str(exc).lower():  # damaged data, not a forbidden object
            raise CorruptCheckpointError(f"{path.name}: corrupt or not a checkpoint ({reason})") from exc
        raise UnsafeCheckpointError(
            f"{path.name}: refused to open this pickled checkpoint because it asks to run code or build "
            f"objects other than tensors ({reason}). Only plain tensor data is accepted from .ckpt files; "
            "convert it to .safetensors with a trusted tool, or use a .safetensors release of the model."
        ) from exc
    except (EOFError, OSError, RuntimeError, ValueError) as exc:
        raise CorruptCheckpointError(f"{path.name}: corrupt or truncated checkpoint ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointLoadError(f"{path.name}: does not contain a state dict")
    raw_meta = data.get("__metadata__")
    metadata = {str(k): str(v) for k, v in raw_meta.items()} if isinstance(raw_meta, dict) else {}
    # A1111/ldm, BasicSR's (Real-ESRGAN) and Bae et al.'s (the normal_bae annotator's scannet.pt) wrappers
    for wrapper in ("state_dict", "params_ema", "params", "model"):
        if isinstance(data.get(wrapper), dict):
            data = data[wrapper]
            break
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return tensors, metadata


# --------------------------------------------------------------------------- building components


def _component_config(detection: Detection, component: str) -> dict[str, Any]:
    if detection.embedded_config is not None:
        return dict(detection.embedded_config[component])
    return configs.load_component_config(detection.arch, component)


# accelerate's init_empty_weights patches torch.nn.Module for every thread while it is open, so a module another
# thread builds meanwhile gets weightless parameters. Several workers in one process (--devices) load at the same
# time: whatever builds modules takes this lock (checkpoints and VAEs here, upscalers in webui/upscalers).
BUILD_LOCK = threading.RLock()


def _built_alone(fn: Any) -> Any:
    """Build and adopt weights holding BUILD_LOCK: assigning parameters while another thread is inside
    empty_weights would move them to the meta device too."""

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with BUILD_LOCK:
            return fn(*args, **kwargs)

    return locked


@contextmanager
def empty_weights() -> Iterator[None]:
    from accelerate import init_empty_weights

    with BUILD_LOCK, init_empty_weights():
        yield


def _cast(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state_dict.items()}


@_built_alone
def instantiate_module(build: Any, state_dict: dict[str, torch.Tensor], dtype: torch.dtype, what: str, name: str):
    """Build a module with no weights allocated, then adopt the checkpoint's tensors."""
    with empty_weights():
        module = build()
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict and expected[k].is_meta]
    if missing:
        raise CheckpointLoadError(
            f"{name}: the {what} is missing {len(missing)} tensors (e.g. {missing[0]}); "
            "the file is incomplete or not the architecture it looks like"
        )
    for key, tensor in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointLoadError(
                f"{name}: the {what} tensor {key} has shape {tuple(state_dict[key].shape)}, "
                f"expected {tuple(tensor.shape)} for this architecture"
            )
    wanted = {k: v for k, v in state_dict.items() if k in expected}
    module.load_state_dict(_cast(wanted, dtype), strict=False, assign=True)
    leftover = [n for n, p in module.named_parameters() if p.is_meta]
    if leftover:
        raise CheckpointLoadError(f"{name}: the {what} has no weights for {leftover[0]}")
    return module.eval().requires_grad_(False)


def _text_encoder_from_ldm(
    kind: str, prefix: str, config: dict[str, Any], checkpoint: dict[str, torch.Tensor], dtype, name: str
):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with_projection = "CLIPTextModelWithProjection" in (config.get("architectures") or [])
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    text_config = CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"})
    with empty_weights():
        probe = cls(text_config)  # weightless: only its structure is consulted
    if kind == "clip":
        converted = convert_ldm_clip_checkpoint({k: v for k, v in checkpoint.items() if k.startswith(prefix)})
    else:
        converted = open_clip_to_hf(checkpoint, prefix)  # splits q/k/v without copies (diffusers' copies)
    converted = {k: v for k, v in converted.items() if not k.endswith("position_ids")}
    # transformers 5 flattened CLIPTextModel (no `text_model.` wrapper); the projection model still wraps.
    if not hasattr(probe, "text_model"):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}

    def build():
        return cls(text_config)

    return instantiate_module(build, converted, dtype, "text encoder", name)


def build_components(
    checkpoint: dict[str, torch.Tensor], detection: Detection, dtype: torch.dtype, name: str
) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    unet_config = _component_config(detection, "unet")
    vae_config = _component_config(detection, "vae")
    components: dict[str, Any] = {}
    try:
        unet_sd = convert_ldm_unet_checkpoint(checkpoint, unet_config)
        vae_sd = convert_ldm_vae_checkpoint(checkpoint, vae_config)
    except (KeyError, IndexError, RuntimeError) as exc:
        raise CheckpointLoadError(f"{name}: tensors do not match the {detection.arch} layout ({exc})") from exc
    if not vae_sd:
        raise CheckpointLoadError(f"{name}: the file has no VAE (first_stage_model.*) tensors")
    components["unet"] = instantiate_module(
        lambda: UNet2DConditionModel.from_config(unet_config), unet_sd, dtype, "UNet", name
    )
    del unet_sd
    components["vae"] = instantiate_module(lambda: AutoencoderKL.from_config(vae_config), vae_sd, dtype, "VAE", name)
    del vae_sd

    family = "sdxl" if detection.is_sdxl else ("sd2" if detection.arch.startswith("sd2") else "sd1")
    kind, prefix = TEXT_ENCODER_PREFIXES[family]
    components["text_encoder"] = _text_encoder_from_ldm(
        kind, prefix, _component_config(detection, "text_encoder"), checkpoint, dtype, name
    )
    if detection.is_sdxl:
        kind2, prefix2 = TEXT_ENCODER_PREFIXES["sdxl_2"]
        components["text_encoder_2"] = _text_encoder_from_ldm(
            kind2, prefix2, _component_config(detection, "text_encoder_2"), checkpoint, dtype, name
        )
    _add_tokenizers_and_scheduler(components, detection)
    return components


def _add_tokenizers_and_scheduler(components: dict[str, Any], detection: Detection) -> None:
    pads = configs.tokenizer_pad_tokens(detection.arch)
    components["tokenizer"] = configs.load_clip_tokenizer(pads[0])
    if detection.is_sdxl:
        components["tokenizer_2"] = configs.load_clip_tokenizer(pads[1] if len(pads) > 1 else "!")
    components["scheduler"] = _scheduler_for(detection)


def _scheduler_for(detection: Detection) -> Any:
    """The default scheduler: it only carries the model's noise schedule (and, for SD 2.x, the
    parameterisation as decided); each job builds its own sampler from it."""
    from diffusers import EulerDiscreteScheduler

    scheduler_config = _component_config(detection, "scheduler")
    if detection.prediction_from is not None:
        scheduler_config["prediction_type"] = detection.prediction_type
    return EulerDiscreteScheduler.from_config(scheduler_config)


def _decide_prediction(detection: Detection, components: dict[str, Any], name: str) -> Detection:
    """An SD 2.x file with no hint of its parameterisation: run its UNet once and go by what it predicts."""
    probe = probe_prediction(components["unet"], components["text_encoder"], components["tokenizer"],
                             int(components["scheduler"].config.num_train_timesteps))
    decided = detection.decided(probe.v_prediction, FROM_WEIGHTS)
    log.info("%s has no sidecar .yaml, metadata or name that tells epsilon from v-prediction; "
             "%s, so it is %s", name, probe.describe(), decided.describe())
    if decided.embedded_config is None:  # the UNet was built from the 768-v config: only its size differs
        sample_size = configs.load_component_config(decided.arch, "unet")["sample_size"]
        components["unet"].register_to_config(sample_size=sample_size)
    components["scheduler"] = _scheduler_for(decided)
    return decided


def _detect_from_state_dict(checkpoint: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> Detection:
    return detect_architecture({k: tuple(v.shape) for k, v in checkpoint.items()}, metadata, path)


def detect_file(path: Path) -> Detection | None:
    """The architecture of a .safetensors file from its header; None for pickled files (unknown until read).

    Also checks that every part the loader needs is present, so an incomplete file fails before the
    cache makes room for it (which could evict the model in use).
    """
    if Path(path).suffix.lower() != ".safetensors":
        return None
    header = read_header(path)
    detection = detect_architecture(header.tensors, header.metadata, Path(path))
    family = "sdxl" if detection.is_sdxl else ("sd2" if detection.arch.startswith("sd2") else "sd1")
    needed = {"VAE": ("first_stage_model.",), "text encoder": (TEXT_ENCODER_PREFIXES[family][1],)}
    if detection.is_sdxl:
        needed["second text encoder"] = (TEXT_ENCODER_PREFIXES["sdxl_2"][1],)
    for part, prefixes in needed.items():
        if not any(key.startswith(prefixes) for key in header.tensors):
            raise CheckpointLoadError(f"{Path(path).name}: the file has no {part} ({prefixes[0]}* tensors)")
    return detection


def detect_entry(entry: CheckpointEntry) -> Detection | None:
    """detect_file, plus what an earlier load read off the weights (an SD 2 file's parameterisation)."""
    detection = detect_file(entry.path)
    if detection is not None and detection.prediction_undecided:
        remembered = entry.remembered_prediction
        if remembered is not None:
            detection = detection.decided(remembered == "v_prediction", FROM_WEIGHTS)
    return detection


def describe_checkpoint(entry: CheckpointEntry) -> str:
    """What the model list shows beside a checkpoint's title: family, and for SD 2.x the parameterisation
    and where it was decided. Reads the header only (a pickled file: nothing is known before loading)."""
    if entry.kind == "diffusers":
        try:
            return _detect_diffusers_folder(entry.path).describe()
        except CheckpointLoadError as exc:
            return f"unreadable: {exc}"
    try:
        detection = detect_entry(entry)
    except (CheckpointLoadError, CorruptCheckpointError, UnknownArchitectureError) as exc:
        return f"unreadable: {exc}"
    return detection.describe() if detection is not None else "known when loaded"


# --------------------------------------------------------------------------- diffusers folders


def _detect_diffusers_folder(folder: Path) -> Detection:
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointLoadError(f"{folder.name}: unreadable diffusers folder ({exc})") from exc
    inpaint = unet.get("in_channels") == 9
    if "XL" in str(index.get("_class_name", "")) or unet.get("addition_embed_type") == "text_time":
        return Detection("sdxl-inpaint" if inpaint else "sdxl")
    if unet.get("cross_attention_dim") == 1024:
        if inpaint:
            return Detection("sd2-inpaint")
        sched = folder / "scheduler" / "scheduler_config.json"
        v = sched.exists() and json.loads(sched.read_text(encoding="utf-8")).get("prediction_type") == "v_prediction"
        return Detection("sd2-v" if v else "sd2")
    return Detection("sd1-inpaint" if inpaint else "sd1")


@torch.no_grad()
def _own_memory(module: torch.nn.Module) -> None:
    """Copy weights that from_pretrained left in memory-mapped pages of the files (when the load dtype is
    the files' dtype) into process memory, one tensor at a time, so rewriting a file cannot reach them."""
    for tensor in [*module.parameters(), *module.buffers()]:  # tied weights are listed once and stay tied
        if tensor.device.type == "cpu":
            tensor.data = tensor.data.clone()


@_built_alone  # from_pretrained builds weightless modules with accelerate too
def _load_diffusers_folder(folder: Path, dtype: torch.dtype) -> tuple[Detection, dict[str, Any]]:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    detection = _detect_diffusers_folder(folder)
    opts: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": True}
    components: dict[str, Any] = {
        "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **opts),
        "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", **opts),
        "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder", **opts),
    }
    if detection.is_sdxl:
        components["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", **opts)
    for module in components.values():
        module.eval().requires_grad_(False)
        _own_memory(module)
    _add_tokenizers_and_scheduler(components, detection)
    for tok in ("tokenizer", "tokenizer_2"):
        files = ("vocab.json", "tokenizer.json")  # transformers 5 saves only tokenizer.json
        if tok in components and any((folder / tok / f).exists() for f in files):
            components[tok] = CLIPTokenizer.from_pretrained(folder / tok, local_files_only=True)
            components[tok].model_max_length = 77
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.exists():
        components["scheduler"] = EulerDiscreteScheduler.from_config(json.loads(sched.read_text(encoding="utf-8")))
    return detection, components


# --------------------------------------------------------------------------- entry point


def load_checkpoint(entry: CheckpointEntry, dtype: torch.dtype) -> LoadedModel:
    """Load one checkpoint to CPU memory in `dtype`. Raises CheckpointLoadError with a clear message."""
    start = time.perf_counter()
    name = entry.name
    identity = entry.identity()  # before reading: a change during the read shows as stale at the next job
    try:
        if entry.kind == "diffusers":
            detection, components = _load_diffusers_folder(entry.path, dtype)
        else:
            from_header = detect_file(entry.path)  # fails before any weight is read
            checkpoint, metadata = read_checkpoint_file(entry.path, dtype)
            detection = from_header or _detect_from_state_dict(checkpoint, metadata, entry.path)
            components = build_components(checkpoint, detection, dtype, name)
            del checkpoint
            if detection.prediction_undecided:
                detection = _decide_prediction(detection, components, name)
    except CheckpointLoadError:
        raise
    except (CorruptCheckpointError, UnknownArchitectureError) as exc:
        raise CheckpointLoadError(str(exc)) from exc
    except MemoryError as exc:
        raise CheckpointLoadError(f"{name}: not enough memory to load it") from exc
    except Exception as exc:  # any other failure inside conversion is still a problem with this file
        raise CheckpointLoadError(f"{name}: cannot load ({type(exc).__name__}: {exc})") from exc
    elapsed = time.perf_counter() - start
    log.info("Loaded %s (%s, %s) in %.1f s", name, detection.describe(), str(dtype).replace("torch.", ""), elapsed)
    return LoadedModel(name, detection.arch, detection, components, dtype, entry.path, elapsed, identity=identity)


def estimate_nbytes(entry: CheckpointEntry, dtype: torch.dtype) -> int | None:
    """Bytes the loaded model will take, from the header alone (None when unknown)."""
    if entry.kind != "safetensors":
        return None
    try:
        header = read_header(entry.path)
    except CorruptCheckpointError:
        return None
    size = torch.tensor([], dtype=dtype).element_size()
    # EMA copies and other training leftovers are not loaded.
    keep = {k: v for k, v in header.tensors.items() if not k.startswith(_SKIPPED_PREFIXES)}
    return sum(v.numel * size for v in keep.values())
