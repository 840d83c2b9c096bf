"""Cheap live previews without a full VAE decode.

Each VAE gets its own linear map from latents to RGB, so the preview of any latent space (SD's, SDXL's, the
demo model's 4-pixel one) looks like the picture it will decode to, where SD's published factors give the demo
model coloured noise. The map reads each latent's 3x3 neighbourhood (C*9 weights and a bias per colour),
because decoders colour a pixel from its neighbours too; it is a 3x3 convolution, as cheap as SD's factors.

- When a VAE is loaded, least squares over latents it decodes (those of structured pictures it encodes) gives
  a first fit (the prior).
- Every picture the VAE then decodes is learnt (forward hooks on its decoder), so previews follow the latents
  the user's prompts really produce; each decode first scores the prior and the learnt map, and previews use
  whichever predicted recent pictures better.
- Both are kept per VAE fingerprint in a small JSON file (``cache_file``, written atomically), so nothing is
  fitted again at the next start.

When the user puts TAESD decoders (``taesd_decoder.safetensors``, ``taesdxl_decoder.safetensors``, safetensors
only) into ``models/VAE-approx`` (A1111's folder), previews of SD and SDXL latents are decoded by them instead,
and so are the final pictures when the ``vae_decode_method`` setting is "TAESD" (``taesd_decode``).
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..fileio import write_text_atomic

log = logging.getLogger(__name__)

# Published least-squares fits for SD 1.x/2.x and SDXL latents: used when a VAE has no fit of its own.
SD_FACTORS = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
]
SDXL_FACTORS = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]
SDXL_BIAS = [0.1084, -0.0175, -0.0011]

FIT_VERSION = 1  # bump when the fit changes, so cached fits are redone
KERNEL = 3  # latent neighbourhood the map reads (measured on the demo model: 3x3 errs a fifth less than 1x1)
FIT_LATENT_SIDE = 8  # latents per side of each fitting sample: cheap even for SD's VAE on a CPU
FIT_PICTURES = 8  # structured pictures encoded and decoded (about 11 s for SD's VAE on 2 CPU cores, once)
PRIOR_WEIGHT = 8.0  # the load-time fit counts as this many decoded pictures, always (it has every hue)
DECAY = 0.98  # each decoded picture makes earlier ones count this much less: the fit follows recent use
ERROR_MEMORY = 0.7  # how slowly the running errors that choose between the prior and the learnt map move
RIDGE = 1e-3  # keeps the map tame along latent directions no sample varied


def neighbourhoods(latents: torch.Tensor, kernel: int) -> torch.Tensor:
    """Each latent pixel's ``kernel`` x ``kernel`` neighbourhood as one row (n*h*w, C*kernel*kernel), edges
    repeated: VAEs decode a pixel's colour from its neighbours too, so the map sees them."""
    n, channels, h, w = latents.shape
    pad = kernel // 2
    padded = torch.nn.functional.pad(latents, (pad, pad, pad, pad), mode="replicate") if pad else latents
    rows = torch.nn.functional.unfold(padded, kernel)  # (n, C*k*k, h*w), channel-major like conv2d weights
    return rows.permute(0, 2, 1).reshape(n * h * w, channels * kernel * kernel)


