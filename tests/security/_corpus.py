"""Build the adversarial corpus: hostile .pt2 / torch.save / .npz files, made by the tests themselves.

Payloads run ``touch <marker>`` through ``os.system`` when unpickled; a test asserts the marker
never appears. Zips are written by :func:`write_zip`, a minimal writer that lets a test set
every field a hostile file can lie about (declared size, CRC, Unix mode, duplicate names) and
embed raw deflate streams such as :func:`zero_bomb`.
"""
from __future__ import annotations

import functools
import io
import json
import os
import pickle
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

GiB = 1024**3
MiB = 1024**2


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def evil_pickle(marker: Path) -> bytes:
    """A pickle whose unpickling runs ``touch marker`` (protocol 2, as torch.save writes)."""
    return pickle.dumps(_System(f"touch {marker}"), protocol=2)


def evil_torch_save(marker: Path) -> bytes:
    """A torch.save zip whose data.pkl runs the payload (weights_only refuses it; full unpickling runs it)."""
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(2), "evil": _System(f"touch {marker}")}, buf)
    return buf.getvalue()


class TinyNet(nn.Module):
    """Conv + BN + Linear, a non-persistent buffer and a tensor constant: weights and constants records."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, 3)
        self.register_buffer("shift", torch.tensor([0.5, -0.5, 0.25]), persistent=False)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(h.flatten(1)) + self.shift * torch.tensor([1.0, 2.0, 3.0])


INPUT_SHAPE = (1, 6, 6)


def probe() -> torch.Tensor:
    return torch.randn((5, *INPUT_SHAPE), generator=torch.Generator().manual_seed(1))


def clean_pt2(path: Path) -> Path:
    model = TinyNet().eval()
    ep = torch.export.export(model, (torch.randn(2, *INPUT_SHAPE),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(ep, str(path))
    return path


@dataclass
class Entry:
    """One zip member as written: ``data`` (stored) or ``raw`` (a raw deflate stream) and its claims."""

    name: str
    data: bytes | None = None
    raw: bytes | None = None
    size: int | None = None  # declared inflated size (default: the true one)
    crc: int | None = None
    external_attr: int = 0
    create_system: int = 0


def members(path: Path) -> list[Entry]:
    """The members of an archive as stored entries, in order."""
    with zipfile.ZipFile(path) as zf:
        return [Entry(i.filename, zf.read(i.filename)) for i in zf.infolist()]


def write_zip(path: Path, entries: list[Entry]) -> Path:
    out, central = bytearray(), bytearray()
    for e in entries:
        name = e.name.encode()
        if e.raw is not None:
            method, comp = 8, e.raw
        else:
            method, comp = 0, e.data
        size = e.size if e.size is not None else len(e.data if e.data is not None else b"")
        crc = e.crc if e.crc is not None else zlib.crc32(e.data or b"")
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(comp), size, len(name), 0)
        out += name + comp
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", (e.create_system << 8) | 20, 20, 0, method, 0, 0x21, crc,
            len(comp), size, len(name), 0, 0, 0, 0, e.external_attr, offset,
        ) + name
    n = len(entries)
    out += central + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, len(central), len(out), 0)
    Path(path).write_bytes(bytes(out))
    return Path(path)


def deflated(name: str, data: bytes, **kw) -> Entry:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return Entry(name, raw=c.compress(data) + c.flush(), size=len(data), crc=zlib.crc32(data), **kw)


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A + B from crc(A), crc(B) and len(B) (zlib's crc32_combine, GF(2) matrices)."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = [_gf2_times(odd, odd[n]) for n in range(32)]
    odd = [_gf2_times(even, even[n]) for n in range(32)]
    while True:
        even = [_gf2_times(odd, odd[n]) for n in range(32)]
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = [_gf2_times(even, even[n]) for n in range(32)]
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def crc32_of_zeros(n: int) -> int:
    """CRC-32 of ``n`` zero bytes by doubling, without touching n bytes."""
    crc = 0
    # binary decomposition of n in units of 1 KiB, then the remainder directly
    units, rest = divmod(n, 1024)
    power, power_len = zlib.crc32(bytes(1024)), 1024
    while units:
        if units & 1:
            crc = crc32_combine(crc, power, power_len)
        units >>= 1
        power, power_len = crc32_combine(power, power, power_len), power_len * 2
    return crc32_combine(crc, zlib.crc32(bytes(rest)), rest)


@functools.lru_cache(maxsize=8)
def zero_bomb(n_bytes: int, prefix: bytes = b"") -> tuple[bytes, int]:
    """(raw deflate stream, CRC) of ``prefix`` + zeros up to ``n_bytes``: ~1 KiB per MiB inflated.

    Full flushes reset the compressor, so each MiB of zeros compresses to identical bytes and the
    stream is built by repetition in milliseconds; the CRC comes from :func:`crc32_of_zeros`.
    """
    chunk = 1 * MiB
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    body = n_bytes - len(prefix)
    reps, rest = divmod(body, chunk)
    tail = c.compress(bytes(rest)) + c.flush()
    crc = crc32_combine(zlib.crc32(prefix), crc32_of_zeros(body), body)
    return head + block * reps + tail, crc


def bomb_entry(name: str, n_bytes: int = 2 * GiB, *, declared: int | None = None, prefix: bytes = b"") -> Entry:
    """A member inflating to ``n_bytes``; ``declared`` lies about the size when given."""
    raw, crc = zero_bomb(n_bytes, prefix)
    return Entry(name, raw=raw, size=n_bytes if declared is None else declared, crc=crc)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, target.encode(), external_attr=(stat.S_IFLNK | 0o777) << 16, create_system=3)


def edit_json(entries: list[Entry], suffix: str, change) -> list[Entry]:
    out = []
    for e in entries:
        if e.name.endswith(suffix):
            doc = json.loads(e.data)
            change(doc)
            e = Entry(e.name, json.dumps(doc).encode())
        out.append(e)
    return out


def torch_export_load_each(paths: list[str]) -> list[str]:
    """Run the UNSAFE ``torch.export.load`` on each file (in a child): proof that payloads are live."""
    outcomes = []
    for p in paths:
        try:
            torch.export.load(p)
            outcomes.append("loaded")
        except Exception as exc:  # torch fails after having run the payload
            outcomes.append(type(exc).__name__)
    return outcomes
