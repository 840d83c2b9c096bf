"""Train Atelier's built-in demo model: coloured shapes on coloured backgrounds, 64×64, on the CPU.

The model is a miniature Stable Diffusion 1.x: a CLIP text encoder (the standard CLIP tokenizer,
vocabulary 49408, 77 positions, hidden size 64), a UNet2DConditionModel with cross-attention on
16×16 latents, and an AutoencoderKL that downsamples by 4. Its pictures are drawn here with PIL
(``tools.demo_model.shapes``: 8 colours × 4 shapes, optional size words and positions, several caption
wordings), so nothing is downloaded.

Stages (all seeded; the same torch version and thread count give the same file):

1. VAE: reconstruct random drawings (L1 + MSE, a tiny KL term) so flat colours decode crisply.
2. Encode a fixed set of drawings to latents once; the latent scaling factor is 1 / their std.
3. Text encoder + UNet from scratch, epsilon prediction on SD's scaled-linear 1000-step schedule,
   min-SNR loss weighting, 10% empty captions for classifier-free guidance, EMA of the weights.
4. Write ``webui/models/builtin/atelier-demo.safetensors``: fp16, original SD key layout, the
   component configs in the ``atelier.config`` metadata (as the engine reads user files).

Run from the repository root:

    nice -n 10 .venv/bin/python -m tools.demo_model.train

Measured for the shipped file on the 2-core development machine while other jobs (browser tests,
the test suite) shared it: 104 minutes wall in one uninterrupted run (VAE 1200 steps 21.9 min at
~0.95 steps/s, encoding 24000 drawings 3 min, UNet 3200 steps 79 min at ~0.67 steps/s). Alone
the machine does ~1.2 VAE steps/s and ~1.0 UNet steps/s (timed on the first steps and in a
profile of one step): about 17 + 2 + 53 = 72 minutes. ``--work-dir`` keeps checkpoints every few hundred
steps; ``--resume`` continues from the latest one. ``--vae-steps``/``--unet-steps`` shorten a trial run.
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

from tools.demo_model import shapes  # noqa: E402
from tools.ldm_writer import to_original_layout  # noqa: E402
from tools.safetensors_file import write_safetensors  # noqa: E402
from webui.models.configs import load_clip_tokenizer  # noqa: E402
from webui.models.detect import CONFIG_METADATA_KEY  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]  # the repository root
OUTPUT = ROOT / "webui" / "models" / "builtin" / "atelier-demo.safetensors"
SEED = 20261128
# Offset noise: a per-channel constant added to the training noise. Without it the model reads the
# background colour off the faint low-frequency signal left in SD's last timestep, which pure noise at
# inference does not have, so backgrounds come out random.
OFFSET_NOISE = 0.15
UNET_LR = 8e-4
IMAGE = 64
LATENT = 16

SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "trained_betas": None,
}
TEXT: dict[str, Any] = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 64,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
# Three levels: 64 -> 16, so latents are 16×16×4 (vae_scale_factor 4).
VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "act_fn": "silu",
    "sample_size": IMAGE,
    "scaling_factor": 1.0,  # replaced by 1 / std of the encoded training set
}
UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": LATENT,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [64, 128, 128],
    "layers_per_block": 1,
    # No attention at 16×16: a third faster to train, and the prompt decides colours and shapes at 8×8 and 4×4.
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": TEXT["hidden_size"],
    "attention_head_dim": 4,
    "use_linear_projection": False,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "norm_num_groups": 32,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- data


def draw_batch(rng: np.random.Generator, count: int) -> tuple[torch.Tensor, list[shapes.Scene]]:
    """``count`` random drawings as a (count, 3, 64, 64) tensor in [-1, 1], with their scenes."""
    scenes = [shapes.random_scene(rng) for _ in range(count)]
    arrays = np.stack([np.asarray(shapes.draw(s, IMAGE), dtype=np.float32) for s in scenes])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0, scenes


def build_models() -> tuple[Any, Any, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    vae = AutoencoderKL.from_config({k: v for k, v in VAE.items() if not k.startswith("_")})
    torch.manual_seed(SEED + 1)
    unet = UNet2DConditionModel.from_config({k: v for k, v in UNET.items() if not k.startswith("_")})
    torch.manual_seed(SEED + 2)
    text_config = {k: v for k, v in TEXT.items() if k not in ("architectures", "model_type")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    return vae, unet, text_encoder


# --------------------------------------------------------------------------- checkpoints


def save_state(work: Path, stage: str, step: int, state: dict[str, Any]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / f".{stage}.tmp"
    torch.save({"step": step, **state}, tmp)
    os.replace(tmp, work / f"{stage}.pt")


def load_state(work: Path, stage: str) -> dict[str, Any] | None:
    path = work / f"{stage}.pt"
    return torch.load(path, weights_only=False) if path.exists() else None  # our own file


# --------------------------------------------------------------------------- stage 1: VAE


def train_vae(vae: Any, steps: int, batch: int, work: Path, resume: bool) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    rng = np.random.default_rng(SEED + 10)
    gen = torch.Generator().manual_seed(SEED + 11)
    start = 0
    saved = load_state(work, "vae") if resume else None
    if saved is not None:
        vae.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        rng.bit_generator.state = saved["rng"]
        gen.set_state(saved["gen"])
        start = saved["step"]
        log(f"VAE: resumed at step {start}")
    vae.train()
    t0 = time.time()
    for step in range(start, steps):
        lr = 1e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        images, _ = draw_batch(rng, batch)
        posterior = vae.encode(images).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(latents).sample
        l1 = (recon - images).abs().mean()
        loss = l1 + (recon - images).pow(2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if (step + 1) % 25 == 0:
            rate = (step + 1 - start) / (time.time() - t0)
            log(f"VAE step {step + 1}/{steps} l1 {l1.item():.4f} ({rate:.2f} steps/s)")
        if (step + 1) % 200 == 0 or step + 1 == steps:
            save_state(work, "vae", step + 1, {"model": vae.state_dict(), "opt": opt.state_dict(),
                                               "rng": rng.bit_generator.state, "gen": gen.get_state()})
    vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(vae: Any, count: int) -> tuple[torch.Tensor, list[shapes.Scene], float]:
    """Latent means of ``count`` fixed drawings, their scenes, and the scaling factor (1 / std)."""
    rng = np.random.default_rng(SEED + 20)
    latents, scenes = [], []
    for start in range(0, count, 250):
        images, batch_scenes = draw_batch(rng, min(250, count - start))
        latents.append(vae.encode(images).latent_dist.mean)
        scenes += batch_scenes
    stacked = torch.cat(latents)
    scale = float(1.0 / stacked.std())
    return stacked, scenes, scale


# --------------------------------------------------------------------------- stage 2: text encoder + UNet


def train_unet(
    unet: Any, text_encoder: Any, latents: torch.Tensor, scenes: list[shapes.Scene], steps: int, batch: int,
    work: Path, resume: bool, snapshot: Any, stop_after: int | None = None,
) -> tuple[Any, Any]:
    """Train from scratch; returns EMA copies of (unet, text_encoder)."""
    from diffusers import DDPMScheduler

    tokenizer = load_clip_tokenizer()
    noise_sched = DDPMScheduler.from_config({k: v for k, v in SCHEDULER.items() if k != "_class_name"})
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 for epsilon prediction

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=UNET_LR, weight_decay=0.0, betas=(0.9, 0.99))
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    rng = np.random.default_rng(SEED + 30)
    gen = torch.Generator().manual_seed(SEED + 31)
    start = 0
    saved = load_state(work, "unet") if resume else None
    if saved is not None:
        unet.load_state_dict(saved["unet"])
        text_encoder.load_state_dict(saved["text"])
        ema_unet.load_state_dict(saved["ema_unet"])
        ema_text.load_state_dict(saved["ema_text"])
        opt.load_state_dict(saved["opt"])
        rng.bit_generator.state = saved["rng"]
        gen.set_state(saved["gen"])
        start = saved["step"]
        log(f"UNet: resumed at step {start}")

    token_cache: dict[str, torch.Tensor] = {}

    def tokens(text: str) -> torch.Tensor:
        # As the SD pipeline tokenizes: padded to 77 with <|endoftext|>, no attention mask.
        if text not in token_cache:
            token_cache[text] = tokenizer(text, padding="max_length", max_length=77, truncation=True,
                                          return_tensors="pt").input_ids[0]
        return token_cache[text]

    unet.train()
    text_encoder.train()
    t0 = time.time()
    running = 0.0
    for step in range(start, min(steps, stop_after or steps)):
        lr = UNET_LR * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = rng.integers(len(scenes), size=batch)
        captions = []
        for i in idx:
            scene = scenes[i]
            templates = shapes.BACKGROUND_TEMPLATES if scene.mention_bg else shapes.PLAIN_TEMPLATES
            scene = dataclasses.replace(scene, template=int(rng.integers(len(templates))))
            captions.append("" if rng.random() < 0.1 else shapes.caption(scene, rng))
        ids = torch.stack([tokens(c) for c in captions])
        x0 = latents[torch.from_numpy(idx)]
        noise = torch.randn(x0.shape, generator=gen)
        noise += OFFSET_NOISE * torch.randn((batch, x0.shape[1], 1, 1), generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noisy = noise_sched.add_noise(x0, noise, t)
        context = text_encoder(ids).last_hidden_state
        pred = unet(noisy, t, context).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for model, ema in ((unet, ema_unet), (text_encoder, ema_text)):
                for p, e in zip(model.parameters(), ema.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)
        running = 0.98 * running + 0.02 * per_sample.mean().item() if step > start else per_sample.mean().item()
        if (step + 1) % 25 == 0:
            rate = (step + 1 - start) / (time.time() - t0)
            left = (steps - step - 1) / rate / 60
            log(f"UNet step {step + 1}/{steps} mse {running:.4f} lr {lr:.2e} ({rate:.2f} steps/s, {left:.0f} min left)")
        if (step + 1) % 250 == 0 or step + 1 == steps:
            save_state(work, "unet", step + 1, {
                "unet": unet.state_dict(), "text": text_encoder.state_dict(), "ema_unet": ema_unet.state_dict(),
                "ema_text": ema_text.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                "gen": gen.get_state()})
            snapshot(ema_unet, ema_text)
    return ema_unet.eval(), ema_text.eval()


# --------------------------------------------------------------------------- writing


def _clean(config: Any) -> dict[str, Any]:
    drop = {"_use_default_values", "_name_or_path"}
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if k not in drop}))


def write_checkpoint(path: Path, unet: Any, vae: Any, text_encoder: Any) -> None:
    """One fp16 .safetensors in the original SD 1.x layout, configs in the ``atelier.config`` metadata."""

    tensors = to_original_layout("sd1", unet=unet, vae=vae, text_encoder=text_encoder)
    tensors = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    text_config = text_encoder.config.to_diff_dict()
    text_config["architectures"] = ["CLIPTextModel"]
    config = {
        "arch": "sd1",
        "native_size": IMAGE,
        "unet": _clean(unet.config),
        "vae": _clean(vae.config),
        "text_encoder": _clean(text_config),
        "scheduler": dict(SCHEDULER),
    }
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(config, sort_keys=True)}
    write_safetensors(path, tensors, metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / "_work" / "train_demo")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work-dir")
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--dataset", type=int, default=24000, help="drawings encoded for the UNet stage")
    parser.add_argument("--unet-steps", type=int, default=3200)
    parser.add_argument("--unet-batch", type=int, default=32)
    parser.add_argument("--stop-after", type=int, help="end the UNet stage early (the schedule still spans "
                        "--unet-steps); the file is then the EMA weights at that step")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.time()
    vae, unet, text_encoder = build_models()
    log(f"params: unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M, "
        f"vae {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M, "
        f"text {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M")

    train_vae(vae, args.vae_steps, args.vae_batch, args.work_dir, args.resume)
    log(f"VAE done after {(time.time() - started) / 60:.1f} min")
    latents, scenes, scale = encode_dataset(vae, args.dataset)
    vae.register_to_config(scaling_factor=scale)
    log(f"encoded {len(scenes)} drawings, latent std {1 / scale:.4f} -> scaling factor {scale:.4f}")

    def snapshot(ema_unet: Any, ema_text: Any) -> None:
        write_checkpoint(args.output, ema_unet, vae, ema_text)
        log(f"wrote {args.output} ({args.output.stat().st_size / 2**20:.1f} MiB)")

    ema_unet, ema_text = train_unet(unet, text_encoder, latents * scale, scenes, args.unet_steps, args.unet_batch,
                                    args.work_dir, args.resume, snapshot, args.stop_after)
    snapshot(ema_unet, ema_text)
    log(f"done in {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