@dataclass(frozen=True)
class LinearPreview:
    """rgb = (each latent's neighbourhood) · factors + bias, in [-1, 1]; ``scale`` pixels per latent.

    ``factors`` has one row per channel and neighbourhood offset (C*kernel*kernel rows, channel-major) and a
    column per colour; ``kernel`` 1 is the classic per-latent (C+1)x3 map."""

    factors: list[list[float]]
    bias: list[float]
    scale: int
    kernel: int = 1

    @property
    def channels(self) -> int:
        return len(self.factors) // (self.kernel * self.kernel)

    def predict(self, latents: torch.Tensor) -> torch.Tensor:
        """Colours in [-1, 1] (n, 3, h, w) of latents (n, C, h, w), one per latent pixel."""
        lat = latents.detach().float().cpu()
        channels = self.channels
        if lat.shape[1] != channels:  # another latent space than fitted: use the channels that exist
            lat = lat[:, :channels] if lat.shape[1] > channels else torch.nn.functional.pad(
                lat, (0, 0, 0, 0, 0, channels - lat.shape[1]))
        weight = torch.tensor(self.factors, dtype=torch.float32).T.reshape(3, channels, self.kernel, self.kernel)
        pad = self.kernel // 2
        if pad:
            lat = torch.nn.functional.pad(lat, (pad, pad, pad, pad), mode="replicate")
        return torch.nn.functional.conv2d(lat, weight, torch.tensor(self.bias, dtype=torch.float32)).clamp(-1, 1)

    def render(self, latent: torch.Tensor) -> Image.Image:
        """An RGB picture (nearest-enlarged to the picture's size) of one latent (channels, h, w)."""
        return _to_image(self.predict(latent[None])[0].permute(1, 2, 0), self.scale)


def _to_image(rgb: torch.Tensor, scale: int) -> Image.Image:
    """(h, w, 3) in [-1, 1] to a picture enlarged ``scale`` times."""
    arr = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    image = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if scale == 1:
        return image
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def fixed_preview(is_sdxl: bool, scale: int = 8) -> LinearPreview:
    """SD's or SDXL's published factors."""
    return LinearPreview(SDXL_FACTORS if is_sdxl else SD_FACTORS, SDXL_BIAS if is_sdxl else [0.0, 0.0, 0.0], scale)


def latents_to_preview(latents: torch.Tensor, is_sdxl: bool, index: int = 0,
                       preview: LinearPreview | None = None) -> Image.Image:
    """An RGB preview of image ``index`` of a latent batch, with ``preview``'s factors (else SD's / SDXL's)."""
    return (preview or fixed_preview(is_sdxl)).render(latents[index])


# --------------------------------------------------------------------------- least squares


@dataclass
class FitStats:
    """The normal equations of latent -> colour least squares: sums over samples, each picture weighing 1."""

    xtx: np.ndarray  # (F+1, F+1), F = C*kernel*kernel features and the bias
    xty: np.ndarray  # (F+1, 3)
    weight: float
    scale: int
    kernel: int = KERNEL

    @classmethod
    def of(cls, latents: torch.Tensor, colours: torch.Tensor, scale: int, kernel: int = KERNEL) -> FitStats:
        """From latents (n, C, h, w) and the decoded colours averaged over each latent's pixels (n, 3, h, w)."""
        n = latents.shape[0]
        x = neighbourhoods(latents.detach().to("cpu", torch.float64), kernel).numpy()
        y = colours.detach().permute(0, 2, 3, 1).reshape(-1, 3).to("cpu", torch.float64).numpy()
        design = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
        per_sample = n / max(1, x.shape[0])  # every picture counts once, whatever its size
        return cls(design.T @ design * per_sample, design.T @ y * per_sample, float(n), scale, kernel)

    def scaled(self, factor: float) -> FitStats:
        return FitStats(self.xtx * factor, self.xty * factor, self.weight * factor, self.scale, self.kernel)

    def plus(self, other: FitStats) -> FitStats:
        return FitStats(self.xtx + other.xtx, self.xty + other.xty, self.weight + other.weight, other.scale,
                        other.kernel)

    def solve(self) -> LinearPreview:
        size = self.xtx.shape[0]
        solution = np.linalg.solve(self.xtx + RIDGE * max(self.weight, 1e-6) * np.eye(size), self.xty)
        return LinearPreview([[float(v) for v in row] for row in solution[:-1]], [float(v) for v in solution[-1]],
                             self.scale, self.kernel)

    def to_json(self) -> dict[str, Any]:
        return {"xtx": self.xtx.tolist(), "xty": self.xty.tolist(), "weight": self.weight, "scale": self.scale,
                "kernel": self.kernel}

    @classmethod
    def from_json(cls, data: Any) -> FitStats | None:
        try:
            xtx = np.asarray(data["xtx"], dtype=np.float64)
            xty = np.asarray(data["xty"], dtype=np.float64)
            stats = cls(xtx, xty, float(data["weight"]), int(data["scale"]), int(data["kernel"]))
        except (KeyError, TypeError, ValueError):
            return None
        size = xtx.shape[0] if xtx.ndim == 2 else 0
        if size < 2 or xtx.shape != (size, size) or xty.shape != (size, 3) or stats.scale < 1 or stats.kernel < 1:
            return None
        if (size - 1) % (stats.kernel * stats.kernel):
            return None
        if not (np.isfinite(xtx).all() and np.isfinite(xty).all()):
            return None
        return stats


