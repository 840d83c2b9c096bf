"""Train Atelier's built-in demo upscaler: ×2 (64 → 128) for the demo model's shapes pictures, on the CPU.

The network is Real-ESRGAN's compact SRVGG (``SRVGGNetCompact``), the class the ``spandrel`` package
ships (``spandrel.architectures.Compact``): a plain stack of 3×3 convolutions with PReLU at 64×64 and
a pixel shuffle to 128×128, added to the nearest-neighbour enlargement of the input. ``ARCH`` holds its
size; the saved file is what ``spandrel.ModelLoader`` recognises as "Compact" ×2.

Data, drawn once into a pool (all seeded): random scenes of the demo world (``tools.demo_model.shapes``)
drawn at 128×128 are the truth. Each input is the same picture at 64×64, made from that drawing so
both show the shape in the same place (``shapes.draw(scene, 64)`` itself puts it up to ~2.75 px
elsewhere, because the drawing keeps its margin and jitter in pixels, not in fractions):

- area (box) downscale: what ``shapes.draw`` does from its supersampled canvas, so the scene drawn at 64;
- bicubic downscale: softer edges;
- the area downscale passed through the built-in demo model's own VAE (encode, decode): the decoder's
  soft edges and colour wobble, as the demo model's pictures have them (generated pictures have no
  truth at 128; these do);
- a few of the above with a little Gaussian noise or JPEG compression.

Loss: MSE plus half the MSE of horizontal and vertical pixel differences (keeps edges sharp). Not
L1: these pictures are flat but for their edges, and under L1 the network learns to add nothing to
the nearest-neighbour picture (exactly right on every flat pixel) and stays there. Adam, warm-up
then cosine learning rate, random 48×48 crops and mirror images, batch 16. Writes
``webui/upscalers/builtin/atelier-demo-2x.safetensors``: fp16 weights under spandrel's key names, the
architecture in the ``atelier.upscaler`` metadata (JSON) and ``scale``.

Run from the repository root, in an environment where ``import spandrel`` works (it needs torchvision):

    nice -n 10 .venv/bin/python -m tools.demo_model.train_upscaler

Measured for the shipped file on the 2-core development machine while other jobs shared it: 21.0
minutes wall in one run (drawing the pool of 4000 pairs, VAE included, 41 s; 4000 steps at ~3.3
steps/s; 1.9 GB peak memory). Validation PSNR against the 128 drawings went 37.3 dB at step 250,
43.9 at 3000, 44.3 at the end; Lanczos gets 37.0 dB on the same pictures. ``--work-dir`` keeps a
checkpoint every 250 steps; ``--resume`` continues from it.
``--steps`` shortens a trial run. ``python -m benchmarks.demo_upscaler`` judges the result.
"""

from __future__ import annotations

import argparse
import io
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

from tools.demo_model import shapes  # noqa: E402
from tools.safetensors_file import write_safetensors  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]  # the repository root
OUTPUT = ROOT / "webui" / "upscalers" / "builtin" / "atelier-demo-2x.safetensors"
DEMO_MODEL = ROOT / "webui" / "models" / "builtin" / "atelier-demo.safetensors"
METADATA_KEY = "atelier.upscaler"
SEED = 20261202
LOW = shapes.IMAGE_SIZE
SCALE = 2
# spandrel's SRVGGNetCompact arguments: 0.21 M parameters, 0.43 MB in fp16.
ARCH: dict[str, Any] = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 48, "num_conv": 10, "upscale": SCALE,
                        "act_type": "prelu"}
# Input kinds and their share of the pool (see the module docstring).
KINDS: dict[str, float] = {"area": 0.3, "bicubic": 0.15, "vae": 0.3, "area+jpeg": 0.1, "area+noise": 0.1,
                           "vae+noise": 0.05}
LR = 1e-3  # 2e-3 collapses to nearest-neighbour (the last layer goes to zero)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- pictures


def drawn_pair(scene: shapes.Scene, scale: int = SCALE) -> tuple[Image.Image, Image.Image]:
    """(the scene at 64×64, the scene at 64·scale) with the shape in the same place in both."""
    high = shapes.draw(scene, LOW * scale)
    return high.resize((LOW, LOW), Image.Resampling.BOX), high


def lanczos(image: Image.Image, scale: int = SCALE) -> Image.Image:
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.LANCZOS)


