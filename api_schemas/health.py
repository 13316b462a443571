"""Liveness and readiness."""
from __future__ import annotations

from pydantic import BaseModel, Field

from api_schemas.common import example


class Health(BaseModel):
    """``GET /healthz``: the API process is alive."""

    model_config = example(status="ok", version="0.1.0")

    status: str = "ok"
    version: str


class Readiness(BaseModel):
    """``GET /readyz``: Redis answers and at least one worker is alive (503 otherwise)."""

    model_config = example(ready=True, redis=True, database=True, workers=["bregkd@host"], detail=None)

    ready: bool
    redis: bool
    database: bool
    workers: list[str] = Field(default_factory=list, description="Workers that reported recently.")
    detail: str | None = None
