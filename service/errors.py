"""Error answers in the same shapes as FastAPI's own (so clients parse one format), and the
handlers that keep every answer a client sees free of tracebacks, server paths and echoed input.

- 422 from request validation: each item keeps ``loc``, ``msg`` and ``type``; ``input`` is cut to
  ``ECHO_CHARS`` characters (a 50 MB field never comes back), ``ctx`` and ``url`` are dropped.
- A full disk or quota (``ENOSPC``, ``EDQUOT``, SQLite's "database or disk is full",
  PostgreSQL's ``disk_full``) anywhere in a request: 507 with :data:`STORAGE_FULL`.
- Any other unhandled exception: 500 ``{"detail": "internal error err_...: ..."}``; the
  traceback is logged with the same id, so an operator finds it from what the client quotes.
"""
from __future__ import annotations

import errno
import logging
import math
import secrets

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

logger = logging.getLogger("service.errors")

#: at most this many characters of a client's input are echoed in an error message
ECHO_CHARS = 100

STORAGE_FULL = "the server's storage is full; try again later or contact the operator"

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def clip(value: object, n: int = ECHO_CHARS) -> str:
    """``value`` as text, cut to ``n`` characters (marked with an ellipsis)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


def unprocessable(field: str | list[str | int], msg: str, type_: str = "value_error") -> HTTPException:
    """A 422 naming the bad field, shaped like FastAPI's request-validation errors."""
    loc = ["body", *field] if isinstance(field, list) else ["body", field]
    return HTTPException(422, [{"loc": loc, "msg": msg, "type": type_}])


def not_found(kind: str, ident: str) -> HTTPException:
    """404 for a missing object and for another tenant's object alike (never 403)."""
    return HTTPException(404, f"{kind} '{clip(ident, 80)}' not found")


def storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the disk or the quota is full."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        text = str(e).lower()
        if "database or disk is full" in text or getattr(e, "sqlstate", None) == "53100":
            return True
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return False


def storage_full_response() -> JSONResponse:
    return JSONResponse({"detail": STORAGE_FULL}, status_code=507, headers={"Retry-After": "60"})


def _validation_item(err: dict) -> dict:
    item = {
        "loc": [p if isinstance(p, int) else clip(str(p), 64) for p in err.get("loc", ())],
        "msg": clip(str(err.get("msg", "")), 300),
        "type": clip(str(err.get("type", "value_error")), 64),
    }
    if "input" in err:
        value = err["input"]
        # JSON numbers only when finite and short (NaN cannot be encoded; a 4000-digit int is input too)
        short = (value is None or isinstance(value, bool) or (isinstance(value, float) and math.isfinite(value))
                 or (isinstance(value, int) and abs(value) < 10**15))
        item["input"] = value if short else clip(value)
    return item


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": [_validation_item(e) for e in exc.errors()]}, status_code=422)


def internal_error_response(request: Request, exc: BaseException) -> JSONResponse:
    if storage_full(exc):
        logger.error("storage full during %s %s: %s", request.method, request.url.path, exc)
        return storage_full_response()
    error_id = f"err_{secrets.token_hex(6)}"
    logger.error("internal error %s during %s %s", error_id, request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": f"internal error {error_id}: the server failed on this request; retry, or quote the id "
                   "to the operator"},
        status_code=500,
    )


async def internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    return internal_error_response(request, exc)


def install_error_handlers(app) -> None:
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    # OSError here, not only under Exception: handled in the ExceptionMiddleware, the 507/500
    # answer is final (Starlette re-raises what reaches its ServerErrorMiddleware, after answering)
    app.add_exception_handler(OSError, internal_error_handler)
    app.add_exception_handler(Exception, internal_error_handler)