def psnr(a: Image.Image, b: Image.Image) -> float:
    """PSNR in dB of two same-sized 8-bit pictures."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    arrays = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255.0


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    arrays = (batch.clamp(0, 1) * 255.0).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arrays]


@torch.no_grad()
def upscale(net: torch.nn.Module, images: list[Image.Image]) -> list[Image.Image]:
    """Run the network over same-sized pictures; 8-bit pictures back, as a user would save them."""
    return to_images(net(to_tensor(images)))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    sigma = rng.uniform(1.0, 4.0)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, sigma, (LOW, LOW, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))


@torch.no_grad()
def vae_roundtrip(vae: Any, images: list[Image.Image]) -> list[Image.Image]:
    """Pictures through the demo model's VAE and back: what its decoder makes of them."""
    out = []
    for start in range(0, len(images), 64):
        batch = to_tensor(images[start:start + 64]) * 2.0 - 1.0
        decoded = vae.decode(vae.encode(batch).latent_dist.mean).sample
        out += to_images((decoded + 1.0) / 2.0)
    return out


def load_demo_vae() -> Any:
    from webui.models.loader import load_checkpoint
    from webui.models.registry import CheckpointEntry

    if not DEMO_MODEL.exists():
        raise SystemExit(f"{DEMO_MODEL} is missing; run python -m tools.demo_model.train first")
    model = load_checkpoint(CheckpointEntry(DEMO_MODEL.name, DEMO_MODEL, "safetensors"), torch.float32)
    return model.components["vae"].eval().requires_grad_(False)


def build_pool(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """``count`` (input 64, truth 128) pairs as uint8 NCHW tensors, inputs of every kind in KINDS."""
    rng = np.random.default_rng(seed)
    kinds = list(KINDS)
    chosen = rng.choice(len(kinds), size=count, p=np.array(list(KINDS.values())) / sum(KINDS.values()))
    lows, highs = [], []
    for i in range(count):
        low, high = drawn_pair(shapes.random_scene(rng))
        if kinds[chosen[i]] == "bicubic":
            low = high.resize((LOW, LOW), Image.Resampling.BICUBIC)
        lows.append(low)
        highs.append(high)
    needs_vae = [i for i in range(count) if kinds[chosen[i]].startswith("vae")]
    if needs_vae:
        for i, image in zip(needs_vae, vae_roundtrip(load_demo_vae(), [lows[i] for i in needs_vae]), strict=True):
            lows[i] = image
    for i in range(count):
        if kinds[chosen[i]].endswith("+jpeg"):
            lows[i] = _jpeg(lows[i], int(rng.integers(60, 96)))
        elif kinds[chosen[i]].endswith("+noise"):
            lows[i] = _noise(lows[i], rng)
    counts = {k: int((chosen == j).sum()) for j, k in enumerate(kinds)}
    as_uint8 = lambda images: torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)  # noqa: E731
    return as_uint8(lows), as_uint8(highs), counts


# --------------------------------------------------------------------------- training


def build_network() -> torch.nn.Module:
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(SEED)
    net = Compact(**ARCH)
    # PyTorch's default conv init shrinks the signal by ~√3 per layer: after a dozen layers the output
    # is the nearest-neighbour picture and training stalls there. He init for PReLU keeps it alive; the
    # last layer starts small, so training starts from nearest-neighbour plus a small correction.
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        torch.nn.init.kaiming_normal_(conv.weight, a=0.25, nonlinearity="leaky_relu")
        torch.nn.init.zeros_(conv.bias)
    with torch.no_grad():
        convs[-1].weight.mul_(0.1)
    return net


def edge_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of horizontal and vertical pixel differences: penalises soft or misplaced edges."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(pred) - dx(target)).pow(2).mean() + (dy(pred) - dy(target)).pow(2).mean()


