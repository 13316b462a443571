"""The ``bregkd`` commands and the Python client against the real stack (see conftest)."""
from __future__ import annotations

import hashlib
import json
import re

import httpx
import numpy as np
import pytest

from client.api import ApiError, BregkdClient, BregkdError

pytestmark = pytest.mark.e2e

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _nonblank(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def teacher_id(cli, teacher_file) -> str:
    result = cli("--json", "teachers", "upload", str(teacher_file), "--name", "cli-teacher")
    assert result.exit_code == 0, result.output
    teacher = json.loads(result.stdout)
    assert teacher["status"] == "ready" and teacher["format"] == "pt2"
    return teacher["id"]


@pytest.fixture(scope="module")
def representation_job(cli, teacher_id) -> str:
    result = cli("fit", teacher_id, "--layer", "0", "--k", "3", "--max-train-rows", "400", "--wait")
    assert result.exit_code == 0, result.output
    assert "state=succeeded" in result.stdout
    match = re.search(r"job (job_\w+)", result.stdout)
    assert match, result.stdout
    return match.group(1)


def test_teachers_list_and_layers(cli, teacher_id):
    listed = cli("teachers", "list")
    assert listed.exit_code == 0, listed.output
    assert teacher_id in listed.stdout and "cli-teacher" in listed.stdout

    layers = cli("teachers", "layers", teacher_id)
    assert layers.exit_code == 0, layers.output
    rows = {line.split()[0]: line for line in layers.stdout.splitlines()[4:] if line.strip()}
    assert "leaky_relu" in rows["0"] and "yes" in rows["0"]
    # the output layer: listed as identity, fitted as softmax by transfer=auto; the listing says both
    assert "identity (auto: softmax)" in rows["2"] and "output layer" in rows["2"]

    as_json = json.loads(cli("--json", "teachers", "layers", teacher_id).stdout)
    assert [l["path"] for l in as_json["items"]] == ["0", "2"]


def test_datasets_list_and_upload(cli, tmp_path):
    listed = cli("datasets", "list")
    assert listed.exit_code == 0, listed.output
    assert "digits" in listed.stdout

    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=rng.random((40, 64), dtype=np.float32), y_train=rng.integers(0, 10, 40),
             x_test=rng.random((10, 64), dtype=np.float32), y_test=rng.integers(0, 10, 10))
    uploaded = cli("datasets", "upload", str(path), "--name", "tiny")
    assert uploaded.exit_code == 0, uploaded.output
    assert "status=ready" in uploaded.stdout and "train=40" in uploaded.stdout and "test=10" in uploaded.stdout


def test_fit_show_list_download(cli, representation_job, tmp_path):
    shown = cli("jobs", "show", representation_job)
    assert shown.exit_code == 0, shown.output
    for name in ("layer.safetensors", "layer.json", "report.json", "divergence_vs_k.png", "explained_divergence.png"):
        assert name in shown.stdout
    assert f"URL of each: {cli.api_url}/v1/jobs/{representation_job}/artifacts/<name>" in shown.stdout
    assert "plots: divergence_vs_k.png, explained_divergence.png" in shown.stdout

    as_json = json.loads(cli("--json", "jobs", "show", representation_job).stdout)
    assert as_json["state"] == "succeeded" and as_json["metrics"]["n_components"] == 3
    urls = {a["name"]: a["url"] for a in as_json["artifacts"]}
    assert urls["report.json"].endswith(f"/v1/jobs/{representation_job}/artifacts/report.json")

    listed = cli("jobs", "list", "--kind", "representation", "--state", "succeeded")
    assert listed.exit_code == 0 and representation_job in listed.stdout
    assert representation_job not in cli("jobs", "list", "--kind", "distillation").stdout

    out = tmp_path / "dl"
    downloaded = cli("download", representation_job, "--out", str(out))
    assert downloaded.exit_code == 0, downloaded.output
    report = json.loads((out / "report.json").read_text())
    assert report["k"] == [1, 2, 3]
    assert (out / "divergence_vs_k.png").read_bytes()[:8] == PNG_SIGNATURE
    only = cli("download", representation_job, "layer.json", "--out", str(tmp_path / "one"))
    assert only.exit_code == 0 and [p.name for p in (tmp_path / "one").iterdir()] == ["layer.json"]


