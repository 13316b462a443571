"""Scale-out: two Celery worker processes (a ``solo`` and a ``prefork --concurrency 1`` one, each
its own Celery hostname and log) on one queue, one PostgreSQL and one blob directory.

- 20 jobs sent at once each run exactly once, and both workers take some. "Ran" is counted from
  what each worker process wrote itself (its log's ``job <id>: phase load`` line, written when an
  execution starts loading the teacher), held against the records (``attempts``, ``worker``).
- A worker SIGKILLed mid-job: its heartbeat stops, the other worker's recovery sweep queues the
  job again, and the other worker finishes it (``succeeded``, attempt 2).

The module starts its own PostgreSQL (whatever ``BREGKD_TEST_DATABASE`` says), Redis, API and
workers, so it runs in every pass of the suite.
"""
from __future__ import annotations

import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from sqlalchemy import select

from service.stack import EmbeddedStack
from storage.db import session_scope
from storage.jobs import as_utc
from storage.models import Job
from tests.e2e._helpers import upload_teacher, wait_until
from tests.e2e.conftest import E2E_ENV, ThrowawayPostgres

pytestmark = pytest.mark.e2e

N_JOBS = 20
PHASE_LOAD = re.compile(r"job (\w+): phase load at")


class TwoWorkers:
    """The stack, its two workers by name (None = the stack's main worker) and their logs."""

    def __init__(self, stack: EmbeddedStack, second: str) -> None:
        self.stack = stack
        self.names: dict[str, str | None] = {"solo": None, "prefork": second}
        self.logs = {"solo": stack.log_dir / "worker.log", "prefork": stack.log_dir / f"worker-{second}.log"}

    def executions(self) -> dict[str, list[str]]:
        """Job ids each worker started executing, once per execution, from its own log."""
        return {label: PHASE_LOAD.findall(path.read_text(errors="replace")) for label, path in self.logs.items()}

    def owner(self, worker_field: str) -> str:
        """Which worker a job record's ``worker`` (``host:pid`` of the executing process) names."""
        pid = int(worker_field.rsplit(":", 1)[1])
        found = [label for label, name in self.names.items() if pid in self.stack.worker_pids(name)]
        assert len(found) == 1, (worker_field, {label: self.stack.worker_pids(n) for label, n in self.names.items()})
        return found[0]

    def job_row(self, job_id: str) -> Job:
        with session_scope(self.stack.database_url) as db:
            job = db.execute(select(Job).where(Job.id == job_id)).scalar_one()
            db.expunge(job)
            return job


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoWorkers]:
    with ThrowawayPostgres() as pg, EmbeddedStack(
        tmp_path_factory.mktemp("scaleout"), database_url=pg.url, env=E2E_ENV, worker_pool="solo",
        extra_workers=(("prefork", 1),),
    ) as stack:
        (second,) = stack.extra_workers
        yield TwoWorkers(stack, second)


