"""Routing and message bookkeeping (pure functions; the sweep itself runs in the e2e tests)."""
from __future__ import annotations

import json

from workers.dispatch import inspect_task_id, queue_for, task_id_for
from workers.recovery import _task_id


def test_jobs_are_routed_by_device():
    assert queue_for("cpu") == "cpu"
    assert queue_for("cuda") == "gpu" and queue_for("cuda:1") == "gpu"


def test_message_ids_name_the_attempt():
    assert task_id_for("job_1", 0) != task_id_for("job_1", 1)
    assert inspect_task_id("teacher", "tch_1", 0) != inspect_task_id("dataset", "tch_1", 0)


def test_task_ids_are_read_from_kombu_messages():
    message = {"body": "e30=", "headers": {"id": "job_1-a0", "task": "bregkd.run_job"}, "properties": {}}
    assert _task_id(json.dumps(message)) == "job_1-a0"
    assert _task_id(json.dumps([message, "cpu", "cpu"])) == "job_1-a0"  # the unacked hash's form
    assert _task_id(b"not json") is None
    assert _task_id(json.dumps(["x"])) is None
