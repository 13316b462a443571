"""The whole flow on digits: upload a .pt2 teacher, list its layers, fit a representation,
distill a student through it, download the student program, run it, and check its accuracy."""
from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch

from tests.e2e._helpers import upload_teacher, wait_until

pytestmark = pytest.mark.e2e


def test_health_and_readiness(stack, client):
    import httpx

    assert httpx.get(f"{stack.api_url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{stack.api_url}/readyz").json()
    assert ready["ready"] and ready["redis"] and ready["database"] and ready["workers"]


def test_without_a_key_is_401(stack):
    import httpx

    r = httpx.get(f"{stack.api_url}/v1/jobs")
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    r = httpx.get(f"{stack.api_url}/v1/jobs", headers={"Authorization": "Bearer bkd_key_nope_nope"})
    assert r.status_code == 401


def test_teacher_upload_is_inspected(client, teacher, teacher_file):
    assert teacher["status"] == "ready", teacher
    assert teacher["format"] == "pt2"
    assert teacher["sha256"] == hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    assert teacher["size"] == teacher_file.stat().st_size
    assert teacher["parameter_count"] == 64 * 32 + 32 + 32 * 10 + 10
    assert teacher["input_shape"] == [64]
    layers = client.get(f"/v1/teachers/{teacher['id']}/layers").json()["items"]
    by_path = {layer["path"]: layer for layer in layers}
    assert by_path["0"]["tappable"] and by_path["0"]["d"] == 32 and by_path["0"]["transfer"] == "leaky_relu"
    assert by_path["2"]["d"] == 10


def test_same_file_twice_is_stored_once(stack, client, teacher, teacher_file):
    again = upload_teacher(client, teacher_file, name="renamed.pt2")
    assert again.status_code == 200 and again.json()["id"] == teacher["id"]
    blob = stack.data_dir / "blobs" / teacher["sha256"][:2] / teacher["sha256"]
    assert blob.is_file()
    assert not any((stack.data_dir / "blobs" / "tmp").iterdir())
    listed = client.get("/v1/teachers").json()
    assert [t["id"] for t in listed["items"]].count(teacher["id"]) == 1


def test_builtin_dataset_listed(client):
    items = {d["id"]: d for d in client.get("/v1/datasets").json()["items"]}
    assert items["digits"]["builtin"] and items["digits"]["input_shape"] == [64]
    assert client.get("/v1/datasets/digits").json()["n_train"] > 0


