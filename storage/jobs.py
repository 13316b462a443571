"""Job state transitions shared by the API and the workers.

Every transition is one conditional UPDATE, so two processes can never both move a job: a
worker starts a job only if it is still ``queued`` with the attempt count its message carries
(a duplicate or stale message finds nothing to claim), and progress, heartbeats and the final
state are written only by the attempt that owns the job.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.models import Job, utcnow

TERMINAL = ("succeeded", "failed", "cancelled")


def as_utc(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were written in UTC."""
    if ts is None:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)


def claim(session: Session, job_id: str, expected_attempts: int, worker: str) -> Job | None:
    """Move a queued job to running for this attempt; None if someone else has it or it ended."""
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "queued", Job.attempts == expected_attempts)
        .values(
            state="running",
            attempts=Job.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            worker=worker,
            progress_phase="starting",
            updated_at=now,
        )
    )
    session.commit()
    if res.rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def _owned(job_id: str, attempt: int):
    return (Job.id == job_id, Job.state == "running", Job.attempts == attempt)


def heartbeat(session: Session, job_id: str, attempt: int) -> bool:
    """Record that the attempt is alive; False when the job is no longer this attempt's."""
    res = session.execute(update(Job).where(*_owned(job_id, attempt)).values(heartbeat_at=utcnow()))
    session.commit()
    return res.rowcount == 1


def report_progress(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    fraction: float,
    phase: str | None,
    eta_s: float | None,
    metrics: dict[str, Any] | None = None,
) -> bool:
    """Write progress; returns whether a cancel was requested (or the job is no longer ours)."""
    now = utcnow()
    values: dict[str, Any] = {
        "progress_fraction": max(0.0, min(1.0, float(fraction))),
        "progress_phase": phase,
        "eta_s": eta_s,
        "heartbeat_at": now,
        "updated_at": now,
    }
    if metrics is not None:
        values["metrics"] = metrics
    res = session.execute(update(Job).where(*_owned(job_id, attempt)).values(**values))
    session.commit()
    if res.rowcount != 1:
        return True
    return bool(session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one())


def cancel_requested(session: Session, job_id: str, attempt: int) -> bool:
    row = session.execute(select(Job.cancel_requested, Job.state, Job.attempts).where(Job.id == job_id)).one_or_none()
    if row is None:
        return True
    return bool(row.cancel_requested) or row.state != "running" or row.attempts != attempt


def finish(
    session: Session,
    job_id: str,
    attempt: int,
    state: str,
    *,
    error: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> bool:
    """End the attempt's job in a terminal state; False if the job was not this attempt's."""
    assert state in TERMINAL, state
    now = utcnow()
    values: dict[str, Any] = {"state": state, "error": error, "finished_at": now, "updated_at": now, "eta_s": None}
    if state == "succeeded":
        values.update(progress_fraction=1.0, progress_phase="done")
    if metrics is not None:
        values["metrics"] = metrics
    res = session.execute(update(Job).where(*_owned(job_id, attempt)).values(**values))
    session.commit()
    return res.rowcount == 1


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel a queued job now; flag a running one (its worker stops at the next check)."""
    now = utcnow()
    if job.state == "queued":
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == "queued")
            .values(state="cancelled", cancel_requested=True, finished_at=now, updated_at=now, error=None)
        )
    elif job.state == "running":
        session.execute(update(Job).where(Job.id == job.id, Job.state == "running").values(cancel_requested=True, updated_at=now))
    session.commit()
    session.refresh(job)  # a job that ended between our read and our write keeps its final state
    return job


def mark_sent(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(sent_at=utcnow()))
    session.commit()


def requeue_lost(session: Session, job: Job, reason: str, max_attempts: int) -> str:
    """A running job's worker is gone: queue it again, or fail it after ``max_attempts`` starts.

    Returns the new state. A job whose cancel was requested ends ``cancelled`` instead.
    """
    now = utcnow()
    base = (Job.id == job.id, Job.state == "running", Job.attempts == job.attempts)
    if job.cancel_requested:
        values: dict[str, Any] = {"state": "cancelled", "finished_at": now, "eta_s": None}
    elif job.attempts >= max_attempts:
        values = {
            "state": "failed",
            "finished_at": now,
            "eta_s": None,
            "error": (
                f"the worker running this job was lost {job.attempts} time(s) ({reason}); the job was "
                f"stopped after {max_attempts} attempts. It may need more memory than a worker has: "
                "try a smaller budget.max_train_rows, a smaller model or batch, or a larger worker."
            ),
        }
    else:
        values = {"state": "queued", "progress_phase": f"requeued: {reason}", "eta_s": None, "worker": None}
    values["updated_at"] = now
    res = session.execute(update(Job).where(*base).values(**values))
    session.commit()
    return values["state"] if res.rowcount == 1 else "unchanged"


def stale_running(session: Session, timeout_s: float) -> list[Job]:
    """Running jobs whose heartbeat is older than ``timeout_s``."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    jobs = session.execute(select(Job).where(Job.state == "running")).scalars().all()
    return [j for j in jobs if (as_utc(j.heartbeat_at) or as_utc(j.started_at) or cutoff) <= cutoff]


def queued_older_than(session: Session, age_s: float) -> list[Job]:
    cutoff = utcnow() - timedelta(seconds=age_s)
    jobs = session.execute(select(Job).where(Job.state == "queued")).scalars().all()
    return [j for j in jobs if (as_utc(j.sent_at) or as_utc(j.created_at)) <= cutoff]
