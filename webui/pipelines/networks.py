"""A job's extra networks: the LoRA tags and embedding names in its prompts, resolved against the
model folders, with the warnings a user should see and the infotext fields that reproduce them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..extra_networks import extract_tags
from ..models.embeddings import EmbeddingLibrary
from ..models.loader import CheckpointLoadError
from ..models.lora import LoraLibrary, LoraUse


@dataclass
class JobNetworks:
    prompt: str  # the prompt to encode: tags removed
    negative_prompt: str
    loras: list[LoraUse] = field(default_factory=list)
    embeddings: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # lower name -> per-encoder vectors
    warnings: list[str] = field(default_factory=list)
    lora_hashes: dict[str, str] = field(default_factory=dict)
    ti_hashes: dict[str, str] = field(default_factory=dict)

    def infotext_params(self) -> dict[str, str | None]:
        def joined(hashes: dict[str, str]) -> str | None:
            return ", ".join(f"{name}: {digest}" for name, digest in hashes.items()) or None

        return {"Lora hashes": joined(self.lora_hashes), "TI hashes": joined(self.ti_hashes)}


def encoder_widths(components: dict[str, Any]) -> list[int]:
    encoders = [components[name] for name in ("text_encoder", "text_encoder_2") if components.get(name) is not None]
    return [encoder.get_input_embeddings().embedding_dim for encoder in encoders]


def resolve_networks(prompt: str, negative_prompt: str, components: dict[str, Any], loras: LoraLibrary,
                     embeddings: EmbeddingLibrary) -> JobNetworks:
    text, tags, problems = extract_tags(prompt)
    negative, negative_tags, negative_problems = extract_tags(negative_prompt)
    job = JobNetworks(text, negative, warnings=problems + negative_problems)
    if negative_tags:
        job.warnings.append("Extra-network tags in the negative prompt are ignored: "
                            + " ".join(tag.text for tag in negative_tags))
    for tag in tags:
        if tag.kind != "lora":
            job.warnings.append(f"Unknown extra network {tag.text} ignored (only <lora:...> is supported)")
            continue
        found = loras.find(tag.name)
        if found is None:
            job.warnings.append(f"LoRA not found: {tag.name} (looked in {loras.folder}); the prompt ran without it")
            continue
        name, path = found
        try:
            network = loras.load(name, path)
        except (CheckpointLoadError, OSError) as exc:
            job.warnings.append(f"LoRA {tag.name} could not be used: {exc}")
            continue
        job.loras.append(LoraUse(network, tag.te_weight, tag.unet_weight))
        job.lora_hashes[tag.name] = loras.short_hash(name, path)
    widths = encoder_widths(components)
    for name in embeddings.find_in(f"{text}\n{negative}"):
        try:
            embedding = embeddings.get(name)
        except (CheckpointLoadError, OSError, KeyError) as exc:
            job.warnings.append(f"Embedding {name} could not be used: {exc}")
            continue
        vectors = [embedding.for_width(width, index == 1) for index, width in enumerate(widths)]
        if any(v is None for v in vectors):
            job.warnings.append(f"Embedding {embedding.name} was made for another kind of model; it was skipped")
            continue
        job.embeddings[name.lower()] = vectors  # type: ignore[assignment]
        job.ti_hashes[embedding.name] = embeddings.short_hash(embedding)
    return job
