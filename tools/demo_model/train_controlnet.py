"""Train Atelier's built-in demo ControlNet: outline maps -> the demo model's shapes, on the CPU.

The network is diffusers' ``ControlNetModel`` made from the demo UNet (``ControlNetModel.from_unet``:
its encoder half copied, zero convolutions on every residual), with a conditioning embedding that
downsamples by 4, not SD's 8, because the demo VAE does (64×64 pictures, 16×16 latents). The demo
model itself (UNet, VAE, text encoder) stays frozen.

Data, drawn once into a pool (all seeded, ``tools.demo_model.shapes``): random scenes whose shape
sits anywhere (``outlines.placed_scene``: a third at one of the nine named places with the place in
the caption, the rest uniformly placed with a caption that names no place), each paired with one
white-on-black outline map of its shape (``tools.demo_model.outlines``), of one of these kinds:

- geometry outlines traced from the scene's geometry, 1-2.5 px wide, anti-aliased or two-level;
- ``cv2.Canny`` of the drawn picture (RGB, thresholds 100/200 mostly, sometimes others);
- ``cv2.Canny`` of the picture passed through the demo VAE (the soft edges of generated pictures);
- ``cv2.Canny`` of the picture enlarged to 128-512 (a preprocessor resolution), fitted back to 64.

Loss: the demo model's own objective: epsilon prediction on SD's scaled-linear schedule with its
offset noise, min-SNR-5 weighting; 15% empty captions so the map also steers the unconditional
half of classifier-free guidance. AdamW, warm-up then cosine; EMA of the weights, which are saved.
Writes ``webui/controlnet/builtin/atelier-demo-outline/`` (diffusers folder: ``config.json`` and
fp16 ``diffusion_pytorch_model.safetensors``, each file written atomically).

Run from the repository root:

    nice -n 10 .venv/bin/python -m tools.demo_model.train_controlnet

Measured for the shipped folder on the 2-core development machine while other jobs shared it (load
average 9-13): 59.2 minutes wall in one run (drawing and encoding the pool of 12000 scenes 3.1 min;
1500 steps of batch 32 at ~0.4 steps/s; six quick evaluations ~2.5 min). Alone the machine does ~1.0
steps/s (timed on the first steps), about 3 + 25 minutes. The quick position accuracy was 89% at step
250 and 100% from step 500 on.

``--work-dir`` keeps a checkpoint every 250 steps (and rewrites the output folder with the EMA
weights); ``--resume`` continues from it; ``--steps`` shortens a trial run. Every ``--eval-every``
steps the EMA weights draw 18 pictures (circle and star at the nine places, 12 steps) and their
position accuracy is logged. ``python -m benchmarks.demo_controlnet`` judges the result.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
# wait for a descheduled peer and training runs several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tools.demo_model import outlines, positions, shapes  # noqa: E402
from tools.demo_model.demo_pipelines import CONTROLNET_DIR, controlnet_pipeline, generate, load_demo_components  # noqa: E402
from tools.safetensors_file import write_safetensors  # noqa: E402
from webui.fileio import write_text_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]  # the repository root
SEED = 20261210
LR = 2e-4
OFFSET_NOISE = 0.15  # as the demo model was trained (tools.demo_model.train)
EMPTY_CAPTIONS = 0.15
# Three levels: the map is embedded at 1/4 of its size, the demo latents' scale.
CONDITIONING_CHANNELS = (16, 32, 96)
# Map kinds and their share of the pool (see the module docstring).
KINDS: dict[str, float] = {"outline": 0.3, "outline-binary": 0.1, "canny": 0.25, "canny-vae": 0.2,
                           "canny-hires": 0.15}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- data


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB pictures as an NCHW float tensor in [-1, 1]."""
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    arrays = ((batch.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arrays]


def make_map(kind: str, scene: shapes.Scene, picture: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """One outline map of ``kind`` for the scene (``picture``: its drawing, or the VAE's rendering of it)."""
    if kind in ("outline", "outline-binary"):
        edge = outlines.outline_map(scene, line=float(rng.uniform(1.0, 2.5)))
        return np.where(edge >= 96, 255, 0).astype(np.uint8) if kind == "outline-binary" else edge
    low, high = (100, 200) if rng.random() < 0.6 else (int(rng.integers(40, 160)), 0)
    high = high or min(255, 2 * low)
    resolution = int(rng.choice([128, 256, 512])) if kind == "canny-hires" else None
    return outlines.canny_map(picture, low, high, resolution)


@torch.no_grad()
def build_pool(vae: Any, count: int, seed: int) -> tuple[torch.Tensor, np.ndarray, list[shapes.Scene], dict[str, int]]:
    """``count`` (latent, map, scene) triples: scaled latent means (N, 4, 16, 16), maps (N, 64, 64) uint8."""
    rng = np.random.default_rng(seed)
    kinds = list(KINDS)
    chosen = rng.choice(len(kinds), size=count, p=np.array(list(KINDS.values())) / sum(KINDS.values()))
    scenes = [outlines.placed_scene(rng) for _ in range(count)]
    latents, maps = [], []
    for start in range(0, count, 250):
        part = range(start, min(count, start + 250))
        pictures = [shapes.draw(scenes[i]) for i in part]
        mean = vae.encode(to_tensor(pictures)).latent_dist.mean
        latents.append(mean * vae.config.scaling_factor)
        needs_vae = [j for j, i in enumerate(part) if kinds[chosen[i]] == "canny-vae"]
        if needs_vae:
            for j, rendered in zip(needs_vae, to_images(vae.decode(mean[needs_vae]).sample), strict=True):
                pictures[j] = rendered
        maps += [make_map(kinds[chosen[i]], scenes[i], pictures[j], rng) for j, i in enumerate(part)]
    counts = {k: int((chosen == j).sum()) for j, k in enumerate(kinds)}
    return torch.cat(latents), np.stack(maps), scenes, counts


def maps_to_tensor(maps: np.ndarray) -> torch.Tensor:
    """(N, 64, 64) uint8 maps as the pipeline hands them on: (N, 3, 64, 64) floats in [0, 1]."""
    single = torch.from_numpy(maps).float()[:, None] / 255.0
    return single.expand(-1, 3, -1, -1).contiguous()


# --------------------------------------------------------------------------- model


def build_controlnet(unet: Any) -> Any:
    from diffusers import ControlNetModel

    torch.manual_seed(SEED)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS)


def write_controlnet(folder: Path, controlnet: Any) -> None:
    """A diffusers ControlNet folder: fp16 safetensors weights and config.json, each written atomically."""
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in controlnet.state_dict().items()}
    write_safetensors(folder / "diffusion_pytorch_model.safetensors", tensors, {"format": "pt"})
    config = json.loads(controlnet.to_json_string())
    config.pop("_name_or_path", None)
    write_text_atomic(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- evaluation


def quick_accuracy(components: dict[str, Any], controlnet: Any, steps: int = 12) -> float:
    """Share of 18 pictures (circle and star at the nine places, one seed each) whose shape lands at
    the place its geometry outline map shows."""
    pipe = controlnet_pipeline(components, controlnet)
    colours = list(shapes.COLOURS)
    right, total = 0, 0
    for si, shape in enumerate(("circle", "star")):
        for pi, place in enumerate(positions.GRID):
            fg = colours[(si * 9 + pi) % len(colours)]
            bg = shapes.eval_background(fg, pi)
            scene = positions.grid_scene(fg, shape, bg, place)
            prompt = shapes.caption(dataclasses.replace(scene, position=None))
            control = outlines.to_rgb(outlines.outline_map(scene))
            picture = generate(pipe, prompt, seed=1000 + pi, control_image=control, steps=steps)
            right += positions.place_of(picture, shape) == place
            total += 1
    return right / total


# --------------------------------------------------------------------------- training


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(components: dict[str, Any], controlnet: Any, latents: torch.Tensor, maps: np.ndarray,
          scenes: list[shapes.Scene], args: argparse.Namespace) -> Any:
    """Train ``controlnet`` in place; returns its EMA copy."""
    from diffusers import DDPMScheduler

    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    noise_sched = DDPMScheduler.from_config(components["scheduler"].config)
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 for epsilon prediction, as the demo model

    params = [p for p in controlnet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0, betas=(0.9, 0.99))
    ema = copy.deepcopy(controlnet).requires_grad_(False)
    rng = np.random.default_rng(SEED + 30)
    gen = torch.Generator().manual_seed(SEED + 31)
    checkpoint = args.work_dir / "controlnet.pt"
    start = 0
    if args.resume and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)  # our own file
        controlnet.load_state_dict(saved["net"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["opt"])
        rng.bit_generator.state = saved["rng"]
        gen.set_state(saved["gen"])
        start = saved["step"]
        log(f"resumed at step {start}")

    context_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def context(text: str) -> torch.Tensor:
        # As the SD pipeline encodes a prompt: padded to 77 with <|endoftext|>, no attention mask.
        if text not in context_cache:
            ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            context_cache[text] = text_encoder(ids).last_hidden_state[0]
        return context_cache[text]

    steps, batch = args.steps, args.batch
    controlnet.train()
    t0 = time.time()
    running = None
    for step in range(start, steps):
        lr = LR * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = rng.integers(len(scenes), size=batch)
        captions = []
        for i in idx:
            scene = scenes[i]
            templates = shapes.BACKGROUND_TEMPLATES if scene.mention_bg else shapes.PLAIN_TEMPLATES
            scene = dataclasses.replace(scene, template=int(rng.integers(len(templates))))
            captions.append("" if rng.random() < EMPTY_CAPTIONS else shapes.caption(scene, rng))
        ctx = torch.stack([context(c) for c in captions])
        x0 = latents[torch.from_numpy(idx)]
        cond = maps_to_tensor(maps[idx])
        noise = torch.randn(x0.shape, generator=gen)
        noise += OFFSET_NOISE * torch.randn((batch, x0.shape[1], 1, 1), generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noisy = noise_sched.add_noise(x0, noise, t)
        down, mid = controlnet(noisy, t, encoder_hidden_states=ctx, controlnet_cond=cond, return_dict=False)
        pred = unet(noisy, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for p, e in zip(controlnet.parameters(), ema.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        value = per_sample.mean().item()
        running = value if running is None else 0.98 * running + 0.02 * value
        if (step + 1) % 25 == 0:
            rate = (step + 1 - start) / (time.time() - t0)
            log(f"step {step + 1}/{steps} mse {running:.4f} lr {lr:.1e} ({rate:.2f} steps/s, "
                f"{(steps - step - 1) / rate / 60:.1f} min left)")
        if (step + 1) % 250 == 0 or step + 1 == steps:
            save_state(checkpoint, {"step": step + 1, "net": controlnet.state_dict(), "ema": ema.state_dict(),
                                    "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                                    "gen": gen.get_state()})
            write_controlnet(args.output, ema)
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step + 1 == steps):
            began = time.time()
            log(f"quick position accuracy (EMA, 18 pictures): {quick_accuracy(components, ema.eval()):.0%} "
                f"({time.time() - began:.0f} s)")
    return ema.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=CONTROLNET_DIR)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / "_work" / "train_controlnet")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    parser.add_argument("--pool", type=int, default=12000, help="scenes drawn for training")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ema", type=float, default=0.995, help="EMA decay of the saved weights")
    parser.add_argument("--eval-every", type=int, default=500, help="0: no quick evaluation")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.time()
    components = load_demo_components()
    controlnet = build_controlnet(components["unet"])
    log(f"ControlNet: {sum(p.numel() for p in controlnet.parameters()) / 1e6:.2f} M parameters")
    latents, maps, scenes, counts = build_pool(components["vae"], args.pool, SEED + 3)
    log(f"drew {len(scenes)} scenes and maps ({', '.join(f'{k} {v}' for k, v in counts.items())}) "
        f"in {time.time() - started:.0f} s")
    ema = train(components, controlnet, latents, maps, scenes, args)
    write_controlnet(args.output, ema)
    size = (args.output / "diffusion_pytorch_model.safetensors").stat().st_size
    log(f"wrote {args.output} ({size / 1e6:.2f} MB); done in {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
