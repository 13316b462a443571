"""Fixtures of the end-to-end tests: one embedded stack (redis-server, a Celery worker, uvicorn)
shared by the whole session, optionally on a throwaway PostgreSQL server (the newest installed)
(``BREGKD_TEST_DATABASE=postgresql``). Every process started here is stopped at the end, also
when tests fail."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from service.stack import EmbeddedStack, free_port, stop_process


def _newest_pg_bin() -> Path:
    """``BREGKD_PG_BIN``, else the newest ``/usr/lib/postgresql/<major>/bin`` that has initdb."""
    if os.environ.get("BREGKD_PG_BIN"):
        return Path(os.environ["BREGKD_PG_BIN"])
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.parent.parent.name.isdigit()]
    return max(found, key=lambda b: int(b.parent.name), default=Path("/usr/lib/postgresql/15/bin"))


PG_BIN = _newest_pg_bin()

#: short timeouts so recovery is observable within seconds
E2E_ENV = {
    "BREGKD_HEARTBEAT_INTERVAL_S": "1",
    "BREGKD_HEARTBEAT_TIMEOUT_S": "6",
    "BREGKD_SWEEP_INTERVAL_S": "1",
    "BREGKD_QUEUED_GRACE_S": "2",
    "BREGKD_MAX_ATTEMPTS": "2",
    "BREGKD_CANCEL_POLL_S": "0.2",
    "BREGKD_MAX_UPLOAD_BYTES": str(4 * 1024 * 1024),
}


class ThrowawayPostgres:
    """A PostgreSQL server in a temporary directory on a free port, run as the ``postgres`` user
    when we are root (initdb and postgres refuse to run as root)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bregkd-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.as_postgres = os.geteuid() == 0

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self.as_postgres else list(args)

    def __enter__(self) -> "ThrowawayPostgres":
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"PostgreSQL binaries not found in {PG_BIN} (set BREGKD_PG_BIN)")
        data, sock = self.root / "data", self.root / "sock"
        sock.mkdir()
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(sock, "postgres", "postgres")
        subprocess.run(
            self._cmd(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"),
            check=True, capture_output=True,
        )
        self.proc = subprocess.Popen(
            self._cmd(str(PG_BIN / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(sock),
                      "-h", "127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"),
            stdout=open(self.root / "postgres.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("PostgreSQL did not start: " + (self.root / "postgres.log").read_text())
            time.sleep(0.2)
        subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "bregkd"],
                       check=True, capture_output=True)
        return self

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/bregkd"

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc, timeout=15)  # SIGTERM: smart shutdown; SIGKILL after the timeout
        shutil.rmtree(self.root, ignore_errors=True)


def own_database(url: str | None, name: str) -> str | None:
    """A new, empty database on the server of ``url`` for a stack of its own (None stays None:
    SQLite in that stack's data dir). Two stacks must never share records: one stack's recovery
    sweep would re-send the other's jobs to its own worker, which has neither their queue nor
    their blobs."""
    if url is None:
        return None
    import uuid

    from sqlalchemy.engine import make_url

    u = make_url(url)
    database = f"{name}_{uuid.uuid4().hex[:8]}"
    subprocess.run([str(PG_BIN / "createdb"), "-h", str(u.host), "-p", str(u.port), "-U", str(u.username), database],
                   check=True, capture_output=True)
    return u.set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def e2e_database_url() -> Iterator[str | None]:
    if os.environ.get("BREGKD_TEST_DATABASE", "").lower() in ("postgresql", "postgres"):
        with ThrowawayPostgres() as pg:
            yield pg.url
    else:
        yield None


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, e2e_database_url: str | None) -> Iterator[EmbeddedStack]:
    with EmbeddedStack(tmp_path_factory.mktemp("stack"), database_url=e2e_database_url, env=E2E_ENV) as st:
        yield st


def _client(stack: EmbeddedStack, tenant: str) -> httpx.Client:
    key = stack.create_api_key(tenant)
    return httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture(scope="session")
def client(stack: EmbeddedStack) -> Iterator[httpx.Client]:
    with _client(stack, "acme") as c:
        yield c


@pytest.fixture(scope="session")
def other_client(stack: EmbeddedStack) -> Iterator[httpx.Client]:
    with _client(stack, "globex") as c:
        yield c


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.e2e._teachers import save_pt2, train_digits_mlp

    return save_pt2(train_digits_mlp(), tmp_path_factory.mktemp("teacher") / "mlp.pt2")


@pytest.fixture(scope="session")
def teacher(client: httpx.Client, teacher_file: Path) -> dict:
    """The digits MLP teacher, uploaded as .pt2 and inspected (status ready)."""
    from tests.e2e._helpers import upload_teacher, wait_until

    created = upload_teacher(client, teacher_file)
    assert created.status_code in (200, 201), created.text
    return wait_until(client, f"/v1/teachers/{created.json()['id']}", "status", ("ready", "failed"))


@pytest.fixture(scope="session")
def representation_job(client: httpx.Client, teacher: dict) -> dict:
    from tests.e2e._helpers import wait_until

    r = client.post("/v1/jobs", json={
        "kind": "representation", "teacher_id": teacher["id"], "dataset": "digits", "layer": "0",
        "n_components": 6, "solver": {"max_iter": 15}, "budget": {"time_limit_s": 120},
    })
    assert r.status_code == 201, r.text
    return wait_until(client, f"/v1/jobs/{r.json()['id']}", "state", ("succeeded", "failed", "cancelled"))
