"""Another tenant gets 404 for every object endpoint (never 403, never the object)."""
from __future__ import annotations

import io

import numpy as np
import pytest

from tests.e2e._helpers import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def own_dataset(client) -> dict:
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    np.savez(buf, x_train=rng.normal(size=(30, 64)).astype(np.float32), y_train=rng.integers(0, 10, 30))
    r = client.post("/v1/datasets", files={"file": ("mine.npz", buf.getvalue())})
    assert r.status_code == 201, r.text
    return wait_until(client, f"/v1/datasets/{r.json()['id']}", "status", ("ready", "failed"))


def test_other_tenant_gets_404_everywhere(client, other_client, teacher, own_dataset, representation_job):
    tid, did, jid = teacher["id"], own_dataset["id"], representation_job["id"]
    gets = [f"/v1/teachers/{tid}", f"/v1/teachers/{tid}/layers", f"/v1/datasets/{did}", f"/v1/jobs/{jid}",
            f"/v1/jobs/{jid}/artifacts", f"/v1/jobs/{jid}/artifacts/report.json", f"/v1/jobs/{jid}/events"]
    for path in gets:
        r = other_client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert tid not in r.text or "not found" in r.text
        assert client.get(path).status_code == 200, path  # while the owner sees it
    assert other_client.post(f"/v1/jobs/{jid}/cancel").status_code == 404
    assert other_client.delete(f"/v1/teachers/{tid}").status_code == 404
    assert other_client.delete(f"/v1/datasets/{did}").status_code == 404
    assert tid not in [t["id"] for t in other_client.get("/v1/teachers").json()["items"]]
    assert did not in [d["id"] for d in other_client.get("/v1/datasets").json()["items"]]
    assert jid not in [j["id"] for j in other_client.get("/v1/jobs").json()["items"]]
    # a job spec naming another tenant's objects is refused like an unknown id
    r = other_client.post("/v1/jobs", json={"kind": "representation", "teacher_id": tid, "dataset": "digits",
                                            "layer": "0", "n_components": 2})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "teacher_id"]
    # the owner's objects survived the other tenant's deletes
    assert client.get(f"/v1/teachers/{tid}").status_code == 200
    assert client.get(f"/v1/datasets/{did}").status_code == 200


def test_idempotency_keys_are_per_tenant(client, other_client, teacher):
    spec = {"kind": "representation", "teacher_id": teacher["id"], "dataset": "digits", "layer": "0",
            "n_components": 2, "solver": {"max_iter": 3}}
    a = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "shared-key"})
    assert a.status_code == 201
    b = other_client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "shared-key"})
    assert b.status_code == 422  # the other tenant cannot see the teacher, and gets no job of ours
    wait_until(client, f"/v1/jobs/{a.json()['id']}", "state", ("succeeded", "failed", "cancelled"))


def test_delete_dataset(client, own_dataset):
    r = client.delete(f"/v1/datasets/{own_dataset['id']}")
    assert r.status_code == 204
    assert client.get(f"/v1/datasets/{own_dataset['id']}").status_code == 404
    assert client.delete("/v1/datasets/digits").status_code == 409
