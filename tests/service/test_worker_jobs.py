"""The representation job's code path in-process (no queue): in-memory and chunked (spilled to
disk) captures give the same representation and the artifacts the report describes."""
from __future__ import annotations

import json

import pytest
import torch

from storage import jobs as jobstate
from storage.config import Settings
from storage.db import session_factory
from storage.migrate import upgrade
from storage.models import Job, Tenant
from workers import representation
from workers.runtime import JobRun


@pytest.fixture(scope="module")
def teacher_and_data():
    from bregman.datasets import load_builtin
    from bregman.models import build_model
    from bregman.teachers import Teacher

    torch.manual_seed(0)
    model = build_model("mlp", in_features=64, hidden=[16], num_classes=10, activation="leaky_relu")
    return Teacher.from_module(model, (64,)), load_builtin("digits")


def _run(tmp_path, name: str) -> JobRun:
    settings = Settings(data_dir=tmp_path / name, heartbeat_interval_s=0.2)
    upgrade(settings.resolved_database_url)
    db = session_factory(settings.resolved_database_url)()
    db.add(Tenant(name="t"))
    db.flush()
    db.add(Job(id="job_1", tenant="t", kind="representation", spec={}, metrics={}))
    db.commit()
    jobstate.claim(db, "job_1", 0, "w")
    return JobRun(settings, "job_1", 1, 120, phases=representation.PHASES)


SPEC = {"layer": "0", "dataset": "digits", "n_components": 3, "solver": {"max_iter": 4}, "seed": 0,
        "budget": {"max_train_rows": 300}}


def test_chunked_capture_gives_the_same_representation(tmp_path, teacher_and_data, monkeypatch):
    teacher, ds = teacher_and_data
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    out_a.mkdir()
    out_b.mkdir()
    with _run(tmp_path, "ra") as run:
        metrics_a, _ = representation.fit_representation(run, dict(SPEC), teacher, ds, "ab" * 32, out_a)
    monkeypatch.setattr(representation, "IN_MEMORY_ELEMENTS", 2000)  # forces chunks of 256 rows
    captured: list = []
    real_capture = representation._capture

    def spy(*args, **kwargs):
        out = real_capture(*args, **kwargs)
        # the spilled chunks are removed after the fit: read their shapes now (re-iterable)
        captured.append(None if isinstance(out, torch.Tensor) else [tuple(c.shape) for c in out])
        return out

    monkeypatch.setattr(representation, "_capture", spy)
    with _run(tmp_path, "rb") as run:
        metrics_b, _ = representation.fit_representation(run, dict(SPEC), teacher, ds, "ab" * 32, out_b)
    # the training rows really went through the chunked path: several chunks of 256 rows
    train_chunks = [c for c in captured if c is not None]
    assert train_chunks, "no capture was chunked"
    assert train_chunks[0] == [(256, 16), (44, 16)], train_chunks  # 300 rows of the 16-wide layer "0"
    assert metrics_a["n_components"] == metrics_b["n_components"] == 3
    assert metrics_b["divergence"] == pytest.approx(metrics_a["divergence"], rel=1e-3)
    assert metrics_b["test_divergence"] == pytest.approx(metrics_a["test_divergence"], rel=1e-3)
    assert not (tmp_path / "b-work").exists()  # spilled chunks removed
    from safetensors.torch import load_file

    coeffs = load_file(str(out_b / "coefficients.safetensors"))
    assert coeffs["train"].shape == (300, 3) and coeffs["test"].shape == (len(ds.x_test), 3)
    report = json.loads((out_b / "report.json").read_text())
    assert report["k"] == [1, 2, 3] and len(report["pca_divergence"]) == 3
    assert report["n_train"] == 300 and report["transfer"] == "leaky_relu"
    assert {"layer.safetensors", "layer.json"} <= {p.name for p in out_b.iterdir()}


def test_divergence_curves_fit_each_k_on_its_own(tmp_path, teacher_and_data):
    """The divergence-against-k curve is a separate fit per k, never worse than PCA's, and its
    last point is the job's own k (so the plot compares like with like)."""
    teacher, ds = teacher_and_data
    out = tmp_path / "c"
    out.mkdir()
    spec = {**SPEC, "solver": {"max_iter": 30, "ridge": 0.0}}
    with _run(tmp_path, "rc") as run:
        metrics, est = representation.fit_representation(run, spec, teacher, ds, "ab" * 32, out)
    report = json.loads((out / "report.json").read_text())
    assert report["k"] == [1, 2, 3] and report["curve_rows"] == 300
    breg, pca = report["bregman_divergence"], report["pca_divergence"]
    assert all(b <= p * (1 + 1e-9) for b, p in zip(breg, pca))
    assert breg == sorted(breg, reverse=True)  # more directions, less divergence
    # same rows, same k, same options as the job's fit: the curve's end is the job's divergence
    assert breg[-1] == pytest.approx(metrics["divergence"], rel=1e-6)
    assert len(report["explained_divergence_ratio_by_component"]) == 3
    assert representation._curve_ks(40) == sorted(set(representation._curve_ks(40)))
    assert representation._curve_ks(40)[0] == 1 and representation._curve_ks(40)[-1] == 40


def test_saved_coefficients_are_the_float64_projection(tmp_path, teacher_and_data, monkeypatch):
    """coefficients.safetensors holds what a student would regress on: every row's coefficients
    solved in float64 (a float32 solve leaves them loose along flat directions), then stored as
    float32. Held against the job's own estimator projecting the captured rows in float64."""
    teacher, ds = teacher_and_data
    out = tmp_path / "f"
    out.mkdir()
    captured: dict = {}
    real_capture = representation._capture

    def spy(body, x, d, work_dir, name, progress=None):
        got = real_capture(body, x, d, work_dir, name, progress)
        captured[name] = got.clone() if isinstance(got, torch.Tensor) else None
        return got

    monkeypatch.setattr(representation, "_capture", spy)
    with _run(tmp_path, "rf") as run:
        _, est = representation.fit_representation(run, dict(SPEC), teacher, ds, "ab" * 32, out)
    from safetensors.torch import load_file

    saved = load_file(str(out / "coefficients.safetensors"))
    for split in ("train", "test"):
        exact = torch.as_tensor(est.transform(captured[split].double()))
        assert saved[split].dtype == torch.float32
        # float32 storage of float64 answers: round-off of the stored values only
        assert torch.allclose(saved[split].double(), exact, rtol=1e-6, atol=1e-6), \
            float((saved[split].double() - exact).abs().max())
        single = torch.as_tensor(est.transform(captured[split].float())).double()
        assert not torch.allclose(single, exact, rtol=1e-6, atol=1e-6)  # the check can tell the two apart
