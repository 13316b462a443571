"""Cancellation, a worker killed mid-job, and a Redis that lost its messages: no job is left
running and none is lost."""
from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
import redis

from tests.e2e._helpers import long_distillation, wait_until
from workers.dispatch import inspect_task_id, task_id_for
from workers.recovery import pending_task_ids

pytestmark = pytest.mark.e2e


def _wait_running(client, job_id: str, min_fraction: float = 0.0, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "running" and job["progress"]["fraction"] > min_fraction:
            return job
        assert job["state"] in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_cancel_a_queued_and_a_running_job(stack, client, teacher):
    r = client.post("/v1/jobs", json=long_distillation(teacher["id"]))
    assert r.status_code == 201
    job = _wait_running(client, r.json()["id"], min_fraction=0.05)
    # the single worker is busy: a second job waits in the queue, and its cancel is immediate
    queued = client.post("/v1/jobs", json=long_distillation(teacher["id"])).json()
    assert queued["state"] == "queued"
    r = client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    # follow the running job's event stream while it is cancelled
    events: list[tuple[str, dict]] = []
    first_event = threading.Event()

    def follow() -> None:
        with client.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=60) as stream:
            name = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
                    first_event.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert first_event.wait(timeout=30), "the event stream sent nothing"  # subscribed: now cancel
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    done = wait_until(client, f"/v1/jobs/{job['id']}", "state", ("cancelled", "failed", "succeeded"), timeout=30)
    assert done["state"] == "cancelled", done
    assert done["progress"]["fraction"] < 0.99, done  # stopped mid-way, not at the end of its 2000 epochs
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409
    follower.join(timeout=20)
    assert events and events[0][0] == "progress" and events[0][1]["state"] == "running"
    assert events[-1][0] == "end" and events[-1][1]["state"] == "cancelled"
    assert client.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"] == []
    assert client.get(f"/v1/jobs/{queued['id']}").json()["attempts"] == 0  # never started


def test_worker_killed_mid_job_is_retried_then_failed(stack, client, teacher):
    r = client.post("/v1/jobs", json=long_distillation(teacher["id"]))
    job_id = r.json()["id"]
    _wait_running(client, job_id, min_fraction=0.05)
    stack.kill_worker()  # SIGKILL: no clean-up of any kind runs
    stack.start_worker()
    # the sweep of the new worker finds the silent job and runs it again (attempt 2)
    deadline = time.monotonic() + 60
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["attempts"] == 2 and job["state"] == "running":
            break
        assert job["state"] in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    stack.kill_worker()
    stack.start_worker()
    job = wait_until(client, f"/v1/jobs/{job_id}", "state", ("failed", "succeeded", "cancelled"), timeout=60)
    assert job["state"] == "failed", job
    assert "lost 2 time(s)" in job["error"] and "attempts" in job["error"]
    stack.wait_ready()


def test_queued_job_whose_message_was_lost_is_sent_again(stack, client, teacher):
    stack.kill_worker()
    spec = {"kind": "representation", "teacher_id": teacher["id"], "dataset": "digits", "layer": "0",
            "n_components": 3, "solver": {"max_iter": 5}}
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 201 and r.json()["state"] == "queued"
    buf = io.BytesIO()
    np.savez(buf, x_train=np.random.default_rng(2).normal(size=(20, 64)).astype(np.float32))
    ds = client.post("/v1/datasets", files={"file": ("lost.npz", buf.getvalue())}).json()
    assert ds["status"] == "inspecting"
    # Redis restarts with its append-only file: the message survives ...
    stack.restart_redis()
    # exactly these two messages (the job's and the inspection's), whatever else the queue holds
    pending = pending_task_ids(redis.Redis.from_url(stack.redis_url))
    assert {task_id_for(r.json()["id"], 0), inspect_task_id("dataset", ds["id"], 0)} <= pending, pending
    # ... and when it is lost anyway, the sweep sends it again
    redis.Redis.from_url(stack.redis_url).flushall()
    stack.start_worker()
    stack.wait_ready()
    job = wait_until(client, f"/v1/jobs/{r.json()['id']}", "state", ("succeeded", "failed", "cancelled"), timeout=90)
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 1
    ds = wait_until(client, f"/v1/datasets/{ds['id']}", "status", ("ready", "failed"), timeout=60)
    assert ds["status"] == "ready" and ds["n_train"] == 20
