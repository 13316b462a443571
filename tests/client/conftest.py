"""Fixtures of the client tests: one real embedded stack (redis-server, Celery worker, uvicorn)
for the whole session, an API key, a small trained teacher file, and a CLI runner bound to them.

``BREGKD_TEST_DATABASE=postgresql`` runs the stack's records in a throw-away PostgreSQL
server (``tests.e2e.conftest.ThrowawayPostgres``); the default is a SQLite file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="session")
def client_database_url() -> Iterator[str | None]:
    """None (SQLite in the stack's data dir) or the URL of a throw-away PostgreSQL server."""
    if os.environ.get("BREGKD_TEST_DATABASE", "").lower() not in ("postgresql", "postgres"):
        yield None
        return
    # the one throw-away server helper of the test suite (imported here, after collection)
    from tests.e2e.conftest import ThrowawayPostgres

    with ThrowawayPostgres() as pg:
        yield pg.url


@pytest.fixture(scope="session")
def stack(tmp_path_factory, client_database_url):
    """The real service on localhost, started once for the client tests."""
    from service.stack import EmbeddedStack

    with EmbeddedStack(tmp_path_factory.mktemp("client-stack"), database_url=client_database_url) as s:
        yield s


@pytest.fixture(scope="session")
def api_key(stack) -> str:
    return stack.create_api_key("client-tests")


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory) -> Path:
    """A small MLP (64-32-10, leaky ReLU) trained briefly on digits, saved as ``.pt2``."""
    from client.demo import train_teacher

    path = tmp_path_factory.mktemp("client-teacher") / "teacher.pt2"
    train_teacher(path, epochs=3, seed=0, hidden=[32])
    return path


@dataclass
class Cli:
    """Runs ``bregkd`` commands in-process against the stack (URL and key from the environment)."""

    api_url: str
    api_key: str

    def __call__(self, *args: str, key: str | None = None):
        env = {"BREGKD_API_URL": self.api_url, "BREGKD_API_KEY": self.api_key if key is None else key,
               "COLUMNS": "200"}
        from client.cli import app

        return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture(scope="session")
def cli(stack, api_key) -> Cli:
    return Cli(stack.api_url, api_key)
