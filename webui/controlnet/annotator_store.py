"""AnnotatorStore: the annotator networks, loaded on first use from ``models/ControlNetAnnotators/`` and kept
in a small LRU (one per file), owned by the ControlNetLibrary of the app's model manager.

Files are read by the checkpoint reader: safetensors through its validated header, ``.pth`` / ``.pt`` with
``torch.load(weights_only=True)``, which refuses a pickle that asks to run code or build objects. A
``.safetensors`` file of the same stem is accepted in place of the ``.pth`` the catalog names. A file whose
tensors are not the network's (missing, unexpected or mis-shaped names) is refused with a message naming it.
Networks run in fp32 under ``torch.inference_mode`` on the store's device (the CPU unless told otherwise);
between runs they wait on the CPU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import nn

from ..errors import AtelierError
from ..models.header import CorruptCheckpointError
from ..models.loader import CheckpointLoadError, empty_weights, read_checkpoint_file
from .nets import WrongWeights

CACHE_SIZE = 3  # networks kept loaded; the largest (Depth Anything ViT-L) is about 1.3 GB in fp32
T = TypeVar("T")


class AnnotatorFileError(AtelierError):
    """An annotator file that cannot be used; the message names it and says why."""


def _describe(names: list[str]) -> str:
    return ", ".join(sorted(names)[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def adopt_weights(net: nn.Module, tensors: dict[str, torch.Tensor], path: Path, what: str, field: str) -> nn.Module:
    """``net`` (built weightless) with ``tensors`` as its weights, or AnnotatorFileError naming ``path``."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for key in expected:  # files saved by older torch lack batch norm's counter, which inference never reads
        if key.endswith(".num_batches_tracked") and key not in tensors:
            tensors[key] = torch.zeros((), dtype=torch.long)
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} tensors missing ({_describe(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unknown tensors ({_describe(unexpected)})")
        if wrong:
            problems.append(f"{len(wrong)} of other shapes ({_describe(wrong)})")
        raise AnnotatorFileError(f"{path.name} ({path}) is not the {what} weights: {'; '.join(problems)}. Get the "
                                 "original file again.", field)
    net.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()},
                        strict=True, assign=True)
    return net.eval().requires_grad_(False)


@contextmanager
def _guarded(path: Path, field: str) -> Iterator[None]:
    try:
        yield
    except (CheckpointLoadError, CorruptCheckpointError) as exc:  # unsafe pickles, damaged files
        raise AnnotatorFileError(f"Annotator {exc}", field) from exc


class AnnotatorStore:
    def __init__(self, folder: Path | None, device: torch.device | str = "cpu", capacity: int = CACHE_SIZE) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.device = torch.device(device)
        self.capacity = capacity
        self._nets: OrderedDict[tuple[str, int, int], nn.Module] = OrderedDict()
        self._kept: OrderedDict[tuple[str, int, int], Any] = OrderedDict()  # what keep() opened
        self._lock = threading.RLock()  # one annotator run at a time: the nets move to the device to run

    def loaded(self) -> list[str]:
        """Paths of the networks in memory, least recently used first."""
        with self._lock:
            return [key[0] for key in self._nets]

    def load(self, path: Path, what: str, build: Callable[[dict[str, torch.Tensor]], nn.Module],
             rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
             field: str = "module") -> nn.Module:
        """The network ``build`` makes (given the renamed tensors, for nets whose shape they tell), with the
        weights of ``path`` (cached by path, size and mtime)."""
        try:
            stat = path.stat()
        except OSError as exc:
            raise AnnotatorFileError(f"Annotator {path.name}: cannot read file ({exc.strerror or exc})", field) from exc
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            net = self._nets.get(key)
            if net is not None:
                self._nets.move_to_end(key)
                return net
            for old in [k for k in self._nets if k[0] == key[0]]:  # the file was replaced
                del self._nets[old]
            with _guarded(path, field):
                tensors, _ = read_checkpoint_file(path, torch.float32, skip=())
            if rename is not None:
                tensors = rename(tensors)
            try:
                with empty_weights():
                    net = build(tensors)
            except WrongWeights as exc:
                raise AnnotatorFileError(f"{path.name} ({path}) is not the {what} weights: {exc}", field) from exc
            net = adopt_weights(net, tensors, path, what, field)
            self._nets[key] = net
            while len(self._nets) > self.capacity:
                self._nets.popitem(last=False)
            return net

    def keep(self, path: Path, open_file: Callable[[Path], T], field: str = "module") -> T:
        """What ``open_file`` makes of ``path`` (an ONNX Runtime session: a model that is not a torch network),
        cached like the networks (by path, size and mtime; an LRU of its own, as large)."""
        try:
            stat = path.stat()
        except OSError as exc:
            raise AnnotatorFileError(f"Annotator {path.name}: cannot read file ({exc.strerror or exc})", field) from exc
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return cast(T, self._kept[key])
            for old in [k for k in self._kept if k[0] == key[0]]:  # the file was replaced
                del self._kept[old]
            value = open_file(path)
            self._kept[key] = value
            while len(self._kept) > self.capacity:
                self._kept.popitem(last=False)
            return value

    @contextmanager
    def running(self, *nets: nn.Module) -> Iterator[torch.device]:
        """Run ``nets`` on the store's device, one caller at a time; they go back to the CPU afterwards."""
        with self._lock, torch.inference_mode():
            if self.device.type != "cpu":
                for net in nets:
                    net.to(self.device)
            try:
                yield self.device
            finally:
                if self.device.type != "cpu":
                    for net in nets:
                        net.to("cpu")