def validation_set(count: int) -> tuple[list[Image.Image], list[Image.Image]]:
    rng = np.random.default_rng(SEED + 1)
    pairs = [drawn_pair(shapes.random_scene(rng)) for _ in range(count)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def evaluate(net: torch.nn.Module, lows: list[Image.Image], highs: list[Image.Image]) -> tuple[float, float]:
    """Mean PSNR (dB) of the network's and of Lanczos's ×2 against the 128 drawings."""
    was_training = net.training
    net.eval()
    ours = upscale(net, lows)
    net.train(was_training)
    mine = float(np.mean([psnr(a, b) for a, b in zip(ours, highs, strict=True)]))
    base = float(np.mean([psnr(lanczos(a), b) for a, b in zip(lows, highs, strict=True)]))
    return mine, base


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(net: torch.nn.Module, lows: torch.Tensor, highs: torch.Tensor, steps: int, batch: int, crop: int,
          work: Path, resume: bool) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    rng = np.random.default_rng(SEED + 2)
    checkpoint = work / "upscaler.pt"
    start = 0
    if resume and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)  # our own file
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        rng.bit_generator.state = saved["rng"]
        start = saved["step"]
        log(f"resumed at step {start}")
    val_lows, val_highs = validation_set(48)
    net.train()
    t0 = time.time()
    running = None
    for step in range(start, steps):
        lr = LR * min(1.0, (step + 1) / 100) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = rng.integers(len(lows), size=batch)
        ys = rng.integers(0, LOW - crop + 1, size=batch)
        xs = rng.integers(0, LOW - crop + 1, size=batch)
        flips = rng.random(batch) < 0.5
        x_parts, y_parts = [], []
        for i, y, x, flip in zip(idx, ys, xs, flips, strict=True):
            lo = lows[i, :, y:y + crop, x:x + crop]
            hi = highs[i, :, SCALE * y:SCALE * (y + crop), SCALE * x:SCALE * (x + crop)]
            if flip:
                lo, hi = lo.flip(-1), hi.flip(-1)
            x_parts.append(lo)
            y_parts.append(hi)
        inputs = torch.stack(x_parts).float() / 255.0
        target = torch.stack(y_parts).float() / 255.0
        pred = net(inputs)
        mse = (pred - target).pow(2).mean()
        loss = mse + 0.5 * edge_mse(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = 10 * math.log10(1 / max(mse.item(), 1e-10))  # PSNR of the batch
        running = value if running is None else 0.95 * running + 0.05 * value
        if (step + 1) % 50 == 0:
            rate = (step + 1 - start) / (time.time() - t0)
            log(f"step {step + 1}/{steps} PSNR {running:.2f} dB lr {lr:.1e} ({rate:.2f} steps/s, "
                f"{(steps - step - 1) / rate / 60:.1f} min left)")
        if (step + 1) % 250 == 0 or step + 1 == steps:
            mine, base = evaluate(net, val_lows, val_highs)
            log(f"validation PSNR {mine:.2f} dB (Lanczos {base:.2f} dB)")
            save_state(checkpoint, {"step": step + 1, "net": net.state_dict(), "opt": opt.state_dict(),
                                    "rng": rng.bit_generator.state})
    net.eval()


# --------------------------------------------------------------------------- writing


def write_weights(path: Path, net: torch.nn.Module) -> None:
    """fp16 .safetensors under spandrel's key names, the architecture in the metadata."""

    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    metadata = {"format": "pt", METADATA_KEY: json.dumps({"architecture": "Compact", **ARCH}, sort_keys=True),
                "scale": str(SCALE)}
    write_safetensors(path, tensors, metadata)


def check_written(path: Path) -> None:
    """Load the file back as a user's upscaler would be, and say what spandrel makes of it."""
    import spandrel

    descriptor = spandrel.ModelLoader().load_from_file(path)
    log(f"spandrel reads {path.name} as {descriptor.architecture.name} ×{descriptor.scale} "
        f"({path.stat().st_size / 1e6:.2f} MB)")
    if descriptor.architecture.id != "Compact" or descriptor.scale != SCALE:
        raise SystemExit("the written file is not recognised as the architecture it was trained as")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / "_work" / "train_upscaler")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    parser.add_argument("--pool", type=int, default=4000, help="pictures drawn for training")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=48, help="input crop size (the truth is twice as large)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.time()
    net = build_network()
    log(f"SRVGGNetCompact {ARCH}: {sum(p.numel() for p in net.parameters()) / 1e3:.0f}k parameters")
    lows, highs, counts = build_pool(args.pool, SEED + 3)
    log(f"drew {len(lows)} pairs ({', '.join(f'{k} {v}' for k, v in counts.items())}) "
        f"in {time.time() - started:.0f} s")
    train(net, lows, highs, args.steps, args.batch, args.crop, args.work_dir, args.resume)
    write_weights(args.output, net)
    check_written(args.output)
    log(f"done in {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