def test_representation_job(client, representation_job):
    job = representation_job
    assert job["state"] == "succeeded", job
    assert job["progress"]["fraction"] == 1.0 and job["attempts"] == 1
    m = job["metrics"]
    assert m["n_components"] == 6 and m["d"] == 32
    assert m["divergence"] <= m["pca_divergence"] * (1 + 1e-6)
    names = {a["name"] for a in client.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"]}
    assert {"layer.safetensors", "layer.json", "coefficients.safetensors", "report.json"} <= names
    report = client.get(f"/v1/jobs/{job['id']}/artifacts/report.json").json()
    assert report["k"] == list(range(1, 7)) and len(report["bregman_divergence"]) == 6


def test_artifact_download_has_etag_length_and_range(client, representation_job):
    jid = representation_job["id"]
    listing = {a["name"]: a for a in client.get(f"/v1/jobs/{jid}/artifacts").json()["items"]}
    art = listing["layer.safetensors"]
    r = client.get(f"/v1/jobs/{jid}/artifacts/layer.safetensors")
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == art["size"] == len(r.content)
    assert r.headers["etag"] == f'"{art["sha256"]}"'
    assert hashlib.sha256(r.content).hexdigest() == art["sha256"]
    part = client.get(f"/v1/jobs/{jid}/artifacts/layer.safetensors", headers={"Range": "bytes=8-23"})
    assert part.status_code == 206 and part.content == r.content[8:24]
    cached = client.get(f"/v1/jobs/{jid}/artifacts/layer.safetensors", headers={"If-None-Match": r.headers["etag"]})
    assert cached.status_code == 304
    assert client.get(f"/v1/jobs/{jid}/artifacts/nope.bin").status_code == 404


def test_distillation_through_the_representation(client, teacher, representation_job):
    r = client.post("/v1/jobs", json={
        "kind": "distillation", "teacher_id": teacher["id"], "dataset": "digits",
        "representation_job_id": representation_job["id"], "student": {"arch": "mlp", "hidden": [32]},
        "methods": ["bregman", "labels"], "budget": {"epochs": 15, "time_limit_s": 300}, "onnx": False,
    }, headers={"Idempotency-Key": "flow-distill-1"})
    assert r.status_code == 201, r.text
    same = client.post("/v1/jobs", json=r.json()["spec"], headers={"Idempotency-Key": "flow-distill-1"})
    assert same.status_code == 200 and same.json()["id"] == r.json()["id"]
    job = wait_until(client, f"/v1/jobs/{r.json()['id']}", "state", ("succeeded", "failed", "cancelled"), timeout=180)
    assert job["state"] == "succeeded", job
    reported = job["metrics"]["test_accuracy"]
    assert job["metrics"]["k"] == 6 and job["metrics"]["layer"] == "0"

    names = {a["name"] for a in client.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"]}
    assert {"student.pt2", "student.safetensors", "student.json", "report.json"} <= names
    program = torch.export.load(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/artifacts/student.pt2").content))
    from bregman.datasets import load_builtin

    ds = load_builtin("digits")
    with torch.no_grad():
        pred = program.module()(ds.x_test).argmax(1)
    accuracy = float((pred == ds.y_test).float().mean())
    assert accuracy == pytest.approx(reported, abs=1.5 / len(ds.y_test))
    report = client.get(f"/v1/jobs/{job['id']}/artifacts/report.json").json()
    assert set(report["accuracy"]) >= {"student", "teacher", "labels"}
    # held against the teacher (0.881 here; the student 0.833, labels alone on all 1437 rows 0.925:
    # with every row, k = 6 loses to labels, as the quality benchmark says): a broken method lands
    # far below both bounds
    assert accuracy >= report["accuracy"]["teacher"] - 0.08, report["accuracy"]
    assert job["metrics"]["test_agreement"] >= 0.8, job["metrics"]
    manifest = json.loads(client.get(f"/v1/jobs/{job['id']}/artifacts/student.json").content)
    assert manifest["method"] == "bregman" and manifest["k"] == 6


def test_auto_distillation_job_reports_its_choice(client, teacher):
    """``methods: ["auto"]`` on the real stack: each candidate shows in the progress, the table in
    the final metrics and the report, and the returned student is the winner's."""
    spec = {"kind": "distillation", "teacher_id": teacher["id"], "dataset": "digits", "layer": "0",
            "student": {"arch": "mlp", "hidden": [16]}, "methods": ["auto"],
            "budget": {"epochs": 40, "max_train_rows": 200, "time_limit_s": 900}, "onnx": False,
            "options": {"lr": 0.01}}
    r = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "flow-auto-1"})
    assert r.status_code == 201, r.text
    phases = []
    with client.stream("GET", f"/v1/jobs/{r.json()['id']}/events", timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                phase = (json.loads(line[6:]).get("progress") or {}).get("phase")
                if phase and phase not in phases:
                    phases.append(phase)
    job = client.get(f"/v1/jobs/{r.json()['id']}").json()
    assert job["state"] == "succeeded", job
    table = job["metrics"]["selection"]
    names = [row["candidate"] for row in table]
    assert {"hint", "kd", "labels"} <= set(names) and any(n.startswith("bregman k=") for n in names), names
    (winner,) = [row for row in table if row["chosen"]]
    best = max(row["validation_score"] for row in table)  # or the first, unless beaten by the margin
    margin = job["metrics"]["selection_margin"]
    if best > table[0]["validation_score"] + margin:
        assert winner["validation_score"] == best
    else:
        assert winner is table[0]
    assert job["metrics"]["method"] == winner["method"] == job["metrics"]["selected_method"]
    assert all(isinstance(row["test_accuracy"], float) for row in table)
    # the progress names the candidates as they train ("auto:<candidate>:<phase>")
    shown = {p.split(":")[1] for p in phases if p.startswith("auto:") and p.count(":") == 2}
    assert shown & (set(names) | {"bregman k=default"}), phases
    report = client.get(f"/v1/jobs/{job['id']}/artifacts/report.json").json()
    assert report["selection"] == table and report["methods"] == ["auto"]
    manifest = json.loads(client.get(f"/v1/jobs/{job['id']}/artifacts/student.json").content)
    assert manifest["method"] == winner["method"]
    assert job["metrics"]["selection_validation_rows"] == 50 and job["metrics"]["selection_training_rows"] == 150


def test_job_listing_filters_and_pages(client, representation_job):
    listed = client.get("/v1/jobs", params={"kind": "representation", "state": "succeeded"}).json()
    assert representation_job["id"] in [j["id"] for j in listed["items"]]
    assert all(j["kind"] == "representation" and j["state"] == "succeeded" for j in listed["items"])
    page = client.get("/v1/jobs", params={"limit": 1, "offset": 0}).json()
    assert len(page["items"]) == 1 and page["total"] >= 1 and page["limit"] == 1


def test_events_stream_ends_with_the_final_state(client, representation_job):
    with client.stream("GET", f"/v1/jobs/{representation_job['id']}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [block for block in text.split("\n\n") if block.startswith("event:")]
    assert events[-1].startswith("event: end")
    final = json.loads(events[-1].split("data: ", 1)[1])
    assert final["state"] == "succeeded"


def test_metrics_endpoint(stack, client, representation_job):
    import httpx

    text = httpx.get(f"{stack.api_url}/metrics").text
    assert 'bregkd_jobs{kind="representation",state="succeeded"}' in text
    assert "bregkd_http_requests_total" in text
    assert 'bregkd_queue_length{queue="cpu"}' in text
    assert "bregkd_job_duration_seconds_bucket" in text
