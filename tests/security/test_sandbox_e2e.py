"""On the real stack (redis-server, a Celery worker with two pool processes, uvicorn): a teacher
whose loading kills its sandbox is ``failed`` with the reason, while another tenant's job that
runs at the same time on the same worker succeeds with its one attempt, and the worker's
processes are the same before and after (nothing died but the sandbox child)."""
from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import save_file

from service.stack import EmbeddedStack
from tests.e2e._helpers import upload_teacher, wait_until
from tests.e2e.conftest import E2E_ENV, _client

pytestmark = pytest.mark.e2e

#: long enough that the job is still running when the killer teacher's inspection ends
EPOCHS = 25
MANIFEST = {"arch": "mlp", "args": {"in_features": 64, "hidden": [16], "num_classes": 10}}


@pytest.fixture(scope="module")
def prefork_stack(tmp_path_factory):
    env = {**E2E_ENV, "BREGKD_SANDBOX_PRELOAD": "tests.security._sandbox_faults"}
    with EmbeddedStack(tmp_path_factory.mktemp("sandbox-stack"), worker_concurrency=2, env=env) as st:
        yield st


def _weights(path, note: str | None):
    from bregman.models import build_model

    torch.manual_seed(0)
    save_file(build_model("mlp", **MANIFEST["args"]).state_dict(), str(path), metadata={"note": note} if note else None)
    return path


def test_a_teacher_that_kills_its_sandbox_harms_no_other_job(prefork_stack, tmp_path):
    victim, attacker = _client(prefork_stack, "victim"), _client(prefork_stack, "attacker")
    good = upload_teacher(victim, _weights(tmp_path / "good.safetensors", None), manifest=json.dumps(MANIFEST))
    assert good.status_code == 201, good.text
    good = wait_until(victim, f"/v1/teachers/{good.json()['id']}", "status", ("ready", "failed"))
    assert good["status"] == "ready", good
    job = victim.post("/v1/jobs", json={
        "kind": "distillation", "teacher_id": good["id"], "dataset": "digits", "layer": "0", "n_components": 4,
        "methods": ["bregman"], "budget": {"epochs": EPOCHS, "time_limit_s": 600}, "onnx": False,
    })
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    deadline = time.monotonic() + 120
    while (j := victim.get(f"/v1/jobs/{job_id}").json())["state"] != "running" or j["progress"]["fraction"] <= 0:
        assert j["state"] in ("queued", "running") and time.monotonic() < deadline, j
        time.sleep(0.2)
    pids_before = sorted(prefork_stack.worker_pids())
    t0 = time.monotonic()

    killer = upload_teacher(attacker, _weights(tmp_path / "killer.safetensors", "BREGKD-FAULT:kill"),
                            manifest=json.dumps(MANIFEST))
    assert killer.status_code == 201, killer.text
    killer = wait_until(attacker, f"/v1/teachers/{killer.json()['id']}", "status", ("ready", "failed"))
    assert killer["status"] == "failed"
    assert killer["error"].startswith("loading the teacher crashed the process that loaded it (signal 9 (SIGKILL), err_")
    assert "/" not in killer["error"] and "Traceback" not in killer["error"]
    print(f"killer failed after {time.monotonic() - t0:.1f} s")
    during = victim.get(f"/v1/jobs/{job_id}").json()
    assert during["state"] == "running", "the job ended before the attack did: raise EPOCHS"
    assert sorted(prefork_stack.worker_pids()) == pids_before  # the worker and its pool processes live on

    done = wait_until(victim, f"/v1/jobs/{job_id}", "state", ("succeeded", "failed", "cancelled"), timeout=300)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 1
    print(f"job done after {time.monotonic() - t0:.1f} s")
    victim.close()
    attacker.close()
