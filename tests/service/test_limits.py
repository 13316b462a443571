"""The API's request limits in-process (no Redis, no worker): body size, closed and bounded
specs, echo-free 422s, pagination bounds, the student budget, 500s with an id, 507 on a full
disk, uploads that survive an unreachable queue, and the temp-file sweep at start."""
from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import re
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api_schemas.param_count import parameter_count
from service.app import create_app
from service.errors import ECHO_CHARS, STORAGE_FULL, storage_full
from service.serialize import public_error
from storage.config import Settings
from storage.db import session_scope
from storage.models import Dataset, Job
from tests.service._app import key_for, make_client, ready_teacher

MAX_JSON = 8 * 1024


@pytest.fixture()
def app(tmp_path):
    client, settings = make_client(tmp_path, max_json_bytes=MAX_JSON, max_upload_bytes=64 * 1024,
                                   max_student_parameters=100_000)
    with client:
        h = key_for(settings, "acme")
        ready_teacher(settings, "acme")
        with session_scope(settings.resolved_database_url) as db:
            db.add(Dataset(id="digits", tenant=None, name="digits", builtin=True, status="ready", input_shape=[64],
                           n_train=1000, num_classes=10, has_labels=True))
        yield client, settings, h


def _distill(**kw) -> dict:
    spec = {"kind": "distillation", "teacher_id": "tch_ready", "dataset": "digits", "layer": "0", "n_components": 4,
            "methods": ["bregman"]}
    spec.update(kw)
    return spec


def _no_jobs(settings) -> bool:
    with session_scope(settings.resolved_database_url) as db:
        return db.execute(select(Job)).first() is None


# -- body size ---------------------------------------------------------------------------------
def test_declared_body_over_the_limit_is_413_before_a_byte_is_read(app):
    client, settings, h = app

    def never_sent():
        raise AssertionError("the body must not be read")
        yield b""  # pragma: no cover

    r = client.post("/v1/jobs", headers={**h, "Content-Type": "application/json", "Content-Length": str(MAX_JSON + 1)},
                    content=never_sent())
    assert r.status_code == 413
    assert str(MAX_JSON) in r.json()["detail"] and "BREGKD_MAX_JSON_BYTES" in r.json()["detail"]
    assert _no_jobs(settings)


def test_chunked_body_over_the_limit_is_413(app):
    client, settings, h = app
    sent = []

    def chunks():  # no Content-Length: httpx sends it chunked
        for _ in range(50):
            sent.append(1)
            yield b'{"kind": "distillation", "student": {"arch": "mlp", "x": "' + b"a" * 1024

    r = client.post("/v1/jobs", headers={**h, "Content-Type": "application/json"}, content=chunks())
    assert r.status_code == 413 and "BREGKD_MAX_JSON_BYTES" in r.json()["detail"]
    assert _no_jobs(settings)


def test_a_multipart_body_to_a_json_route_is_held_to_the_json_limit(app):
    client, settings, h = app
    r = client.post("/v1/jobs", headers=h, files={"file": ("x", b"\0" * (4 * MAX_JSON))})
    assert r.status_code == 413 and "BREGKD_MAX_JSON_BYTES" in r.json()["detail"]
    # while the upload routes stream their own (larger) multipart bodies
    r = client.post("/v1/datasets", headers=h, files={"file": ("x", b"\0" * (4 * MAX_JSON))})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file"]


def test_body_under_the_limit_still_reaches_the_route(app):
    client, settings, h = app
    r = client.post("/v1/jobs", headers=h, json=_distill(student={"arch": "mlp", "hidden": [16]}))
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["student"] == {"arch": "mlp", "hidden": [16]}  # only what was given is stored


# -- closed, bounded specs and short 422s -------------------------------------------------------
def test_extra_student_keys_are_refused_and_nothing_is_stored(app):
    client, settings, h = app
    r = client.post("/v1/jobs", headers=h, json=_distill(student={"arch": "mlp", "hidden": [8], "junk": "z" * 4000}))
    assert r.status_code == 422
    item = r.json()["detail"][0]
    assert item["loc"][-1] == "junk" and item["type"] == "extra_forbidden"
    assert len(r.content) < 1000  # the 4000 characters do not come back
    assert _no_jobs(settings)


