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
        # the answer is an error and nothing else: none of the owner's record leaks into it
        assert set(r.json()) == {"detail"}, (path, r.text)
        for secret in (teacher["sha256"], own_dataset["sha256"], "mlp.pt2", "mine.npz", "acme"):
            assert secret not in r.text, (path, secret, r.text)
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


def test_idempotency_keys_are_per_tenant(client, other_client, teacher, teacher_file):
    """The same key used by two tenants names two jobs: neither tenant gets the other's job, and
    neither gets a 409 for a spec the other sent."""
    from tests.e2e._helpers import upload_teacher

    theirs = upload_teacher(other_client, teacher_file)
    assert theirs.status_code in (200, 201), theirs.text
    their_teacher = wait_until(other_client, f"/v1/teachers/{theirs.json()['id']}", "status", ("ready", "failed"))
    assert their_teacher["status"] == "ready" and their_teacher["id"] != teacher["id"]
    spec = {"kind": "representation", "dataset": "digits", "layer": "0", "n_components": 2, "solver": {"max_iter": 3}}
    key = {"Idempotency-Key": "shared-key"}
    a = client.post("/v1/jobs", json={**spec, "teacher_id": teacher["id"]}, headers=key)
    assert a.status_code == 201, a.text
    b = other_client.post("/v1/jobs", json={**spec, "teacher_id": their_teacher["id"]}, headers=key)
    assert b.status_code == 201, b.text  # a new job of theirs: not ours, and no 409 for our spec
    assert b.json()["id"] != a.json()["id"]
    # each tenant's repeat returns its own job
    again_a = client.post("/v1/jobs", json={**spec, "teacher_id": teacher["id"]}, headers=key)
    again_b = other_client.post("/v1/jobs", json={**spec, "teacher_id": their_teacher["id"]}, headers=key)
    assert (again_a.status_code, again_a.json()["id"]) == (200, a.json()["id"])
    assert (again_b.status_code, again_b.json()["id"]) == (200, b.json()["id"])
    for c, job in ((client, a.json()), (other_client, b.json())):
        wait_until(c, f"/v1/jobs/{job['id']}", "state", ("succeeded", "failed", "cancelled"))


def test_delete_dataset(client, own_dataset):
    r = client.delete(f"/v1/datasets/{own_dataset['id']}")
    assert r.status_code == 204
    assert client.get(f"/v1/datasets/{own_dataset['id']}").status_code == 404
    assert client.delete("/v1/datasets/digits").status_code == 409
