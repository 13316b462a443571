"""Migrations bring a fresh SQLite file to the models' schema, and job transitions are atomic."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import inspect, update

from storage import jobs as jobstate
from storage.db import make_engine, session_factory
from storage.migrate import downgrade, upgrade
from storage.models import Base, Job, Tenant, utcnow


def test_upgrade_on_a_fresh_sqlite_file_matches_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh' / 'records.db'}"
    upgrade(url)
    engine = make_engine(url)
    insp = inspect(engine)
    tables = set(insp.get_table_names())
    assert set(Base.metadata.tables) <= tables and "alembic_version" in tables
    for name, table in Base.metadata.tables.items():
        assert {c["name"] for c in insp.get_columns(name)} == {c.name for c in table.columns}, name
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    upgrade(url)  # idempotent
    downgrade(url)
    assert set(inspect(make_engine(url)).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def _job(db, **kw) -> Job:
    db.add(Tenant(name="t"))
    db.flush()
    job = Job(id="job_1", tenant="t", kind="representation", spec={"budget": {"time_limit_s": 5}}, metrics={}, **kw)
    db.add(job)
    db.commit()
    return job


def test_claim_is_once_per_attempt(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    db = session_factory(url)()
    _job(db)
    assert jobstate.claim(db, "job_1", 0, "w1") is not None
    assert jobstate.claim(db, "job_1", 0, "w2") is None  # duplicate message
    assert jobstate.report_progress(db, "job_1", 1, fraction=0.5, phase="fit", eta_s=3.0) is False
    assert jobstate.report_progress(db, "job_1", 2, fraction=0.5, phase="fit", eta_s=3.0) is True  # not ours
    assert jobstate.finish(db, "job_1", 1, "succeeded")
    assert not jobstate.finish(db, "job_1", 1, "failed")
    db.refresh(db.get(Job, "job_1"))
    assert db.get(Job, "job_1").state == "succeeded"


def test_lost_job_requeued_then_failed(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    db = session_factory(url)()
    _job(db)
    jobstate.claim(db, "job_1", 0, "w1")
    db.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=100)))
    db.commit()
    [stale] = jobstate.stale_running(db, 30)
    assert jobstate.requeue_lost(db, stale, "gone", max_attempts=2) == "queued"
    job = jobstate.claim(db, "job_1", 1, "w2")
    assert job is not None and job.attempts == 2
    db.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=100)))
    db.commit()
    [stale] = jobstate.stale_running(db, 30)
    assert jobstate.requeue_lost(db, stale, "gone", max_attempts=2) == "failed"
    db.refresh(job)
    assert job.state == "failed" and "lost 2 time(s)" in job.error


def test_cancel_of_a_queued_job_is_immediate(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    db = session_factory(url)()
    job = _job(db)
    job = jobstate.request_cancel(db, job)
    assert job.state == "cancelled" and job.cancel_requested
    assert jobstate.claim(db, "job_1", 0, "w") is None
