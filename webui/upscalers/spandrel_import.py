"""Import spandrel, also where torchvision cannot be imported.

spandrel imports torchvision at start-up for two architectures only: LaMa (inpainting) and RestoreFormer
(face restoration). Atelier uses neither (it accepts super-resolution models only), and every upscaler
architecture is plain torch. Where torchvision is missing, or is a build that does not match torch (PyPI's
CUDA torchvision beside a CPU build of torch fails with "operator torchvision::nms does not exist"), a
stand-in for the three names those two modules import lets spandrel load. The stand-in is in
``sys.modules`` only while spandrel is imported, so no other code ever sees it.
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_spandrel: ModuleType | None = None


def import_spandrel() -> ModuleType:
    """The spandrel module (imported once). Raises ImportError when it cannot be imported at all."""
    global _spandrel
    with _lock:
        if _spandrel is None:
            _spandrel = _import()
        return _spandrel


def _torchvision_imports() -> bool:
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # ImportError, or RuntimeError / OSError from a build that does not match torch
        return False
    return True


def _import() -> ModuleType:
    if _torchvision_imports():
        import spandrel

        return spandrel
    log.info("torchvision cannot be imported; loading spandrel without its inpainting and face models")
    leftovers = _torchvision_modules()  # what a failed torchvision import left behind, put back afterwards
    for name in leftovers:
        del sys.modules[name]
    sys.modules.update(_stand_in())
    try:
        import spandrel
    finally:
        for name in _torchvision_modules():
            del sys.modules[name]
        sys.modules.update(leftovers)
    return spandrel


def _torchvision_modules() -> dict[str, ModuleType]:
    return {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}


def _unavailable(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("this model needs torchvision, which cannot be imported here")


def _stand_in() -> dict[str, ModuleType]:
    root = ModuleType("torchvision")
    transforms = ModuleType("torchvision.transforms")
    functional = ModuleType("torchvision.transforms.functional")
    root.__path__ = transforms.__path__ = []  # packages, so the submodule imports resolve
    for name, value in (("normalize", _unavailable), ("rotate", _unavailable),
                        ("InterpolationMode", enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC"))):
        setattr(functional, name, value)
    setattr(root, "transforms", transforms)  # noqa: B010 (module attributes, set as imports would)
    setattr(transforms, "functional", functional)  # noqa: B010
    return {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}
