"""Where the client finds the service: options first, then the environment, then defaults."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

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
    api_url : base URL of the service, without ``/v1`` (see :func:`normalize_api_url`).
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
        return cls(api_url=normalize_api_url(url), api_key=key,
                   timeout_s=DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s))


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def normalize_api_url(url: str) -> str:
    """The service's base URL as the client uses it: ``http://`` assumed when no scheme is given
    (``127.0.0.1:8000``, ``localhost:8000``), a trailing ``/`` or ``/v1`` dropped (the routes add
    ``/v1`` themselves). Raises ValueError for another scheme or an empty host."""
    text = url.strip()
    match = _SCHEME.match(text)
    if match is None:
        text = "http://" + text
    elif match.group(1).lower() not in ("http", "https"):
        raise ValueError(f"API URL {url!r} must start with http:// or https:// "
                         f"(set BREGKD_API_URL / --api-url, e.g. {DEFAULT_API_URL})")
    if not urlsplit(text).netloc:
        raise ValueError(f"API URL {url!r} names no host (set BREGKD_API_URL / --api-url, e.g. {DEFAULT_API_URL})")
    text = text.rstrip("/")
    if text.lower().endswith("/v1"):
        text = text[:-3].rstrip("/")
    return text
