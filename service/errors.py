"""Error answers in the same shapes as FastAPI's own (so clients parse one format)."""
from __future__ import annotations

from fastapi import HTTPException


def unprocessable(field: str | list[str | int], msg: str, type_: str = "value_error") -> HTTPException:
    """A 422 naming the bad field, shaped like FastAPI's request-validation errors."""
    loc = ["body", *field] if isinstance(field, list) else ["body", field]
    return HTTPException(422, [{"loc": loc, "msg": msg, "type": type_}])


def not_found(kind: str, ident: str) -> HTTPException:
    """404 for a missing object and for another tenant's object alike (never 403)."""
    return HTTPException(404, f"{kind} '{ident}' not found")
