"""uvicorn's h11 protocol with the two timeouts it lacks (``--http service.http_protocol:TimedH11Protocol``).

uvicorn arms no timer on a new connection and cancels its keep-alive timer on any byte, so a
client that sends half of its headers, or nothing, holds a connection for ever; and after the
app answered early (413, 401, 429) a client that keeps trickling the unread rest of its body
holds it too. Here:

- ``BREGKD_HEADER_TIMEOUT_S`` (10 s): from a connection's start (or the first byte of the next
  request on a kept-alive one) until the request's headers are complete; then ``408`` and the
  connection is closed.
- ``BREGKD_BODY_DRAIN_TIMEOUT_S`` (10 s): after a response that left the body unread, the rest is
  read and discarded (so a normal client still sees the answer, not a reset) for at most this
  long; then the connection is closed.

Slow bodies that the app reads are timed in the app (:mod:`service.limits`). The header size
is h11's ``--h11-max-incomplete-event-size`` (16 KiB by default; larger: 400).
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from storage.config import get_settings

_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%s")


class TimedH11Protocol(H11Protocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout_s = settings.header_timeout_s
        self.drain_timeout_s = settings.body_drain_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

    # -- timers ------------------------------------------------------------------------------
    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        body = (b'{"detail": "the request headers did not arrive within %g s (BREGKD_HEADER_TIMEOUT_S)"}'
                % self.header_timeout_s)
        self.transport.write(_TIMEOUT_408 % (len(body), body))
        self.transport.close()

    def _drain_too_slow(self) -> None:
        self._drain_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _rearm(self) -> None:
        """Arm or cancel the timers for the state the connection is in now."""
        if self.transport.is_closing():
            self._cancel("_header_timer")
            self._cancel("_drain_timer")
            return
        state = self.conn.their_state
        if state is h11.IDLE and self.timeout_keep_alive_task is None:
            # bytes of a new request (or none yet on a new connection): its headers are on the clock
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)
        else:
            self._cancel("_header_timer")
        responded = self.cycle is not None and self.cycle.response_complete
        if state is h11.SEND_BODY and responded:
            if self._drain_timer is None:
                self._drain_timer = self.loop.call_later(self.drain_timeout_s, self._drain_too_slow)
        elif state is not h11.SEND_BODY:
            self._cancel("_drain_timer")

    # -- protocol hooks ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._rearm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._rearm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._rearm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel("_header_timer")
        self._cancel("_drain_timer")
        super().connection_lost(exc)