@pytest.fixture(scope="module")
def scale_client(two_workers: TwoWorkers) -> Iterator[httpx.Client]:
    key = two_workers.stack.create_api_key("scale")
    with httpx.Client(base_url=two_workers.stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def scale_teacher(scale_client: httpx.Client, teacher_file: Path) -> dict:
    created = upload_teacher(scale_client, teacher_file)
    assert created.status_code == 201, created.text
    teacher = wait_until(scale_client, f"/v1/teachers/{created.json()['id']}", "status", ("ready", "failed"), timeout=60)
    assert teacher["status"] == "ready", teacher
    return teacher


def test_twenty_jobs_at_once_each_run_exactly_once_on_both_workers(two_workers, scale_client, scale_teacher):
    spec = {"kind": "representation", "teacher_id": scale_teacher["id"], "dataset": "digits", "layer": "0",
            "n_components": 3, "solver": {"max_iter": 5}, "budget": {"time_limit_s": 120}}
    t0 = time.monotonic()
    with ThreadPoolExecutor(N_JOBS) as pool:  # sent at once, from 20 connections
        responses = list(pool.map(lambda _: scale_client.post("/v1/jobs", json=spec), range(N_JOBS)))
    assert [r.status_code for r in responses] == [201] * N_JOBS, [r.text for r in responses if r.status_code != 201]
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == N_JOBS
    finals = [wait_until(scale_client, f"/v1/jobs/{jid}", "state", ("succeeded", "failed", "cancelled"), timeout=75)
              for jid in ids]
    wall = time.monotonic() - t0
    assert [j["state"] for j in finals] == ["succeeded"] * N_JOBS, [j for j in finals if j["state"] != "succeeded"]
    assert [j["attempts"] for j in finals] == [1] * N_JOBS

    # each execution logs its start in the log of the process that ran it: exactly one per job
    executed = two_workers.executions()
    per_job = {jid: sum(runs.count(jid) for runs in executed.values()) for jid in ids}
    assert per_job == {jid: 1 for jid in ids}, per_job
    # the record's worker (host:pid of the process that claimed it) is the one whose log has it
    ran_on = {jid: two_workers.owner(two_workers.job_row(jid).worker) for jid in ids}
    for jid, label in ran_on.items():
        assert jid in executed[label], (jid, label)
    split = {label: sum(1 for v in ran_on.values() if v == label) for label in two_workers.names}
    assert all(n > 0 for n in split.values()), split
    print(f"\n20 jobs: split {split}, {wall:.1f} s from the first POST to the last success")


def test_a_worker_killed_mid_job_leaves_it_to_the_other(two_workers, scale_client, scale_teacher):
    stack = two_workers.stack
    spec = {"kind": "distillation", "teacher_id": scale_teacher["id"], "dataset": "digits", "layer": "0",
            "n_components": 4, "methods": ["bregman"], "budget": {"epochs": 4, "time_limit_s": 120}, "onnx": False}
    r = scale_client.post("/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        job = scale_client.get(f"/v1/jobs/{jid}").json()
        if job["state"] == "running" and job["progress"]["fraction"] > 0.05:
            break
        assert job["state"] in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    row = two_workers.job_row(jid)
    victim = two_workers.owner(row.worker)
    survivor = next(label for label in two_workers.names if label != victim)
    victim_name = two_workers.names[victim] or stack.worker_name
    t_kill = time.monotonic()
    stack.kill_worker(signal.SIGKILL, name=two_workers.names[victim])
    last_beat = two_workers.job_row(jid).heartbeat_at

    timeline: dict[str, float] = {}
    deadline = time.monotonic() + 75
    while True:
        row = two_workers.job_row(jid)
        now = time.monotonic() - t_kill
        if row.attempts == 1 and row.state == "running":
            # nobody writes the dead attempt's heartbeat any more
            assert row.heartbeat_at == last_beat, (row.heartbeat_at, last_beat)
        if row.attempts == 1 and row.state == "queued":
            timeline.setdefault("requeued", now)
        if row.attempts == 2:
            timeline.setdefault("attempt 2 running", now)
        if row.state in ("succeeded", "failed", "cancelled"):
            timeline["ended"] = now
            break
        assert time.monotonic() < deadline, (row.state, row.attempts, timeline)
        time.sleep(0.1)
    job = scale_client.get(f"/v1/jobs/{jid}").json()
    assert job["state"] == "succeeded" and job["attempts"] == 2, job
    assert two_workers.owner(row.worker) == survivor
    assert "attempt 2 running" in timeline
    # the killed worker's presence key has expired; the survivor still reports
    workers = httpx.get(f"{stack.api_url}/readyz").json()["workers"]
    assert not any(w.startswith(f"{victim_name}@") for w in workers), workers
    assert any(w.startswith(f"{(two_workers.names[survivor] or stack.worker_name)}@") for w in workers), workers
    silent = (as_utc(row.started_at) - as_utc(last_beat)).total_seconds()
    assert silent >= float(E2E_ENV["BREGKD_HEARTBEAT_TIMEOUT_S"]), silent
    print(f"\nkilled the {victim} worker mid-job; the {survivor} one took it: "
          + ", ".join(f"{k} at +{v:.1f} s" for k, v in timeline.items())
          + f"; dead attempt's last heartbeat {silent:.1f} s before attempt 2 started")

