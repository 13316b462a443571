"""A running job's wrapper: progress with an estimate of time left, cancellation through the
progress callback, and the interrupt of a step that never calls back."""
from __future__ import annotations

import time

import pytest

from storage import jobs as jobstate
from storage.config import Settings
from storage.db import session_factory
from storage.migrate import upgrade
from storage.models import Job, Tenant
from workers import runtime
from workers.runtime import BudgetExceeded, JobCancelled, JobRun


@pytest.fixture()
def job(tmp_path):
    settings = Settings(data_dir=tmp_path, heartbeat_interval_s=0.1, cancel_poll_s=0.01)
    upgrade(settings.resolved_database_url)
    db = session_factory(settings.resolved_database_url)()
    db.add(Tenant(name="t"))
    db.flush()
    db.add(Job(id="job_1", tenant="t", kind="representation", spec={}, metrics={}))
    db.commit()
    jobstate.claim(db, "job_1", 0, "w")
    return settings, db


def test_progress_is_recorded_with_phase_and_eta(job):
    settings, db = job
    with JobRun(settings, "job_1", 1, 60, phases={"capture": 1, "fit": 3}) as run:
        run.progress("capture", 1.0)
        time.sleep(0.05)
        run.progress("fit", 0.5, {"divergence": 0.25})
    row = db.get(Job, "job_1", populate_existing=True)
    assert row.progress_fraction == pytest.approx(0.625)
    assert row.progress_phase == "fit" and row.eta_s is not None and row.eta_s > 0
    assert row.metrics == {"divergence": 0.25}


def test_cancel_raises_in_the_callback(job):
    settings, db = job
    with pytest.raises(JobCancelled):
        with JobRun(settings, "job_1", 1, 60) as run:
            jobstate.request_cancel(db, db.get(Job, "job_1"))
            time.sleep(0.02)
            for _ in range(100):
                run.progress("train", 0.1)
                time.sleep(0.01)


def test_budget_raises_in_the_callback(job):
    settings, _ = job
    with pytest.raises(BudgetExceeded, match="time budget"):
        with JobRun(settings, "job_1", 1, 0.05) as run:
            time.sleep(0.1)
            run.progress("train", 0.5)


def test_a_step_that_never_calls_back_is_interrupted(job, monkeypatch):
    settings, db = job
    monkeypatch.setattr(runtime, "INTERRUPT_GRACE_S", 0.2)
    t0 = time.monotonic()
    with pytest.raises(JobCancelled):
        with JobRun(settings, "job_1", 1, 60):
            jobstate.request_cancel(db, db.get(Job, "job_1"))
            # a long library step: pure Python, no callback. Only the interrupt ends it: without
            # one the loop runs out and no JobCancelled is raised (no wall-clock assertion).
            while time.monotonic() - t0 < 60:
                sum(range(1000))


def test_time_left_follows_the_current_phase_rate():
    from workers.runtime import estimate_eta

    # a fast phase (0 -> 0.2 in 2 s) then a slow one: 10 s for its first tenth (0.2 -> 0.28 of 0.2 -> 1.0)
    eta = estimate_eta(elapsed=12.0, overall=0.28, phase_elapsed=10.0, phase_from=0.2, phase_to=1.0)
    assert eta == pytest.approx((1.0 - 0.28) * 10.0 / 0.08)  # 90 s; the job's average would say 30.9 s
    # phases after the current one go at the job's average rate so far
    eta = estimate_eta(elapsed=10.0, overall=0.5, phase_elapsed=5.0, phase_from=0.25, phase_to=0.75)
    assert eta == pytest.approx(0.25 * (5.0 / 0.25) + 0.25 * (10.0 / 0.5))
    assert estimate_eta(0.0, 0.0, 0.0, 0.0, 1.0) is None
    assert estimate_eta(10.0, 0.5, 1.0, 0.4, None) == pytest.approx(10.0)
