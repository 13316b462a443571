"""Each bad input gets its status and a message that says what is wrong."""
from __future__ import annotations

import io
import pickle
import socket

import numpy as np
import pytest

from tests.e2e._helpers import upload_teacher, wait_until

pytestmark = pytest.mark.e2e


def _detail_msg(r) -> str:
    detail = r.json()["detail"]
    return detail if isinstance(detail, str) else " ".join(d["msg"] for d in detail)


def _loc(r) -> list:
    return r.json()["detail"][0]["loc"]


def _rep(teacher_id: str, **kw) -> dict:
    spec = {"kind": "representation", "teacher_id": teacher_id, "dataset": "digits", "layer": "0", "n_components": 4}
    spec.update(kw)
    return spec


def test_wrong_format(client, tmp_path):
    path = tmp_path / "model.pt2"  # the name says pt2, the content is not
    path.write_bytes(b"definitely not a network" * 100)
    r = upload_teacher(client, path)
    assert r.status_code == 422 and _loc(r) == ["body", "file"]
    assert "unrecognized teacher format" in _detail_msg(r)


def test_pickle_is_refused_unread(client, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))
    r = upload_teacher(client, path)
    assert r.status_code == 422 and "pickle" in _detail_msg(r)


def test_weights_without_manifest(client, tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"0.weight": torch.zeros(2, 2)}, str(path))
    r = upload_teacher(client, path)
    assert r.status_code == 422 and _loc(r) == ["body", "manifest"]
    r = upload_teacher(client, path, manifest="{not json")
    assert r.status_code == 422 and "not valid JSON" in _detail_msg(r)


def test_oversized_file_by_content_length(stack, client, tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"\0" * (6 * 1024 * 1024))
    r = upload_teacher(client, path)
    assert r.status_code == 413 and "limit" in _detail_msg(r)
    assert not any((stack.data_dir / "blobs" / "tmp").iterdir())


def test_oversized_file_streamed_without_length(stack, client):
    boundary = "bregkdboundary"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(6):
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/v1/teachers", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413
    assert not any((stack.data_dir / "blobs" / "tmp").iterdir())


def test_broken_off_upload_leaves_nothing(stack, client):
    key = client.headers["Authorization"]
    boundary = "cut"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n").encode()
    request = (f"POST /v1/teachers HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {key}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(head) + 3_000_000}\r\n\r\n").encode()
    before = {p.name for p in (stack.data_dir / "blobs").rglob("*") if p.is_file()}
    with socket.create_connection(("127.0.0.1", stack.api_port)) as s:
        s.sendall(request + head + b"\1" * 1_000_000)
    import time

    deadline = time.monotonic() + 10
    while any((stack.data_dir / "blobs" / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any((stack.data_dir / "blobs" / "tmp").iterdir())
    after = {p.name for p in (stack.data_dir / "blobs").rglob("*") if p.is_file()}
    assert after == before


def test_unknown_layer(client, teacher):
    r = client.post("/v1/jobs", json=_rep(teacher["id"], layer="7"))
    assert r.status_code == 422 and _loc(r) == ["body", "layer"]
    assert "does not exist" in _detail_msg(r) and "0" in _detail_msg(r)


def test_non_monotone_layer(client, tmp_path):
    from tests.e2e._teachers import gelu_teacher, save_pt2

    created = upload_teacher(client, save_pt2(gelu_teacher(), tmp_path / "gelu.pt2"))
    assert created.status_code == 201, created.text
    t = wait_until(client, f"/v1/teachers/{created.json()['id']}", "status", ("ready", "failed"))
    assert t["status"] == "ready", t
    layer0 = {layer["path"]: layer for layer in client.get(f"/v1/teachers/{t['id']}/layers").json()["items"]}["0"]
    assert not layer0["tappable"]
    r = client.post("/v1/jobs", json=_rep(t["id"], layer="0"))
    assert r.status_code == 422 and _loc(r) == ["body", "layer"]
    assert "cannot be tapped" in _detail_msg(r) and "gelu" in _detail_msg(r).lower()


def test_k_too_large(client, teacher):
    r = client.post("/v1/jobs", json=_rep(teacher["id"], n_components=32))
    assert r.status_code == 422 and _loc(r) == ["body", "n_components"]
    assert "too large" in _detail_msg(r) and "31" in _detail_msg(r)


def test_dataset_shape_mismatch(client, teacher):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, x_train=rng.normal(size=(40, 32)).astype(np.float32), y_train=rng.integers(0, 10, 40),
             x_test=rng.normal(size=(10, 32)).astype(np.float32), y_test=rng.integers(0, 10, 10))
    r = client.post("/v1/datasets", files={"file": ("small.npz", buf.getvalue())})
    assert r.status_code == 201, r.text
    ds = wait_until(client, f"/v1/datasets/{r.json()['id']}", "status", ("ready", "failed"))
    assert ds["status"] == "ready" and ds["input_shape"] == [32], ds
    r = client.post("/v1/jobs", json=_rep(teacher["id"], dataset=ds["id"]))
    assert r.status_code == 422 and _loc(r) == ["body", "dataset"]
    assert "[32]" in _detail_msg(r) and "[64]" in _detail_msg(r)


def test_unknown_ids(client, teacher):
    for path in ("/v1/teachers/tch_nope", "/v1/teachers/tch_nope/layers", "/v1/datasets/ds_nope",
                 "/v1/jobs/job_nope", "/v1/jobs/job_nope/artifacts", "/v1/jobs/job_nope/events"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "not found" in r.json()["detail"]
    assert client.post("/v1/jobs/job_nope/cancel").status_code == 404
    assert client.delete("/v1/teachers/tch_nope").status_code == 404
    r = client.post("/v1/jobs", json=_rep("tch_nope"))
    assert r.status_code == 422 and _loc(r) == ["body", "teacher_id"] and "not found" in _detail_msg(r)
    r = client.post("/v1/jobs", json=_rep(teacher["id"], dataset="imagenet"))
    assert r.status_code == 422 and _loc(r) == ["body", "dataset"]
    r = client.post("/v1/jobs", json={"kind": "distillation", "teacher_id": teacher["id"], "dataset": "digits",
                                      "representation_job_id": "job_nope"})
    assert r.status_code == 422 and _loc(r) == ["body", "representation_job_id"]


def test_malformed_json(client):
    r = client.post("/v1/jobs", content=b'{"kind": "representation", ', headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "json_invalid"
    r = client.post("/v1/jobs", json={"kind": "compress", "teacher_id": "x", "dataset": "digits"})
    assert r.status_code == 422 and "kind" in str(r.json()["detail"])
