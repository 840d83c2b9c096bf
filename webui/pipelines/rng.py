"""Where a picture's noise comes from: A1111's "Random number generator source" setting.

- "GPU" (A1111's default): each image's noise from a generator on the GPU seeded with its seed. CUDA draws
  Philox4x32-10 numbers through Box-Muller, so on a machine without a CUDA GPU the same numbers come from
  ``PhiloxGenerator`` ("NV"), and the job says so (warning, and "RNG: NV" in the infotext), because the
  per-step noise of ancestral samplers then comes from the CPU.
- "CPU": a CPU generator per image (Atelier's default, and ComfyUI's): the same picture on any device.
- "NV": A1111's generator that computes, on any device, what ``torch.randn`` draws on an NVIDIA GPU.

``PhiloxGenerator`` follows the semantics of A1111's ``modules/rng_philox.py``: for a draw of n numbers, number
k comes from the Philox4x32-10 block with counter (offset, 0, k, 0) and key (seed low 32 bits, seed high 32
bits); the first two 32-bit words become one normal number by Box-Muller (sine branch); every draw moves the
offset on by one. Written with numpy in uint32 arithmetic (no torch needed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RNG_SOURCES = ("GPU", "CPU", "NV")
A1111_DEFAULT = "GPU"  # what an infotext without "RNG" means (A1111 writes it only for the others)

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_INV32 = np.float32(2.3283064e-10)  # 2^-32 as CUDA's curand rounds it
_INV32_2PI = np.float32(2.3283064e-10 * 6.2831855)


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox4x32 on columns: ``counter`` (4, n) and ``key`` (2, n) uint32 -> (4, n) uint32."""
    c = counter.astype(np.uint32).copy()
    k = key.astype(np.uint32).copy()
    low32 = np.uint64(0xFFFFFFFF)
    for round_ in range(rounds):
        p0 = c[0].astype(np.uint64) * _M0
        p1 = c[2].astype(np.uint64) * _M1
        hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), (p0 & low32).astype(np.uint32)
        hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), (p1 & low32).astype(np.uint32)
        c = np.stack([hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0])
        if round_ < rounds - 1:
            k = np.stack([k[0] + _W0, k[1] + _W1])  # uint32 wraps, as the key schedule needs
    return c


def box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A normal number from two uint32 words: sqrt(-2 ln u) sin(v), u in (0, 1], v in (0, 2π]. The constants are
    curand's float32 ones; the arithmetic is in float64 and rounded to float32 at the end, as A1111's NV
    generator computes it (so "RNG: NV" pictures made there are made here)."""
    inv, inv_2pi = np.float64(_INV32), np.float64(_INV32_2PI)
    u = x.astype(np.float64) * inv + inv / 2
    v = y.astype(np.float64) * inv_2pi + inv_2pi / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


@dataclass
class PhiloxGenerator:
    """What ``torch.Generator("cuda").manual_seed(seed)`` followed by ``torch.randn`` draws, on any device."""

    seed: int
    offset: int = 0

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape)) if shape else 1
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = np.uint32(self.offset & 0xFFFFFFFF)
        counter[2] = np.arange(n, dtype=np.uint32)
        seed = int(self.seed) & 0xFFFFFFFFFFFFFFFF
        key = np.empty((2, n), dtype=np.uint32)
        key[0], key[1] = seed & 0xFFFFFFFF, seed >> 32
        self.offset += 1
        words = philox4x32(counter, key)
        return box_muller(words[0], words[1]).reshape(shape)


def effective_source(source: str, device_type: str) -> str:
    """The source a job can honour on this device: "GPU" needs CUDA (A1111 itself draws on the CPU on MPS);
    without it the NV generator gives the numbers an NVIDIA GPU would."""
    if source == "GPU" and device_type != "cuda":
        return "CPU" if device_type == "mps" else "NV"
    return source


def fallback_warning(source: str, used: str) -> str | None:
    if source == used:
        return None
    if used == "NV":
        return ("RNG source GPU: there is no CUDA GPU here, so the noise came from the NV generator (the numbers an "
                "NVIDIA GPU draws); ancestral and SDE samplers' per-step noise came from the CPU. The infotext "
                "says RNG: NV.")
    return f"RNG source {source}: drawn with {used} on this device, as A1111 does; the infotext says RNG: {used}."