def test_distill_wait_reports_accuracies_and_plots(cli, teacher_id, representation_job):
    result = cli("distill", teacher_id, "--representation", representation_job, "--hidden", "8",
                 "--method", "bregman", "--method", "labels", "--epochs", "2", "--max-train-rows", "400", "--wait")
    assert result.exit_code == 0, result.output
    assert "state=succeeded" in result.stdout
    assert "accuracy.student" in result.stdout and "accuracy.labels" in result.stdout
    for name in ("student.pt2", "student.safetensors", "training_curves.png", "accuracy.png"):
        assert name in result.stdout


def test_cancel_a_queued_or_running_job(cli, stack, api_key, teacher_id):
    with BregkdClient(stack.api_url, api_key) as api:
        job = api.distill(teacher_id, layer="0", n_components=2, student={"arch": "mlp", "hidden": [8]},
                          epochs=500, budget={"max_train_rows": 200})
    cancelled = cli("jobs", "cancel", job.id)
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancel_requested=True" in cancelled.stdout
    waited = cli("jobs", "wait", job.id)
    assert waited.exit_code == 1
    assert f"error: job {job.id} was cancelled" in waited.stderr
    again = cli("jobs", "cancel", job.id)
    assert again.exit_code == 1
    assert _nonblank(again.stderr) == [f"error: 409 Conflict: job '{job.id}' already cancelled; nothing to cancel"]


def test_bad_key_is_one_line_and_nonzero(cli):
    result = cli("teachers", "list", key="bkd_not_a_real_key")
    assert result.exit_code == 1
    lines = _nonblank(result.output)
    assert len(lines) == 1 and lines[0].startswith("error: 401 Unauthorized: ")


def test_api_errors_are_one_line(cli, teacher_id):
    missing = cli("jobs", "show", "job_does_not_exist")
    assert missing.exit_code == 1
    assert _nonblank(missing.output) == ["error: 404 Not Found: job 'job_does_not_exist' not found"]

    bad_layer = cli("fit", teacher_id, "--layer", "7")
    assert bad_layer.exit_code == 1
    lines = _nonblank(bad_layer.output)
    assert len(lines) == 1 and lines[0].startswith("error: 422 Unprocessable")
    assert "layer" in lines[0] and "7" in lines[0]


def test_python_client_idempotency_events_and_resume(stack, api_key, teacher_id, representation_job, tmp_path):
    with BregkdClient(stack.api_url, api_key) as api:
        first = api.fit_representation(teacher_id, "0", n_components=2, idempotency_key="client-test-1")
        again = api.fit_representation(teacher_id, "0", n_components=2, idempotency_key="client-test-1")
        assert again.id == first.id
        api.cancel_job(first.id)  # only its identity was under test
        events = list(api.job_events(representation_job))
        assert events[-1].event == "end" and events[-1].job.state.value == "succeeded"
        assert api.wait_job(representation_job, stream=False).state.value == "succeeded"

        with pytest.raises(ApiError) as info:
            api.get_teacher("tch_missing")
        assert info.value.status_code == 404

    # an interrupted download resumes from the .part file with a Range request
    transport = RecordingTransport()
    with BregkdClient(stack.api_url, api_key, transport=transport) as api:
        listing = {a.name: a for a in api.list_artifacts(representation_job).items}
        art = listing["divergence_vs_k.png"]
        full = api.download_artifact(representation_job, art.name, tmp_path / "full.png", expected=art).read_bytes()
        target = tmp_path / "resumed.png"
        target.with_name("resumed.png.part").write_bytes(full[:1000])
        resumed = api.download_artifact(representation_job, art.name, target, expected=art)
    assert resumed.read_bytes() == full
    assert hashlib.sha256(full).hexdigest() == art.sha256
    assert not target.with_name("resumed.png.part").exists()
    assert transport.seen[-1] == ("bytes=1000-", 206)

    # a .part file that does not match the artifact is caught by the SHA-256 check and dropped
    bad = tmp_path / "bad.png"
    bad.with_name("bad.png.part").write_bytes(b"\0" * 1000)
    with BregkdClient(stack.api_url, api_key) as api, pytest.raises(BregkdError, match="corrupt"):
        api.download_artifact(representation_job, art.name, bad, expected=art)
    assert not bad.exists() and not bad.with_name("bad.png.part").exists()


class RecordingTransport(httpx.HTTPTransport):
    """The real HTTP transport, remembering each request's Range header and the answer's status."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str | None, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.seen.append((request.headers.get("Range"), response.status_code))
        return response

