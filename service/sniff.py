"""Recognize an uploaded file's format from its content, never its name, and never unpickle it.

- ``pt2``: a ``torch.export.save`` zip (has an ``archive_format`` member and ``models/``).
- ``state_dict``: a ``torch.save`` zip (has a ``data.pkl`` member); only its structure is looked
  at here, a worker loads it weights-only.
- ``safetensors``: an 8-byte little-endian header length, then a JSON header of tensors.
- ``npz`` (data sets): a zip of ``.npy`` members.
A bare pickle (a legacy ``torch.save`` or ``pickle.dump``) is refused: loading it can run code.
"""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

_PICKLE_PROTO = 0x80
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class SniffError(ValueError):
    """The content is not an accepted format; the message says what it is and what to send."""


class PickleRefused(SniffError):
    pass


PICKLE_MESSAGE = (
    "the file is a Python pickle (a legacy torch.save or pickle.dump); pickles can run arbitrary code "
    "when loaded, so they are refused. Send a torch.export program (torch.export.save, .pt2), the "
    "weights as safetensors with a manifest, or a state_dict saved by torch.save (zip format)"
)


def _is_pickle(head: bytes) -> bool:
    # protocol 2+ pickles start with PROTO (0x80) and a small protocol number; legacy torch.save
    # files start with a pickled magic number, which is the same opcode
    return len(head) >= 2 and head[0] == _PICKLE_PROTO and 1 <= head[1] <= 5


def _safetensors_header(path: Path, head: bytes, size: int) -> dict | None:
    if len(head) < 10:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or n > _MAX_SAFETENSORS_HEADER or 8 + n > size:
        return None
    with open(path, "rb") as fh:
        fh.seek(8)
        raw = fh.read(n)
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            return None
    return header


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _read_head(path: Path, pickle_message: str) -> tuple[bytes, int]:
    """The first bytes and the size of an upload; an empty file or a pickle is refused here."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
    if size == 0:
        raise SniffError("the file is empty")
    if _is_pickle(head):
        raise PickleRefused(pickle_message)
    return head, size


def sniff_teacher(path: str | Path) -> str:
    """``"pt2" | "safetensors" | "state_dict"``, or :class:`SniffError` saying what is wrong."""
    path = Path(path)
    head, size = _read_head(path, PICKLE_MESSAGE)
    if head.startswith(_ZIP_MAGIC):
        names = _zip_names(path)
        if names is None:
            raise SniffError("the file starts like a zip archive but its directory is unreadable (truncated?)")
        base = {n.split("/", 1)[-1] for n in names}
        if "archive_format" in base or any(n.startswith("models/") for n in base):
            return "pt2"
        if "data.pkl" in base:
            return "state_dict"
        raise SniffError(
            "the zip archive is neither a torch.export program (.pt2, written by torch.export.save) nor a "
            "torch.save file; send one of those, or the weights as safetensors"
        )
    if _safetensors_header(path, head, size) is not None:
        return "safetensors"
    raise SniffError(
        "unrecognized teacher format: expected a torch.export program (.pt2), a safetensors file or a "
        "torch.save state_dict (zip); the content matches none of them (the file name is not used)"
    )


def sniff_dataset(path: str | Path) -> str:
    """``"npz" | "safetensors"``, or :class:`SniffError`."""
    path = Path(path)
    head, size = _read_head(
        path,
        "the file is a Python pickle; pickles can run code when loaded, so they are refused. Send an "
        ".npz (numpy.savez) or a safetensors file with x_train, y_train, x_test, y_test",
    )
    if head.startswith(_ZIP_MAGIC):
        names = _zip_names(path)
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise SniffError("the zip archive is not an .npz of arrays (numpy.savez); send an .npz or safetensors file")
    if _safetensors_header(path, head, size) is not None:
        return "safetensors"
    raise SniffError(
        "unrecognized data set format: send an .npz (numpy.savez) or a safetensors file with arrays "
        "x_train, y_train, x_test, y_test"
    )


def manifest_required(fmt: str) -> bool:
    """Weights-only formats need an architecture manifest to be rebuilt."""
    return fmt in ("safetensors", "state_dict")
