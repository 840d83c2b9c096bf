"""What the read-only endpoints list, in A1111's shapes: checkpoints, VAEs, samplers, schedule types,
upscalers (the engine's upscaler library), LoRAs, embeddings, styles, memory and the command-line flags
(secrets redacted).

LoRA and embedding files are listed from their folders here (headers only, nothing is unpickled);
each listing is one small function so the engine's own LoRA/embedding libraries can replace it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models.header import CorruptCheckpointError, read_header
from ..models.loader import describe_checkpoint
from ..models.vae import list_vaes
from ..samplers import AUTOMATIC, SAMPLERS, SCHEDULE_IDS, SCHEDULE_TYPES

if TYPE_CHECKING:
    from ..context import AppContext

NETWORK_SUFFIXES = (".safetensors", ".pt", ".ckpt")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
SECRET_FLAGS = ("auth", "api_auth", "gradio_auth", "password")
REDACTED = "<redacted>"
# A1111's ids for schedule types and their default rho (Karras' 7).
_SCHEDULER_IDS = SCHEDULE_IDS
# A1111's schedule types whose sigma function takes rho, and its default; those that need the model's own sigmas.
_DEFAULT_RHO = {"Karras": 7.0, "Polyexponential": 1.0}
_NEEDS_MODEL = {"Uniform", "SGM Uniform", "Simple", "Normal", "DDIM", "Beta", "Turbo"}


def sd_models(ctx: AppContext) -> list[dict[str, Any]]:
    """A1111's fields, plus Atelier's "description": the family and, for SD 2.x, v or epsilon and what decided it."""
    return [{"title": e.title, "model_name": e.model_name, "hash": e.short_hash, "sha256": e.sha256,
             "filename": str(e.path), "config": None, "description": describe_checkpoint(e)}
            for e in ctx.registry.entries()]


def sd_vaes(ctx: AppContext) -> list[dict[str, Any]]:
    return [{"model_name": f.name, "filename": str(f.path)} for f in list_vaes(ctx.settings.models_dir / "VAE")]


def samplers() -> list[dict[str, Any]]:
    """A1111 lists a sampler's own default schedule type as options.scheduler, and whether it discards the
    next-to-last sigma."""
    items = []
    for spec in SAMPLERS.values():
        options: dict[str, str] = {"scheduler": _SCHEDULER_IDS[spec.automatic]} if spec.automatic != AUTOMATIC else {}
        if spec.options.get("discard_penultimate_sigma"):
            options["discard_next_to_last_sigma"] = "True"  # A1111's schema makes its option values strings
        items.append({"name": spec.name, "aliases": list(spec.aliases), "options": options})
    return items


def schedulers() -> list[dict[str, Any]]:
    return [{"name": _SCHEDULER_IDS[label], "label": label,
             "aliases": ["SGMUniform"] if label == "SGM Uniform" else None,
             "default_rho": _DEFAULT_RHO.get(label, -1.0), "need_inner_model": label in _NEEDS_MODEL}
            for label in SCHEDULE_TYPES]


def upscalers(ctx: AppContext) -> list[dict[str, Any]]:
    """None, Lanczos, Nearest, then the model files (read from their folders again: new files show at once)."""
    library = ctx.manager.upscalers
    library.refresh()
    return library.entries()


def _files(folders: list[Path], suffixes: tuple[str, ...]) -> list[Path]:
    found = []
    for folder in folders:
        if folder.is_dir():
            found += [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                      and not p.name.startswith(".")]
    return sorted(found, key=lambda p: str(p).lower())


def _metadata(path: Path) -> dict[str, Any]:
    """A safetensors file's metadata, JSON-looking values parsed as A1111 does; {} for other files."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        raw = read_header(path).metadata
    except CorruptCheckpointError:
        return {}
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        if value[:1] in ("{", "["):
            try:
                parsed[key] = json.loads(value)
                continue
            except ValueError:
                pass
        parsed[key] = value
    return parsed


def loras(ctx: AppContext) -> list[dict[str, Any]]:
    """Files in models/Lora as A1111 lists them: name (file stem), alias (ss_output_name), path, metadata."""
    items = []
    for name, path in ctx.manager.loras.files().items():  # the library <lora:name:w> tags are looked up in
        metadata = _metadata(path)
        alias = metadata.get("ss_output_name")
        items.append({"name": name, "alias": alias if isinstance(alias, str) and alias else name,
                      "path": str(path), "metadata": metadata})
    return items


def embedding_dirs(ctx: AppContext) -> list[Path]:
    """The folders the engine finds embeddings in (settings: --embeddings-dir, or models/embeddings and embeddings/)."""
    return list(ctx.settings.embedding_dirs)


def embeddings(ctx: AppContext) -> dict[str, dict[str, Any]]:
    """{"loaded": {name: {step, sd_checkpoint, sd_checkpoint_name, shape, vectors}}, "skipped": {...}}.

    Safetensors headers give shape (vector width) and vectors (tokens); pickled files are not opened
    here, so theirs are null. An unreadable file is listed under "skipped"."""
    loaded: dict[str, dict[str, Any]] = {}
    skipped: dict[str, dict[str, Any]] = {}
    for path in _files(embedding_dirs(ctx), EMBEDDING_SUFFIXES):
        item: dict[str, Any] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                                "vectors": None}
        if path.suffix.lower() == ".safetensors":
            try:
                shapes = [info.shape for info in read_header(path).tensors.values()]
            except CorruptCheckpointError:
                skipped.setdefault(path.stem, item)
                continue
            matrices = [s if len(s) == 2 else (1, s[0]) for s in shapes if len(s) in (1, 2)]
            if not matrices:
                skipped.setdefault(path.stem, item)
                continue
            item["vectors"] = max(m[0] for m in matrices)
            item["shape"] = sum(m[1] for m in matrices)  # SDXL files: clip_l + clip_g widths, as A1111 adds them
        loaded.setdefault(path.stem, item)
    return {"loaded": loaded, "skipped": skipped}


def prompt_styles(styles: Any) -> list[dict[str, Any]]:
    return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
            for s in styles.load().values()]


def memory(ctx: AppContext) -> dict[str, Any]:
    """A1111's /memory: this process's RAM, and CUDA's figures when there is a CUDA device."""
    import psutil

    process = psutil.Process(os.getpid())
    rss = process.memory_info().rss
    total = psutil.virtual_memory().total
    ram = {"free": total - rss, "used": rss, "total": total}
    cuda: dict[str, Any] = {"error": "unavailable"}
    try:
        import torch

        device = getattr(ctx.manager, "device", None)
        if torch.cuda.is_available() and getattr(device, "type", "") == "cuda":
            free, total_vram = torch.cuda.mem_get_info(device)
            stats = torch.cuda.memory_stats(device)

            def pair(name: str) -> dict[str, int]:
                return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

            cuda = {
                "system": {"free": free, "used": total_vram - free, "total": total_vram},
                "active": pair("active_bytes"),
                "allocated": pair("allocated_bytes"),
                "reserved": pair("reserved_bytes"),
                "inactive": pair("inactive_split_bytes"),
                "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
            }
    except Exception as exc:  # a driver problem shows as the error, never as a failed request
        cuda = {"error": str(exc)}
    return {"ram": ram, "cuda": cuda}


def cmd_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The server's flags as JSON values; credentials are never sent, only whether they were given."""
    shown: dict[str, Any] = {}
    for name, value in flags.items():
        if isinstance(value, str) and value and any(secret in name.lower() for secret in SECRET_FLAGS):
            shown[name] = REDACTED
        else:
            shown[name] = str(value) if isinstance(value, Path) else value
    return shown
