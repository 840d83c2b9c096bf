"""The starting noise of a picture, with AUTOMATIC1111's variation-seed semantics, in one place.

Every image draws its noise from its own generator seeded with its own seed (on the CPU by default, so a
picture does not depend on the device; see ``rng`` for A1111's other sources), never from the other images of
its batch. With a variation seed (A1111's "subseed") the noise is
spherically interpolated between the seed's and the variation seed's: strength 0 is the seed's picture,
1 the variation seed's. "Resize seed from" draws the noise at another size and places it centred, so a
seed found at 512x512 keeps its composition at 512x768 (the rest is the seed's noise at the new size).
"""

from __future__ import annotations

import torch

from .rng import PhiloxGenerator

# A1111's seed range: -1 means a random seed in [0, 4294967294).
MAX_SEED = 2**32 - 1


def _device(source: str) -> str:
    return "cuda" if source == "GPU" else "cpu"


def seed_noise(seed: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
               after: tuple[int, ...] | None = None, source: str = "CPU") -> torch.Tensor:
    """One image's noise (channels, height, width) on the CPU, exactly what diffusers draws from a generator of
    ``source`` ("CPU", "GPU": CUDA, "NV": the Philox generator) with this seed for a model of this dtype.
    ``after``: the shape of a draw the pipeline makes from the same generator first (img2img samples the
    picture's latents from the VAE before it draws the noise; the NV generator is not the pipeline's)."""
    if source == "NV":
        return torch.from_numpy(PhiloxGenerator(int(seed)).randn(shape)).to(dtype)
    device = _device(source)
    generator = torch.Generator(device).manual_seed(int(seed))
    if after is not None:
        torch.randn((1, *after), generator=generator, dtype=dtype, device=device)
    return torch.randn((1, *shape), generator=generator, dtype=dtype, device=device)[0].cpu()


def step_generators(seeds: list[int], source: str, delta: int = 0, drawn: tuple[int, ...] | None = None,
                    dtype: torch.dtype = torch.float32) -> list[torch.Generator]:
    """The generators a pipeline draws from after the starting noise (ancestral samplers' per-step noise), one per
    image, as A1111 keeps them: the image's own generator after its starting noise (``drawn``: its shape, when
    that noise was drawn here rather than by the pipeline), or, with an eta noise seed delta, a fresh one seeded
    with seed + delta. The NV source's per-step noise comes from CPU generators (diffusers takes torch ones)."""
    device = _device(source)
    generators = [torch.Generator(device).manual_seed(int(seed) + int(delta)) for seed in seeds]
    if drawn is not None and not delta and source != "NV":
        for generator in generators:
            torch.randn((1, *drawn), generator=generator, dtype=dtype, device=device)
    return generators


def philox_step_noise(seeds: list[int], source: str, delta: int = 0) -> tuple[list[int], int] | None:
    """Under the NV source, the (seeds, offset) of the Philox generators the ancestral samplers draw from, as A1111
    keeps them: each image's own generator after its starting noise (offset 1), or with an eta noise seed delta a
    fresh one at seed + delta. None for the other sources (their noise comes from ``step_generators``)."""
    if source != "NV":
        return None
    if delta:
        return [int(seed) + int(delta) for seed in seeds], 0
    return [int(seed) for seed in seeds], 1


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation between two noise tensors (norms taken along dim 1, as it does;
    nearly parallel inputs fall back to its linear blend)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * strength + high * (1 - strength)
    omega = torch.acos(dot)
    sine = torch.sin(omega)
    return (torch.sin((1.0 - strength) * omega) / sine).unsqueeze(1) * low \
        + (torch.sin(strength * omega) / sine).unsqueeze(1) * high


def variation_noise(shape: tuple[int, int, int], seed: int, subseed: int, strength: float,
                    resize_from: tuple[int, int] | None = None, dtype: torch.dtype = torch.float32,
                    factor: int = 8, after_encode: bool = False, source: str = "CPU") -> torch.Tensor:
    """The starting noise (latent channels, height / factor, width / factor) of one image, in ``dtype``.

    ``resize_from``: (width, height) in pixels to draw the noise at, or None for the picture's own size;
    ``factor``: pixels per latent (8 for SD's VAE); ``after_encode``: the pipeline samples the init picture's
    latents from each image's generator before its noise, so strength 0 matches a run without variation.
    """
    channels, height, width = shape
    noise_shape = shape if resize_from is None else (channels, resize_from[1] // factor, resize_from[0] // factor)
    after = shape if after_encode else None
    noise = seed_noise(seed, noise_shape, dtype, after, source)
    if strength:
        mixed = slerp(strength, noise.float(), seed_noise(subseed, noise_shape, dtype, after, source).float())
        noise = mixed.to(dtype)
    if noise_shape == shape:
        return noise
    # Centre the resized noise in the seed's noise at the real size; crop it where it is larger.
    placed = seed_noise(seed, shape, dtype, after, source)
    dx, dy = (width - noise_shape[2]) // 2, (height - noise_shape[1]) // 2
    w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
    h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
    tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    placed[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
    return placed
