"""API keys (managed with ``python -m service.admin keys ...``, not over HTTP)."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from api_schemas.common import example


class ApiKeyOut(BaseModel):
    """A key as listed: never its secret."""

    model_config = example(
        id="key_5b1e0c2a", tenant="acme", created_at="2026-11-25T15:00:00Z", revoked_at=None
    )

    id: str
    tenant: str
    created_at: datetime
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKeyOut):
    """A key just created: ``key`` is shown once and stored only as a hash."""

    model_config = example(
        id="key_5b1e0c2a",
        tenant="acme",
        created_at="2026-11-25T15:00:00Z",
        revoked_at=None,
        key="bkd_key_5b1e0c2a_Jq9w0k1x2vYtq3mPp7sL8d",
    )

    key: str
