"""A generation request as the queue sees it: the files it needs, how much work it is, a label for people.

Pure apart from reading file sizes; the head resolves names with its own folders before a job is queued.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..extra_networks import extract_tags
from ..models.registry import CheckpointEntry
from ..models.vae import AUTOMATIC, NONE, resolve_vae
from .dispatch import FileFacts, FileRef, Needs

if TYPE_CHECKING:
    from ..models.hashing import HashCache
    from ..pipelines.request import GenerationRequest

MEGAPIXEL = 512 * 512  # one unit of work: a 512x512 picture's step


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def checkpoint_ref(entry: CheckpointEntry) -> FileRef:
    return FileRef("checkpoint", entry.name, FileFacts(_size(entry.path), entry.sha256))


def needs_for(request: GenerationRequest, entry: CheckpointEntry, vae_dir: Path, loras: dict[str, Path],
              hashes: HashCache) -> Needs:
    """The checkpoint (``entry``, already resolved) and a named VAE are required; LoRAs are preferred."""
    files = [checkpoint_ref(entry)]
    if request.vae not in (None, "", AUTOMATIC, NONE) and entry.path.is_file():
        vae = resolve_vae(request.vae, vae_dir, entry.path)  # raises VaeNotFoundError for a name nobody has
        if vae is not None:
            files.append(FileRef("vae", vae.name, FileFacts(_size(vae.path), hashes.cached(f"VAE/{vae.name}",
                                                                                            vae.path))))
    wanted = {tag.name.lower() for text in (request.prompt, request.negative_prompt)
              for tag in extract_tags(text or "")[1] if tag.kind == "lora"}
    prefer = tuple(FileRef("lora", name, FileFacts(_size(path))) for name, path in loras.items()
                   if name.lower() in wanted or name.rsplit("/", 1)[-1].lower() in wanted)
    return Needs(tuple(files), prefer, checkpoint=entry.name)


def cost_of(request: GenerationRequest) -> float:
    """Steps x pictures x megapixels (plus the hires pass): what time estimates scale with."""
    pictures = request.batch_count * request.batch_size
    strength = 1.0 if request.task.value == "txt2img" else max(0.05, min(1.0, request.denoising_strength))
    work = request.steps * strength * request.width * request.height / MEGAPIXEL
    if request.hires:
        width, height = request.hr_size
        steps = request.hr_second_pass_steps or request.steps
        work += steps * request.denoising_strength * width * height / MEGAPIXEL
    return max(0.01, work * pictures)


def label_of(request: GenerationRequest) -> str:
    prompt = " ".join((request.prompt or "").split())
    shown = prompt if len(prompt) <= 48 else prompt[:47] + "…"
    pictures = request.batch_count * request.batch_size
    return f"{request.task.value}: {shown or '(no prompt)'}, {request.steps} steps" + \
        (f", {pictures} pictures" if pictures > 1 else "")
