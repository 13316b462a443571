"""Routing and message bookkeeping (pure functions; the sweep itself runs in the e2e tests)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from workers.dispatch import inspect_task_id, queue_for, task_id_for
from workers.recovery import _task_id


def test_jobs_are_routed_by_device():
    assert queue_for("cpu") == "cpu"
    assert queue_for("cuda") == "gpu" and queue_for("cuda:1") == "gpu"


def test_message_ids_name_the_attempt():
    """Re-sends rely on task ids that are a pure function of (job, attempt): the recovery sweep
    recognizes a message as already queued only by recomputing its id, in another process."""
    ids = {(j, a): task_id_for(j, a) for j in ("job_1", "job_2") for a in (0, 1, 2)}
    assert len(set(ids.values())) == len(ids)  # distinct per job and per attempt
    inspect_ids = {(k, o, a): inspect_task_id(k, o, a) for k in ("teacher", "dataset") for o in ("tch_1", "ds_1")
                   for a in (0, 1)}
    assert len(set(inspect_ids.values())) == len(inspect_ids)
    assert not set(ids.values()) & set(inspect_ids.values())
    code = ("import json; from workers.dispatch import inspect_task_id, task_id_for; print(json.dumps("
            "[task_id_for('job_1', 1), inspect_task_id('teacher', 'tch_1', 0)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}).stdout
    assert json.loads(out) == [ids[("job_1", 1)], inspect_ids[("teacher", "tch_1", 0)]]  # stable across processes


def test_task_ids_are_read_from_kombu_messages():
    message = {"body": "e30=", "headers": {"id": "job_1-a0", "task": "bregkd.run_job"}, "properties": {}}
    assert _task_id(json.dumps(message)) == "job_1-a0"
    assert _task_id(json.dumps([message, "cpu", "cpu"])) == "job_1-a0"  # the unacked hash's form
    assert _task_id(b"not json") is None
    assert _task_id(json.dumps(["x"])) is None
