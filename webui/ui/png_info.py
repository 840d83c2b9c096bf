"""PNG Info: the generation parameters inside any PNG (ours or A1111's), shown escaped, ready to send on."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..infotext import parse_infotext
from ..outputs import read_infotext


@dataclass
class PngInfoTab:
    image: gr.Image
    info: gr.HTML
    text: gr.State  # the raw infotext, for the send buttons
    send: dict[str, gr.Button]


def describe(image: Any) -> tuple[str, str]:
    """(HTML shown, raw infotext) for a dropped picture."""
    if image is None:
        return "", ""
    text = read_infotext(image)
    if not text:
        return "<p class='atelier-warning'>This picture holds no generation parameters.</p>", ""
    parsed = parse_infotext(text)
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in parsed.items() if k not in ("Prompt", "Negative prompt"))
    body = (f"<h4>Prompt</h4><p class='atelier-prompt'>{html.escape(str(parsed.get('Prompt', '')))}</p>"
            f"<h4>Negative prompt</h4><p>{html.escape(str(parsed.get('Negative prompt', '')))}</p>"
            f"<table class='atelier-params'>{rows}</table>"
            "<details><summary>Raw text</summary>"
            f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre></details>")
    return body, text


def build() -> PngInfoTab:
    with gr.Row():
        with gr.Column():
            # type="pil" keeps the file's text chunks and EXIF in image.info, where the parameters live.
            image = gr.Image(label="Drop a PNG here", type="pil", sources=["upload", "clipboard"],
                             elem_id="pnginfo-image", height=400)
        with gr.Column():
            info = gr.HTML(elem_id="pnginfo-info")
            with gr.Row():
                send = {
                    "txt2img": gr.Button("Send to txt2img", elem_id="pnginfo-send-txt2img"),
                    "img2img": gr.Button("Send to img2img", elem_id="pnginfo-send-img2img"),
                    "inpaint": gr.Button("Send to inpaint", elem_id="pnginfo-send-inpaint"),
                }
    text = gr.State("")
    image.change(describe, [image], [info, text], api_name="png_info", queue=False)
    return PngInfoTab(image, info, text, send)
