"""Tell an uploaded file's format from its content, never its name; import nothing heavy, unpickle nothing.

One module for the library (:func:`bregman.teachers.detect_format`) and the API
(:mod:`service.sniff`), which must not import torch. :func:`sniff` answers one of

- ``"empty"``;
- ``"pickle"``: a bare pickle stream (``pickle.dump`` or a legacy, pre-zip ``torch.save``);
- ``"pt2"``: a ``torch.export.save`` zip (``archive_format`` or ``models/`` in its root folder);
- ``"torchscript"``: a ``torch.jit.save`` zip (``constants.pkl`` or ``code/``);
- ``"state_dict"``: a ``torch.save`` zip (``data.pkl``); :attr:`Sniffed.pickled_classes` lists the
  classes its pickle names that are not tensor-rebuilding helpers (a whole pickled model names
  its ``nn.Module`` classes), found by reading the opcodes, not by running them;
- ``"npz"``: a zip of ``.npy`` members; ``"zip"``: any other zip;
- ``"safetensors"``: a bounded JSON header of tensor entries;
- ``"unknown"``.

Zips are opened with :class:`bregman._safe_zip.SafeZip`, so a bomb, a link or a traversal name is
refused here already (:class:`bregman._safe_zip.UnsafeArchiveError`).
"""
from __future__ import annotations

import json
import os
import pickletools
import struct
from dataclasses import dataclass, field
from pathlib import Path

from bregman._safe_zip import SafeZip, UnsafeArchiveError, ZipLimits

__all__ = ["Sniffed", "sniff", "MAX_SAFETENSORS_HEADER", "UnsafeArchiveError"]

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_MAX_PICKLE_SCAN = 64 << 20
# modules whose globals a weights-only state_dict pickle names (tensor rebuilding, storages, dtypes)
_DATA_MODULES = {"collections", "torch", "torch._utils", "torch._tensor", "torch.serialization", "builtins",
                 "_codecs", "numpy.core.multiarray", "numpy._core.multiarray", "numpy"}


@dataclass
class Sniffed:
    """What a file holds: ``kind`` (see the module doc) and, for torch.save zips, suspect classes."""

    kind: str
    pickled_classes: list[str] = field(default_factory=list)


def _is_pickle(head: bytes) -> bool:
    # protocol 2+ pickles start with PROTO (0x80) and a small protocol number; legacy torch.save
    # files start with a pickled magic number, which is the same opcode
    return len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5


def _safetensors(path: Path, head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or n > MAX_SAFETENSORS_HEADER or 8 + n > size or head[8:9] not in (b"{", b" "):
        return False
    with open(path, "rb") as fh:
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    if not isinstance(header, dict):
        return False
    return all(
        name == "__metadata__" or (isinstance(e, dict) and {"dtype", "shape", "data_offsets"} <= e.keys())
        for name, e in header.items()
    )


def _pickled_classes(data: bytes) -> list[str]:
    """Globals named by a pickle outside the tensor-rebuilding modules (read from opcodes only)."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            if op.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                module, name = strings[-2], strings[-1]
            else:
                continue
            if module not in _DATA_MODULES and f"{module}.{name}" not in found:
                found.append(f"{module}.{name}")
    except Exception:  # a damaged pickle: the weights-only loader will say so
        pass
    return found


def sniff(path: str | os.PathLike, max_bytes: int | None = None) -> Sniffed:
    """The format of the file at ``path`` (see the module doc).

    Raises
    ------
    UnsafeArchiveError
        A zip that breaks a limit of :class:`bregman._safe_zip.SafeZip`.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(64)
    if size == 0:
        return Sniffed("empty")
    if head.startswith(_ZIP_MAGICS):
        with SafeZip(path, ZipLimits.for_upload(max_bytes), kind="zip archive") as zf:
            names = zf.names
            tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
            if "archive_format" in tails or any(t.startswith("models/") for t in tails):
                return Sniffed("pt2")
            if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
                return Sniffed("torchscript")
            pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if pkl:
                data = zf.read(pkl[0], _MAX_PICKLE_SCAN) if zf.size(pkl[0]) <= _MAX_PICKLE_SCAN else b""
                return Sniffed("state_dict", _pickled_classes(data))
            if names and all(n.endswith(".npy") for n in names):
                return Sniffed("npz")
            return Sniffed("zip")
    # safetensors first: its 8-byte header length may itself start with 0x80 0x02, like a pickle
    if _safetensors(path, head, size):
        return Sniffed("safetensors")
    if _is_pickle(head):
        return Sniffed("pickle")
    return Sniffed("unknown")
