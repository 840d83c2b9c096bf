"""The demo model and the demo ControlNet as plain diffusers pipelines (a development tool, not shipped).

The ControlNet's training script, benchmark and test use these so they judge the weights on their
own, through diffusers' ``StableDiffusionControlNetPipeline``, independent of Atelier's engine. The
demo model is read by Atelier's own loader (the original single-file layout, configs in its metadata).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository root
DEMO_MODEL = ROOT / "webui" / "models" / "builtin" / "atelier-demo.safetensors"
CONTROLNET_DIR = ROOT / "webui" / "controlnet" / "builtin" / "atelier-demo-outline"

__all__ = ["CONTROLNET_DIR", "DEMO_MODEL", "controlnet_pipeline", "generate", "load_controlnet", "load_demo_components",
           "plain_pipeline"]


def load_demo_components(path: Path = DEMO_MODEL) -> dict[str, Any]:
    """unet, vae, text_encoder, tokenizer, scheduler of the demo model, fp32, frozen, in eval mode."""
    from webui.models.loader import load_checkpoint
    from webui.models.registry import CheckpointEntry

    if not path.exists():
        raise SystemExit(f"{path} is missing; run python -m tools.demo_model.train first")
    components = dict(load_checkpoint(CheckpointEntry(path.name, path, "safetensors"), torch.float32).components)
    for name in ("unet", "vae", "text_encoder"):
        components[name].eval().requires_grad_(False)
    return components


def load_controlnet(folder: Path = CONTROLNET_DIR) -> Any:
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(folder, torch_dtype=torch.float32).eval()


def _euler_a(components: dict[str, Any]) -> Any:
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler.from_config(components["scheduler"].config)


def controlnet_pipeline(components: dict[str, Any], controlnet: Any) -> Any:
    """``StableDiffusionControlNetPipeline`` over the demo model with Euler a (its usual sampler)."""
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"], tokenizer=components["tokenizer"],
        unet=components["unet"], controlnet=controlnet, scheduler=_euler_a(components), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_pipeline(components: dict[str, Any]) -> Any:
    """``StableDiffusionPipeline`` over the same components: the picture without any ControlNet."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"], tokenizer=components["tokenizer"],
        unet=components["unet"], scheduler=_euler_a(components), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: Any, prompt: str, seed: int, control_image: Any = None, steps: int = 20, cfg: float = 7.0,
             **control: Any) -> Any:
    """One 64×64 picture (PIL) of ``pipe`` for ``seed``; ``control_image`` and ``control`` (e.g.
    ``controlnet_conditioning_scale``) go to a ControlNet pipeline only."""
    kwargs = dict(control)
    if control_image is not None:
        kwargs["image"] = control_image
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = pipe(prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=cfg,
                   generator=generator, **kwargs)
    return out.images[0]
