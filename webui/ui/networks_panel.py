"""The LoRA and embedding lists under the prompt: click a card to add it to the prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from ..extra_networks import lora_tag
from . import forms

if TYPE_CHECKING:
    from ..context import AppContext


def lora_samples(ctx: AppContext) -> list[list[str]]:
    return [[name] for name in ctx.manager.loras.files()]


def embedding_samples(ctx: AppContext) -> list[list[str]]:
    return [[name] for name in ctx.manager.embeddings.files()]


def _hint(ctx: AppContext) -> str:
    loras = ctx.manager.loras.folder
    embeddings = ", ".join(f"`{folder}`" for folder in ctx.manager.embeddings.folders)
    return (f"LoRA files (`.safetensors`) go in `{loras}`, textual-inversion embeddings in {embeddings}. "
            "Click a card to add it to the prompt; edit the number in `<lora:name:1>` to change its weight.")


def build_networks_panel(ctx: AppContext, mode: str, prompt: gr.Textbox) -> None:
    with gr.Accordion("🎴 LoRA and embeddings", open=False, elem_id=f"{mode}-networks"):
        with gr.Row():
            loras = gr.Dataset(components=["text"], samples=lora_samples(ctx), label="LoRA", samples_per_page=30,
                               layout="gallery", elem_id=f"{mode}-lora-cards")
            embeddings = gr.Dataset(components=["text"], samples=embedding_samples(ctx), label="Embeddings",
                                    samples_per_page=30, layout="gallery", elem_id=f"{mode}-embedding-cards")
            refresh = gr.Button("🔄", elem_id=f"{mode}-refresh-networks", size="sm", scale=0, min_width=40)
        gr.Markdown(_hint(ctx), elem_id=f"{mode}-networks-hint")

    def add_lora(sample: list[str], text: str) -> str:
        return forms.insert_into_prompt(text, lora_tag(sample[0])) if sample else text

    def add_embedding(sample: list[str], text: str) -> str:
        return forms.insert_into_prompt(text, sample[0]) if sample else text

    loras.click(add_lora, [loras, prompt], [prompt], queue=False, api_visibility="private")
    embeddings.click(add_embedding, [embeddings, prompt], [prompt], queue=False, api_visibility="private")
    refresh.click(lambda: (gr.Dataset(samples=lora_samples(ctx)), gr.Dataset(samples=embedding_samples(ctx))),
                  None, [loras, embeddings], queue=False, api_visibility="private")