@pytest.mark.parametrize("student, words", [
    ({"arch": "cnn", "depth": 20}, "takes no argument(s) ['depth']"),
    ({"arch": "mlp", "hidden": 32}, "list of widths"),
    ({"arch": "mlp", "hidden": [8, 8], "activation": ["relu"]}, "one per layer"),
    ({"arch": "mlp", "hidden": [8], "args": {"hidden": [4]}}, "both inline and under 'args'"),
    ({"arch": "mlp", "hidden": [70000]}, "less than or equal to 65536"),
    ({"arch": "mlp", "hidden": [1] * 65}, "at most 64"),
    ({"arch": "resnet", "depth": 5000}, "less than or equal to 1000"),
    ({"arch": "transformer"}, "unknown student architecture"),
])
def test_student_spec_is_closed_and_bounded(app, student, words):
    client, settings, h = app
    r = client.post("/v1/jobs", headers=h, json=_distill(student=student))
    assert r.status_code == 422, r.text
    assert words in " ".join(d["msg"] for d in r.json()["detail"])
    assert _no_jobs(settings)


def test_a_long_field_is_not_echoed(app):
    client, _, h = app
    huge = "t" * (MAX_JSON - 500)
    r = client.post("/v1/jobs", headers=h, json=_distill(teacher_id=huge))
    assert r.status_code == 422
    item = r.json()["detail"][0]
    assert item["loc"] == ["body", "distillation", "teacher_id"] and "at most 64" in item["msg"]
    assert len(item["input"]) <= ECHO_CHARS and huge not in r.text
    assert len(r.content) < 600


@pytest.mark.parametrize("seed, status", [(2**32 - 1, 201), (2**32, 422), (-1, 422)])
def test_seed_is_a_32_bit_number(app, seed, status):
    client, _, h = app
    r = client.post("/v1/jobs", headers=h, json=_distill(seed=seed))
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["detail"][0]["loc"][-1] == "seed"


