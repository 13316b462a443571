"""Recovery: no job is left ``running`` by a dead worker, and no ``queued`` job is lost with its
message.

The sweep runs at worker start and every ``sweep_interval_s`` in a thread of every worker:

- a ``running`` job whose heartbeat is older than ``heartbeat_timeout_s`` (its worker died or
  was killed: SIGKILL, out of memory, machine lost) is queued again with its attempt counted, or
  failed with an actionable reason after ``max_attempts`` starts; a cancelled one ends cancelled;
- a ``queued`` job sent more than ``queued_grace_s`` ago whose message is in no queue and held by
  no worker (Redis lost it, or sending failed) is sent again;
- a teacher or data set ``inspecting`` for longer than that whose message is gone is sent for
  inspection again, or marked ``failed`` after ``max_attempts`` interrupted inspections.

Re-sending is always safe: a worker runs a message only if the job is still ``queued`` with the
attempt count the message carries (:func:`storage.jobs.claim`).
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any

import redis as redis_lib
from celery import Celery

from storage import jobs as jobstate
from storage.config import Settings
from storage.db import session_factory
from workers.celery_app import CPU_QUEUE, GPU_QUEUE
from datetime import timedelta

from sqlalchemy import select

from storage.models import Dataset, Teacher, utcnow
from workers.dispatch import inspect_task_id, send_inspect_dataset, send_inspect_teacher, send_job, task_id_for

logger = logging.getLogger(__name__)

WORKER_KEY_PREFIX = "bregkd:worker:"
CAPABILITIES_KEY = "bregkd:capabilities"


def _task_id(raw: bytes | str) -> str | None:
    try:
        msg = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if isinstance(msg, list):  # the unacked hash holds [message, exchange, routing_key]
        msg = msg[0] if msg else {}
    if not isinstance(msg, dict):
        return None
    return (msg.get("headers") or {}).get("id") or (msg.get("properties") or {}).get("correlation_id")


def pending_task_ids(client: redis_lib.Redis) -> set[str]:
    """Ids of the messages waiting in the job queues or delivered but not yet acknowledged."""
    ids: set[str] = set()
    for queue in (CPU_QUEUE, GPU_QUEUE):
        for key in client.scan_iter(f"{queue}*"):
            if client.type(key) != b"list":
                continue
            for raw in client.lrange(key, 0, -1):
                if (tid := _task_id(raw)) is not None:
                    ids.add(tid)
    for raw in client.hvals("unacked"):
        if (tid := _task_id(raw)) is not None:
            ids.add(tid)
    return ids


def sweep(settings: Settings, app: Celery, client: redis_lib.Redis) -> dict[str, int]:
    """One pass; returns counts of what it did (for logs and tests)."""
    counts = {"requeued": 0, "failed": 0, "cancelled": 0, "resent": 0, "inspections": 0}
    factory = session_factory(settings.resolved_database_url)
    with factory() as db:
        for job in jobstate.stale_running(db, settings.heartbeat_timeout_s):
            reason = f"no heartbeat for {settings.heartbeat_timeout_s:g} s from worker {job.worker or '?'}"
            state = jobstate.requeue_lost(db, job, reason, settings.max_attempts)
            logger.warning("job %s (attempt %d) lost: %s -> %s", job.id, job.attempts, reason, state)
            if state == "queued":
                counts["requeued"] += 1
                db.refresh(job)
                _send(app, db, job)
            elif state in ("failed", "cancelled"):
                counts[state] += 1
        stale_queued = jobstate.queued_older_than(db, settings.queued_grace_s)
        cutoff = utcnow() - timedelta(seconds=settings.queued_grace_s)
        inspecting = [
            (kind, row)
            for kind, model in (("teacher", Teacher), ("dataset", Dataset))
            for row in db.execute(select(model).where(model.status == "inspecting")).scalars()
            if jobstate.as_utc(row.created_at) <= cutoff
        ]
        pending = pending_task_ids(client) if (stale_queued or inspecting) else set()
        for kind, row in inspecting:
            counts["inspections"] += _recover_inspection(settings, app, db, kind, row, pending)
        if stale_queued:
            for job in stale_queued:
                if task_id_for(job.id, job.attempts) not in pending:
                    logger.warning("job %s is queued but its message is gone; sending it again", job.id)
                    _send(app, db, job)
                    counts["resent"] += 1
    return counts


def _recover_inspection(settings: Settings, app: Celery, db: Any, kind: str, row: Any, pending: set[str]) -> int:
    """Re-send a lost inspection message (the attempt that was interrupted was counted)."""
    if inspect_task_id(kind, row.id, row.inspect_attempts) in pending:
        return 0  # the next attempt's message is waiting
    started = jobstate.as_utc(row.inspect_started_at)
    running_for = (utcnow() - started).total_seconds() if started else None
    if running_for is not None and running_for < settings.inspect_time_limit_s + settings.queued_grace_s:
        return 0  # an attempt is under way (a dead worker's attempt is retried once this passes)
    if row.inspect_attempts >= settings.max_attempts:
        row.status = "failed"
        row.error = (f"inspection was interrupted {row.inspect_attempts} times (the worker died while loading "
                     "the file); it may need more memory than a worker has, or the file is damaged")
        db.commit()
        return 1
    logger.warning("%s %s is inspecting but its message is gone; sending it again", kind, row.id)
    send = send_inspect_teacher if kind == "teacher" else send_inspect_dataset
    send(app, row.id, row.inspect_attempts)
    return 1


def _send(app: Celery, db: Any, job: Any) -> None:
    send_job(app, job.id, job.attempts, job.queue, int(job.spec["budget"]["time_limit_s"]))
    jobstate.mark_sent(db, job.id)


class Housekeeper(threading.Thread):
    """A worker's background thread: its presence key (for ``/readyz``) and the periodic sweep."""

    def __init__(self, settings: Settings, app: Celery, name: str) -> None:
        super().__init__(name="bregkd-housekeeper", daemon=True)
        self.settings = settings
        self.app = app
        self.key = WORKER_KEY_PREFIX + name
        self.client = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.stop_event = threading.Event()

    def beat(self) -> None:
        ttl = max(5, int(3 * min(self.settings.sweep_interval_s, 5.0)))
        self.client.set(self.key, "1", ex=ttl)

    def run(self) -> None:
        interval = min(self.settings.sweep_interval_s, 5.0)
        last_sweep = 0.0
        import time

        while not self.stop_event.is_set():
            try:
                self.beat()
                if time.monotonic() - last_sweep >= self.settings.sweep_interval_s:
                    last_sweep = time.monotonic()
                    counts = sweep(self.settings, self.app, self.client)
                    if any(counts.values()):
                        logger.info("recovery sweep: %s", counts)
            except Exception as exc:  # Redis or the database restarting: try again next round
                logger.warning("housekeeping failed: %s", exc)
            self.stop_event.wait(interval)

    def stop(self) -> None:
        self.stop_event.set()
        try:
            self.client.delete(self.key)
        except Exception:
            pass
