"""Read a user's safetensors file only after its header has been proven consistent with its bytes.

The ``safetensors`` library trusts the header it parses: its length, its JSON, and each tensor's
``dtype`` x ``shape`` against its byte range. This module checks all of that first, with bounds,
from the first ``8 + header_len`` bytes of the file (never a whole-file ``read()``):

- the 8-byte header length is at most ``max_header_bytes`` (16 MiB by default; a real header
  holds about 100 bytes per tensor) and fits in the file;
- the header is UTF-8 JSON nested at most 3 deep (``{name: {"shape": [...]}}``), an object with
  no duplicate keys;
- every entry other than ``__metadata__`` has exactly ``dtype``, ``shape`` and ``data_offsets``;
  the dtype is a whole-byte one, the shape at most 8 dimensions of integers below 2**40, and
  ``end - start == prod(shape) * itemsize``;
- the byte ranges, sorted, tile the data section exactly: they start at 0, never overlap, leave
  no gap and end at the end of the file (so no bytes are hidden between or after tensors);
- ``__metadata__`` is an object of at most 64 string values.

Only then are tensors read, one at a time, through ``safe_open`` (a memory map): the memory a
caller spends is the sum of the tensors it asks for, which it can compute from the header
beforehand (:attr:`TensorEntry.nbytes`).
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = [
    "DTYPE_SIZES",
    "MAX_HEADER_BYTES",
    "SafetensorsHeader",
    "SafetensorsHeaderError",
    "TensorEntry",
    "iter_tensors",
    "read_header",
]

#: largest header accepted (the ``safetensors`` library itself allows 100 MB)
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 3
MAX_NDIM = 8
MAX_DIM = 2**40
MAX_METADATA_ENTRIES = 64
MAX_NAME_CHARS = 1024

#: bytes per element of the dtypes we accept (sub-byte formats such as F4 are refused)
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = frozenset({"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"})

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class SafetensorsHeaderError(ValueError):
    """The file is not a consistent safetensors file; the message says what is wrong."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header declares it (its bytes lie at ``[start, end)`` of the data section)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_floating_point(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class SafetensorsHeader:
    """A vetted header: the tensors (in file order), the string metadata, where the data starts."""

    path: Path
    file_size: int
    header_len: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]

    @property
    def data_offset(self) -> int:
        return 8 + self.header_len

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _depth(raw: bytes) -> int:
    """Deepest nesting of ``{``/``[`` outside JSON strings (numpy: linear, no recursion)."""
    import numpy as np

    bare = np.frombuffer(_STRING.sub(b'""', raw), dtype=np.uint8)
    step = np.zeros(bare.shape, dtype=np.int64)
    step[(bare == ord("{")) | (bare == ord("["))] = 1
    step[(bare == ord("}")) | (bare == ord("]"))] = -1
    return int(np.cumsum(step).max(initial=0))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SafetensorsHeaderError(f"the safetensors header names {key[:80]!r} twice")
        out[key] = value
    return out


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(name: str, spec: Any) -> TensorEntry:
    label = f"tensor {name[:80]!r}"
    if len(name) > MAX_NAME_CHARS:
        raise SafetensorsHeaderError(f"a tensor name is {len(name)} characters long; at most {MAX_NAME_CHARS} are allowed")
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        keys = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise SafetensorsHeaderError(f"{label}: the header entry must hold exactly dtype, shape and data_offsets, got {keys}")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise SafetensorsHeaderError(f"{label} has dtype {str(dtype)[:20]!r}; supported: {sorted(DTYPE_SIZES)}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_int(s) and 0 <= s < MAX_DIM for s in shape):
        raise SafetensorsHeaderError(
            f"{label} has shape {str(shape)[:80]}; expected at most {MAX_NDIM} non-negative integers below 2**40"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]):
        raise SafetensorsHeaderError(f"{label} has data_offsets {str(offsets)[:80]}; expected [start, end] with start <= end")
    entry = TensorEntry(name, dtype, tuple(shape), int(offsets[0]), int(offsets[1]))
    want = entry.numel * DTYPE_SIZES[dtype]
    if entry.nbytes != want:
        raise SafetensorsHeaderError(
            f"{label} declares dtype {dtype} and shape {list(shape)} ({want} bytes) but a byte range of {entry.nbytes} bytes"
        )
    return entry


def read_header(path: str | os.PathLike, *, max_header_bytes: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """Parse and check a safetensors header against the file (see the module docstring).

    Raises
    ------
    SafetensorsHeaderError
        Any inconsistency; the message names the tensor and the numbers that disagree.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise SafetensorsHeaderError(f"the file has {size} bytes, too few for a safetensors header")
        (n,) = struct.unpack("<Q", prefix)
        if n > max_header_bytes:
            raise SafetensorsHeaderError(
                f"the safetensors header claims {n} bytes; at most {max_header_bytes} are accepted"
            )
        if 8 + n > size:
            raise SafetensorsHeaderError(f"the safetensors header claims {n} bytes but the file has only {size}")
        raw = fh.read(n)
    if _depth(raw) > MAX_DEPTH:
        raise SafetensorsHeaderError(f"the safetensors header is nested deeper than {MAX_DEPTH} levels")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, SafetensorsHeaderError):
            raise
        raise SafetensorsHeaderError(f"the safetensors header is not valid UTF-8 JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise SafetensorsHeaderError("the safetensors header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_ENTRIES or not all(
            isinstance(v, str) for v in metadata.values()):
        raise SafetensorsHeaderError(
            f"the safetensors __metadata__ must be an object of at most {MAX_METADATA_ENTRIES} string values"
        )
    entries = [_entry(name, spec) for name, spec in header.items()]
    data_size = size - 8 - n
    expected = 0
    for entry in sorted(entries, key=lambda e: (e.start, e.end)):
        if entry.start != expected:
            what = "overlaps the previous tensor" if entry.start < expected else "leaves a gap before it"
            raise SafetensorsHeaderError(
                f"tensor {entry.name[:80]!r} starts at byte {entry.start} of the data but the previous tensor ends at "
                f"{expected}: the byte range {what}"
            )
        expected = entry.end
    if expected != data_size:
        raise SafetensorsHeaderError(
            f"the tensors cover {expected} bytes but the file's data section holds {data_size}: "
            + ("the file is truncated" if expected > data_size else "it has bytes that belong to no tensor")
        )
    return SafetensorsHeader(path, size, n, {e.name: e for e in entries}, {str(k): v for k, v in metadata.items()})


def iter_tensors(header: SafetensorsHeader, names: Iterable[str] | None = None,
                 framework: str = "pt") -> Iterator[tuple[str, Any]]:
    """Yield ``(name, tensor)`` for the vetted file, one tensor in memory at a time (memory map).

    ``framework`` is ``"pt"`` (torch tensors) or ``"np"`` (numpy arrays).
    """
    from safetensors import safe_open

    wanted = list(header.tensors) if names is None else list(names)
    unknown = [n for n in wanted if n not in header.tensors]
    if unknown:
        raise SafetensorsHeaderError(f"the file holds no tensor(s) {unknown[:10]}")
    with safe_open(str(header.path), framework=framework) as fh:
        for name in wanted:
            yield name, fh.get_tensor(name)