def test_non_finite_numbers_are_refused(app):
    client, _, h = app
    body = '{"kind": "distillation", "teacher_id": "tch_ready", "dataset": "digits", "layer": "0", "options": {"lr": NaN}}'
    r = client.post("/v1/jobs", headers={**h, "Content-Type": "application/json"}, content=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "lr"


# -- pagination --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/teachers", "/v1/datasets"])
def test_pagination_bounds_are_422_never_500(app, path):
    client, _, h = app
    for params in ({"offset": 2**63}, {"offset": 2**64 + 7}, {"offset": -1}, {"limit": 501}, {"limit": 2**63}):
        r = client.get(path, headers=h, params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["detail"][0]["loc"][0] == "query"
    r = client.get(path, headers=h, params={"offset": 10**9, "limit": 500})
    assert r.status_code == 200 and r.json()["items"] == [] and r.json()["offset"] == 10**9


# -- the student budget ------------------------------------------------------------------------
def test_student_over_the_parameter_budget_names_count_and_limit(app):
    client, settings, h = app
    hidden = [512, 256]
    r = client.post("/v1/jobs", headers=h, json=_distill(student={"arch": "mlp", "hidden": hidden}))
    assert r.status_code == 422
    item = r.json()["detail"][0]
    expected = parameter_count("mlp", {"in_features": 64, "hidden": hidden, "num_classes": 4})  # k = 4 outputs
    assert item["loc"] == ["body", "student"]
    assert f"{expected:,}" in item["msg"] and "100,000" in item["msg"] and "BREGKD_MAX_STUDENT_PARAMETERS" in item["msg"]
    assert _no_jobs(settings)
    # the same student fits a larger budget
    roomy = TestClient(create_app(settings.model_copy(update={"max_student_parameters": expected})))
    assert roomy.post("/v1/jobs", headers=h, json=_distill(student={"arch": "mlp", "hidden": hidden})).status_code == 201


def test_the_widest_method_sets_the_budget(app):
    client, _, h = app
    # labels trains a student with the teacher's 10 outputs; hint one with d = 32 outputs
    spec = _distill(student={"arch": "mlp", "hidden": [1400]}, methods=["bregman", "hint"])
    r = client.post("/v1/jobs", headers=h, json=spec)
    count = parameter_count("mlp", {"in_features": 64, "hidden": [1400], "num_classes": 32})
    assert count > 100_000 > parameter_count("mlp", {"in_features": 64, "hidden": [1400], "num_classes": 4})
    assert r.status_code == 422 and f"{count:,}" in r.json()["detail"][0]["msg"]


def test_image_students_on_flat_inputs_are_refused(app):
    client, _, h = app
    r = client.post("/v1/jobs", headers=h, json=_distill(student={"arch": "resnet8"}))
    assert r.status_code == 422 and "reads images" in r.json()["detail"][0]["msg"]


# -- 500 with an id, 507 -----------------------------------------------------------------------
def test_an_unexpected_error_is_500_with_an_id_and_no_internals(tmp_path, monkeypatch, caplog):
    settings = Settings(data_dir=tmp_path, redis_url="memory://")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        h = key_for(settings, "acme")
        import service.routes.jobs as jobs_route

        def broken(*a, **k):
            raise RuntimeError("secret detail in /work/secret/module.py line 12")

        monkeypatch.setattr(jobs_route, "page", broken)
        with caplog.at_level(logging.ERROR, logger="service.errors"):
            r = client.get("/v1/jobs", headers=h)
    assert r.status_code == 500
    detail = r.json()["detail"]
    match = re.fullmatch(r"internal error (err_[0-9a-f]{12}): .*", detail)
    assert match and "secret" not in r.text and "/work" not in r.text and "Traceback" not in r.text
    assert any(match.group(1) in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_a_full_disk_during_an_upload_is_507_and_leaves_no_temp_file(app, tmp_path, monkeypatch):
    client, settings, h = app
    from storage.blobs import BlobWriter

    real_write = BlobWriter.write

    def write(self, chunk):
        if self.size + len(chunk) > 4096:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, chunk)

    monkeypatch.setattr(BlobWriter, "write", write)
    r = client.post("/v1/datasets", headers=h, files={"file": ("d.npz", b"\x00" * 20000)})
    assert r.status_code == 507 and r.json()["detail"] == STORAGE_FULL and r.headers["retry-after"]
    assert not any((tmp_path / "blobs" / "tmp").iterdir())
    with session_scope(settings.resolved_database_url) as db:
        assert db.execute(select(Dataset).where(Dataset.tenant == "acme")).first() is None


def test_storage_full_is_recognized_through_wrappers():
    from sqlalchemy.exc import OperationalError

    assert storage_full(OSError(errno.ENOSPC, "No space left on device"))
    assert storage_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    import sqlite3

    assert storage_full(OperationalError("INSERT ...", {}, sqlite3.OperationalError("database or disk is full")))
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert storage_full(outer)
    assert not storage_full(OSError(errno.EACCES, "Permission denied"))
    assert not storage_full(ValueError("disk"))


def test_public_error_strips_tracebacks_and_paths():
    text = ('Traceback (most recent call last):\n  File "/work/main/bregman/io.py", line 3, in load\n    x = y\n'
            "ValueError: cannot read /var/bregkd/blobs/ab/abcd: truncated; upload it again with POST /v1/teachers")
    out = public_error(text)
    assert out == "ValueError: cannot read <server path>: truncated; upload it again with POST /v1/teachers"
    assert public_error("k must be below 32") == "k must be below 32"


# -- uploads while the queue is unreachable ----------------------------------------------------
def test_upload_while_the_broker_is_down_is_202_pending(tmp_path):
    # a Redis URL nothing listens on: the record and blob are stored, the message is not sent
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:9/0")
    with TestClient(create_app(settings)) as client:
        h = key_for(settings, "acme")
        buf = io.BytesIO()
        np.savez(buf, x_train=np.zeros((5, 4), np.float32))
        r = client.post("/v1/datasets", headers=h, files={"file": ("d.npz", buf.getvalue())})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "inspecting" and "sent automatically" in body["notice"]
        assert client.get(f"/v1/datasets/{body['id']}", headers=h).json()["notice"] is None
    with session_scope(settings.resolved_database_url) as db:
        d = db.get(Dataset, body["id"])
        assert d.status == "inspecting" and d.inspect_attempts == 0
    assert (tmp_path / "blobs" / d.sha256[:2] / d.sha256).is_file()


# -- the temp-file sweep at start --------------------------------------------------------------
def test_abandoned_temp_uploads_are_swept_at_start_and_live_ones_kept(tmp_path):
    tmp = tmp_path / "blobs" / "tmp"
    tmp.mkdir(parents=True)
    old = time.time() - 2 * 3600
    abandoned, held, fresh, other = (tmp / n for n in ("upload-dead", "upload-live", "upload-new", "keep.txt"))
    for p in (abandoned, held, fresh, other):
        p.write_bytes(b"x" * 10)
    for p in (abandoned, held, other):
        os.utime(p, (old, old))
    fd = os.open(held, os.O_RDONLY)  # another process's upload in progress holds its lock
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        TestClient(create_app(Settings(data_dir=tmp_path, redis_url="memory://")))
        assert not abandoned.exists()
        assert held.exists() and fresh.exists() and other.exists()
    finally:
        os.close(fd)
