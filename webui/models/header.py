"""Read a .safetensors header (tensor names, dtypes, shapes, metadata) without reading weights.

Pure Python: the header is 8 bytes of little-endian length followed by that much JSON.
Every check here guards against hostile or damaged files before anything else opens them.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import BinaryIO

# Real headers are well under 10 MB (SDXL's is ~200 KB); anything larger is damage or an attack.
MAX_HEADER_BYTES = 100 * 2**20

DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}


class CorruptCheckpointError(ValueError):
    """The file is not a readable checkpoint; the message names the file and the reason."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    # Byte range inside the data section (after the header), as the header's data_offsets give it.
    start: int = 0
    end: int = 0

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int = 0  # file offset of the data section: 8 + the header's length

    def shape(self, key: str) -> tuple[int, ...] | None:
        info = self.tensors.get(key)
        return info.shape if info else None

    def nbytes(self, dtype_size: int | None = None) -> int:
        """Bytes the floating-point tensors take, optionally re-cast to `dtype_size` bytes each."""
        total = 0
        for info in self.tensors.values():
            size = DTYPE_SIZES.get(info.dtype, 4)
            if dtype_size is not None and info.dtype.startswith(("F", "BF")):
                size = dtype_size
            total += info.numel * size
        return total


def read_header(path: Path) -> SafetensorsHeader:
    path = Path(path)
    if not path.is_file():
        raise CorruptCheckpointError(f"{path.name}: file not found ({path})")
    try:
        with path.open("rb") as fh:
            return read_header_from(fh, path.name)
    except OSError as exc:
        raise CorruptCheckpointError(f"{path.name}: cannot read file ({exc.strerror or exc})") from exc


def read_header_from(fh: BinaryIO, name: str) -> SafetensorsHeader:
    """The header of the open file `fh` (at offset 0), so a caller can go on reading the very same file."""
    file_size = os.fstat(fh.fileno()).st_size
    prefix = fh.read(8)
    if len(prefix) < 8:
        raise CorruptCheckpointError(f"{name}: file is too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES or header_len > file_size - 8:
        raise CorruptCheckpointError(
            f"{name}: corrupt file (header length {header_len} does not fit a {file_size}-byte file)"
        )
    raw = fh.read(header_len)
    return _parse(raw, name, file_size, header_len)


def _parse(raw: bytes, file_name: str, file_size: int, header_len: int) -> SafetensorsHeader:
    path = PurePath(file_name)  # messages name the file only
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptCheckpointError(f"{path.name}: corrupt file (header is not valid JSON)") from exc
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path.name}: corrupt file (header is not a JSON object)")

    data_size = file_size - 8 - header_len
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        metadata = {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCheckpointError(f"{path.name}: corrupt file (bad entry for tensor {name!r})") from exc
        if dtype not in DTYPE_SIZES or any(d < 0 for d in shape):
            raise CorruptCheckpointError(f"{path.name}: corrupt file (tensor {name!r} has dtype {dtype!r})")
        info = TensorInfo(dtype, shape, start, end)
        if not 0 <= start <= end <= data_size or end - start != info.numel * DTYPE_SIZES[dtype]:
            raise CorruptCheckpointError(
                f"{path.name}: corrupt or truncated file (tensor {name!r} lies outside the file's data)"
            )
        tensors[name] = info
    return SafetensorsHeader(tensors=tensors, metadata={str(k): str(v) for k, v in metadata.items()},
                             data_start=8 + header_len)
