"""Extra-network and prompt costs on an SD 1.5-shaped model, each relative to one UNet step at 512x512
(batch 2: the conditional and unconditional halves of one CFG step), measured in the same run:

- applying two LoRAs (rank 16, attention + feed-forward + text encoder) and removing them again;
- encoding a 3-chunk prompt with prompt editing (both prompts of the schedule, and the negative).

    .venv/bin/python -m benchmarks.networks_overhead [--device cuda --precision fp16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import make_context, work_dir
from benchmarks.random_checkpoints import write_random_lora, write_random_sd15

LONG_PROMPT = ", ".join(["a highly detailed oil painting of a lighthouse on a cliff at sunset"] * 9)
EDITED_PROMPT = f"[{LONG_PROMPT}:a watercolor of a harbour, soft light:0.5] BREAK red sky"


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(ctx, repeats: int) -> dict[str, float]:
    from webui.models.lora import LoraUse
    from webui.pipelines.conditioning import PromptEncoder, build_conditioning

    manager = ctx.manager
    device = manager.device
    folder = manager.loras.folder
    paths = [write_random_lora(folder / f"random-{i}.safetensors", seed=i) for i in range(2)]
    with manager.use("random-0") as model:
        if device.type != "cpu":
            for module in model.components.values():
                if isinstance(module, torch.nn.Module):
                    module.to(device)
        unet = model.components["unet"]
        latents = torch.randn(2, 4, 64, 64, device=device, dtype=model.dtype)
        context = torch.randn(2, 77, 768, device=device, dtype=model.dtype)
        step_time = torch.tensor([500], device=device)

        def unet_step() -> None:
            with torch.inference_mode():
                unet(latents, step_time, encoder_hidden_states=context)

        unet_step()
        step = timed(unet_step, repeats, device)
        uses = [LoraUse(manager.loras.load(p.stem, p), 0.8, 0.8) for p in paths]

        def apply_and_remove() -> None:
            manager.apply_loras(model, uses)
            manager.apply_loras(model, [])

        apply_and_remove()
        loras = timed(apply_and_remove, repeats, device)

        def encode():
            encoder = PromptEncoder(model.components, False, 1, device)  # a fresh cache, as each job has
            return build_conditioning(encoder, EDITED_PROMPT, "blurry, lowres", 20)

        chunks = encode().positive[0][1].embeds.shape[1] // 77
        prompt = timed(encode, repeats, device)
    return {"unet_step_s": step, "two_loras_apply_remove_s": loras, "prompt_encode_s": prompt,
            "lora_ratio": loras / step, "prompt_ratio": prompt / step, "chunks": chunks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = work_dir("networks")
    models = work / "models"
    write_random_sd15(models / "Stable-diffusion" / "random-0.safetensors", seed=0)
    ctx = make_context(models, work / "outputs", device=args.device, precision=args.precision, offload="none")
    figures = measure(ctx, args.repeats)
    ctx.close()
    print(f"one UNet step at 512x512 (batch 2): {figures['unet_step_s'] * 1000:.1f} ms")
    print(f"apply + remove two LoRAs: {figures['two_loras_apply_remove_s'] * 1000:.1f} ms "
          f"= {figures['lora_ratio']:.2f} UNet steps")
    print(f"encode a {figures['chunks']}-chunk prompt with editing (+ negative): "
          f"{figures['prompt_encode_s'] * 1000:.1f} ms = {figures['prompt_ratio']:.2f} UNet steps")


if __name__ == "__main__":
    main()
