"""Records as the API returns them, built in the tests (no service): for the renderer and the CLI."""
from __future__ import annotations

from typing import Any

from api_schemas import ArtifactOut, JobOut, TeacherList, TeacherOut

CREATED = "2026-12-01T10:00:00Z"


def teacher(i: int, name: str = "a-teacher-with-a-rather-long-descriptive-name") -> TeacherOut:
    return TeacherOut(id=f"tch_a561f806170e{i:02d}", name=name, format="pt2", sha256="0" * 64, size=1000,
                      status="ready", parameter_count=17226 + i, input_shape=[3, 32, 32], created_at=CREATED)


def teachers(n: int = 3) -> TeacherList:
    return TeacherList(items=[teacher(i) for i in range(n)], total=n, limit=50, offset=0)


def job(job_id: str = "job_bbc0d9a7eb17", *, kind: str = "distillation", state: str = "succeeded",
        metrics: dict[str, Any] | None = None, phase: str | None = "bregman:train") -> JobOut:
    spec = {"kind": kind, "teacher_id": "tch_219ae745368c", "dataset": "digits", "layer": "2"}
    return JobOut(id=job_id, kind=kind, state=state, spec=spec,
                  progress={"fraction": 1.0 if state == "succeeded" else 0.4, "phase": phase},
                  metrics=metrics or {}, created_at=CREATED)


def artifacts() -> list[ArtifactOut]:
    names = ["student.pt2", "student.onnx", "explained_divergence.png", "training_curves.png", "metrics.json"]
    return [ArtifactOut(name=n, size=1000 + i, sha256="ab" * 32, media_type="image/png" if n.endswith(".png")
                        else "application/octet-stream") for i, n in enumerate(names)]
