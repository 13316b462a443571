"""Memory-mapped reading of uploaded data sets: safetensors files and uncompressed ``.npz``.

A 50,000 x 3 x 32 x 32 float32 data set is 600 MB; reading it into memory (or through
``np.load`` of a zip member) costs that much RSS per worker process, and the float conversion
of uint8 images four times as much again. Here every array of a safetensors file, and every
*stored* (uncompressed) ``.npy`` member of an ``.npz``, is mapped copy-on-write
(``np.memmap(mode="c")``): pages are read from the file when touched and can be dropped again by
the kernel, and nothing is copied up front. Compressed members cannot be mapped: the caller
falls back to its bounded reader (:func:`mapped_arrays` returns None).

Hostile input: the header of a safetensors file and the directory and ``.npy`` headers of a
zip are parsed with limits (header size, number of arrays, numeric dtypes only, offsets and
sizes inside the file); nothing is unpickled; any inconsistency is a :class:`ValueError`.

uint8 (or other integer) images with a ``scale`` become float32 through
:func:`scaled_float32`, which writes the converted values block by block to an unlinked
temporary file mapped in turn: the float copy lives on disk, not in the process's memory.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["MAX_ARRAYS", "mapped_arrays", "scaled_float32"]

#: a data set file holds a handful of arrays (x, y, split, scale or the train/test four)
MAX_ARRAYS = 16
#: the JSON header of a safetensors data set is tiny; refuse anything bigger than this
MAX_HEADER_BYTES = 1 << 20
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "U8": np.uint8, "I8": np.int8,
              "U16": np.uint16, "I16": np.int16, "U32": np.uint32, "I32": np.int32, "U64": np.uint64,
              "I64": np.int64, "BOOL": np.bool_}
#: rows converted per block by scaled_float32 (about 16 MB of float32 for 3x32x32 images)
_CONVERT_BLOCK_VALUES = 1 << 22


def _mapped(path: Path, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> np.ndarray:
    if math.prod(shape) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape)


def _safetensors(path: Path, size: int) -> dict[str, np.ndarray]:
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"the safetensors header claims {n} bytes; at most {MAX_HEADER_BYTES} fit this file")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"the safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    if len(header) > MAX_ARRAYS:
        raise ValueError(f"the file holds {len(header)} tensors; a data set holds at most {MAX_ARRAYS}")
    data_start, data_size = 8 + n, size - 8 - n
    out = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or entry.get("dtype") not in _ST_DTYPES:
            raise ValueError(f"tensor {name!r} has no numeric dtype (got {entry!r:.80})")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if (not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"tensor {name!r} has a malformed shape or data_offsets")
        dtype = np.dtype(_ST_DTYPES[entry["dtype"]]).newbyteorder("<")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size or end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"tensor {name!r}: its data_offsets {offsets} do not hold {shape} {entry['dtype']} "
                             "values inside the file")
        out[str(name)] = _mapped(path, dtype, tuple(shape), data_start + begin)
    return out


def _npz(path: Path) -> dict[str, np.ndarray] | None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_ARRAYS:
            raise ValueError(f"the .npz holds {len(infos)} members; a data set holds at most {MAX_ARRAYS}")
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
            return None  # compressed (np.savez_compressed): cannot be mapped
        out = {}
        with path.open("rb") as fh:
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"the .npz member {info.filename!r} is not a .npy array")
                fh.seek(info.header_offset)
                local = fh.read(30)
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    raise ValueError(f"the .npz member {info.filename!r} has a broken local header")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                start = info.header_offset + 30 + name_len + extra_len
                fh.seek(start)
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise ValueError(f"the .npz member {info.filename!r} has .npy version {version}")
                if dtype.hasobject or dtype.kind not in "fiub" or fortran:
                    raise ValueError(f"the .npz member {info.filename!r} holds {dtype} values"
                                     f"{' in Fortran order' if fortran else ''} (object arrays would need pickle, "
                                     "which is never used); save C-ordered numeric arrays only")
                data = fh.tell()
                if data - start + math.prod(shape) * dtype.itemsize > info.file_size:
                    raise ValueError(f"the .npz member {info.filename!r} is shorter than its header's {shape} {dtype}")
                out[info.filename[:-4]] = _mapped(path, dtype, tuple(shape), data)
        return out


def mapped_arrays(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """Every array of a data set file, memory-mapped; None when the file cannot be mapped.

    Raises
    ------
    ValueError
        A safetensors header or a zip/.npy header that is inconsistent or over the limits.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(9)
    if head.startswith(b"PK"):
        try:
            return _npz(path)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"cannot read the .npz archive: {exc}") from None
    if len(head) == 9 and head[8:9] == b"{":
        return _safetensors(path, size)
    return None


def scaled_float32(arr: np.ndarray, scale: float, *, directory: str | None = None) -> np.ndarray:
    """``arr * scale`` as float32, written block by block to an unlinked temporary file mapped back.

    The memory it takes is one block at a time; the result reads like an in-memory array.
    """
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    shape = tuple(arr.shape)
    if math.prod(shape) == 0:
        return np.empty(shape, dtype=np.float32)
    per_row = max(1, math.prod(shape[1:]))
    block = max(1, _CONVERT_BLOCK_VALUES // per_row)
    with tempfile.TemporaryFile(dir=directory, prefix="bregkd-float-") as fh:
        out = np.memmap(fh, dtype=np.float32, mode="w+", shape=shape)
    for s in range(0, shape[0], block):
        np.multiply(arr[s:s + block], np.float32(scale), out=out[s:s + block], dtype=np.float32)
    return out
