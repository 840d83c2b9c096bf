"""Upscalers: plain resampling (None, Lanczos, Nearest) and super-resolution model files (ESRGAN, Real-ESRGAN,
SwinIR, DAT, HAT and the other architectures spandrel knows), for the Extras tab, its API and hires fix.

Modules, one job each:
- ``folders``: where model files are looked for and what they are called (pure).
- ``loading``: one file -> a ready model, read without unpickling anything (torch.load(weights_only=True)).
- ``tiling``: model-agnostic tiled inference with blended seams.
- ``library``: ``UpscalerLibrary``, the one object the rest of Atelier uses.
- ``extras``: what the Extras tab and /sdapi/v1/extra-* do with a picture (sizes, checks, infotext; pure).

Importing this package imports nothing heavy; ``library`` and ``loading`` import torch.
"""

from .errors import UpscalerError
from .folders import BUILTIN_UPSCALER_DIR, PLAIN_UPSCALERS, default_upscaler_dirs

__all__ = ["BUILTIN_UPSCALER_DIR", "PLAIN_UPSCALERS", "UpscalerError", "default_upscaler_dirs"]
