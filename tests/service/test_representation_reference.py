"""A distillation job's `representation_job_id` must name a representation job: the 422 says what
the named job is, instead of "not found" for a job the user can see."""
from __future__ import annotations

from storage.db import session_scope
from storage.models import Dataset, Job
from tests.service._app import key_for, make_client, ready_teacher


def test_a_distillation_job_named_as_representation_is_called_what_it_is(tmp_path):
    client, settings = make_client(tmp_path)
    with client:
        h = key_for(settings, "acme")
        ready_teacher(settings, "acme")
        with session_scope(settings.resolved_database_url) as db:
            db.add(Dataset(id="digits", tenant=None, name="digits", builtin=True, status="ready", input_shape=[64],
                           n_train=1000, has_labels=True))
            db.add(Job(id="job_distilled", tenant="acme", kind="distillation", state="succeeded",
                       spec={"layer": "0"}, teacher_id="tch_ready"))
        spec = {"kind": "distillation", "teacher_id": "tch_ready", "dataset": "digits"}
        r = client.post("/v1/jobs", headers=h, json={**spec, "representation_job_id": "job_distilled"})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "representation_job_id"]
        assert "'job_distilled' is a distillation job, not a representation job" in detail["msg"]
        # another tenant's job, or none, is still just not found
        other = key_for(settings, "globex")
        ready_teacher(settings, "globex", "tch_other")
        r = client.post("/v1/jobs", headers=other, json={**spec, "teacher_id": "tch_other",
                                                          "representation_job_id": "job_distilled"})
        assert r.status_code == 422 and "not found" in r.json()["detail"][0]["msg"]
