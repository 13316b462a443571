"""Behaviour the README promises that no other test held: 416 for an unsatisfiable Range, the
client's polling fallback when the event stream breaks, and the prefork pool that
docker-compose.yml runs, with a pool child killed mid-job."""
from __future__ import annotations

import os
import re
import signal
import time

import httpx
import pytest

from tests.e2e._helpers import long_distillation, upload_teacher, wait_until

pytestmark = pytest.mark.e2e


def test_range_requests_206_and_416(client, representation_job):
    path = f"/v1/jobs/{representation_job['id']}/artifacts/layer.safetensors"
    whole = client.get(path)
    assert whole.status_code == 200
    part = client.get(path, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole.content[:10]
    assert part.headers["content-range"] == f"bytes 0-9/{len(whole.content)}"
    beyond = client.get(path, headers={"Range": f"bytes={len(whole.content) + 100}-"})
    assert beyond.status_code == 416, beyond.text
    assert beyond.headers.get("content-range") == f"bytes */{len(whole.content)}"


def test_wait_polls_when_the_event_stream_breaks(stack, client, teacher, monkeypatch):
    from client.api import BregkdClient

    spec = {"kind": "representation", "teacher_id": teacher["id"], "dataset": "digits", "layer": "0",
            "n_components": 2, "solver": {"max_iter": 5}}
    job_id = client.post("/v1/jobs", json=spec).json()["id"]
    api = BregkdClient(stack.api_url, client.headers["Authorization"].removeprefix("Bearer "))
    streamed: list[str] = []

    def broken_stream(job_id: str):  # the proxy cut the stream after its first event
        yield next(iter(BregkdClient.job_events(api, job_id)))
        streamed.append("cut")
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    monkeypatch.setattr(api, "job_events", broken_stream)
    seen = []
    job = api.wait_job(job_id, on_update=lambda j: seen.append(j.state.value), poll_s=0.1)
    assert streamed == ["cut"] and job.state.value == "succeeded"
    assert seen[-1] == "succeeded" and len(seen) >= 2  # one streamed update, then polls to the end
    api.close()


def test_prefork_pool_child_killed_mid_job_is_retried(tmp_path, e2e_database_url):
    """docker-compose runs ``--pool prefork``: a pool child killed with SIGKILL mid-job makes Celery
    reject the task (acks late, reject on worker lost); the job is retried on a new child and
    succeeds, and the worker's main process lives on. (Its records are its own: see own_database.)"""
    from service.stack import EmbeddedStack
    from tests.e2e.conftest import E2E_ENV, own_database
    from tests.e2e._teachers import save_pt2, train_digits_mlp

    with EmbeddedStack(tmp_path / "prefork", database_url=own_database(e2e_database_url, "prefork"), env=E2E_ENV,
                       worker_concurrency=2, worker_pool="prefork") as st:
        key = st.create_api_key("prefork")
        with httpx.Client(base_url=st.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            created = upload_teacher(c, save_pt2(train_digits_mlp(), tmp_path / "t.pt2"))
            teacher = wait_until(c, f"/v1/teachers/{created.json()['id']}", "status", ("ready", "failed"))
            assert teacher["status"] == "ready", teacher
            job_id = c.post("/v1/jobs", json=long_distillation(teacher["id"], epochs=40)).json()["id"]
            deadline = time.monotonic() + 90
            while (job := c.get(f"/v1/jobs/{job_id}").json())["progress"]["fraction"] <= 0.05:
                assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
                time.sleep(0.2)
            main_pid, *children = st.worker_pids()
            assert len(children) == 2, st.worker_pids()
            for pid in children:  # whichever child runs the job: kill both pool processes
                os.kill(pid, signal.SIGKILL)
            job = wait_until(c, f"/v1/jobs/{job_id}", "state", ("succeeded", "failed", "cancelled"), timeout=400)
            assert job["state"] == "succeeded" and job["attempts"] == 2, job
            assert st.worker_proc.poll() is None and st.worker_pids()[0] == main_pid  # the main process lived on


def test_an_unconverged_fit_says_so_in_the_job(client, teacher):
    """A representation job stopped by its iteration cap succeeds, and its record says the fit did
    not converge, with the measure and what to try (bregkd jobs show prints metrics.warnings)."""
    spec = {"kind": "representation", "teacher_id": teacher["id"], "dataset": "digits", "layer": "0",
            "n_components": 4, "solver": {"max_iter": 1, "tol": 1e-12}}
    # tol 1e-12 (optimality tolerance 1e-6): one iteration cannot meet it from any start. With
    # the default tol this test was flaky (2 of 4 runs of this file failed in session 8): one of the
    # starts sometimes met the default tolerance within the single iteration.
    job = wait_until(client, f"/v1/jobs/{client.post('/v1/jobs', json=spec).json()['id']}", "state",
                     ("succeeded", "failed", "cancelled"))
    assert job["state"] == "succeeded", job
    warnings = job["metrics"]["warnings"]
    assert len(warnings) == 1 and re.search(r"did not converge in \d+ iterations \(relative gradient norm", warnings[0]), warnings
    assert "max_iter" in warnings[0]  # says what to try
    report = client.get(f"/v1/jobs/{job['id']}/artifacts/report.json").json()
    assert report["converged"] is False and report["warnings"] == warnings