def vae_scale(vae: Any) -> int:
    """Pixels per latent, as diffusers computes it (8 for SD's VAE, 4 for the demo model's)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_fingerprint(vae: Any) -> str:
    """Identifies a VAE's decoder without hashing all its weights: its config and the tensors at both ends of
    the decoder (rounded to fp16, so an fp16 and an fp32 load of one file agree)."""
    digest = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    state = vae.state_dict()
    for key in sorted(state):
        if key.startswith(("post_quant_conv.", "decoder.conv_in.", "decoder.conv_out.", "decoder.conv_norm_out.")):
            tensor = state[key].detach().to("cpu", torch.float16).contiguous()
            digest.update(key.encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:32]


def to_decoder_input(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """The sampler's latents as diffusers' SD / SDXL pipelines hand them to ``vae.decode``."""
    config = vae.config
    scaling = float(config.scaling_factor)
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        std_t, mean_t = torch.tensor(std).view(shape).to(latents), torch.tensor(mean).view(shape).to(latents)
        return latents * std_t / scaling + mean_t
    return latents / scaling + (config.get("shift_factor") or 0.0)


def from_decoder_input(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """The inverse of ``to_decoder_input``: what the sampler's latents were."""
    config = vae.config
    scaling = float(config.scaling_factor)
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        return (z - torch.tensor(mean).view(shape).to(z)) * scaling / torch.tensor(std).view(shape).to(z)
    return (z - (config.get("shift_factor") or 0.0)) * scaling


