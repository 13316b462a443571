"""The API in-process (no Redis, no worker): auth, uploads and their limits, tenant isolation and
the full validation of job specs against the records."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from sqlalchemy import select

from storage.db import session_scope
from storage.models import Dataset, Job, Teacher
from tests.service._app import key_for, make_client, ready_teacher


@pytest.fixture()
def app(tmp_path):
    client, settings = make_client(tmp_path, max_upload_bytes=64 * 1024)
    with client:
        yield client, settings


def _pt2_bytes() -> bytes:
    program = torch.export.export(torch.nn.Linear(4, 2), (torch.randn(2, 4),))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def test_401_without_or_with_a_bad_key(app):
    client, _ = app
    assert client.get("/v1/teachers").status_code == 401
    r = client.get("/v1/teachers", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_upload_teacher_sniffs_and_dedupes(app, tmp_path):
    client, settings = app
    h = key_for(settings, "acme")
    data = _pt2_bytes()
    r = client.post("/v1/teachers", headers=h, files={"file": ("model.safetensors", data)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "pt2" and body["status"] == "inspecting" and body["size"] == len(data)
    again = client.post("/v1/teachers", headers=h, files={"file": ("other-name", data)})
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    blobs = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1 and blobs[0].read_bytes() == data
    # another tenant uploading the same bytes gets its own record, the blob is still stored once
    other = client.post("/v1/teachers", headers=key_for(settings, "globex"), files={"file": ("m", data)})
    assert other.status_code == 201 and other.json()["id"] != body["id"]
    assert len([p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]) == 1
    # deleting one record keeps the blob the other still uses
    assert client.delete(f"/v1/teachers/{body['id']}", headers=h).status_code == 204
    assert len([p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]) == 1


def test_upload_rejections(app, tmp_path):
    client, settings = app
    h = key_for(settings, "acme")
    r = client.post("/v1/teachers", headers=h, files={"file": ("m.pt", pickle.dumps({"w": 1}))})
    assert r.status_code == 422 and "pickle" in r.json()["detail"][0]["msg"]
    r = client.post("/v1/teachers", headers=h, files={"file": ("m.pt2", b"\x00" * 100)})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file"]
    r = client.post("/v1/teachers", headers=h, files={"file": ("m.pt2", b"\x00" * (100 * 1024))})
    assert r.status_code == 413
    r = client.post("/v1/teachers", headers=h, data={"name": "x"}, files={"other": ("m", b"abc")})
    assert r.status_code == 422 and "no 'file' part" in r.json()["detail"][0]["msg"]
    r = client.post("/v1/teachers", headers=h, content=b"raw", )
    assert r.status_code == 415
    assert not any((tmp_path / "blobs" / "tmp").iterdir())
    with session_scope(settings.resolved_database_url) as db:
        assert db.execute(select(Teacher)).first() is None


def test_413_on_declared_length_before_reading(app):
    client, settings = app
    h = key_for(settings, "acme")
    h = {**h, "Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(10 * 1024 * 1024)}

    def never_sent():
        raise AssertionError("the body must not be read")
        yield b""  # pragma: no cover

    r = client.post("/v1/teachers", headers=h, content=never_sent())
    assert r.status_code == 413


def test_dataset_upload_and_builtins_visible_to_all(app):
    client, settings = app
    h = key_for(settings, "acme")
    with session_scope(settings.resolved_database_url) as db:
        db.add(Dataset(id="digits", tenant=None, name="digits", builtin=True, status="ready", input_shape=[64], n_train=100))
    buf = io.BytesIO()
    np.savez(buf, x_train=np.zeros((5, 64), np.float32))
    r = client.post("/v1/datasets", headers=h, files={"file": ("d.npz", buf.getvalue())})
    assert r.status_code == 201 and r.json()["format"] == "npz"
    ids = [d["id"] for d in client.get("/v1/datasets", headers=h).json()["items"]]
    assert ids[0] == "digits" and r.json()["id"] in ids
    other = key_for(settings, "globex")
    assert [d["id"] for d in client.get("/v1/datasets", headers=other).json()["items"]] == ["digits"]
    assert client.get(f"/v1/datasets/{r.json()['id']}", headers=other).status_code == 404


def _spec(**kw):
    spec = {"kind": "representation", "teacher_id": "tch_ready", "dataset": "digits", "layer": "0", "n_components": 4}
    spec.update(kw)
    return spec


@pytest.fixture()
def with_records(app):
    client, settings = app
    h = key_for(settings, "acme")
    ready_teacher(settings, "acme")
    with session_scope(settings.resolved_database_url) as db:
        db.add(Dataset(id="digits", tenant=None, name="digits", builtin=True, status="ready", input_shape=[64],
                       n_train=1000, has_labels=True))
        db.add(Dataset(id="ds_small", tenant="acme", name="s", status="ready", input_shape=[32], n_train=10))
        db.add(Teacher(id="tch_busy", tenant="acme", format="pt2", sha256="cd" * 32, size=1, status="inspecting"))
    return client, settings, h


@pytest.mark.parametrize("change, field, words", [
    ({"layer": "9"}, "layer", "does not exist"),
    ({"layer": "2"}, "layer", "not monotone"),
    ({"n_components": 32}, "n_components", "too large"),
    ({"dataset": "ds_small"}, "dataset", "[32]"),
    ({"dataset": "nope"}, "dataset", "not found"),
    ({"teacher_id": "tch_nope"}, "teacher_id", "not found"),
    ({"teacher_id": "tch_busy"}, "teacher_id", "still being inspected"),
    ({"layer": "0", "transfer": "softmax"}, "transfer", "output layer"),
    ({"layer": "0", "transfer": "gelu"}, "transfer", "not monotone"),
    ({"layer": "0", "transfer": "tanh"}, "transfer", "use auto, listed or leaky_relu"),
])
def test_job_spec_validated_against_records(with_records, change, field, words):
    client, settings, h = with_records
    r = client.post("/v1/jobs", headers=h, json=_spec(**change))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", field]
    assert words in r.json()["detail"][0]["msg"]
    with session_scope(settings.resolved_database_url) as db:
        assert db.execute(select(Job)).first() is None  # nothing queued


def test_valid_job_is_queued_once_per_idempotency_key(with_records):
    client, settings, h = with_records
    first = client.post("/v1/jobs", headers={**h, "Idempotency-Key": "k1"}, json=_spec(transfer="leaky_relu"))
    assert first.status_code == 201 and first.json()["state"] == "queued"
    assert first.json()["spec"]["transfer"] == "listed"  # the listed transfer's name, normalized
    again = client.post("/v1/jobs", headers={**h, "Idempotency-Key": "k1"}, json=_spec(transfer="leaky_relu"))
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    # the stored (normalized) spec is the same request too
    assert client.post("/v1/jobs", headers={**h, "Idempotency-Key": "k1"}, json=first.json()["spec"]).status_code == 200
    # the same key with another spec is refused, naming the job; nothing new is queued
    clash = client.post("/v1/jobs", headers={**h, "Idempotency-Key": "k1"}, json=_spec(n_components=5))
    assert clash.status_code == 409 and first.json()["id"] in clash.json()["detail"]
    assert "new key" in clash.json()["detail"]
    other = client.post("/v1/jobs", headers={**h, "Idempotency-Key": "k2"}, json=_spec())
    assert other.json()["id"] != first.json()["id"]
    with session_scope(settings.resolved_database_url) as db:
        job = db.get(Job, first.json()["id"])
        assert job.queue == "cpu" and job.sent_at is not None
    gpu = client.post("/v1/jobs", headers=h, json=_spec(device="cuda"))
    with session_scope(settings.resolved_database_url) as db:
        assert db.get(Job, gpu.json()["id"]).queue == "gpu"
    # cancel of a queued job is immediate; a second cancel is a conflict
    r = client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=h).status_code == 409
    assert client.get(f"/v1/jobs/{first.json()['id']}", headers=key_for(settings, "globex")).status_code == 404


def test_openapi_is_complete(app):
    client, _ = app
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/v1/teachers", "/v1/teachers/{teacher_id}/layers", "/v1/datasets", "/v1/jobs",
                 "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/artifacts/{name}",
                 "/healthz", "/readyz", "/metrics"):
        assert path in paths, path
    assert "multipart/form-data" in paths["/v1/teachers"]["post"]["requestBody"]["content"]
    assert schema["components"]["schemas"]["JobOut"].get("examples")


def test_the_api_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys; from service.app import create_app; from storage.config import Settings; "
            "import tempfile; create_app(Settings(data_dir=tempfile.mkdtemp(), redis_url='memory://')); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_list_filters_are_validated(with_records):
    client, _, h = with_records
    client.post("/v1/jobs", headers=h, json=_spec())
    assert client.get("/v1/jobs", headers=h, params={"state": "queued"}).json()["total"] == 1
    assert client.get("/v1/jobs", headers=h, params={"state": "running"}).json()["total"] == 0
    r = client.get("/v1/jobs", headers=h, params={"state": "sleeping"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "state"]
    assert client.get("/v1/jobs", headers=h, params={"limit": 0}).status_code == 422
    assert client.get("/v1/teachers", headers=h, params={"status": "ready"}).json()["total"] == 1


def test_malformed_multipart_is_400(app, tmp_path):
    client, settings = app
    h = {**key_for(settings, "acme"), "Content-Type": "multipart/form-data; boundary=abc"}
    r = client.post("/v1/teachers", headers=h, content=b"--abc\r\nthis is not a header line\r\n\r\n\x00\x01--nope")
    assert r.status_code == 400, r.text
    assert "malformed" in r.json()["detail"] and "multipart/form-data" in r.json()["detail"]
    assert not any((tmp_path / "blobs" / "tmp").iterdir())
