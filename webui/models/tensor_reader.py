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
# Values to be cast pass through a buffer of this size: small, and allocated once per file.
_CAST_CHUNK = 8 << 20


def read_safetensors(
    path: Path, dtype: torch.dtype | None = None, skip: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (floating-point ones cast to `dtype`) and metadata; names starting with `skip` are not read."""
    if sys.byteorder != "little":  # safetensors stores little-endian; so do all machines this runs on
        raise CorruptCheckpointError(f"{path.name}: reading safetensors needs a little-endian machine")
    try:
        with path.open("rb", buffering=0) as fh:
            before = file_identity(os.fstat(fh.fileno()))
            if hasattr(os, "posix_fadvise"):  # one pass from start to end: let the kernel read far ahead
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
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
    staging: torch.Tensor | None = None  # reused for every cast, so the casts allocate only their results
    # In file order, so the reads are sequential.
    for key, info in sorted(header.tensors.items(), key=lambda item: item[1].start):
        if key.startswith(skip):
            continue
        stored = _TORCH_DTYPES[info.dtype]
        fh.seek(header.data_start + info.start)
        if dtype is None or not stored.is_floating_point or stored == dtype:
            tensor = torch.empty(info.shape, dtype=stored)  # read straight into its final place
            _read_exactly(fh, _bytes_of(tensor), name)
        else:
            if staging is None:
                staging = torch.empty(_CAST_CHUNK, dtype=torch.uint8)
            tensor = torch.empty(info.shape, dtype=dtype)
            _read_cast(fh, tensor, stored, staging, name)
        tensors[key] = tensor
    return tensors


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    return tensor.reshape(-1).view(torch.uint8).numpy().data


def _read_cast(fh: FileIO, out: torch.Tensor, stored: torch.dtype, staging: torch.Tensor, name: str) -> None:
    """Fill `out` from the file's `stored`-dtype values, a chunk at a time through `staging`."""
    flat = out.reshape(-1)
    size = torch.tensor([], dtype=stored).element_size()
    per_chunk = len(staging) // size
    for first in range(0, flat.numel(), per_chunk):
        count = min(per_chunk, flat.numel() - first)
        chunk = staging[: count * size]
        _read_exactly(fh, chunk.numpy().data, name)
        flat[first: first + count].copy_(chunk.view(stored))


def _read_exactly(fh: FileIO, view: memoryview, name: str) -> None:
    done = 0
    while done < len(view):
        got = fh.readinto(view[done: done + _CHUNK])
        if not got:
            raise CorruptCheckpointError(
                f"{name}: the file ended early (truncated, or rewritten while it was being read)"
            )
        done += got
