"""Read zip archives from untrusted uploads with hard limits, without torch (and numpy only for .npz).

Every zip an upload can carry goes through :class:`SafeZip`: ``.pt2`` programs, ``torch.save``
archives and ``.npz`` data sets. Before any member is inflated it checks

- the member count, from the end-of-central-directory record, before the directory is parsed;
- every name (printable ``[A-Za-z0-9._-]`` components, no absolute, ``..``, backslash or empty
  component), duplicates, directories, symlinks and other non-regular entries (the Unix mode in
  the external attributes), encryption, compression methods other than stored / deflate;
- each member's declared size against the per-member limit, the per-file total and an expansion
  ratio (a deflated member may not declare more than ``max_ratio`` times its compressed size);
- that the members' data ranges lie inside the file and do not overlap (overlapping members are
  how a small zip claims a huge total).

Members are then inflated here, with ``zlib`` under a hard cap, from the raw bytes: the declared
size is never trusted, the inflated size must equal it, the CRC must match, and the running total
of inflated bytes stays under the per-file limit. Limits derive from the upload limit
(:func:`upload_limit`: ``BREGKD_MAX_UPLOAD_BYTES`` when set, else 2 GiB): an archive may not hold
more inflated bytes than an uncompressed upload could.

:func:`read_npz` reads an ``.npz`` with these limits; each ``.npy`` header is parsed and checked
(numeric dtype, no objects, shape x itemsize equal to the bytes present) before its array is
allocated, and nothing is ever unpickled.
"""
from __future__ import annotations

import ast
import os
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "UnsafeArchiveError",
    "ZipLimits",
    "SafeZip",
    "upload_limit",
    "read_npz",
]

DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024**3
_CHUNK = 1 << 20


class UnsafeArchiveError(ValueError):
    """The archive breaks a limit or holds something that loading it would execute; nothing was run."""


