"""Tenant isolation in-process: every object route answers another tenant's id with 404 and
lists never show it. (tests/e2e/test_isolation.py holds the same over the real stack; this one
runs in the same process as the routes, so the sabotage harness can break the tenant filter.)"""
from __future__ import annotations

import pytest

from storage.db import session_scope
from storage.models import Dataset, Job
from tests.service._app import key_for, make_client, ready_teacher


@pytest.fixture()
def two_tenants(tmp_path):
    client, settings = make_client(tmp_path)
    with client:
        owner, other = key_for(settings, "acme"), key_for(settings, "globex")
        tid = ready_teacher(settings, "acme")
        with session_scope(settings.resolved_database_url) as db:
            db.add(Dataset(id="ds_acme", tenant="acme", name="mine", format="npz", sha256="cd" * 32, size=10,
                           status="ready", n_train=30, n_test=0, input_shape=[64], has_labels=True))
            db.add(Job(id="job_acme", tenant="acme", kind="representation", state="succeeded",
                       spec={"teacher_id": tid, "budget": {"time_limit_s": 5}}, metrics={}))
        yield client, owner, other, tid


def test_other_tenant_gets_404_and_empty_lists(two_tenants):
    client, owner, other, tid = two_tenants
    for path in (f"/v1/teachers/{tid}", f"/v1/teachers/{tid}/layers", "/v1/datasets/ds_acme", "/v1/jobs/job_acme",
                 "/v1/jobs/job_acme/artifacts"):
        assert client.get(path, headers=owner).status_code == 200, path
        r = client.get(path, headers=other)
        assert r.status_code == 404 and set(r.json()) == {"detail"}, (path, r.text)
    assert client.delete(f"/v1/teachers/{tid}", headers=other).status_code == 404
    assert client.delete("/v1/datasets/ds_acme", headers=other).status_code == 404
    assert client.post("/v1/jobs/job_acme/cancel", headers=other).status_code == 404
    for path, ident in (("/v1/teachers", tid), ("/v1/datasets", "ds_acme"), ("/v1/jobs", "job_acme")):
        assert ident in [i["id"] for i in client.get(path, headers=owner).json()["items"]], path
        assert ident not in [i["id"] for i in client.get(path, headers=other).json()["items"]], path
    r = client.post("/v1/jobs", headers=other, json={"kind": "representation", "teacher_id": tid, "dataset": "digits",
                                                      "layer": "0", "n_components": 2})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "teacher_id"], r.text
    assert client.get(f"/v1/teachers/{tid}", headers=owner).status_code == 200  # survived the other's delete
