"""The image flow on the real stack: a resnet8 teacher as .pt2, a generated uint8 3x32x32 data set
with a scale, a channel-layout representation, a conv student distilled through it with crop/flip
views, and the downloaded student program run against the job's own numbers."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from tests.e2e._helpers import upload_teacher, wait_until

pytestmark = pytest.mark.e2e
N_TRAIN, N_TEST = 240, 60


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Coloured squares and bars (class = shape and place) on noise: uint8 (n, 3, 32, 32)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 80, (n, 3, 32, 32)).astype(np.uint8)
    y = rng.integers(0, 4, n)
    for i, label in enumerate(y):
        r, c = (4, 4) if label < 2 else (16, 16)
        if label % 2 == 0:
            x[i, :, r:r + 12, c:c + 12] = 230
        else:
            x[i, label % 3, r:r + 12, c + 4:c + 8] = 250
    return x, y.astype(np.int64)


@pytest.fixture(scope="module")
def image_teacher(client, tmp_path_factory) -> dict:
    from bregman.models import build_model
    from bregman.training import train_classifier

    x, y = _images(N_TRAIN, 0)
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=4, base_width=4)
    train_classifier(model, torch.from_numpy(x).float() / 255, torch.from_numpy(y), epochs=3, batch_size=32, lr=3e-3)
    program = torch.export.export(model.eval(), (torch.zeros(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    path = tmp_path_factory.mktemp("image-teacher") / "resnet8.pt2"
    torch.export.save(program, str(path))
    created = upload_teacher(client, path)
    assert created.status_code in (200, 201), created.text
    return wait_until(client, f"/v1/teachers/{created.json()['id']}", "status", ("ready", "failed"))


@pytest.fixture(scope="module")
def image_dataset(client) -> dict:
    x, y = _images(N_TRAIN + N_TEST, 1)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, split=(np.arange(len(y)) >= N_TRAIN).astype(np.int64), scale=np.float32(1 / 255))
    r = client.post("/v1/datasets", files={"file": ("shapes.npz", buf.getvalue())})
    assert r.status_code == 201, r.text
    return wait_until(client, f"/v1/datasets/{r.json()['id']}", "status", ("ready", "failed"))


def test_layer_listing_shows_both_layouts(client, image_teacher):
    assert image_teacher["status"] == "ready", image_teacher
    layers = {l["path"]: l for l in client.get(f"/v1/teachers/{image_teacher['id']}/layers").json()["items"]}
    l3 = layers["layer3.0"]
    assert l3["output_shape"] == [16, 8, 8] and l3["d"] == 1024
    assert l3["representation"] == "channels" and l3["layouts"] == {"flat": 1024, "channels": 16}
    assert layers["fc"]["layouts"] == {"flat": 4}


def test_channel_representation_and_distillation_with_views(client, image_teacher, image_dataset):
    assert image_dataset["status"] == "ready" and image_dataset["input_shape"] == [3, 32, 32], image_dataset
    tid, dsid = image_teacher["id"], image_dataset["id"]
    r = client.post("/v1/jobs", json={"kind": "representation", "teacher_id": tid, "dataset": dsid,
                                      "layer": "layer3.0", "n_components": 4, "layout": "channels", "fit_rows": 4000,
                                      "solver": {"max_iter": 10}, "budget": {"time_limit_s": 120}})
    assert r.status_code == 201, r.text
    rep = wait_until(client, f"/v1/jobs/{r.json()['id']}", "state", ("succeeded", "failed", "cancelled"), timeout=120)
    assert rep["state"] == "succeeded", rep
    assert rep["metrics"]["layout"] == "channels" and rep["metrics"]["d"] == 16 and rep["metrics"]["n_components"] == 4
    layer_json = json.loads(client.get(f"/v1/jobs/{rep['id']}/artifacts/layer.json").content)
    assert layer_json["layout"] == "channels" and layer_json["spatial_shape"] == [8, 8] and layer_json["d"] == 16
    report = client.get(f"/v1/jobs/{rep['id']}/artifacts/report.json").json()
    assert report["fit_rows"] == 4000 and report["n_train"] == N_TRAIN
    from safetensors.torch import load as load_st

    coeffs = load_st(client.get(f"/v1/jobs/{rep['id']}/artifacts/coefficients.safetensors").content)
    assert coeffs["train"].shape == (N_TRAIN, 4, 8, 8) and coeffs["test"].shape == (N_TEST, 4, 8, 8)

    # an mlp student cannot predict a coefficient map: refused before it is queued
    bad = client.post("/v1/jobs", json={"kind": "distillation", "teacher_id": tid, "dataset": dsid,
                                        "representation_job_id": rep["id"], "student": {"arch": "mlp"}})
    assert bad.status_code == 422 and "conv student" in bad.text

    r = client.post("/v1/jobs", json={
        "kind": "distillation", "teacher_id": tid, "dataset": dsid, "representation_job_id": rep["id"],
        "student": {"arch": "cnn", "channels": [8, 16]}, "methods": ["bregman", "kd"],
        "options": {"augment_views": 1, "augment_padding": 2, "batch_size": 32},
        "budget": {"epochs": 2, "time_limit_s": 180}, "onnx": False})
    assert r.status_code == 201, r.text
    job = wait_until(client, f"/v1/jobs/{r.json()['id']}", "state", ("succeeded", "failed", "cancelled"), timeout=180)
    assert job["state"] == "succeeded", job
    m = job["metrics"]
    assert m["k"] == 4 and m["n_trained_on"] == 2 * N_TRAIN  # the images and one view of each
    assert job["progress"]["fraction"] == 1.0
    report = client.get(f"/v1/jobs/{job['id']}/artifacts/report.json").json()
    assert report["layout"] == "channels" and set(report["accuracy"]) >= {"student", "teacher", "kd"}

    program = torch.export.load(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/artifacts/student.pt2").content)).module()
    x, y = _images(N_TRAIN + N_TEST, 1)
    x_test = torch.from_numpy(x[N_TRAIN:]).float() * np.float32(1 / 255)
    with torch.no_grad():
        pred = program(x_test).argmax(1)
    accuracy = float((pred == torch.from_numpy(y[N_TRAIN:])).float().mean())
    assert accuracy == pytest.approx(m["test_accuracy"], abs=1.5 / N_TEST)
    manifest = json.loads(client.get(f"/v1/jobs/{job['id']}/artifacts/student.json").content)
    assert manifest["map_head"] == {"channels": 4, "size": [8, 8], "flatten": False}
    assert manifest["settings"]["augment_views"] == 1 and manifest["settings"]["layout"] == "channels"
