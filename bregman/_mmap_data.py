"""Memory-mapped reading of uploaded data sets: safetensors files and uncompressed ``.npz``.

A 50,000 x 3 x 32 x 32 float32 data set is 600 MB; reading it into memory (or through
``np.load`` of a zip member) costs that much RSS per worker process, and the float conversion
of uint8 images four times as much again. Here every array of a safetensors file, and every
*stored* (uncompressed) ``.npy`` member of an ``.npz``, is mapped copy-on-write
(``np.memmap(mode="c")``): pages are read from the file when touched and can be dropped again by
the kernel, and nothing is copied up front. Compressed members cannot be mapped: the caller
falls back to its bounded reader (:func:`mapped_arrays` returns None).

Hostile input: the header of a safetensors file is read by :mod:`bregman._safetensors_guard`
and the zip directory and ``.npy`` headers by :mod:`bregman._safe_zip` (the same vetted
readers as everywhere else), plus a cap on the number of arrays; nothing is unpickled; any
inconsistency is a :class:`ValueError`.

uint8 (or other integer) images with a ``scale`` become float32 through
:func:`scaled_float32`, which writes the converted values block by block to an unlinked
temporary file mapped in turn: the float copy lives on disk, not in the process's memory.
"""
from __future__ import annotations

import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["MAX_ARRAYS", "mapped_arrays", "scaled_float32"]

#: a data set file holds a handful of arrays (x, y, split, scale or the train/test four)
MAX_ARRAYS = 16
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
    from bregman._safetensors_guard import SafetensorsHeaderError, read_header

    try:  # the one vetted header reader: sizes, depth, byte ranges tiling the data exactly
        header = read_header(path)
    except SafetensorsHeaderError as exc:
        raise ValueError(f"the safetensors file cannot be used: {exc}") from None
    if len(header.tensors) > MAX_ARRAYS:
        raise ValueError(f"the file holds {len(header.tensors)} tensors; a data set holds at most {MAX_ARRAYS}")
    out = {}
    for name, entry in header.tensors.items():
        if entry.dtype not in _ST_DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {entry.dtype}; a data set holds numeric arrays")
        dtype = np.dtype(_ST_DTYPES[entry.dtype]).newbyteorder("<")
        out[str(name)] = _mapped(path, dtype, tuple(entry.shape), header.data_offset + entry.start)
    return out


def _npz(path: Path) -> dict[str, np.ndarray] | None:
    from bregman._safe_zip import _NPY_MAX_HEADER, SafeZip, _npy_header

    # the one vetted zip reader: member count, names, no links or duplicates, no overlaps
    with SafeZip(path, kind=".npz file") as zf:
        if len(zf.names) > MAX_ARRAYS:
            raise ValueError(f"the .npz holds {len(zf.names)} members; a data set holds at most {MAX_ARRAYS}")
        if any(zf.info(n).compress_type != zipfile.ZIP_STORED for n in zf.names):
            return None  # compressed (np.savez_compressed): cannot be mapped
        out = {}
        with path.open("rb") as fh:
            for name in zf.names:
                if not name.endswith(".npy") or "/" in name:
                    raise ValueError(f"the .npz member {name!r} is not a top-level .npy array")
                start, stored = zf.data_offset(name), zf.size(name)
                fh.seek(start)
                dtype, shape, fortran, header_len = _npy_header(fh.read(min(stored, 12 + _NPY_MAX_HEADER)),
                                                                name[:-4], ".npz file")
                if fortran:
                    raise ValueError(f"the .npz member {name!r} is in Fortran order; save C-ordered arrays")
                if header_len + math.prod(shape) * dtype.itemsize != stored:
                    raise ValueError(f"the .npz member {name!r} does not hold exactly its header's {shape} {dtype}")
                out[name[:-4]] = _mapped(path, dtype, tuple(shape), start + header_len)
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
