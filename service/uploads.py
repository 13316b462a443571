"""Streaming multipart uploads: the body is parsed chunk by chunk and the file part goes straight
into the blob store's temporary file; nothing is held whole in memory or spooled by Starlette.

Limits: a Content-Length above the limit is answered 413 before any byte is read; the file's
bytes are counted while streaming (chunked bodies have no Content-Length) and 413 is raised as
soon as the limit is passed; a body that pauses or trickles is answered 408
(:class:`service.limits.BodyPacer`); a full disk is answered 507. Any failure (client gone,
limit, timeout, bad format, full disk) removes the temporary file, so a broken upload leaves
nothing behind.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from fastapi import HTTPException, Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from service.errors import STORAGE_FULL, storage_full, unprocessable
from service.limits import BodyPacer, BodyTimeout, timeout_exception
from storage.blobs import BlobStore, BlobTooLarge

# room for the multipart framing and the small form fields next to the file
_FRAMING_SLACK = 64 * 1024


@dataclass
class ReceivedUpload:
    """What arrived: the file (on disk, not yet committed) and the small text fields."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    tmp_path: Path | None = None
    size: int = 0
    sha256: str | None = None


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the file is larger than the limit of {limit} bytes (BREGKD_MAX_UPLOAD_BYTES)")


class _PartCollector:
    """Callbacks of python-multipart's streaming parser; writes of the file part are buffered."""

    def __init__(self, file_field: str, max_field_bytes: int) -> None:
        self.file_field = file_field
        self.max_field_bytes = max_field_bytes
        self.result = ReceivedUpload()
        self.pending: list[bytes] = []  # file bytes parsed but not yet written
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._buf = bytearray()
        self.file_parts = 0
        self.error: HTTPException | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._hf(d[s:e]),
            "on_header_value": lambda d, s, e: self._hv(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._header_field = b""
        self._header_value = b""
        self._name = None
        self._is_file = False
        self._buf = bytearray()

    def _hf(self, data: bytes) -> None:
        self._header_field += data

    def _hv(self, data: bytes) -> None:
        self._header_value += data

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def _headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = opts.get(b"name", b"").decode("utf-8", "replace") or None
        if self._name == self.file_field:
            self._is_file = True
            self.file_parts += 1
            if self.file_parts > 1 and self.error is None:
                self.error = unprocessable(self.file_field, f"send exactly one {self.file_field!r} part")
            fn = opts.get(b"filename")
            self.result.filename = fn.decode("utf-8", "replace") if fn else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            if self.file_parts == 1:
                self.pending.append(bytes(data[start:end]))
        else:
            self._buf += data[start:end]
            if len(self._buf) > self.max_field_bytes and self.error is None:
                self.error = HTTPException(413, f"form field '{self._name}' is larger than {self.max_field_bytes} bytes")

    def _part_end(self) -> None:
        if not self._is_file and self._name:
            self.result.fields[self._name] = self._buf.decode("utf-8", "replace")
        self._buf = bytearray()


@asynccontextmanager
async def receive_upload(
    request: Request,
    store: BlobStore,
    *,
    max_bytes: int,
    max_field_bytes: int,
    chunk_bytes: int = 1024 * 1024,
    file_field: str = "file",
    idle_timeout_s: float = 30.0,
    min_rate_bytes_s: float = 0.0,
) -> AsyncIterator[ReceivedUpload]:
    """Stream a ``multipart/form-data`` body into the blob store.

    Inside the block the file is complete at ``upload.tmp_path`` (with ``sha256`` and ``size``):
    inspect it and raise to reject it. On normal exit it is committed under its hash.
    """
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in opts:
        raise HTTPException(415, f"send the upload as multipart/form-data with a '{file_field}' part")
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise HTTPException(400, "the Content-Length header is not a number") from None
        if declared > max_bytes + max_field_bytes * 4 + _FRAMING_SLACK:
            raise _too_large(max_bytes)

    try:
        with store.writer(limit=max_bytes) as writer:
            upload = await _stream_into(request, writer, store, opts[b"boundary"], max_bytes, max_field_bytes,
                                        chunk_bytes, file_field, BodyPacer(request.receive, idle_timeout_s, min_rate_bytes_s))
            yield upload
    except OSError as exc:  # the temporary file is gone already (the writer removes it on any error)
        if storage_full(exc):
            raise HTTPException(507, STORAGE_FULL, headers={"Retry-After": "60"}) from None
        raise


async def _stream_into(request: Request, writer, store: BlobStore, boundary: bytes, max_bytes: int,
                       max_field_bytes: int, chunk_bytes: int, file_field: str, pacer: BodyPacer) -> ReceivedUpload:
    collector = _PartCollector(file_field, max_field_bytes)
    parser = MultipartParser(boundary, collector.callbacks())

    def flush() -> None:
        for piece in collector.pending:
            writer.write(piece)
        collector.pending.clear()

    try:
        while True:
            message = await pacer.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            if chunk:
                parser.write(chunk)
                if collector.error is not None:
                    raise collector.error
                buffered = sum(len(p) for p in collector.pending)
                if writer.size + buffered > max_bytes:
                    raise _too_large(max_bytes)
                if buffered >= chunk_bytes:
                    await run_in_threadpool(flush)
            if not message.get("more_body", False):
                break
        parser.finalize()
        await run_in_threadpool(flush)
    except BlobTooLarge:
        raise _too_large(max_bytes) from None
    except BodyTimeout as exc:
        raise timeout_exception(exc) from None
    except MultipartParseError as exc:
        raise HTTPException(400, f"the multipart body is malformed ({exc}); send multipart/form-data") from None
    if collector.error is not None:
        raise collector.error
    if collector.file_parts == 0:
        raise unprocessable(file_field, f"the form has no {file_field!r} part: attach the file as {file_field!r}")
    upload = collector.result
    upload.sha256 = await run_in_threadpool(store.finish, writer)
    upload.size = writer.size
    upload.tmp_path = writer.tmp_path
    return upload
