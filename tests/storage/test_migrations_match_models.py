"""The migrations build exactly the models' schema on SQLite and on PostgreSQL: column types,
nullability, defaults, indexes, unique and foreign-key constraints, not only column names.

Alembic's autogenerate comparison is the independent reference: it reads the live database's
schema back and lists every difference from ``storage.models``.
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from storage.db import make_engine
from storage.migrate import upgrade
from storage.models import Base


def _differences(url: str, metadata: sa.MetaData) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def _with_an_extra_index() -> sa.MetaData:
    """A copy of the models with one more index: the comparison must notice it."""
    copy = sa.MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(copy)
    jobs = copy.tables["jobs"]
    sa.Index("ix_jobs_sabotage", jobs.c[list(jobs.c.keys())[1]])
    return copy


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'records.db'}"
        upgrade(url)
        yield url
        return
    from tests.e2e.conftest import ThrowawayPostgres

    with ThrowawayPostgres() as pg:
        upgrade(pg.url)
        yield pg.url


def test_migrated_schema_equals_the_models(migrated_url):
    assert _differences(migrated_url, Base.metadata) == []
    assert _differences(migrated_url, _with_an_extra_index()), "the comparison sees nothing: it checks nothing"
