"""Where the client finds the service: options first, then the environment, then defaults."""
from __future__ import annotations

import os
from dataclasses import dataclass

#: Environment variables the client reads.
ENV_API_URL = "BREGKD_API_URL"
ENV_API_KEY = "BREGKD_API_KEY"
#: Where ``bregkd serve`` listens by default, so the two agree without configuration.
DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ClientSettings:
    """The client's connection settings.

    Attributes
    ----------
    api_url : base URL of the service, without ``/v1``.
    api_key : the secret sent as ``Authorization: Bearer <key>``; None sends no header.
    timeout_s : seconds to wait for a connection or a response chunk.
    """

    api_url: str = DEFAULT_API_URL
    api_key: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def resolve(cls, api_url: str | None = None, api_key: str | None = None,
                timeout_s: float | None = None) -> "ClientSettings":
        """Explicit values win; otherwise ``BREGKD_API_URL`` / ``BREGKD_API_KEY``; then defaults."""
        url = api_url or os.environ.get(ENV_API_URL) or DEFAULT_API_URL
        key = api_key if api_key is not None else (os.environ.get(ENV_API_KEY) or None)
        return cls(api_url=url.rstrip("/"), api_key=key,
                   timeout_s=DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s))