def _structured_pictures(side: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Pictures in [-1, 1] of flat shapes on flat backgrounds in strong colours (random hues, fairly saturated,
    light and dark): VAEs trained on narrow worlds, like the demo model's, encode those faithfully, and SD's
    encodes anything."""

    def colour() -> torch.Tensor:
        hue, sat, val = torch.rand(3, generator=generator).tolist()
        rgb = colorsys.hsv_to_rgb(hue, 0.6 + 0.4 * sat, 0.4 + 0.6 * val)
        return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) * 2 - 1

    pictures = []
    for _ in range(count):
        picture = colour().expand(3, side, side).clone()
        for _ in range(2):
            x0, y0 = torch.randint(0, side // 2, (2,), generator=generator).tolist()
            w, h = torch.randint(side // 4, side // 2 + 1, (2,), generator=generator).tolist()
            picture[:, y0:y0 + h, x0:x0 + w] = colour()
        pictures.append(picture)
    return torch.stack(pictures)


@torch.no_grad()
def load_time_stats(vae: Any, device: torch.device | None = None) -> FitStats:
    """Least-squares data from latents the VAE decodes: those of structured pictures it encodes (random latents
    are far from what a sampler ends with, and VAEs trained on narrow worlds decode them into other colours).
    Runs on ``device`` when given (the VAE goes back where it was). Weighs ``PRIOR_WEIGHT`` pictures."""
    scale = vae_scale(vae)
    home = next(vae.parameters()).device
    home_dtype = vae.dtype
    run_on = device or home
    # SDXL's VAE overflows in fp16 (its pipelines upcast it to decode): the fit upcasts it the same way.
    dtype = torch.float32 if home_dtype == torch.float16 and vae.config.get("force_upcast") else home_dtype
    generator = torch.Generator().manual_seed(1234)
    pictures = _structured_pictures(FIT_LATENT_SIDE * scale, FIT_PICTURES, generator)
    try:
        if run_on != home or dtype != home_dtype:
            vae.to(run_on, dtype)
        encoded = vae.encode(pictures.to(run_on, dtype)).latent_dist.mode()
        decoded = vae.decode(encoded).sample.float()
    finally:
        if run_on != home or dtype != home_dtype:
            vae.to(home, home_dtype)
    latents = from_decoder_input(vae, encoded.float())
    colours = torch.nn.functional.avg_pool2d(decoded.clamp(-1, 1), scale)
    if not (torch.isfinite(latents).all() and torch.isfinite(colours).all()):
        raise ValueError("the VAE's output is not finite at this precision")
    stats = FitStats.of(latents, colours, scale)
    return stats.scaled(PRIOR_WEIGHT / stats.weight)


# --------------------------------------------------------------------------- TAESD


def _taesd_state(path: Path) -> dict[str, torch.Tensor]:
    """A TAESD decoder's tensors under diffusers' DecoderTiny names. Accepts madebyollin's own layout (an
    nn.Sequential whose index 0 is the clamp, so ``N.`` is DecoderTiny's ``layers.{N-1}.``) and diffusers'
    AutoencoderTiny files (``decoder.layers.N.``)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    if any(k.startswith("decoder.layers.") for k in state):
        return {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.layers.")}
    out = {}
    for key, value in state.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) < 1:
            raise ValueError(f"unexpected tensor {key!r}")
        out[f"layers.{int(index) - 1}.{rest}"] = value
    return out


def load_taesd(path: Path) -> Any:
    """A diffusers AutoencoderTiny whose decoder holds the file's weights (safetensors only, never a pickle)."""
    from diffusers import AutoencoderTiny

    state = _taesd_state(path)
    model: Any = AutoencoderTiny(latent_channels=int(state["layers.0.weight"].shape[1]))
    model.decoder.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def taesd_file(approx_dir: Path | None, is_sdxl: bool) -> Path | None:
    """``taesdxl_decoder`` for SDXL, ``taesd_decoder`` for SD 1.x/2.x (A1111's names, as .safetensors)."""
    if approx_dir is None:
        return None
    path = approx_dir / ("taesdxl_decoder.safetensors" if is_sdxl else "taesd_decoder.safetensors")
    return path if path.is_file() else None


# --------------------------------------------------------------------------- the previewer


class _Learner:
    """Forward hooks on one VAE module: every decode's latents and colours refine its fit."""

    def __init__(self, previewer: LatentPreviewer, key: str, vae: Any) -> None:
        self.previewer, self.key, self.scale = previewer, key, vae_scale(vae)
        self.vae = weakref.ref(vae)
        self.pending: torch.Tensor | None = None
        entry = vae.post_quant_conv if getattr(vae, "post_quant_conv", None) is not None else vae.decoder
        self.handles = [entry.register_forward_pre_hook(self._before), vae.decoder.register_forward_hook(self._after)]

    def _before(self, module: Any, args: tuple[Any, ...]) -> None:
        self.pending = args[0].detach() if args and isinstance(args[0], torch.Tensor) else None

    def _after(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        z, self.pending = self.pending, None
        vae = self.vae()
        if z is None or vae is None or not isinstance(output, torch.Tensor) or output.shape[0] != z.shape[0]:
            return
        try:
            with torch.no_grad():
                colours = torch.nn.functional.avg_pool2d(output.detach().float().clamp(-1, 1), self.scale)
                latents = from_decoder_input(vae, z.float())
                if colours.shape[-2:] != latents.shape[-2:]:
                    return
                self.previewer.learn(self.key, latents, colours)
        except Exception as exc:  # learning is a nicety; a decode must never fail for it
            log.debug("Preview fit not updated: %s", exc)


@dataclass
class VaeFit:
    """One VAE's least-squares data: the load-time fit (a fixed prior, which has seen every hue) and what its
    decodes taught since. Each decode first scores both maps on its own picture, before it is learnt; previews
    use the map that has predicted recent pictures better. (On the demo model, whose latents are far from
    linear in colour, the prior generalises to new colours better; on a model whose latents are far from any
    the prior saw, what was learnt wins at once.)"""

    prior: FitStats
    learned: FitStats | None = None
    prior_error: float = 0.0  # running mean colour error on new pictures
    learned_error: float = 1.0
    _prior_map: LinearPreview = field(init=False, repr=False)
    _learned_map: LinearPreview | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._prior_map = self.prior.solve()
        self._learned_map = None if self.learned is None else self.prior.plus(self.learned).solve()

    @property
    def current(self) -> LinearPreview:
        if self._learned_map is not None and self.learned_error < self.prior_error:
            return self._learned_map
        return self._prior_map

    def learn(self, latents: torch.Tensor, colours: torch.Tensor) -> bool:
        """Score both maps on one decode's latents and colours, then learn from it."""
        stats = FitStats.of(latents, colours, self.prior.scale, self.prior.kernel)
        finite = bool(np.isfinite(stats.xtx).all() and np.isfinite(stats.xty).all())
        if stats.xtx.shape != self.prior.xtx.shape or not finite:
            return False  # another latent space, or a decode that overflowed
        target = colours.detach().float().cpu()
        prior_error = float((self._prior_map.predict(latents) - target).abs().mean())
        first = self.learned is None
        if not first and self._learned_map is not None:
            learned_error = float((self._learned_map.predict(latents) - target).abs().mean())
            self.prior_error = ERROR_MEMORY * self.prior_error + (1 - ERROR_MEMORY) * prior_error
            self.learned_error = ERROR_MEMORY * self.learned_error + (1 - ERROR_MEMORY) * learned_error
        self.learned = stats if self.learned is None else self.learned.scaled(DECAY ** stats.weight).plus(stats)
        self._learned_map = self.prior.plus(self.learned).solve()
        if first:  # nothing learnt to score yet: judge it on the picture it learnt (optimistic; corrected later)
            self.prior_error = prior_error
            self.learned_error = float((self._learned_map.predict(latents) - target).abs().mean())
        return True

    def to_json(self) -> dict[str, Any]:
        return {"prior": self.prior.to_json(), "learned": None if self.learned is None else self.learned.to_json(),
                "prior_error": self.prior_error, "learned_error": self.learned_error}

    @classmethod
    def from_json(cls, data: Any) -> VaeFit | None:
        if not isinstance(data, dict):
            return None
        prior = FitStats.from_json(data.get("prior"))
        learned = FitStats.from_json(data["learned"]) if data.get("learned") is not None else None
        if prior is None or (learned is not None and learned.xtx.shape != prior.xtx.shape):
            return None
        try:
            errors = float(data.get("prior_error", 0.0)), float(data.get("learned_error", 1.0))
        except (TypeError, ValueError):
            errors = (0.0, 1.0)
        return cls(prior, learned, *errors)


class LatentPreviewer:
    """Live previews for every VAE a process uses: fitted linear maps (refined by every decode and kept in
    ``cache_file``) and TAESD decoders from ``approx_dir``. One per pipeline manager; thread-safe."""

    def __init__(self, cache_file: Path | None, approx_dir: Path | None = None,
                 device: torch.device | None = None) -> None:
        self.cache_file = cache_file
        self.approx_dir = approx_dir
        self.device = device
        self._lock = threading.Lock()
        self._stats: dict[str, VaeFit] = self._read()  # VAE fingerprint -> least-squares data
        # Loaded VAE modules -> their learner (which knows the fingerprint); weak, so evicted VAEs can go.
        self._learners: weakref.WeakKeyDictionary[Any, _Learner] = weakref.WeakKeyDictionary()
        self._taesd: dict[Path, tuple[int, Any]] = {}  # file -> (mtime, model or None when unusable)

    def _read(self) -> dict[str, VaeFit]:
        if self.cache_file is None or not self.cache_file.exists():
            return {}
        try:
            data = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("Preview cache %s is unreadable; previews will be fitted again", self.cache_file)
            return {}
        if not isinstance(data, dict) or data.get("version") != FIT_VERSION or not isinstance(data.get("fits"), dict):
            return {}
        fits = {key: VaeFit.from_json(value) for key, value in data["fits"].items()}
        return {key: stats for key, stats in fits.items() if stats is not None}

    def _write_locked(self) -> None:
        if self.cache_file is None:
            return
        payload = {"version": FIT_VERSION, "fits": {key: stats.to_json() for key, stats in self._stats.items()}}
        try:
            write_text_atomic(self.cache_file, json.dumps(payload))
        except OSError as exc:
            log.warning("Could not save preview colours to %s: %s", self.cache_file, exc)

    def prepare(self, vae: Any) -> LinearPreview | None:
        """Make previews of this VAE module's latents look like its pictures: its fit from the cache file or
        fitted now (a few small decodes), then refined by its decodes. Call it when a VAE is loaded, before any
        offload hooks are on it. None when it cannot be fitted (previews then use SD's factors)."""
        with self._lock:
            learner = self._learners.get(vae)
            if learner is not None:
                return self._stats[learner.key].current
            key = vae_fingerprint(vae)
            if key not in self._stats:
                try:
                    self._stats[key] = VaeFit(load_time_stats(vae, self.device))
                except Exception as exc:  # a preview is never worth failing a load
                    log.warning("Could not fit preview colours for this VAE: %s", exc)
                    return None
                self._write_locked()
            self._learners[vae] = _Learner(self, key, vae)
            return self._stats[key].current

    def learn(self, key: str, latents: torch.Tensor, colours: torch.Tensor) -> None:
        """Learn from one decode: latents (n, C, h, w) and colours averaged per latent (called by a VAE's hooks)."""
        with self._lock:
            known = self._stats.get(key)
            if known is not None and known.learn(latents, colours):
                self._write_locked()

    def fitted(self, vae: Any) -> LinearPreview | None:
        """The current fit of this VAE module, if ``prepare`` made one (never fits: cheap for a step callback)."""
        with self._lock:
            learner = self._learners.get(vae)
            fit = self._stats.get(learner.key) if learner is not None else None
            return fit.current if fit is not None else None

    def taesd_decoder(self, vae: Any, is_sdxl: bool) -> Any | None:
        """The TAESD decoder (an AutoencoderTiny) for this VAE's latent space from ``approx_dir``, loaded once per
        file version; None when there is none, or it cannot be read."""
        if vae_scale(vae) != 8 or int(vae.config.latent_channels) != 4:
            return None  # TAESD knows SD's and SDXL's latent spaces only
        path = taesd_file(self.approx_dir, is_sdxl)
        if path is None:
            return None
        mtime = path.stat().st_mtime_ns
        with self._lock:
            known = self._taesd.get(path)
            if known is not None and known[0] == mtime:
                return known[1]
            try:
                model = load_taesd(path)
            except Exception as exc:  # a bad file means linear previews, not a failed job
                log.warning("Cannot use %s for previews: %s", path, exc)
                model = None
            self._taesd[path] = (mtime, model)
            return model

    @torch.no_grad()
    def preview(self, vae: Any, latents: torch.Tensor, is_sdxl: bool, index: int = 0) -> Image.Image:
        """A preview of image ``index`` of a latent batch that ``vae`` will decode."""
        taesd = self.taesd_decoder(vae, is_sdxl)
        if taesd is not None:
            rgb = self.taesd_decode(taesd, latents[index:index + 1])[0]
            return _to_image(rgb.permute(1, 2, 0), 1)
        fit = self.fitted(vae) or fixed_preview(is_sdxl, vae_scale(vae))
        return fit.render(latents[index])

    @torch.no_grad()
    def taesd_decode(self, taesd: Any, latents: torch.Tensor) -> torch.Tensor:
        """A batch of latents (as the UNet leaves them) decoded by ``taesd``: (n, 3, H, W) in [-1, 1], float32."""
        latents = latents.detach().float()
        with self._lock:  # one thread at a time moves the shared decoder to where the latents are
            if next(taesd.parameters()).device != latents.device:
                taesd.to(latents.device)
        return taesd.decode(latents).sample.clamp(-1, 1)
