"""Read a .safetensors file's tensors into process memory with plain reads, one tensor at a time.

Why not memory-map it (what ``safetensors.safe_open`` does): tensors left in the file's own dtype stay
backed by the mapped file, and a file replaced in place or truncated while such a model is cached changes
the weights under it or kills the process with SIGBUS on the next access. Read into memory the process
owns, the cached model no longer depends on the file; a file that shrinks or changes while it is being
read gives a clear error instead. Reading one tensor at a time and casting it at once keeps the peak near
one copy of the model in the load dtype plus one tensor as stored.
"""

from __future__ import annotations

import os
import sys
from io import FileIO
from pathlib import Path

import torch

from .header import CorruptCheckpointError, SafetensorsHeader, read_header_from
from .registry import file_identity

_TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}
# Linux caps one read() at just under 2 GiB; larger tensors are read in chunks.
_CHUNK = 1 << 30


def read_safetensors(
    path: Path, dtype: torch.dtype | None = None, skip: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (floating-point ones cast to `dtype`) and metadata; names starting with `skip` are not read."""
    if sys.byteorder != "little":  # safetensors stores little-endian; so do all machines this runs on
        raise CorruptCheckpointError(f"{path.name}: reading safetensors needs a little-endian machine")
    try:
        with path.open("rb", buffering=0) as fh:
            before = file_identity(os.fstat(fh.fileno()))
            header = read_header_from(fh, path.name)
            tensors = _read_tensors(fh, header, path.name, dtype, skip)
            if file_identity(os.fstat(fh.fileno())) != before:
                raise CorruptCheckpointError(
                    f"{path.name}: the file changed while it was being read (is it still being copied or "
                    "downloaded?); try again when it is complete"
                )
    except OSError as exc:
        raise CorruptCheckpointError(f"{path.name}: cannot read file ({exc.strerror or exc})") from exc
    return tensors, header.metadata


def _read_tensors(
    fh: FileIO, header: SafetensorsHeader, name: str, dtype: torch.dtype | None, skip: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    # In file order, so the reads are sequential.
    for key, info in sorted(header.tensors.items(), key=lambda item: item[1].start):
        if key.startswith(skip):
            continue
        raw = torch.empty(info.end - info.start, dtype=torch.uint8)
        fh.seek(header.data_start + info.start)
        _read_exactly(fh, raw.numpy().data, name)
        tensor = raw.view(_TORCH_DTYPES[info.dtype]).reshape(info.shape)
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)  # the stored bytes are dropped at once
        tensors[key] = tensor
    return tensors


def _read_exactly(fh: FileIO, view: memoryview, name: str) -> None:
    done = 0
    while done < len(view):
        got = fh.readinto(view[done: done + _CHUNK])
        if not got:
            raise CorruptCheckpointError(
                f"{name}: the file ended early (truncated, or rewritten while it was being read)"
            )
        done += got
