"""Settings of the service and the workers, from the environment (prefix ``BREGKD_``)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service, read from ``BREGKD_*`` environment variables (or a ``.env``).

    Attributes
    ----------
    data_dir : directory of the blob store, job scratch space and (by default) the SQLite file.
    database_url : SQLAlchemy URL; empty means ``sqlite:///<data_dir>/bregkd.db``.
    redis_url : Celery broker and the worker-presence keys.
    database_password, redis_password : put into those URLs, escaped, so that a password with
        ``@ : / # %`` never breaks a URL it would otherwise be pasted into (docker-compose.yml
        passes them this way).
    max_upload_bytes : uploads larger than this are answered 413.

    The request limits (``max_json_bytes`` ... ``tmp_sweep_grace_s``) are described in
    ``service/limits.py`` and ``service/http_protocol.py``, which enforce them.
    """

    model_config = SettingsConfigDict(env_prefix="BREGKD_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Blobs, job scratch and the default SQLite file.")
    database_url: str = Field("", repr=False, description="SQLAlchemy URL; default sqlite:///<data_dir>/bregkd.db")
    redis_url: str = Field("redis://localhost:6379/0", repr=False)
    database_password: str = Field("", repr=False, description="Password for database_url, escaped into it.")
    redis_password: str = Field("", repr=False, description="Password for redis_url (Redis requirepass), escaped into it.")
    max_upload_bytes: int = Field(2 * 1024**3, ge=1)
    max_field_bytes: int = Field(1024 * 1024, ge=1, description="Limit of a non-file multipart field.")
    upload_chunk_bytes: int = Field(1024 * 1024, ge=4096)
    # Request limits of the API (per request; the upload cap is per tenant and per API process)
    max_json_bytes: int = Field(1024 * 1024, ge=1024, description="A non-multipart request body above this is answered 413.")
    max_student_parameters: int = Field(50_000_000, ge=1, description="A job's student above this many parameters is answered 422.")
    upload_idle_timeout_s: float = Field(30.0, gt=0, description="A request body with no byte for this long is answered 408.")
    upload_min_rate_bytes_s: float = Field(
        4096.0, ge=0, description="After upload_idle_timeout_s, a body arriving slower than this on average is answered 408.")
    max_concurrent_uploads: int = Field(4, ge=1, description="Uploads one tenant may run at once on one API process (429 above).")
    header_timeout_s: float = Field(10.0, gt=0, description="A connection that has not sent a request's complete headers within this is closed (408).")
    body_drain_timeout_s: float = Field(
        10.0, gt=0, description="After an early answer (413, 401, ...) the rest of an unread body is discarded for at most this long.")
    tmp_sweep_min_age_s: float = Field(60.0, ge=0, description="Temporary uploads no process holds and older than this are removed at API start.")
    tmp_sweep_grace_s: float = Field(
        3600.0, ge=0, description="Where file locks are unavailable, temporary uploads older than this are removed at API start.")
    # Workers
    heartbeat_interval_s: float = Field(2.0, gt=0, description="How often a running job's heartbeat is written.")
    heartbeat_timeout_s: float = Field(60.0, gt=0, description="A running job silent this long is presumed lost.")
    sweep_interval_s: float = Field(10.0, gt=0, description="How often a worker runs the recovery sweep.")
    queued_grace_s: float = Field(30.0, ge=0, description="A queued job this old whose message is gone is re-sent.")
    max_attempts: int = Field(3, ge=1, description="A job whose worker died this many times fails.")
    cancel_poll_s: float = Field(0.5, gt=0, description="Minimum seconds between cancel checks of a running job.")
    # Must exceed the longest job budget, or Redis redelivers a long job to a second worker.
    visibility_timeout_s: int = Field(8 * 24 * 3600, ge=60)
    inspect_time_limit_s: int = Field(300, ge=1)
    migrate_on_start: bool = Field(True, description="Run the migrations when the API starts (off when a separate step does).")
    version: str = "0.1.0"

    @model_validator(mode="after")
    def _passwords_into_urls(self) -> "Settings":
        if self.database_password and self.database_url:
            from sqlalchemy.engine import make_url

            url = make_url(self.database_url).set(password=self.database_password)
            self.database_url = url.render_as_string(hide_password=False)
        if self.redis_password:
            parts = urlsplit(self.redis_url)
            host = parts.netloc.rpartition("@")[2]
            user = parts.username or ""
            netloc = f"{quote(user, safe='')}:{quote(self.redis_password, safe='')}@{host}"
            self.redis_url = urlunsplit(parts._replace(netloc=netloc))
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(Path(self.data_dir) / 'bregkd.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return Path(self.data_dir) / "blobs"

    @property
    def scratch_dir(self) -> Path:
        return Path(self.data_dir) / "scratch"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (cached: the environment is read once)."""
    return Settings()