def upload_limit(max_bytes: int | None = None) -> int:
    """The upload limit in bytes: ``max_bytes``, else ``BREGKD_MAX_UPLOAD_BYTES``, else 2 GiB."""
    if max_bytes is not None:
        return int(max_bytes)
    env = os.environ.get("BREGKD_MAX_UPLOAD_BYTES", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else DEFAULT_MAX_UPLOAD_BYTES


@dataclass(frozen=True)
class ZipLimits:
    """Bounds for one archive.

    Attributes
    ----------
    max_members : int
        Entries in the central directory.
    max_member_bytes : int
        Inflated bytes of one member.
    max_total_bytes : int
        Inflated bytes of all members read from the file together.
    max_ratio : float
        A deflated member may inflate to at most ``max_ratio * compressed + ratio_slack`` bytes
        (float weights deflate by < 2x, images of mostly zeros by ~10x; bombs by ~1000x).
    ratio_slack : int
        Allowance for small members, which compress far better than large ones.
    """

    max_members: int
    max_member_bytes: int
    max_total_bytes: int
    max_ratio: float = 100.0
    ratio_slack: int = 1 << 20

    @classmethod
    def for_upload(cls, max_bytes: int | None = None, *, max_members: int = 10_000) -> "ZipLimits":
        """Limits for a file accepted under the upload limit ``max_bytes`` (see :func:`upload_limit`)."""
        limit = upload_limit(max_bytes)
        return cls(max_members=max_members, max_member_bytes=limit, max_total_bytes=limit)


_COMPONENT = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def _check_name(name: str, kind: str) -> None:
    if len(name) > 1024 or "\\" in name or name.startswith("/"):
        raise UnsafeArchiveError(f"refused {kind}: member name {name[:80]!r} is absolute or uses a backslash")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or not _COMPONENT.match(part):
            raise UnsafeArchiveError(
                f"refused {kind}: member name {name[:80]!r} has an empty, '.', '..' or non-[A-Za-z0-9._-] component"
            )


class SafeZip:
    """A zip archive opened for bounded reading; the whole directory is vetted on opening.

    Parameters
    ----------
    source : path or bytes
        The archive. A path is opened once and read through that handle.
    limits : ZipLimits, optional
        Defaults to :meth:`ZipLimits.for_upload`.
    kind : str
        What the archive is, for messages (``".pt2 file"``, ``".npz file"``...).

    Raises
    ------
    UnsafeArchiveError
        On any check above; the message names the member and the limit.
    """

    def __init__(self, source: str | os.PathLike | bytes, limits: ZipLimits | None = None, *, kind: str = "zip archive"):
        import io

        self.kind = kind
        self.limits = limits or ZipLimits.for_upload()
        self._fh: IO[bytes] = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(Path(source), "rb")
        self.total_read = 0
        try:
            self._infos = self._vet()
        except BaseException:
            self._fh.close()
            raise
        self.names = [i.filename for i in self._infos]
        self._by_name = {i.filename: i for i in self._infos}

    # -------------------------------------------------------------------------- vetting
    def _refuse(self, what: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"refused {self.kind}: {what}")

    def _vet(self) -> list[zipfile.ZipInfo]:
        fh, lim = self._fh, self.limits
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        try:
            end = zipfile._EndRecData(fh)  # the EOCD record only: entry count before the directory is parsed
        except OSError:
            end = None
        if not end:
            raise self._refuse("it is not a zip archive (no end-of-central-directory record)")
        entries = end[zipfile._ECD_ENTRIES_TOTAL]
        if entries > lim.max_members or end[zipfile._ECD_SIZE] > lim.max_members * 1400:
            raise self._refuse(f"it declares {entries} members; at most {lim.max_members} are accepted")
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error) as exc:
            raise self._refuse(f"its zip directory is damaged ({exc})") from None
        infos = zf.infolist()
        start_dir = getattr(zf, "start_dir", size)
        if len(infos) > lim.max_members:
            raise self._refuse(f"it holds {len(infos)} members; at most {lim.max_members} are accepted")
        seen: set[str] = set()
        declared_total = 0
        spans = []
        for info in infos:
            name = info.filename
            if name in seen:
                raise self._refuse(f"member {name!r} appears twice (a reader would pick one copy, a checker another)")
            seen.add(name)
            if name.endswith("/") or info.is_dir():
                raise self._refuse(f"it holds a directory entry {name!r}; only plain files are accepted")
            _check_name(name, self.kind)
            if info.create_system == 3:  # Unix: the high 16 bits are st_mode
                mode = info.external_attr >> 16
                if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # writers often store only permission bits
                    what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
                    raise self._refuse(f"member {name!r} is {what}")
            if info.flag_bits & 0x1:
                raise self._refuse(f"member {name!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise self._refuse(f"member {name!r} uses compression method {info.compress_type}; only stored or deflate")
            if info.file_size > lim.max_member_bytes:
                raise self._refuse(
                    f"member {name!r} declares {info.file_size} bytes, over the limit of {lim.max_member_bytes} per member"
                )
            if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
                raise self._refuse(f"stored member {name!r} declares {info.file_size} bytes but holds {info.compress_size}")
            if info.file_size > lim.max_ratio * info.compress_size + lim.ratio_slack:
                raise self._refuse(
                    f"member {name!r} would inflate {info.compress_size} bytes to {info.file_size} "
                    f"(more than {lim.max_ratio:g}x: a decompression bomb)"
                )
            declared_total += info.file_size
            if declared_total > lim.max_total_bytes:
                raise self._refuse(f"its members declare more than {lim.max_total_bytes} bytes in total")
            spans.append((info.header_offset, self._data_offset(info, size) + info.compress_size, name))
        spans.sort()
        for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
            if start_b < end_a:
                raise self._refuse(f"members {a!r} and {b!r} overlap (a zip bomb shares compressed data)")
        if spans and spans[-1][1] > start_dir:
            raise self._refuse(f"member {spans[-1][2]!r} runs into the zip directory")
        return infos

    def _data_offset(self, info: zipfile.ZipInfo, size: int) -> int:
        self._fh.seek(info.header_offset)
        raw = self._fh.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size:
            raise self._refuse(f"member {info.filename!r} points outside the file")
        sig, _, _, _, _, _, _, _, _, n_name, n_extra = _LOCAL_HEADER.unpack(raw)
        if sig != b"PK\x03\x04":
            raise self._refuse(f"member {info.filename!r} has no local header where the directory says")
        local_name = self._fh.read(n_name)
        if local_name.decode("utf-8", "replace") != info.orig_filename:
            raise self._refuse(f"member {info.filename!r} has another name in its local header")
        start = info.header_offset + _LOCAL_HEADER.size + n_name + n_extra
        if start + info.compress_size > size:
            raise self._refuse(f"member {info.filename!r} runs past the end of the file")
        return start

    # -------------------------------------------------------------------------- reading
    def data_offset(self, name: str) -> int:
        """Where member ``name``'s (stored or compressed) bytes start in the file, from its vetted
        local header: for mapping a stored member instead of reading it."""
        self._fh.seek(0, os.SEEK_END)
        return self._data_offset(self._by_name[name], self._fh.tell())

    def info(self, name: str) -> zipfile.ZipInfo:
        return self._by_name[name]

    def size(self, name: str) -> int:
        """The declared inflated size (already checked against the limits)."""
        return self._by_name[name].file_size

    def stream(self, name: str, max_bytes: int | None = None) -> Iterator[bytes]:
        """Yield the inflated bytes of ``name`` in chunks, refusing as soon as a limit is passed.

        ``max_bytes`` tightens the per-member limit for this member (e.g. 64 MiB for a JSON file).
        The inflated length must equal the declared one and the CRC must match.
        """
        info = self._by_name[name]
        lim = self.limits
        cap = min(info.file_size, lim.max_member_bytes if max_bytes is None else min(max_bytes, lim.max_member_bytes))
        if info.file_size > cap:
            raise self._refuse(f"member {name!r} declares {info.file_size} bytes; at most {cap} are accepted for it")
        self._fh.seek(0, os.SEEK_END)
        start = self._data_offset(info, self._fh.tell())
        left = info.compress_size
        inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
        produced = 0
        crc = 0
        pending = b""
        pos = start
        while True:
            if inflater is not None and pending:
                data, pending = inflater.decompress(pending, cap + 1 - produced), inflater.unconsumed_tail
            elif left > 0:
                self._fh.seek(pos)
                raw = self._fh.read(min(_CHUNK, left))
                if not raw:
                    raise self._refuse(f"member {name!r} is truncated")
                pos += len(raw)
                left -= len(raw)
                if inflater is None:
                    data = raw
                else:
                    data, pending = inflater.decompress(raw, cap + 1 - produced), inflater.unconsumed_tail
            else:
                break
            produced += len(data)
            self.total_read += len(data)
            if produced > cap:
                raise self._refuse(
                    f"member {name!r} inflates past {cap} bytes although it declares {info.file_size} "
                    "(a lying header or a decompression bomb)"
                )
            if self.total_read > lim.max_total_bytes:
                raise self._refuse(f"its members inflate to more than {lim.max_total_bytes} bytes in total")
            if data:
                crc = zlib.crc32(data, crc)
                yield data
            if inflater is not None and inflater.eof:
                break
        if inflater is not None and not inflater.eof:
            raise self._refuse(f"member {name!r} has a truncated deflate stream")
        if produced != info.file_size:
            raise self._refuse(f"member {name!r} inflates to {produced} bytes but declares {info.file_size}")
        if crc != info.CRC:
            raise self._refuse(f"member {name!r} fails its CRC check (damaged or altered)")

    def read(self, name: str, max_bytes: int | None = None) -> bytes:
        """All inflated bytes of ``name`` (see :meth:`stream`)."""
        return b"".join(self.stream(name, max_bytes))

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "SafeZip":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------------- .npz
_NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_HEADER = 10_000  # numpy's own default max_header_size
_NPY_KINDS = "biuf"  # bool, signed/unsigned integers, floats: what a data set holds


def _npy_header(head: bytes, name: str, kind: str) -> tuple[Any, tuple[int, ...], bool, int]:
    """Parse an .npy header: (dtype, shape, fortran_order, header length in bytes)."""
    import numpy as np

    def refuse(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"refused {kind}: array {name!r} {why}")

    if len(head) < 10 or not head.startswith(_NPY_MAGIC):
        raise refuse("is not an .npy array (bad magic); save arrays with numpy.savez")
    major = head[6]
    if major == 1:
        (n,) = struct.unpack("<H", head[8:10])
        start = 10
    elif major in (2, 3):
        if len(head) < 12:
            raise refuse("has a truncated header")
        (n,) = struct.unpack("<I", head[8:12])
        start = 12
    else:
        raise refuse(f"has .npy format version {major}.{head[7]}")
    if n > _NPY_MAX_HEADER or start + n > len(head):
        raise refuse(f"has a header of {n} bytes (at most {_NPY_MAX_HEADER})")
    try:
        text = head[start:start + n].decode("latin1" if major < 3 else "utf-8")
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        raise refuse("has a header that is not a plain Python literal") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise refuse("has a header without exactly the keys descr, fortran_order, shape")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str):
        raise refuse("has a structured dtype; save plain numeric arrays")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError):
        raise refuse(f"has an unknown dtype {descr[:40]!r}") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in _NPY_KINDS:
        raise refuse(f"has dtype {dtype} (objects would need pickle); save bool, integer or float arrays")
    if not isinstance(fortran, bool):
        raise refuse("has a non-boolean fortran_order")
    if (
        not isinstance(shape, tuple) or len(shape) > 32
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise refuse(f"has a malformed shape {str(shape)[:80]}")
    return dtype, shape, fortran, start + n


def read_npz(source: str | os.PathLike | bytes, limits: ZipLimits | None = None) -> dict[str, Any]:
    """The arrays of an ``.npz`` file, read under ``limits``; never unpickles.

    Raises
    ------
    UnsafeArchiveError
        A zip check fails, a member is not an ``.npy`` array of bool/int/float, or its header's
        shape x itemsize differs from the bytes the member holds (checked before allocating).
    """
    import numpy as np

    kind = ".npz file"
    out: dict[str, Any] = {}
    with SafeZip(source, limits, kind=kind) as zf:
        for name in zf.names:
            if not name.endswith(".npy") or "/" in name:
                raise UnsafeArchiveError(f"refused {kind}: member {name!r} is not a top-level .npy array")
            key = name[:-4]
            stream = zf.stream(name)
            head = b""
            for chunk in stream:
                head += chunk
                if len(head) >= 12 + _NPY_MAX_HEADER or len(head) >= zf.size(name):
                    break
            dtype, shape, fortran, header_len = _npy_header(head[: 12 + _NPY_MAX_HEADER], key, kind)
            count = 1
            for s in shape:
                count *= s
            nbytes = count * dtype.itemsize
            present = zf.size(name) - header_len
            if nbytes != present:
                raise UnsafeArchiveError(
                    f"refused {kind}: array {key!r} declares shape {shape} of {dtype} ({nbytes} bytes) but the "
                    f"member holds {present} bytes after its header"
                )
            arr = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
            flat = arr.reshape(-1).view(np.uint8)
            body = head[header_len:]
            filled = len(body)
            flat[:filled] = np.frombuffer(body, dtype=np.uint8)
            for chunk in stream:
                flat[filled:filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                filled += len(chunk)
            out[key] = arr.T if fortran else arr
    return out
