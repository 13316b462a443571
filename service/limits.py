"""Request limits enforced inside the app: the size of non-upload bodies, how slowly any body may
arrive, and how many uploads one tenant may run at once.

- ``BREGKD_MAX_JSON_BYTES`` (1 MiB): a body that is not a multipart upload to an upload route is read by
  :class:`BodyLimitMiddleware` before the route sees it, at most that many bytes; a larger
  ``Content-Length`` is answered 413 before one byte is read, and a chunked body (no length) 413
  as soon as it passes the limit. The JSON spec is then parsed from at most 1 MiB.
- ``BREGKD_UPLOAD_IDLE_TIMEOUT_S`` (30 s) and ``BREGKD_UPLOAD_MIN_RATE_BYTES_S`` (4096): a body
  (an upload's or a JSON one) from which no byte arrives for that long, or that arrives slower
  than the rate on average once the idle timeout has passed, is answered 408 and the connection
  closed; an upload's temporary file is removed.
- ``BREGKD_MAX_CONCURRENT_UPLOADS`` (4): a tenant's further simultaneous upload is answered 429
  with ``Retry-After``. The count is kept in memory **per API process**: behind ``--workers N``
  a tenant may run N times as many.

Slow or incomplete *headers*, and bodies a route never reads, are the HTTP protocol's business:
:mod:`service.http_protocol`.
"""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RETRY_AFTER_S = 5


class BodyTimeout(Exception):
    """The client sends its body too slowly."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BodyPacer:
    """``receive()`` with the idle timeout and the minimum average rate of one request body."""

    def __init__(self, receive: Receive, idle_timeout_s: float, min_rate_bytes_s: float) -> None:
        self._receive = receive
        self.idle_timeout_s = idle_timeout_s
        self.min_rate = min_rate_bytes_s
        self.started = time.monotonic()
        self.received = 0

    async def receive(self) -> Message:
        try:
            message = await asyncio.wait_for(self._receive(), self.idle_timeout_s)
        except asyncio.TimeoutError:
            raise BodyTimeout(f"no byte of the request body arrived for {self.idle_timeout_s:g} s "
                              "(BREGKD_UPLOAD_IDLE_TIMEOUT_S); send the body without pauses") from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            elapsed = time.monotonic() - self.started
            if message.get("more_body") and elapsed > self.idle_timeout_s and self.received < self.min_rate * elapsed:
                raise BodyTimeout(f"the request body arrives at {self.received / elapsed:.0f} bytes/s, below the "
                                  f"minimum of {self.min_rate:g} (BREGKD_UPLOAD_MIN_RATE_BYTES_S)")
        return message


def timeout_exception(exc: BodyTimeout) -> HTTPException:
    """408, and the connection is closed: the rest of a slow body is not waited for."""
    return HTTPException(408, exc.message, headers={"Connection": "close"})


def _plain_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def too_large_message(limit: int) -> str:
    return (f"the request body is larger than the limit of {limit} bytes (BREGKD_MAX_JSON_BYTES); "
            "job specs are small: send only the documented fields")


class BodyLimitMiddleware:
    """Reads every non-multipart request body, up to ``max_bytes`` and paced, before the app.

    The app then gets the body in one message (it never holds more than the limit), and
    ``receive`` after it is the server's own (so disconnects are still seen).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, idle_timeout_s: float, min_rate_bytes_s: float,
                 upload_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.upload_paths = upload_paths
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.min_rate = min_rate_bytes_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        has_body = b"transfer-encoding" in headers or headers.get(b"content-length", b"0").strip() not in (b"", b"0")
        upload = (scope["method"] == "POST" and scope["path"].rstrip("/") in self.upload_paths
                  and headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data"))
        if not has_body or upload:
            await self.app(scope, receive, send)  # uploads are limited and paced in service/uploads.py
            return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _plain_response(400, "the Content-Length header is not a number")(scope, receive, send)
                return
            if declared > self.max_bytes:
                await _plain_response(413, too_large_message(self.max_bytes))(scope, receive, send)
                return
        pacer = BodyPacer(receive, self.idle_timeout_s, self.min_rate)
        body = bytearray()
        while True:
            try:
                message = await pacer.receive()
            except BodyTimeout as exc:
                await _plain_response(408, exc.message, {"Connection": "close"})(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _plain_response(413, too_large_message(self.max_bytes))(scope, receive, send)
                return
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class UploadSlots:
    """In-memory count of each tenant's uploads in progress (one API process)."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self.active: dict[str, int] = defaultdict(int)

    @asynccontextmanager
    async def hold(self, tenant: str) -> AsyncIterator[None]:
        # no await between the check and the increment: the event loop makes this atomic
        if self.active[tenant] >= self.per_tenant:
            raise HTTPException(
                429,
                f"this tenant already has {self.active[tenant]} uploads in progress, the limit "
                f"(BREGKD_MAX_CONCURRENT_UPLOADS={self.per_tenant}); retry when one has finished",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.active[tenant] += 1
        try:
            yield
        finally:
            self.active[tenant] -= 1
            if not self.active[tenant]:
                del self.active[tenant]


def install_limits(app, settings, upload_paths: set[str]) -> None:
    """``upload_paths``: the routes that stream multipart uploads themselves (any other body,
    multipart or not, is held to ``max_json_bytes``)."""
    app.state.upload_slots = UploadSlots(settings.max_concurrent_uploads)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_json_bytes,
                       idle_timeout_s=settings.upload_idle_timeout_s, min_rate_bytes_s=settings.upload_min_rate_bytes_s,
                       upload_paths=frozenset(upload_paths))


